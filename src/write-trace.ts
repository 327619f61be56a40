/**
 * Debug-only step timestamps of writes, for tracing one write end to end across the processes of
 * a cluster on one machine (bench/trace-writes.ts reads them). Off unless the environment sets
 * `KVCASCADE_TRACE_WRITES=<dir>`: then each process appends lines `<wall-clock µs> <step> <group>
 * <index>` to `<dir>/trace-<pid>.txt` (buffered, written every 200 ms and at exit). Off, the
 * hook is `undefined`, so a call site costs one check: `traceWrite?.('step', group, index)`.
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

/** The environment variable that turns tracing on (its value: the directory of the trace files). */
export const TRACE_WRITES_ENV = 'KVCASCADE_TRACE_WRITES';

/** Records that step `step` of the write at `index` of `group` happened now (0 where not known). */
export interface WriteTracer {
  (step: string, group: number, index: number): void;
  /** Appends the buffered lines to the trace file now. */
  flush(): void;
}

/**
 * A tracer writing to `<dir>/trace-<pid>.txt`, flushed every 200 ms (an unref'd timer) and at
 * process exit; undefined when `dir` is undefined or empty (tracing off).
 */
export function createWriteTracer(dir: string | undefined): WriteTracer | undefined {
  if (dir === undefined || dir === '') return undefined;
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `trace-${process.pid}.txt`);
  let lines: string[] = [];
  const origin = performance.timeOrigin;
  const trace = ((step: string, group: number, index: number): void => {
    lines.push(`${Math.round((origin + performance.now()) * 1000)} ${step} ${group} ${index}`);
  }) as WriteTracer;
  trace.flush = () => {
    if (lines.length === 0) return;
    const out = lines;
    lines = [];
    appendFileSync(file, out.join('\n') + '\n');
  };
  setInterval(trace.flush, 200).unref();
  process.on('exit', trace.flush);
  return trace;
}

/** This process's tracer: set only when {@link TRACE_WRITES_ENV} names a directory. */
export const traceWrite: WriteTracer | undefined = createWriteTracer(process.env[TRACE_WRITES_ENV]);
