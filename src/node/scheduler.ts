/**
 * The node's view of time: a clock and timers behind one small interface, so the real driver
 * runs on the wall clock in kvd and on a virtual clock under the deterministic simulator
 * (test/sim), where "later" means "when the simulator says so".
 */

/** A cancellable timer handle returned by a Scheduler. */
export interface TimerHandle {
  /** Cancel the timer; a no-op if it already fired or was cancelled. */
  cancel(): void;
  /** Let the process exit while only this timer is pending (kvd's tick timer); absent where meaningless (virtual time). */
  unref?(): void;
}

/**
 * What time it is, for code that only reads the time (deadlines, timestamps, ages). Passed in,
 * so the simulator can give virtual time; `realClock` (the wall clock) by default.
 */
export interface Clock {
  /** Milliseconds since the epoch (wall clock in kvd, virtual time in the simulator). */
  now(): number;
}

/** The wall clock (`Date.now`). */
export const realClock: Clock = { now: () => Date.now() };

/** Clock and timers for a node (and the layers above it that set timers). Implementations: `realScheduler` (kvd) and the simulator's virtual one. */
export interface Scheduler extends Clock {
  /** Run `fn` once after `ms` milliseconds. */
  setTimeout(fn: () => void, ms: number): TimerHandle;
  /** Run `fn` every `ms` milliseconds until cancelled. */
  setInterval(fn: () => void, ms: number): TimerHandle;
  /** Run `fn` after the current event-loop turn's I/O (setImmediate in kvd). */
  setImmediate(fn: () => void): TimerHandle;
}

/** Resolves after `ms` milliseconds on `scheduler`'s timers. */
export function sleep(scheduler: Scheduler, ms: number): Promise<void> {
  return new Promise((resolve) => scheduler.setTimeout(resolve, ms));
}

/** The wall-clock scheduler kvd uses: Node's own timers. Timers are unref'd only where the caller does so. */
export const realScheduler: Scheduler = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const t = setTimeout(fn, ms);
    return { cancel: () => clearTimeout(t), unref: () => void t.unref() };
  },
  setInterval(fn, ms) {
    const t = setInterval(fn, ms);
    return { cancel: () => clearInterval(t), unref: () => void t.unref() };
  },
  setImmediate(fn) {
    const t = setImmediate(fn);
    return { cancel: () => clearImmediate(t) };
  },
};
