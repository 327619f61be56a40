/**
 * The node-level simulator's virtual clock: a {@link Scheduler} whose timers sit in one priority
 * queue ordered by (virtual time, insertion order). Nothing runs by itself: {@link VirtualScheduler.run}
 * pops the next timer, moves the clock to its time and runs it, then lets every promise
 * continuation it started settle (one real `setImmediate` turn, which drains the microtask queue)
 * before the next one, as Node does between two timers. `setImmediate` is "next in the queue at
 * the same virtual time"; `setTimeout(fn, 0)` waits 1 ms, as in Node.
 *
 * Owners: every timer belongs to an owner (a node incarnation, or 0 for the simulation itself).
 * A timer created while an owner's timer runs (or while its promise continuations settle) belongs
 * to that owner too, so `kill(owner)` cancels everything a crashed node left behind and
 * `pause(owner)` holds all of a node's work (a frozen process) until it resumes.
 *
 * Global shim: the node's own timers go through the Scheduler it is given, and so do the
 * coordinator's and the extension layer's (injected: see node-sim.ts), but other layers (storage,
 * value release, the loopback transport, lambda-kv's retry sleep) still call the global
 * `setTimeout`/`Date.now`. While a run
 * is {@link VirtualScheduler.install}ed, the globals (`setTimeout`, `setInterval`, `setImmediate`,
 * their `clear*`, `Date.now`, `performance.now`, `Math.random`) are this clock and the seeded
 * random, so every layer runs on virtual time and the same seed gives the same run.
 */
import { SeededRandom } from '../../../src/raft/index.js';
import type { Scheduler, TimerHandle } from '../../../src/node/scheduler.js';

/** Who a timer belongs to: 0 is the simulation itself (clients, faults); others are node incarnations. */
export type Owner = number;

/** The simulation's own owner (clients, fault injection, checks). */
export const SIM_OWNER: Owner = 0;

/** A queued timer; also the handle given out (Node's Timeout methods included, as callers use them). */
export class VirtualTimer implements TimerHandle {
  cancelled = false;
  constructor(
    /** @internal */ public at: number,
    /** @internal */ public seq: number,
    /** @internal */ public owner: Owner,
    /** @internal */ readonly fn: () => void,
    /** @internal */ readonly intervalMs: number | undefined,
  ) {}

  /** Cancels the timer (a no-op once it fired, for a one-shot timer). */
  cancel(): void {
    this.cancelled = true;
  }

  /** Node's Timeout API: no effect on virtual time. */
  unref(): this {
    return this;
  }

  /** Node's Timeout API: no effect on virtual time. */
  ref(): this {
    return this;
  }

  /** Node's Timeout API. */
  hasRef(): boolean {
    return true;
  }

  /** Node's Timeout API: the timer is cancellable by clearTimeout; refreshing is not simulated. */
  refresh(): this {
    return this;
  }

  [Symbol.toPrimitive](): number {
    return this.seq;
  }
}

/** A binary min-heap of timers by (at, seq). */
class TimerHeap {
  private readonly items: VirtualTimer[] = [];

  get size(): number {
    return this.items.length;
  }

  push(t: VirtualTimer): void {
    const a = this.items;
    a.push(t);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!less(a[i]!, a[p]!)) break;
      [a[i], a[p]] = [a[p]!, a[i]!];
      i = p;
    }
  }

  peek(): VirtualTimer | undefined {
    return this.items[0];
  }

  pop(): VirtualTimer | undefined {
    const a = this.items;
    if (a.length === 0) return undefined;
    const top = a[0]!;
    const last = a.pop()!;
    if (a.length > 0) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < a.length && less(a[l]!, a[m]!)) m = l;
        if (r < a.length && less(a[r]!, a[m]!)) m = r;
        if (m === i) break;
        [a[i], a[m]] = [a[m]!, a[i]!];
        i = m;
      }
    }
    return top;
  }

  clear(): void {
    this.items.length = 0;
  }
}

const less = (a: VirtualTimer, b: VirtualTimer): boolean => a.at < b.at || (a.at === b.at && a.seq < b.seq);

