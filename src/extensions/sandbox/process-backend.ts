/** Runs one extension incarnation in a child process whose whole memory (RSS, not only the V8 heap) is bounded by a watchdog in the node, with its CPU time measured per invocation and in total. */
import { fork, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { BackendEvents, BackendUsage } from './backend.js';
import { ChannelBackend } from './channel-backend.js';
import type { ToWorker } from './protocol.js';
import { IpcBatcher, unbatch } from './ipc-batch.js';
import { errorMessage } from './transfer.js';
import type { RelayedHostServices } from './types.js';

/** The bounds of an extension's child process. */
export interface ProcessLimits {
  /** V8 heap limit (`--max-old-space-size`), MiB. */
  heapMb: number;
  /** Budget for the whole process's resident memory (heap, Buffers/ArrayBuffers, native), MiB: past it the process is killed. */
  memoryMb: number;
  /** How often the node samples the process's RSS and CPU time, ms. */
  sampleMs: number;
  /**
   * Hard address-space limit (RLIMIT_AS, set with `prlimit --as` where available), MiB; 0 = none.
   * A backstop against growth faster than the sampling: allocations past it fail inside the
   * process. Off by default: V8 reserves ~750 MiB of address space at start (more with
   * WebAssembly, whose memories reserve several GiB each), so it must be far above `memoryMb`.
   */
  addressSpaceMb: number;
}

/** Everything a ProcessBackend needs. */
export interface ProcessBackendOptions {
  name: string;
  moduleUrl: string;
  config: Record<string, unknown>;
  limits: ProcessLimits;
  host: RelayedHostServices;
  /** The child's entry module (process-entry.js). */
  entryUrl: URL;
  events: BackendEvents;
}

/** How long `kill` waits for the child's exit after SIGKILL. */
const KILL_WAIT_MS = 2000;
/** Bytes of the child's stderr kept to recognise a V8 heap exhaustion in its last words. */
const STDERR_TAIL = 4096;
/** Longest line of the child's stdout/stderr forwarded to the log. */
const MAX_LINE = 2000;
/** Linux's USER_HZ (clock ticks per second in /proc/<pid>/stat), 100 on every mainstream architecture. */
const CLOCK_TICKS_PER_S = 100;
const MIB = 1024 * 1024;

/**
 * A wrapper command (util-linux: `setpriv --pdeathsig KILL`, `prlimit --as`), when installed and
 * working with `args` (checked once by running it on `true`: an old setpriv lacks --pdeathsig).
 */
function tool(name: string, args: string[]): string | undefined {
  if (process.platform !== 'linux') return undefined;
  for (const dir of ['/usr/bin', '/bin', '/usr/sbin', '/sbin']) {
    const path = `${dir}/${name}`;
    if (!existsSync(path)) continue;
    try {
      const r = spawnSync(path, [...args, '--', 'true'], { stdio: 'ignore', timeout: 5000 });
      return r.status === 0 ? path : undefined;
    } catch {
      return undefined;
    }
  }
  return undefined;
}
let tools: { setpriv: string | undefined; prlimit: string | undefined } | undefined;

/** The RSS (bytes) and CPU time (µs) of process `pid` read from /proc, or undefined (gone, or not Linux). */
export function readProcUsage(pid: number): { rssBytes: number; cpuUs: number } | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'latin1');
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // Fields after the command name (which may hold spaces and parentheses): state is field 3, utime 14, stime 15.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(rest[11]) + Number(rest[12]);
    return { rssBytes: m ? Number(m[1]) * 1024 : 0, cpuUs: Number.isFinite(ticks) ? (ticks * 1e6) / CLOCK_TICKS_PER_S : 0 };
  } catch {
    return undefined;
  }
}

/** The telling line of a dead process's stderr: the last `...Error: message` line, else the last line that is not Node's version banner. */
function lastWords(tail: string): string | undefined {
  const lines = tail
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.length > 0 && !/^Node\.js v\d/.test(l));
  const line = lines.findLast((l) => /^[\w.]*(Error|Exception)\b.*:/.test(l)) ?? lines.at(-1);
  return line?.slice(0, 300);
}

