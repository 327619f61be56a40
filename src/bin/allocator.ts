/** Which malloc a kvd process runs on: the environment kvd's launchers give it (glibc by default, jemalloc on request) and what a running process finds it has. */
import { existsSync, readFileSync } from 'node:fs';

/**
 * Where Debian/Ubuntu (`libjemalloc2`), Fedora/RHEL (`jemalloc`), Alpine and a source build put
 * jemalloc's shared library; the first that exists is used.
 */
export const JEMALLOC_LIBRARY_PATHS: readonly string[] = [
  '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2',
  '/usr/lib/aarch64-linux-gnu/libjemalloc.so.2',
  '/usr/lib64/libjemalloc.so.2',
  '/usr/lib/libjemalloc.so.2',
  '/usr/local/lib/libjemalloc.so.2',
];

/**
 * jemalloc's settings when the launcher sets none (`MALLOC_CONF`): a background thread returns
 * freed pages to the OS on its own schedule (the decay), never on the event loop. This is the
 * setting measured in docs/memory.md.
 */
export const DEFAULT_MALLOC_CONF = 'background_thread:true';

/** What {@link kvdAllocatorEnv} decided. */
export interface AllocatorChoice {
  /** The environment to start kvd with. */
  readonly env: NodeJS.ProcessEnv;
  /** `jemalloc` when the environment preloads it, `glibc` otherwise (the C library's own malloc). */
  readonly allocator: 'jemalloc' | 'glibc';
  /** The preloaded library, when jemalloc. */
  readonly library?: string;
  /** One line for a launcher's output: what was chosen and why. */
  readonly reason: string;
}

/** A `KVD_ALLOCATOR` value that cannot be honoured (names jemalloc where it is not installed, or a missing file). */
export class AllocatorChoiceError extends Error {
  override readonly name = 'AllocatorChoiceError';
}

/**
 * The environment a launcher (npm start's cluster, the bench, the tests) starts kvd with.
 *
 * glibc's malloc keeps the high-water mark of its main arena, so a node's RSS follows what it has
 * written and freed, not what it holds (docs/memory.md "RSS against data size"); jemalloc gives
 * freed memory back on a background thread, but its 1 GiB catch-up was slower (63–69 s against
 * 46–55 s; CPU per operation the same within the noise: docs/memory.md "jemalloc or glibc, and the
 * heap after an install (session 32)"), so glibc stays the default. `KVD_ALLOCATOR` in `base` decides:
 * - unset or `glibc`: glibc (nothing preloaded by us);
 * - `auto`: jemalloc if one of {@link JEMALLOC_LIBRARY_PATHS} exists, else glibc;
 * - `jemalloc`: jemalloc, or {@link AllocatorChoiceError} if it is not installed;
 * - a path to a shared library: that library (it must exist).
 * An `LD_PRELOAD` already naming jemalloc is kept as it is. Otherwise the library goes first in
 * `LD_PRELOAD`, before whatever the caller preloads, and `MALLOC_CONF` defaults to
 * {@link DEFAULT_MALLOC_CONF}. `exists` is for tests.
 */
export function kvdAllocatorEnv(base: NodeJS.ProcessEnv = process.env, exists: (path: string) => boolean = existsSync): AllocatorChoice {
  const preload = base.LD_PRELOAD ?? '';
  if (/jemalloc/.test(preload)) {
    return { env: { ...base }, allocator: 'jemalloc', library: preload, reason: `jemalloc (LD_PRELOAD already names it: ${preload})` };
  }
  const wanted = (base.KVD_ALLOCATOR ?? '').trim();
  if (wanted === 'glibc' || wanted === '') {
    return { env: { ...base }, allocator: 'glibc', reason: `glibc malloc (${wanted === '' ? 'the default; KVD_ALLOCATOR=jemalloc for jemalloc' : 'KVD_ALLOCATOR=glibc'})` };
  }
  let library: string | undefined;
  if (wanted === 'auto' || wanted === 'jemalloc') {
    library = JEMALLOC_LIBRARY_PATHS.find((p) => exists(p));
    if (!library) {
      if (wanted === 'jemalloc') {
        throw new AllocatorChoiceError(
          `KVD_ALLOCATOR=jemalloc but no jemalloc library was found (looked in ${JEMALLOC_LIBRARY_PATHS.join(', ')}); install it (Debian/Ubuntu: apt-get install libjemalloc2) or set KVD_ALLOCATOR to its path`,
        );
      }
      return {
        env: { ...base },
        allocator: 'glibc',
        reason: 'glibc malloc (KVD_ALLOCATOR=auto: jemalloc is not installed; Debian/Ubuntu: apt-get install libjemalloc2)',
      };
    }
  } else if (wanted.includes('/')) {
    if (!exists(wanted)) throw new AllocatorChoiceError(`KVD_ALLOCATOR=${wanted}: no such file`);
    library = wanted;
  } else {
    throw new AllocatorChoiceError(`KVD_ALLOCATOR must be auto, glibc, jemalloc or the path of a shared library (got "${wanted}")`);
  }
  const env: NodeJS.ProcessEnv = { ...base, LD_PRELOAD: preload ? `${library} ${preload}` : library };
  if (env.MALLOC_CONF === undefined) env.MALLOC_CONF = DEFAULT_MALLOC_CONF;
  return { env, allocator: 'jemalloc', library, reason: `jemalloc (${library}, MALLOC_CONF=${env.MALLOC_CONF})` };
}

/**
 * The allocator this process runs on, from its memory map: `jemalloc` when a jemalloc library is
 * mapped, `glibc` when the C library is glibc and none is, `unknown` where /proc is not readable
 * (not Linux) or the C library is another (musl). `maps` is for tests.
 */
export function runningAllocator(maps?: string): 'jemalloc' | 'glibc' | 'unknown' {
  let text = maps;
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/maps', 'utf8');
    } catch {
      return 'unknown';
    }
  }
  if (/libjemalloc/.test(text)) return 'jemalloc';
  if (/\/libc(\.so\.6|-[0-9.]+\.so)/.test(text)) return 'glibc';
  return 'unknown';
}