/** What {@link VirtualScheduler.run} did. */
export interface RunStats {
  /** Timers run. */
  readonly events: number;
}

/** The virtual clock and timer queue of one simulated run (see the file's top). */
export class VirtualScheduler implements Scheduler {
  private clock: number;
  private seq = 0;
  private readonly heap = new TimerHeap();
  private readonly paused = new Map<Owner, number>();
  private readonly killed = new Set<Owner>();
  /** Per owner, how far its clock is ahead (ms; negative: behind) of virtual time. */
  private readonly skews = new Map<Owner, number>();
  /** The owner whose work runs now (timers created now belong to it). */
  current: Owner = SIM_OWNER;
  /** Timers run so far. */
  events = 0;
  /** The seeded random the global `Math.random` draws from while installed. */
  readonly random: SeededRandom;

  constructor(startMs: number, seed: number) {
    this.clock = startMs;
    this.random = new SeededRandom(seed ^ 0x5bd1e995);
  }

  /** Virtual ms since the epoch. */
  now(): number {
    return this.clock;
  }

  setTimeout(fn: () => void, ms: number): VirtualTimer {
    return this.enqueue(this.current, Math.max(1, Math.floor(Number.isFinite(ms) ? ms : 1)), fn, undefined);
  }

  setInterval(fn: () => void, ms: number): VirtualTimer {
    const every = Math.max(1, Math.floor(Number.isFinite(ms) ? ms : 1));
    return this.enqueue(this.current, every, fn, every);
  }

  setImmediate(fn: () => void): VirtualTimer {
    return this.enqueue(this.current, 0, fn, undefined);
  }

  /** Runs `fn` as `owner`'s work `delayMs` from now (0: after what is queued for now). */
  at(owner: Owner, delayMs: number, fn: () => void): VirtualTimer {
    return this.enqueue(owner, Math.max(0, delayMs), fn, undefined);
  }

  /** Sets `owner`'s clock `ms` ahead of virtual time (negative: behind): what `Date.now` reads in its work, and its view's `now`. */
  setSkew(owner: Owner, ms: number): void {
    if (ms === 0) this.skews.delete(owner);
    else this.skews.set(owner, ms);
  }

  /** The clock as `owner` reads it (virtual time plus its skew). */
  nowOf(owner: Owner): number {
    return this.clock + (this.skews.get(owner) ?? 0);
  }

  /**
   * A Scheduler for `owner` alone (what a node is given): its timers belong to `owner` whoever
   * creates them, and `now` is its own clock (with its skew).
   */
  viewFor(owner: Owner): Scheduler {
    return {
      now: () => this.nowOf(owner),
      setTimeout: (fn, ms) => this.enqueue(owner, Math.max(1, Math.floor(Number.isFinite(ms) ? ms : 1)), fn, undefined),
      setInterval: (fn, ms) => {
        const every = Math.max(1, Math.floor(Number.isFinite(ms) ? ms : 1));
        return this.enqueue(owner, every, fn, every);
      },
      setImmediate: (fn) => this.enqueue(owner, 0, fn, undefined),
    };
  }

  /** Drops every timer of `owner`, now and later (a crashed node incarnation). */
  kill(owner: Owner): void {
    this.killed.add(owner);
    this.paused.delete(owner);
  }

  /** Holds every timer of `owner` until virtual time `untilMs` (a frozen process); they then run in their order. */
  pause(owner: Owner, untilMs: number): void {
    if (!this.killed.has(owner)) this.paused.set(owner, Math.max(untilMs, this.paused.get(owner) ?? 0));
  }

  /** Whether `owner` is paused now. */
  isPaused(owner: Owner): boolean {
    const until = this.paused.get(owner);
    return until !== undefined && until > this.clock;
  }

  private enqueue(owner: Owner, delayMs: number, fn: () => void, intervalMs: number | undefined): VirtualTimer {
    const t = new VirtualTimer(this.clock + delayMs, this.seq++, owner, fn, intervalMs);
    if (!this.killed.has(owner)) this.heap.push(t);
    return t;
  }

