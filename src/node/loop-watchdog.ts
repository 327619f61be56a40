/**
 * The event-loop watchdog: a worker thread that watches the main thread's heartbeat (a shared
 * counter the main thread bumps every `beatMs`). A loop blocked longer than `warnMs` is reported
 * (stderr at once, from the watchdog thread; a log line and counter on the main thread once it
 * runs again). Blocked longer than `killMs` (unless 0), the watchdog kills the process
 * (SIGKILL): a node whose thread is stuck (an in-process lambda in an endless loop) serves
 * nothing and only holds its shards' leadership hostage; dead, the rest of the cluster elects new
 * leaders, and the replicated attempt record keeps the event that was running from running again.
 */
import { readFileSync, rmSync } from 'node:fs';
import { Worker } from 'node:worker_threads';

/** Options of the watchdog. */
export interface LoopWatchdogOptions {
  /** Report a loop blocked this long (ms; default 1000). */
  readonly warnMs?: number;
  /** Kill the process once the loop is blocked this long (ms; default 5000; 0 = never). */
  readonly killMs?: number;
  /** Heartbeat period of the main thread (ms; default 100). */
  readonly beatMs?: number;
  /** Called on the main thread when a block ended (it lasted `blockedMs`). */
  readonly onBlocked?: (blockedMs: number) => void;
  /** Text written to stderr by the watchdog thread before it kills the process (the node, say). */
  readonly label?: string;
  /**
   * A file the watchdog thread writes (synchronously, JSON {@link DeathNote}) just before it
   * kills the process, so the next process of the node knows how its predecessor ended.
   */
  readonly deathNote?: { readonly path: string; readonly boot: string };
}

/** What the watchdog leaves behind when it kills the process (see LoopWatchdogOptions.deathNote). */
export interface DeathNote {
  readonly cause: 'loop-blocked';
  /** The boot id of the process that was killed. */
  readonly boot: string;
  readonly blockedMs: number;
  readonly atMs: number;
}

/**
 * Reads and removes the death note at `path`: the note of the previous process of this node when
 * the watchdog killed it, else undefined (it ended some other way, or cleanly).
 */
export function takeDeathNote(path: string): DeathNote | undefined {
  let raw: string;
  try {
    raw = readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
  rmSync(path, { force: true });
  try {
    const n = JSON.parse(raw) as Partial<DeathNote>;
    return n.cause === 'loop-blocked' && typeof n.boot === 'string' && typeof n.blockedMs === 'number' && typeof n.atMs === 'number' ? (n as DeathNote) : undefined;
  } catch {
    return undefined;
  }
}

/** The watchdog thread's code (plain JS, evaluated in the worker). */
const WATCHDOG_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
const { writeSync, writeFileSync } = require('node:fs');
const { beat, base, warnMs, killMs, label, note } = workerData;
const view = new Int32Array(beat);
let blockedSince = 0;
let warned = false;
let worst = 0;
const line = (o) => { try { writeSync(2, JSON.stringify({ level: 50, time: Date.now(), msg: o.msg, ...o, label }) + '\\n'); } catch {} };
setInterval(() => {
  const last = base + Atomics.load(view, 0);
  const gap = Date.now() - last;
  if (gap > warnMs) {
    if (!warned) {
      warned = true;
      line({ msg: 'event loop blocked', event: 'loop-blocked', blockedMs: gap, killMs });
    }
    worst = Math.max(worst, gap);
    if (killMs > 0 && gap > killMs) {
      line({ msg: 'event loop blocked past the watchdog limit: killing the process', event: 'loop-watchdog-kill', blockedMs: gap, killMs });
      if (note) { try { writeFileSync(note.path, JSON.stringify({ cause: 'loop-blocked', boot: note.boot, blockedMs: gap, atMs: Date.now() })); } catch {} }
      process.kill(process.pid, 'SIGKILL');
    }
  } else if (warned) {
    warned = false;
    parentPort.postMessage({ blockedMs: worst });
    worst = 0;
  }
}, Math.max(10, Math.min(100, Math.floor(warnMs / 4))));
`;

/** A running watchdog; `stop()` ends it. */
export class LoopWatchdog {
  private readonly timer: NodeJS.Timeout;
  private readonly worker: Worker;

  constructor(opts: LoopWatchdogOptions = {}) {
    const warnMs = opts.warnMs ?? 1000;
    const killMs = opts.killMs ?? 5000;
    const beatMs = opts.beatMs ?? 100;
    const sab = new SharedArrayBuffer(4);
    const view = new Int32Array(sab);
    const base = Date.now();
    const beat = () => Atomics.store(view, 0, Date.now() - base);
    beat();
    this.timer = setInterval(beat, beatMs);
    this.timer.unref();
    this.worker = new Worker(WATCHDOG_SOURCE, { eval: true, workerData: { beat: sab, base, warnMs, killMs, label: opts.label ?? '', note: opts.deathNote } });
    this.worker.unref();
    this.worker.on('message', (m: { blockedMs?: number }) => {
      if (typeof m.blockedMs === 'number') opts.onBlocked?.(m.blockedMs);
    });
    this.worker.on('error', () => {});
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.worker.terminate();
  }
}
