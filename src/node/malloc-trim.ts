/**
 * Returning freed native memory to the OS (issue 17, session `rss5`). glibc keeps what a process
 * frees in the middle of its main arena (the brk heap, where Node's Buffers, gRPC's messages and
 * LevelDB's batches and iterators are malloc'd) resident until it is reused: only the top of the
 * heap is released by itself. A data fill, a snapshot install or a burst of large requests leaves
 * such holes behind, so a node's RSS grew with what it had written and freed, not with what it
 * holds. `malloc_trim(0)` (glibc; called through koffi) gives the free pages back (madvise).
 *
 * {@link TrimScheduler} decides when (pure; tests in test/node/malloc-trim.test.ts). A trim is a
 * pause: glibc walks every free chunk of each arena and madvises the free pages while holding that
 * arena's lock, and the event loop's next malloc waits for it. Measured (session `rss5`, 300 k keys,
 * 2-core machine at load 15-20, kvd under nice 10): 0.2-3.1 s per trim of a 200-400 MiB main arena,
 * with the loop blocked as long; trimming every 10 s through a fill raised the leader changes from
 * 3-5 to 13-22 per node. So the node trims only when it is quiet: the event loop's utilization
 * stayed below `maxLoopUtilization` for `quietChecks` checks in a row (a fill, a catch-up or a
 * steady load keeps it above) while the machine's CPU pressure (Linux PSI) stayed at or below
 * `maxCpuPressure` (an idle node on a saturated machine would trim for seconds), and only then reads glibc's `mallinfo2` (bytes in use and free, all
 * arenas; it walks the free lists under the same locks, ~14 ms a call at that load, so not on every
 * check), and trims when what was freed since the last trim reaches a threshold: the fall of the
 * bytes in use from their peak since then, or the growth of the free bytes since then, whichever is
 * larger; never more often than `minIntervalMs`. {@link MallocTrimmer} runs the checks on a timer
 * and the trim itself on koffi's worker thread (the loop can still wait on the arena lock).
 *
 * On by default in kvd since session 33 ({@link DEFAULT_MALLOC_TRIM_MIB}; `--malloc-trim-mib 0`
 * turns it off). The trade: a trim pauses a quiet node's loop for what it takes (28-1,293 ms per
 * 46-406 MiB given back on the quiet 2-core machine, docs/memory.md "Trimming by default (session
 * 33)"; at load 20, session rss5, a 217 MiB trim blocked
 * a leader's loop 2.25 s and a follower went to pre-vote), against a node whose RSS otherwise keeps
 * its past peak (hundreds of MiB after a catch-up or a fill). Running on jemalloc (`LD_PRELOAD`) is the other way
 * (docs/memory.md "RSS against data size (session rss5)"); there `mallinfo2` reports glibc's unused
 * arenas, so the trimmer finds nothing to do.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Counter, Gauge, type Registry } from 'prom-client';

/** glibc's allocator figures (`mallinfo2`), bytes. */
export interface MallocStats {
  /** Bytes allocated with brk/arena heaps (`arena`). */
  readonly arenaBytes: number;
  /** Bytes in use in the arenas (`uordblks`). */
  readonly inUseBytes: number;
  /** Free bytes in the arenas (`fordblks`), resident or already trimmed. */
  readonly freeBytes: number;
  /** Bytes in chunks of their own mapping (`hblkhd`, returned to the OS when freed). */
  readonly mmappedBytes: number;
}

/** The native calls (glibc through koffi). */
export interface NativeMalloc {
  stats(): MallocStats;
  /** `malloc_trim(0)` on a worker thread; calls back with whether memory was released and the call's wall time on that thread (ms). */
  trimAsync(done: (err: Error | undefined, released: boolean, ms: number) => void): void;
  /** `malloc_trim(0)` on the calling thread (benches and tests). */
  trimSync(): boolean;
}

let loaded: NativeMalloc | null | undefined;

/**
 * glibc's malloc functions through koffi, or undefined where they are not available (not Linux,
 * not glibc, e.g. musl in an Alpine image, or koffi failed to load). Loaded once.
 */
