/**
 * Port leases for tests and benchmarks that start servers on fixed ports: a port from
 * 20000–32767 (below Linux's ephemeral range, so no outgoing connection takes it) is leased by
 * creating a lock file `$TMPDIR/kvcascade-test-ports/<port>` exclusively (O_EXCL), holding the
 * owner's pid, so test files running in parallel never pick the same port (binding port 0 and
 * releasing it, as before, let two files race for one port). A lease ends with
 * {@link releasePorts}, at the process's exit, or when another process finds its owner dead.
 */
import { closeSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The leased range (inclusive). */
export const PORT_RANGE = { first: 20_000, last: 32_767 } as const;

/** The folder of the lock files (`$TMPDIR/kvcascade-test-ports`). */
export function portLockDir(): string {
  return join(process.env['TMPDIR'] || tmpdir(), 'kvcascade-test-ports');
}

/** Ports this process holds (released at exit). */
const held = new Set<number>();
let exitHookInstalled = false;

function lockPath(port: number): string {
  return join(portLockDir(), String(port));
}

/** Whether a process with this pid exists (EPERM: it does, owned by another user). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Creates the lock file of `port`; reclaims it once if its owner is dead. True when this process holds it now. */
function tryLock(port: number): boolean {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(lockPath(port), 'wx', 0o644);
      try {
        writeSync(fd, String(process.pid));
      } finally {
        closeSync(fd);
      }
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let owner: number;
    try {
      owner = Number(readFileSync(lockPath(port), 'utf8'));
    } catch {
      continue; // released meanwhile: try again
    }
    // An empty file is a lock being written right now; a live owner keeps its port.
    if (!Number.isSafeInteger(owner) || owner <= 0 || alive(owner)) return false;
    try {
      unlinkSync(lockPath(port)); // the owner died without releasing: reclaim
    } catch {
      // someone else reclaimed it first
    }
  }
  return false;
}

/** Whether `port` can be bound on `host` now (something outside the lease scheme may use it). */
function bindable(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
}

/**
 * Leases one given port if no live process holds its lock and it is free on `host` now (a lock
 * whose owner died is reclaimed). True when this process holds it now; false when it is taken.
 */
export async function leasePort(port: number, host = '127.0.0.1'): Promise<boolean> {
  if (!Number.isSafeInteger(port) || port < PORT_RANGE.first || port > PORT_RANGE.last) {
    throw new Error(`leasePort: ${port} is outside ${PORT_RANGE.first}-${PORT_RANGE.last}`);
  }
  prepare();
  if (held.has(port) || !tryLock(port)) return false;
  held.add(port);
  if (await bindable(port, host)) return true;
  releasePorts([port]);
  return false;
}

/** Creates the lock folder and, once, the exit hook that releases this process's leases. */
function prepare(): void {
  mkdirSync(portLockDir(), { recursive: true });
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => releasePorts([...held]));
  }
}

/**
 * Leases `n` distinct ports that are free on `host` now, from a random start in
 * {@link PORT_RANGE}. Throws when the range has no `n` free ports.
 */
export async function leasePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`leasePorts: n must be a non-negative integer, got ${n}`);
  prepare();
  const size = PORT_RANGE.last - PORT_RANGE.first + 1;
  const start = Math.floor(Math.random() * size);
  const out: number[] = [];
  for (let i = 0; i < size && out.length < n; i++) {
    const port = PORT_RANGE.first + ((start + i) % size);
    if (await leasePort(port, host)) out.push(port);
  }
  if (out.length < n) {
    releasePorts(out);
    throw new Error(`leasePorts: fewer than ${n} free ports in ${PORT_RANGE.first}-${PORT_RANGE.last} (locks in ${portLockDir()})`);
  }
  return out;
}

/** Ends the leases of `ports` held by this process (others are left alone). */
export function releasePorts(ports: Iterable<number>): void {
  for (const port of ports) {
    if (!held.delete(port)) continue;
    try {
      if (Number(readFileSync(lockPath(port), 'utf8')) === process.pid) unlinkSync(lockPath(port));
    } catch {
      // already gone
    }
  }
}
