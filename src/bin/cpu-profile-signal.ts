/** Diagnostics for benchmarks: with KVCASCADE_CPU_PROFILE_DIR set, SIGUSR2 starts a V8 CPU profile of this process and the next SIGUSR2 saves it there, so a profile covers exactly a load window. */
import { writeFile } from 'node:fs/promises';
import { Session } from 'node:inspector/promises';
import { join } from 'node:path';

/** The environment variable naming the directory profiles are saved in. */
export const CPU_PROFILE_DIR_ENV = 'KVCASCADE_CPU_PROFILE_DIR';

/**
 * When `KVCASCADE_CPU_PROFILE_DIR` is set, installs the SIGUSR2 toggle: the first signal starts
 * profiling, the next writes `<prefix>-<pid>-<n>.cpuprofile` into the directory, and so on.
 */
export function installCpuProfileSignal(prefix: string, log: (msg: string) => void): void {
  const dir = process.env[CPU_PROFILE_DIR_ENV];
  if (!dir) return;
  let session: Session | undefined;
  let n = 0;
  let busy: Promise<void> = Promise.resolve();
  process.on('SIGUSR2', () => {
    busy = busy.then(async () => {
      if (session === undefined) {
        const s = new Session();
        s.connect();
        await s.post('Profiler.enable');
        await s.post('Profiler.start');
        session = s;
        log('cpu profile started');
        return;
      }
      const s = session;
      session = undefined;
      const { profile } = await s.post('Profiler.stop');
      s.disconnect();
      const file = join(dir, `${prefix}-${process.pid}-${++n}.cpuprofile`);
      await writeFile(file, JSON.stringify(profile));
      log(`cpu profile saved to ${file}`);
    }).catch((e: unknown) => log(`cpu profile failed: ${String(e)}`));
  });
}
