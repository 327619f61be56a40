/**
 * The event-loop watchdog: a blocked main thread is reported once it runs again; past killMs it
 * kills the process and leaves a death note naming the boot (a child process here; the kill of a
 * real node is tested in inprocess-watchdog.test.ts).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { LoopWatchdog, takeDeathNote } from '../../src/node/loop-watchdog.js';

describe('LoopWatchdog', () => {
  it('reports a loop blocked past warnMs, once, with how long it lasted; not a loop that keeps ticking', async () => {
    const blocked: number[] = [];
    const w = new LoopWatchdog({ warnMs: 500, killMs: 0, beatMs: 20, onBlocked: (ms) => blocked.push(ms) });
    try {
      await new Promise((r) => setTimeout(r, 400));
      expect(blocked).toEqual([]);
      const end = Date.now() + 1500;
      while (Date.now() < end) {
        // a lambda spinning on the main thread
      }
      const t0 = Date.now();
      while (blocked.length === 0 && Date.now() - t0 < 3000) await new Promise((r) => setTimeout(r, 20));
      expect(blocked).toHaveLength(1);
      expect(blocked[0]!).toBeGreaterThanOrEqual(1000);
    } finally {
      await w.stop();
    }
  });

  it('past killMs kills the process with SIGKILL and leaves a death note naming the boot; taking the note removes it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kvcascade-watchdog-'));
    try {
      const note = join(dir, 'death.json');
      const mod = pathToFileURL(resolve('dist/src/node/loop-watchdog.js')).href;
      const script = `import { LoopWatchdog } from ${JSON.stringify(mod)};
new LoopWatchdog({ warnMs: 100, killMs: 300, beatMs: 20, deathNote: { path: ${JSON.stringify(note)}, boot: 'boot-1' } });
setTimeout(() => { for (;;) {} }, 100);`;
      const file = join(dir, 'blocker.mjs');
      writeFileSync(file, script);
      const child = spawn(process.execPath, [file], { stdio: 'ignore' });
      let signal: NodeJS.Signals | null | 'still running';
      try {
        // The watchdog ends it within about a second; a child it failed to end is ended here.
        signal = await Promise.race([
          new Promise<NodeJS.Signals | null>((r) => child.once('exit', (_c, sig) => r(sig))),
          new Promise<'still running'>((r) => setTimeout(() => r('still running'), 20_000).unref()),
        ]);
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
      expect(signal).toBe('SIGKILL');
      const n = takeDeathNote(note);
      expect(n).toMatchObject({ cause: 'loop-blocked', boot: 'boot-1' });
      expect(n!.blockedMs).toBeGreaterThan(300);
      expect(takeDeathNote(note)).toBeUndefined(); // taken
      writeFileSync(note, '{not json');
      expect(takeDeathNote(note)).toBeUndefined(); // a torn note is no note
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
