/**
 * Port leases through lock files (ports.ts): concurrent leases never share a port, a live
 * owner's lock is respected, a dead owner's lock is reclaimed, and release removes the lock.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { leasePort, leasePorts, portLockDir, PORT_RANGE, releasePorts } from './ports.js';

let savedTmp: string | undefined;
let dir: string;

beforeEach(() => {
  savedTmp = process.env['TMPDIR'];
  dir = mkdtempSync(join(tmpdir(), 'kvcascade-ports-test-'));
  process.env['TMPDIR'] = dir; // a private lock folder: no other test's leases interfere
});

afterEach(() => {
  if (savedTmp === undefined) delete process.env['TMPDIR'];
  else process.env['TMPDIR'] = savedTmp;
  rmSync(dir, { recursive: true, force: true });
});

/** A pid that no process has now: one of a child that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(r.stdout);
}

describe('port leases', () => {
  it('gives concurrent callers disjoint ports in the range, each with a lock file naming this process, until released', async () => {
    const [a, b] = await Promise.all([leasePorts(30), leasePorts(30)]);
    const all = [...a!, ...b!];
    expect(new Set(all).size).toBe(60);
    expect(all.every((p) => p >= PORT_RANGE.first && p <= PORT_RANGE.last)).toBe(true);
    expect(portLockDir()).toBe(join(dir, 'kvcascade-test-ports'));
    for (const p of all) expect(readFileSync(join(portLockDir(), String(p)), 'utf8')).toBe(String(process.pid));
    expect(await leasePort(a![0]!)).toBe(false); // held by this process already
    releasePorts(all);
    expect(all.some((p) => existsSync(join(portLockDir(), String(p))))).toBe(false);
    expect(await leasePort(a![0]!)).toBe(true);
    releasePorts([a![0]!]);
  });

  it('respects a live owner\'s lock and reclaims a dead owner\'s', async () => {
    mkdirSync(portLockDir(), { recursive: true });
    const [live, dead] = [PORT_RANGE.first + 11, PORT_RANGE.first + 12];
    writeFileSync(join(portLockDir(), String(live)), String(process.ppid));
    writeFileSync(join(portLockDir(), String(dead)), String(deadPid()));
    expect(await leasePort(live)).toBe(false);
    expect(readFileSync(join(portLockDir(), String(live)), 'utf8')).toBe(String(process.ppid));
    expect(await leasePort(dead)).toBe(true);
    expect(readFileSync(join(portLockDir(), String(dead)), 'utf8')).toBe(String(process.pid));
    releasePorts([live, dead]); // only the one this process holds goes
    expect(existsSync(join(portLockDir(), String(live)))).toBe(true);
    expect(existsSync(join(portLockDir(), String(dead)))).toBe(false);
  });

  it('refuses a port outside the range and a bad count', async () => {
    await expect(leasePort(80)).rejects.toThrow(/outside 20000-32767/);
    await expect(leasePorts(-1)).rejects.toThrow(/non-negative integer/);
  });
});