/**
 * One child process running the extension (`child_process.fork`, IPC channel with 'advanced'
 * serialization, so the protocol's messages, Uint8Array values included, cross as structured
 * clones, the same as with a worker). Bounds:
 * - V8 heap: `--max-old-space-size=heapMb` (the process dies with a heap OOM → `out-of-memory`);
 * - all memory: every `sampleMs` the node reads the child's VmRSS from /proc/<pid>/status (it
 *   does not trust anything the child says) and SIGKILLs it past `memoryMb` → `out-of-memory`
 *   with the RSS seen. Growth between two samples is not seen: the overshoot is at most what the
 *   lambda allocates in `sampleMs` (`addressSpaceMb` adds a hard ceiling);
 * - CPU: the runner's wall-clock timeout SIGKILLs the process; CPU time is measured per
 *   invocation by the child (`process.cpuUsage()` delta, reported with `done`) and in total by
 *   the node (utime + stime from /proc/<pid>/stat), see `usage()`;
 * - crash containment: an exit, a crash or a signal is reported as `process-exited` with the
 *   code or signal; the node's own memory and thread are untouched. The child's
 *   `oom_score_adj` is 1000, so a kernel OOM kill takes it before the node.
 * On Linux the child is started under `setpriv --pdeathsig KILL` when installed, so it dies with
 * the node even if the node is killed with SIGKILL (otherwise it exits when the IPC channel
 * closes, which a lambda stuck in a loop never notices). Off Linux, only the heap bound and the
 * timeout apply (no /proc to sample).
 */
export class ProcessBackend extends ChannelBackend {
  protected readonly what = 'process';
  private child: ChildProcess | undefined;
  private out: IpcBatcher<ToWorker> | undefined;
  private exited: Promise<void> | undefined;
  private sampler: NodeJS.Timeout | undefined;
  private stderrTail = '';
  private rssBytes = 0;
  private peakRssBytes = 0;
  private cpuUs = 0;
  private reportedCpuUs = 0;
  /** Whether /proc could be read at least once. */
  private sampled = false;

  constructor(private readonly o: ProcessBackendOptions) {
    super(o);
  }

  /** The child's pid (undefined before start or when it could not be started). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** CPU time and RSS of the child as the node last sampled them (see `BackendUsage`). */
  usage(): BackendUsage {
    // Where /proc is not readable, the CPU time the child reported for its invocations (an
    // overestimate when invocations overlap: each one's figure includes the others').
    return { cpuUs: this.sampled ? this.cpuUs : this.reportedCpuUs, rssBytes: this.rssBytes, peakRssBytes: this.peakRssBytes };
  }

  protected start(): void {
    const l = this.o.limits;
    tools ??= { setpriv: tool('setpriv', ['--pdeathsig', 'KILL']), prlimit: tool('prlimit', [`--as=${4096 * MIB}`]) };
    const node = [`--max-old-space-size=${Math.max(1, Math.floor(l.heapMb))}`];
    const wrap: string[] = [];
    if (tools.prlimit && l.addressSpaceMb > 0) wrap.push(tools.prlimit, `--as=${Math.floor(l.addressSpaceMb * MIB)}`, '--');
    if (tools.setpriv) wrap.push(tools.setpriv, '--pdeathsig', 'KILL', '--');
    // fork runs `execPath ...execArgv entry`: with a wrapper, execPath is the wrapper and the
    // wrapper execs node (same pid, so /proc/<pid> and kill() reach node itself).
    const [execPath, ...pre] = wrap.length > 0 ? [...wrap, process.execPath] : [process.execPath];
    const child = fork(fileURLToPath(this.o.entryUrl), [], {
      execPath: execPath!,
      execArgv: [...pre, ...node],
      serialization: 'advanced',
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      env: process.env,
    });
    this.child = child;
    // Linux: should memory run out before the watchdog sees it (or for the node's whole cgroup),
    // the kernel's OOM killer picks the extension's process first, not the node (raising one's
    // own child's score needs no privilege).
    if (child.pid !== undefined && process.platform === 'linux') {
      try {
        writeFileSync(`/proc/${child.pid}/oom_score_adj`, '1000');
      } catch {
        // best effort
      }
    }
    this.exited = new Promise((r) => child.once('exit', () => r()));
    child.on('exit', (code, signal) => this.onExit(code, signal));
    child.on('error', (err) => this.onChildError(err));
    child.on('message', (wire: unknown) => {
      for (const msg of unbatch(wire)) this.onMessage(msg);
    });
    // send() serializes at once (throws for a value that cannot be cloned: the batcher then calls
    // the message's onFail); a write failure (the child died) goes to the callback, and the exit
    // is reported through 'exit'.
    this.out = new IpcBatcher<ToWorker>((wire) => {
      if (!child.connected) return;
      child.send(wire, (err) => {
        if (err && !this.dead) this.safeLog('debug', 'could not send to the extension process', { error: errorMessage(err) });
      });
    });
    this.pipeOutput(child.stdout, 'info', false);
    this.pipeOutput(child.stderr, 'warn', true);
    // A forgotten runner must not keep the node alive.
    child.unref();
    child.channel?.unref();
    this.sampler = setInterval(() => this.sample(), Math.max(10, l.sampleMs));
    this.sampler.unref();
  }