export function loadNativeMalloc(): NativeMalloc | undefined {
  if (loaded !== undefined) return loaded ?? undefined;
  loaded = null;
  if (process.platform !== 'linux') return undefined;
  try {
    const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi').default;
    const libc = koffi.load('libc.so.6');
    const info = koffi.struct({
      arena: 'size_t',
      ordblks: 'size_t',
      smblks: 'size_t',
      hblks: 'size_t',
      hblkhd: 'size_t',
      usmblks: 'size_t',
      fsmblks: 'size_t',
      uordblks: 'size_t',
      fordblks: 'size_t',
      keepcost: 'size_t',
    });
    const mallinfo2 = libc.func('mallinfo2', info, []);
    const trim = libc.func('malloc_trim', 'int', ['size_t']);
    // A tiny C-side timer would be nicer; the wall time around the async call includes the thread hop.
    const n = (v: unknown): number => Number(v);
    loaded = {
      stats: () => {
        const m = mallinfo2() as Record<string, unknown>;
        return { arenaBytes: n(m.arena), inUseBytes: n(m.uordblks), freeBytes: n(m.fordblks), mmappedBytes: n(m.hblkhd) };
      },
      trimAsync: (done) => {
        const t0 = performance.now();
        trim.async(0, (err: unknown, r: number) => done(err instanceof Error ? err : err ? new Error(String(err)) : undefined, r === 1, performance.now() - t0));
      },
      trimSync: () => trim(0) === 1,
    };
  } catch {
    loaded = null;
  }
  return loaded ?? undefined;
}

/** When to trim (see the module comment). */
export interface TrimPolicy {
  /** Trim once this many bytes were freed since the last trim (0: never). */
  readonly freedBytes: number;
  /** Least time between two trims, ms. */
  readonly minIntervalMs: number;
  /** The node is quiet while the event loop's utilization (0..1) over a check stays below this. */
  readonly maxLoopUtilization: number;
  /** Checks in a row the node must be quiet before the allocator is read (and maybe trimmed). */
  readonly quietChecks: number;
  /**
   * The machine's CPU pressure (Linux PSI, `/proc/pressure/cpu` "some avg10": the share of the last
   * 10 s in which a runnable task waited for a CPU, 0..100) above which a check counts as busy even
   * when this node is idle: a trim competes for the CPU with everything else, and on a saturated
   * machine it took seconds (a follower went to pre-vote). Absent: no such gate (where PSI is not
   * available the gate is off as well).
   */
  readonly maxCpuPressure?: number;
}

/**
 * The machine's CPU pressure, "some avg10" of `/proc/pressure/cpu` (Linux PSI: percent of the last
 * 10 s in which a runnable task waited for a CPU), or undefined when the text has none.
 */