  /**
   * Runs timers in order until the queue is empty, virtual time would pass `untilMs`, or `stop()`
   * says so (asked between timers). Each timer's promise continuations settle before the next
   * timer runs. A timer that throws fails the run.
   */
  async run(untilMs: number, stop: () => boolean = () => false): Promise<RunStats> {
    const drain = realTimers.setImmediate;
    let events = 0;
    for (;;) {
      if (stop()) break;
      const t = this.heap.peek();
      if (!t || t.at > untilMs) break;
      this.heap.pop();
      if (t.cancelled || this.killed.has(t.owner)) continue;
      const pausedUntil = this.paused.get(t.owner);
      if (pausedUntil !== undefined) {
        if (pausedUntil > t.at) {
          // A frozen process: its work runs when it wakes, in the order it was due.
          t.at = pausedUntil;
          t.seq = this.seq++;
          this.heap.push(t);
          continue;
        }
        this.paused.delete(t.owner);
      }
      this.clock = Math.max(this.clock, t.at);
      if (t.intervalMs !== undefined) {
        t.at = this.clock + t.intervalMs;
        t.seq = this.seq++;
        this.heap.push(t);
      } else {
        t.cancelled = true;
      }
      this.current = t.owner;
      events++;
      this.events++;
      try {
        t.fn();
      } finally {
        // Let every continuation of this timer settle, still as its owner.
        await new Promise<void>((resolve) => drain(resolve));
        this.current = SIM_OWNER;
      }
    }
    if (this.clock < untilMs && !stop()) this.clock = untilMs;
    return { events };
  }

  /** Forgets every queued timer (end of a run). */
  clear(): void {
    this.heap.clear();
  }

  /**
   * Makes the global timers, `Date.now`, `performance.now` and `Math.random` this scheduler's
   * (see the file's top); returns the function that restores the real ones. Timers created
   * before (the test runner's) are still cleared by the real `clear*`.
   */
  install(): () => void {
    const g = globalThis as unknown as Record<string, unknown>;
    const saved = {
      setTimeout: g.setTimeout,
      setInterval: g.setInterval,
      setImmediate: g.setImmediate,
      clearTimeout: g.clearTimeout,
      clearInterval: g.clearInterval,
      clearImmediate: g.clearImmediate,
      dateNow: Date.now,
      perfNow: performance.now,
      random: Math.random,
    };
    const clear = (real: unknown) => (t: unknown): void => {
      if (t instanceof VirtualTimer) t.cancel();
      else if (t !== undefined && t !== null) (real as (x: unknown) => void)(t);
    };
    const withArgs = (fn: (...a: unknown[]) => void, args: unknown[]): (() => void) => (args.length > 0 ? () => fn(...args) : (fn as () => void));
    g.setTimeout = (fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => this.setTimeout(withArgs(fn, args), ms ?? 0);
    g.setInterval = (fn: (...a: unknown[]) => void, ms?: number, ...args: unknown[]) => this.setInterval(withArgs(fn, args), ms ?? 0);
    g.setImmediate = (fn: (...a: unknown[]) => void, ...args: unknown[]) => this.setImmediate(withArgs(fn, args));
    g.clearTimeout = clear(saved.clearTimeout);
    g.clearInterval = clear(saved.clearInterval);
    g.clearImmediate = clear(saved.clearImmediate);
    // Each owner's work reads its own clock (clock skew between nodes).
    Date.now = () => this.nowOf(this.current);
    const start = this.clock;
    performance.now = () => this.nowOf(this.current) - start;
    Math.random = () => this.random.nextFloat();
    return () => {
      g.setTimeout = saved.setTimeout;
      g.setInterval = saved.setInterval;
      g.setImmediate = saved.setImmediate;
      g.clearTimeout = saved.clearTimeout;
      g.clearInterval = saved.clearInterval;
      g.clearImmediate = saved.clearImmediate;
      Date.now = saved.dateNow;
      performance.now = saved.perfNow;
      Math.random = saved.random;
    };
  }
}

/** The real timers, captured when this module loads (the run loop yields to the real event loop with them). */
const realTimers = { setImmediate: globalThis.setImmediate.bind(globalThis) };