  protected post(msg: ToWorker, _transfer: ArrayBuffer[], onFail?: (e: unknown) => void): void {
    this.out?.push(msg, onFail);
  }

  protected override onCpu(cpuUs: number): void {
    this.reportedCpuUs += cpuUs;
  }

  protected override onDead(): void {
    if (this.sampler) clearInterval(this.sampler);
    this.sampler = undefined;
  }

  protected async terminate(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    this.sample(false); // last look at its CPU time
    c.ref(); // whoever awaits this kill keeps the node alive until the exit is seen
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.exited,
      new Promise<void>((r) => {
        timer = setTimeout(r, KILL_WAIT_MS);
        timer.unref();
      }),
    ]);
    clearTimeout(timer);
  }

  /** Reads the child's RSS and CPU time; kills it past its memory budget (when `enforce`). */
  private sample(enforce = true): void {
    const pid = this.child?.pid;
    if (pid === undefined) return;
    const u = readProcUsage(pid);
    if (!u) return;
    this.sampled = true;
    this.rssBytes = u.rssBytes;
    this.peakRssBytes = Math.max(this.peakRssBytes, u.rssBytes);
    this.cpuUs = Math.max(this.cpuUs, u.cpuUs);
    const budget = this.o.limits.memoryMb * MIB;
    if (enforce && !this.dead && u.rssBytes > budget) {
      const mb = (u.rssBytes / MIB).toFixed(0);
      this.safeLog('warn', `extension process over its memory budget: RSS ${mb} MiB > ${this.o.limits.memoryMb} MiB; killing it`, { rssMb: Number(mb), memoryMb: this.o.limits.memoryMb });
      try {
        this.child?.kill('SIGKILL');
      } catch {
        // gone already
      }
      this.died({ kind: 'out-of-memory', message: `the process used ${mb} MiB of memory (RSS), over its budget of ${this.o.limits.memoryMb} MiB, and was killed`, rssBytes: u.rssBytes });
    }
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.sampler) clearInterval(this.sampler);
    this.sampler = undefined;
    if (this.dead) return;
    if (/JavaScript heap out of memory|Reached heap limit/.test(this.stderrTail)) {
      this.died({ kind: 'out-of-memory', message: `the process ran out of V8 heap (limit ${this.o.limits.heapMb} MiB)` });
      return;
    }
    const how = signal ? `signal ${signal}` : `code ${code}`;
    const said = lastWords(this.stderrTail);
    this.died({ kind: 'process-exited', message: `the process exited (${how})${said ? `; stderr: ${said}` : ''}` });
  }

  private onChildError(err: Error): void {
    // Spawn failures (and kill/send failures) land here; a spawn failure is followed by no 'exit'.
    if (this.dead) return;
    if (this.child?.pid === undefined) this.died({ kind: 'process-exited', message: `the process could not be started: ${err.message}` });
    else this.safeLog('warn', 'extension process error', { error: err.message });
  }

  /** Forwards the child's output to the log line by line (`keepTail`: remembers the end, to tell a heap OOM). */
  private pipeOutput(stream: NodeJS.ReadableStream | null, level: 'info' | 'warn', keepTail: boolean): void {
    if (!stream) return;
    let partial = '';
    (stream as { unref?: () => void }).unref?.();
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      if (keepTail) this.stderrTail = (this.stderrTail + chunk).slice(-STDERR_TAIL);
      const lines = (partial + chunk).split('\n');
      partial = (lines.pop() ?? '').slice(0, MAX_LINE);
      for (const line of lines) if (line.length > 0) this.safeLog(level, `[${this.o.name} ${level === 'warn' ? 'stderr' : 'stdout'}] ${line.slice(0, MAX_LINE)}`);
    });
    stream.on('error', () => {});
  }
}