export function parseCpuPressure(text: string): number | undefined {
  const m = /^some avg10=(\d+(?:\.\d+)?)/m.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** The process's anonymous resident memory (`RssAnon` of /proc/self/status), bytes; undefined where there is none (not Linux). */
export function readAnonRss(): number | undefined {
  try {
    const m = /^RssAnon:\s+(\d+) kB/m.exec(readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Reads the machine's CPU pressure ({@link parseCpuPressure}); undefined where PSI is not available (not Linux, an old kernel, PSI off). */
export function readCpuPressure(): number | undefined {
  try {
    return parseCpuPressure(readFileSync('/proc/pressure/cpu', 'utf8'));
  } catch {
    return undefined;
  }
}

/**
 * kvd's default for `--malloc-trim-mib` (on glibc): trim once 64 MiB were freed since the last trim,
 * the node is quiet and the interval has passed. On since session 33: measured on the quiet 2-core
 * machine, glibc kept 345 MiB free on an idle leader after it sent a 350 k-key snapshot (anonymous
 * 561 MiB; trimmed: 239) and 110-134 MiB per node at 300 k keys, and the trims took 107-287 ms.
 */
export const DEFAULT_MALLOC_TRIM_MIB = 64;

/** The policy kvd uses when trimming is asked for (`--malloc-trim-mib`, which sets `freedBytes`: {@link DEFAULT_MALLOC_TRIM_MIB} unless set): at most every 60 s, once the loop was under 20 % busy for 3 checks (6 s) while the machine's CPU pressure stayed at or below 40 %. */
export const DEFAULT_TRIM_POLICY: TrimPolicy = { freedBytes: 64 * 2 ** 20, minIntervalMs: 60_000, maxLoopUtilization: 0.2, quietChecks: 3, maxCpuPressure: 40 };

/** How often the trimmer reads the allocator's figures, ms. */
export const TRIM_CHECK_MS = 2_000;

/** The trim decisions, from the allocator's figures at each check (pure: no timer, no native call). */
export class TrimScheduler {
  private peakInUse = 0;
  private freeAtTrim = 0;
  private anonAtTrim: number | undefined;
  private lastTrimMs = Number.NEGATIVE_INFINITY;
  private running = false;
  private quietFor = 0;

  constructor(readonly policy: TrimPolicy) {
    if (!(policy.maxLoopUtilization > 0 && policy.maxLoopUtilization <= 1)) throw new Error(`maxLoopUtilization must be in (0, 1] (got ${policy.maxLoopUtilization})`);
    if (!Number.isSafeInteger(policy.quietChecks) || policy.quietChecks < 1) throw new Error(`quietChecks must be a positive integer (got ${policy.quietChecks})`);
    if (!Number.isFinite(policy.freedBytes) || policy.freedBytes < 0) throw new Error(`freedBytes must be a non-negative number (got ${policy.freedBytes})`);
    if (!Number.isFinite(policy.minIntervalMs) || policy.minIntervalMs < 0) throw new Error(`minIntervalMs must be a non-negative number (got ${policy.minIntervalMs})`);
    if (policy.maxCpuPressure !== undefined && !(policy.maxCpuPressure >= 0 && policy.maxCpuPressure <= 100)) throw new Error(`maxCpuPressure must be in [0, 100] (got ${policy.maxCpuPressure})`);
  }

  /** Bytes freed since the last trim, as far as the figures tell: the fall from the peak in use, or the growth of the free bytes. */
  freedSinceTrim(s: MallocStats): number {
    return Math.max(0, this.peakInUse - s.inUseBytes, s.freeBytes - this.freeAtTrim);
  }

  /**
   * The first half of a check: the loop's utilization since the last check and the machine's CPU
   * pressure now (undefined: not known, not gated). Whether the node has been quiet long enough on
   * a machine with CPU to spare, and a trim is allowed, so that the allocator's figures are worth reading.
   */
  quiet(nowMs: number, loopUtilization: number, cpuPressure?: number): boolean {
    this.quietFor = loopUtilization < this.policy.maxLoopUtilization && !this.starved(cpuPressure) ? this.quietFor + 1 : 0;
    if (this.policy.freedBytes === 0 || this.running) return false;
    return this.quietFor >= this.policy.quietChecks && nowMs - this.lastTrimMs >= this.policy.minIntervalMs;
  }

  /** Whether the machine is short of CPU by the policy's bound (`cpuPressure` undefined, or no bound: never). */
  starved(cpuPressure?: number): boolean {
    const max = this.policy.maxCpuPressure;
    return max !== undefined && cpuPressure !== undefined && cpuPressure > max;
  }

  /**
   * The second half (after {@link quiet} said yes): whether to trim now. Call {@link trimmed} when
   * the trim it asked for is done. `anonRssBytes` (the process's anonymous resident memory, when
   * known) catches what the allocator's totals miss: its free bytes count pages a trim already gave
   * back alike with pages reused and freed again since (resident again), and the peak in use is
   * only sampled while quiet, so a busy spell that used and freed memory can leave both figures
   * where they were at the last trim. So a trim also follows when the allocator holds at least the
   * threshold free and the anonymous memory grew by the threshold since the last trim.
   */
  check(nowMs: number, s: MallocStats, anonRssBytes?: number): boolean {
    this.peakInUse = Math.max(this.peakInUse, s.inUseBytes);
    if (this.policy.freedBytes === 0 || this.running) return false;
    if (nowMs - this.lastTrimMs < this.policy.minIntervalMs) return false;
    const regrown = anonRssBytes !== undefined && this.anonAtTrim !== undefined && s.freeBytes >= this.policy.freedBytes && anonRssBytes - this.anonAtTrim >= this.policy.freedBytes;
    if (this.freedSinceTrim(s) < this.policy.freedBytes && !regrown) return false;
    this.running = true;
    return true;
  }

  /** A trim finished at `nowMs`; `after` are the figures then, `anonRssAfter` the anonymous resident memory (what is in use, free and resident becomes the new base). */
  trimmed(nowMs: number, after: MallocStats, anonRssAfter?: number): void {
    this.running = false;
    this.lastTrimMs = nowMs;
    this.peakInUse = after.inUseBytes;
    this.freeAtTrim = after.freeBytes;
    this.anonAtTrim = anonRssAfter;
  }
}

/** Runs a {@link TrimScheduler} on a timer against the real allocator, with metrics. */
export class MallocTrimmer {
  private timer: NodeJS.Timeout | undefined;
  private readonly scheduler: TrimScheduler;
  private readonly trims: Counter;
  private readonly trimSeconds: Counter;
  private readonly checkSeconds: Counter;
  private readonly released: Counter;
  private readonly starvedChecks: Counter;
  private maxTrimMs = 0;
  private lastElu = performance.eventLoopUtilization();
  private cached: { atMs: number; stats: MallocStats } | undefined;

  /** `cpuPressure` reads the machine's CPU pressure ({@link readCpuPressure} unless another source is given). */
  constructor(
    private readonly native: NativeMalloc,
    policy: TrimPolicy,
    registry: Registry,
    private readonly log?: (fields: Record<string, unknown>, msg: string) => void,
    private readonly cpuPressure: () => number | undefined = readCpuPressure,
  ) {
    this.scheduler = new TrimScheduler(policy);
    const registers = [registry];
    this.trims = new Counter({ name: 'kvcascade_malloc_trims_total', help: 'malloc_trim(0) calls (freed native memory given back to the OS)', registers });
    this.trimSeconds = new Counter({ name: 'kvcascade_malloc_trim_seconds_total', help: 'Wall time of the malloc_trim calls (on a worker thread)', registers });
    this.checkSeconds = new Counter({ name: 'kvcascade_malloc_check_seconds_total', help: 'Event-loop time reading the allocator figures (mallinfo2: the trim decisions while quiet, and the scrapes)', registers });
    this.starvedChecks = new Counter({ name: 'kvcascade_malloc_trim_cpu_starved_checks_total', help: 'Trim checks counted as busy because the machine was short of CPU (PSI cpu "some avg10" above the policy bound)', registers });
    this.released = new Counter({ name: 'kvcascade_malloc_trim_released_bytes_total', help: 'Resident memory the trims gave back (RSS before minus after, when it fell)', registers });
    const self = this;
    new Gauge({ name: 'kvcascade_malloc_trim_max_seconds', help: 'Longest malloc_trim call so far', registers, collect() { this.set(self.maxTrimMs / 1000); } });
    // One mallinfo2 per scrape (it walks the free lists): the three gauges share it.
    const stat = (name: string, help: string, pick: (s: MallocStats) => number) =>
      new Gauge({ name, help, registers, collect() { this.set(pick(self.stats(1_000))); } });
    stat('kvcascade_malloc_in_use_bytes', 'glibc malloc: bytes in use in the arenas (mallinfo2 uordblks)', (s) => s.inUseBytes);
    stat('kvcascade_malloc_free_bytes', 'glibc malloc: free bytes in the arenas, resident or trimmed (mallinfo2 fordblks)', (s) => s.freeBytes);
    stat('kvcascade_malloc_arena_bytes', 'glibc malloc: bytes of the arenas (mallinfo2 arena)', (s) => s.arenaBytes);
  }

  /** The allocator's figures (mallinfo2, timed into the check metric), or the last ones when younger than `maxAgeMs`. */
  private stats(maxAgeMs = 0): MallocStats {
    const now = performance.now();
    if (this.cached && now - this.cached.atMs <= maxAgeMs) return this.cached.stats;
    const stats = this.native.stats();
    const end = performance.now();
    this.checkSeconds.inc((end - now) / 1000);
    this.cached = { atMs: end, stats };
    return stats;
  }

  start(checkMs = TRIM_CHECK_MS): void {
    if (this.timer || this.scheduler.policy.freedBytes === 0) return;
    this.timer = setInterval(() => this.checkOnce(), checkMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private checkOnce(): void {
    const elu = performance.eventLoopUtilization(this.lastElu);
    this.lastElu = performance.eventLoopUtilization();
    const pressure = this.scheduler.policy.maxCpuPressure === undefined ? undefined : this.cpuPressure();
    if (this.scheduler.starved(pressure)) this.starvedChecks.inc();
    if (!this.scheduler.quiet(Date.now(), elu.utilization, pressure)) return;
    const s = this.stats();
    if (!this.scheduler.check(Date.now(), s, readAnonRss())) return;
    const freed = this.scheduler.freedSinceTrim(s);
    const rssBefore = process.memoryUsage.rss();
    this.native.trimAsync((err, _released, ms) => {
      const after = this.stats();
      this.scheduler.trimmed(Date.now(), after, readAnonRss());
      if (err) {
        this.log?.({ err: err.message }, 'malloc_trim failed');
        return;
      }
      const gone = Math.max(0, rssBefore - process.memoryUsage.rss());
      this.trims.inc();
      this.trimSeconds.inc(ms / 1000);
      this.released.inc(gone);
      this.maxTrimMs = Math.max(this.maxTrimMs, ms);
      if (ms > 100) this.log?.({ trimMs: Math.round(ms), freedMib: Math.round(freed / 2 ** 20), releasedMib: Math.round(gone / 2 ** 20) }, 'malloc_trim took over 100 ms');
    });
  }
}
