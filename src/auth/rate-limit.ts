/** Limits failed logins: after a run of failures a name (a user, a client address) is locked out for a while, the lock doubling with each further failure. */

/** Options of {@link FailureLimiter}. */
export interface FailureLimiterOptions {
  /** Failures in a row allowed before the lock-out (default 5). */
  readonly maxFailures?: number;
  /** The first lock-out (ms, default 2000); doubled per further failure up to `maxLockMs`. */
  readonly lockMs?: number;
  /** The longest lock-out (ms, default 300 000). */
  readonly maxLockMs?: number;
  /** Failures older than this are forgotten (ms, default 900 000). */
  readonly forgetMs?: number;
  /** Most names tracked; the oldest are forgotten beyond it (default 100 000). */
  readonly maxEntries?: number;
}

interface Entry {
  failures: number;
  lastAtMs: number;
  lockedUntilMs: number;
}

/** Counts failures per name; see the file's top. */
export class FailureLimiter {
  private readonly entries = new Map<string, Entry>();
  private readonly maxFailures: number;
  private readonly lockMs: number;
  private readonly maxLockMs: number;
  private readonly forgetMs: number;
  private readonly maxEntries: number;

  constructor(o: FailureLimiterOptions = {}) {
    this.maxFailures = o.maxFailures ?? 5;
    this.lockMs = o.lockMs ?? 2000;
    this.maxLockMs = o.maxLockMs ?? 300_000;
    this.forgetMs = o.forgetMs ?? 900_000;
    this.maxEntries = o.maxEntries ?? 100_000;
  }

  /** How long `name` is still locked out (ms; 0 = it may try). */
  lockedFor(name: string, nowMs: number = Date.now()): number {
    const e = this.entries.get(name);
    if (!e) return 0;
    if (nowMs - e.lastAtMs > this.forgetMs) {
      this.entries.delete(name);
      return 0;
    }
    return Math.max(0, e.lockedUntilMs - nowMs);
  }

  /** Records a failure of `name`. */
  failed(name: string, nowMs: number = Date.now()): void {
    let e = this.entries.get(name);
    if (!e || nowMs - e.lastAtMs > this.forgetMs) {
      e = { failures: 0, lastAtMs: nowMs, lockedUntilMs: 0 };
      this.entries.delete(name);
      if (this.entries.size >= this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
      this.entries.set(name, e);
    }
    e.failures++;
    e.lastAtMs = nowMs;
    const over = e.failures - this.maxFailures;
    if (over >= 0) e.lockedUntilMs = nowMs + Math.min(this.maxLockMs, this.lockMs * 2 ** Math.min(over, 30));
  }

  /** Forgets the failures of `name` (after a success). */
  succeeded(name: string): void {
    this.entries.delete(name);
  }
}
