/** The debug write tracer (src/write-trace.ts): off without a directory; on, one parseable line per step in this process's file. */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createWriteTracer, traceWrite } from '../../src/write-trace.js';

describe('write tracer', () => {
  it('is off unless a directory is given (and off in the test run)', () => {
    expect(createWriteTracer(undefined)).toBeUndefined();
    expect(createWriteTracer('')).toBeUndefined();
    expect(traceWrite).toBeUndefined();
  });

  it('writes each step with a wall-clock µs stamp, its group and index, in order', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kvcascade-trace-test-'));
    try {
      const trace = createWriteTracer(dir)!;
      const before = Date.now() * 1000;
      trace('propose', 7, 41);
      trace('applied', 7, 41);
      trace.flush();
      trace.flush(); // nothing buffered: writes nothing more
      const lines = readFileSync(join(dir, `trace-${process.pid}.txt`), 'utf8').trim().split('\n');
      expect(lines.map((l) => l.split(' ').slice(1))).toEqual([
        ['propose', '7', '41'],
        ['applied', '7', '41'],
      ]);
      const stamps = lines.map((l) => Number(l.split(' ')[0]));
      expect(stamps[0]).toBeGreaterThanOrEqual(before - 2_000);
      expect(stamps[1]).toBeGreaterThanOrEqual(stamps[0]!);
      expect(stamps[1]).toBeLessThanOrEqual(Date.now() * 1000 + 2_000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
