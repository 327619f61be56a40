/** A virtual clock and timer scheduler for tests: time moves only inside `advance`, and timers fire there in time order (ties in the order they were set). */
import type { Scheduler, TimerHandle } from '../../src/node/scheduler.js';

/** Lets real promise continuations and I/O run (a few real event-loop turns; no wall-clock wait). */
export async function settle(turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise<void>((r) => setImmediate(r));
}

/** A {@link Scheduler} on virtual time; `setImmediate` is a 0 ms timer. */
export class ManualScheduler implements Scheduler {
  private t: number;
  private seq = 0;
  private readonly timers = new Map<number, { at: number; fn: () => void; every?: number }>();

  constructor(startMs = 1_000_000) {
    this.t = startMs;
  }

  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return { cancel: () => void this.timers.delete(id) };
  }
  setInterval(fn: () => void, ms: number): TimerHandle {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + ms, fn, every: ms });
    return { cancel: () => void this.timers.delete(id) };
  }
  setImmediate(fn: () => void): TimerHandle {
    return this.setTimeout(fn, 0);
  }
  /** Timers pending. */
  get pending(): number {
    return this.timers.size;
  }
  /** Moves time forward by `ms`, firing due timers in order and letting real I/O and promise continuations settle between them. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await settle();
      let next: [number, { at: number; fn: () => void; every?: number }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at || (e[1].at === next[1].at && e[0] < next[0]))) next = e;
      if (!next) break;
      const [id, timer] = next;
      this.t = Math.max(this.t, timer.at);
      if (timer.every !== undefined) timer.at += timer.every;
      else this.timers.delete(id);
      timer.fn();
    }
    this.t = end;
    await settle();
  }
}
