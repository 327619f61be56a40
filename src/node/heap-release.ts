/**
 * A full garbage collection soon after a large one-off allocation (a follower's snapshot install),
 * so the node's RSS does not keep that work's garbage (issue 17: a follower that installed a
 * 1 M-key snapshot kept 360–380 MiB of V8 heap "in use", nearly all garbage, until some later
 * allocation happened to trigger a major GC; an idle follower may allocate too little for that).
 *
 * V8 runs major collections by allocation alone; Node has no idle-time GC. A forced collection of
 * a heap that is mostly garbage is short (it marks what is live: ~6 ms for a 250 MiB heap of dead
 * objects on this machine), and V8 gives the freed pages back within a second or two. One is run
 * `delayMs` after the request (the install's last writes and the first catch-up rounds finish
 * first), at most one per `minIntervalMs`, and never while another is pending.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** A synchronous full garbage collection. */
export type ForcedGc = () => void;

let cached: ForcedGc | null | undefined;

/**
 * The engine's full-GC function: `globalThis.gc` when Node runs with `--expose-gc`, else exposed
 * now (`v8.setFlagsFromString('--expose-gc')`, read from a new context, as test runners do), or
 * undefined where neither works. Loaded once; `globalThis.gc` stays unset for everything else.
 */
export function loadForcedGc(): ForcedGc | undefined {
  if (cached !== undefined) return cached ?? undefined;
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === 'function') {
    cached = exposed as ForcedGc;
    return cached;
  }
  try {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as unknown;
    cached = typeof gc === 'function' ? (gc as ForcedGc) : null;
  } catch {
    cached = null;
  }
  return cached ?? undefined;
}

/** When {@link HeapRelease} collects. */
export interface HeapReleasePolicy {
  /** Wait after a request before collecting (ms). */
  readonly delayMs: number;
  /** Least time between two collections (ms); a request within it is moved to its end. */
  readonly minIntervalMs: number;
}

/** kvd's policy: 2 s after the request, at most one per 30 s. */
export const DEFAULT_HEAP_RELEASE_POLICY: HeapReleasePolicy = { delayMs: 2000, minIntervalMs: 30_000 };

/** What one collection did. */
export interface HeapReleaseResult {
  /** Why it was requested (the first request since the last collection). */
  readonly reason: string;
  /** V8 heap used before and after (bytes). */
  readonly heapUsedBefore: number;
  readonly heapUsedAfter: number;
  /** The collection's pause on the event loop (ms). */
  readonly pauseMs: number;
}

/** Timers and clock (tests pass fakes). */
export interface HeapReleaseClock {
  now(): number;
  /** Returns a handle for `clearTimeout` (unref'd when it has `unref`). */
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

const realClock: HeapReleaseClock = {
  now: () => performance.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

/** Runs a forced full GC after large one-off work, rate-limited (see the module comment). */
export class HeapRelease {
  private timer: unknown;
  private pendingReason: string | undefined;
  private lastAt = Number.NEGATIVE_INFINITY;
  private stopped = false;
  /** Collections run so far. */
  collections = 0;

  constructor(
    private readonly gc: ForcedGc,
    private readonly policy: HeapReleasePolicy = DEFAULT_HEAP_RELEASE_POLICY,
    private readonly onCollected: (r: HeapReleaseResult) => void = () => {},
    private readonly heapUsed: () => number = () => process.memoryUsage().heapUsed,
    private readonly clock: HeapReleaseClock = realClock,
  ) {}

  /** Asks for a collection (`reason` is reported with it); requests while one is pending join it. */
  request(reason: string): void {
    if (this.stopped || this.timer !== undefined) return;
    this.pendingReason = reason;
    const at = Math.max(this.clock.now() + this.policy.delayMs, this.lastAt + this.policy.minIntervalMs);
    this.timer = this.clock.setTimeout(() => this.collect(), Math.max(0, at - this.clock.now()));
    (this.timer as { unref?: () => unknown }).unref?.();
  }

  /** Whether a collection is waiting for its time. */
  get pending(): boolean {
    return this.timer !== undefined;
  }

  /** Cancels a pending collection; later requests are ignored. */
  stop(): void {
    this.stopped = true;
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private collect(): void {
    this.timer = undefined;
    if (this.stopped) return;
    const before = this.heapUsed();
    const t0 = this.clock.now();
    this.gc();
    const pauseMs = this.clock.now() - t0;
    this.lastAt = this.clock.now();
    this.collections++;
    this.onCollected({ reason: this.pendingReason ?? '', heapUsedBefore: before, heapUsedAfter: this.heapUsed(), pauseMs });
  }
}
