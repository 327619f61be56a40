/** Tests of kvctl run in-process against a loopback server over the in-memory backend: each command's table and --json output, exit codes and error lines. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { EXIT, formatTable, main, type KvctlIo } from '../../src/cli/kvctl.js';
import type { RunningKvServer } from '../../src/server/kv-service.js';
import { MemoryBackend } from '../server/memory-backend.js';
import { serve, utf8 } from '../server/harness.js';

const T0 = 1_700_000_000_000;
const ISO0 = new Date(T0).toISOString();

/** Captured output that can be awaited for a pattern. */
class Captured {
  text = '';
  private waiters: Array<{ re: RegExp; resolve: () => void }> = [];
  write(s: string): boolean {
    this.text += s;
    this.waiters = this.waiters.filter((w) => (w.re.test(this.text) ? (w.resolve(), false) : true));
    return true;
  }
  waitFor(re: RegExp): Promise<void> {
    return re.test(this.text) ? Promise.resolve() : new Promise((resolve) => this.waiters.push({ re, resolve }));
  }
}

let backend: MemoryBackend;
let srv: RunningKvServer;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kvctl-test-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
beforeEach(async () => {
  backend = new MemoryBackend({ now: () => T0 });
  srv = await serve(backend);
  return () => srv.close(0);
});

async function kvctl(args: string[], io: Partial<KvctlIo> = {}) {
  const stdout = new Captured();
  const stderr = new Captured();
  const code = await main(['--endpoints', srv.address, ...args], { stdout, stderr, env: {}, ...io });
  return { code, out: stdout.text, err: stderr.text };
}

/** kvctl against other endpoints than the test server. */
async function runAt(endpoints: string, args: string[]) {
  const stdout = new Captured();
  const stderr = new Captured();
  const code = await main(['--endpoints', endpoints, ...args], { stdout, stderr, env: {} });
  return { code, out: stdout.text, err: stderr.text };
}

describe('formatTable', () => {
  it('aligns columns and trims trailing space', () => {
    expect(formatTable(['A', 'LONGER', 'C'], [['xxxx', '1', ''], ['y', '22', 'z']])).toBe('A     LONGER  C\nxxxx  1\ny     22      z\n');
  });
});

describe('put and get', () => {
  it('print tables by default', async () => {
    expect(await kvctl(['put', 'greeting', 'hello\nworld'])).toEqual({
      code: EXIT.OK,
      out: `KEY       VERSION  REVISION  TIMESTAMP\ngreeting  1        1         ${ISO0}\n`,
      err: '',
    });
    expect(await kvctl(['get', 'greeting'])).toEqual({
      code: EXIT.OK,
      out: `KEY       VERSION  TIMESTAMP                 VALUE\ngreeting  1        ${ISO0}  hello\\nworld\n`,
      err: '',
    });
  });

  it('print one JSON document with --json, values as UTF-8 or flagged base64', async () => {
    const file = join(dir, 'binary');
    writeFileSync(file, Buffer.from([0xff, 0x00, 0x41]));
    const put = await kvctl(['--json', 'put', 'bin', `@${file}`]);
    expect(put.code).toBe(EXIT.OK);
    expect(JSON.parse(put.out)).toEqual({ key: 'bin', succeeded: true, version: 1, revision: 1, timestampMs: T0 });
    const get = await kvctl(['get', 'bin', '--json']);
    expect(JSON.parse(get.out)).toEqual({ key: 'bin', found: true, value: '/wBB', valueEncoding: 'base64', version: 1, timestampMs: T0, revision: 1 });
    expect((await kvctl(['get', 'bin'])).out).toContain('base64:/wBB');
    await kvctl(['put', 'text', 'héllo']);
    expect(JSON.parse((await kvctl(['--json', 'get', 'text'])).out)).toMatchObject({ value: 'héllo', valueEncoding: 'utf8' });
  });

  it('reads the value from stdin with -', async () => {
    async function* stdin() {
      yield 'from ';
      yield utf8('stdin');
    }
    expect((await kvctl(['put', 'k', '-'], { stdin: stdin() })).code).toBe(EXIT.OK);
    expect(new TextDecoder().decode(backend.sm.get('k')!.value)).toBe('from stdin');
  });

  it('reads as of a version or a time, serializably on request', async () => {
    await kvctl(['put', 'k', 'v1']);
    await kvctl(['put', 'k', 'v2']);
    expect((await kvctl(['get', 'k', '--version', '1'])).out).toMatch(/k\s+1\s+\S+\s+v1\n$/);
    expect((await kvctl(['get', 'k', '--time', ISO0])).out).toMatch(/k\s+2\s+\S+\s+v2\n$/);
    expect((await kvctl(['get', 'k', '--time', String(T0 - 1)])).code).toBe(EXIT.NOT_FOUND);
    expect((await kvctl(['get', 'k', '--serializable'])).out).toMatch(/v2\n$/);
  });

  it('report a missing key with its own exit code (3), not the error code', async () => {
    expect(await kvctl(['get', 'nope'])).toEqual({ code: EXIT.NOT_FOUND, out: '', err: 'kvctl: NOT_FOUND: key "nope" not found\n' });
    expect(EXIT.NOT_FOUND).not.toBe(EXIT.ERROR);
    const j = await kvctl(['--json', 'get', 'nope']);
    expect(j.code).toBe(EXIT.NOT_FOUND);
    expect(JSON.parse(j.out)).toEqual({ key: 'nope', found: false, revision: 0 });
  });
});

describe('cas and del', () => {
  it('cas writes when the version matches and reports a conflict with exit code 2', async () => {
    expect(await kvctl(['cas', 'k', '0', 'first'])).toEqual({
      code: EXIT.OK,
      out: 'KEY  RESULT  VERSION  REVISION\nk    ok      1        1\n',
      err: '',
    });
    expect(await kvctl(['cas', 'k', '0', 'second'])).toEqual({
      code: EXIT.CONFLICT,
      out: 'KEY  RESULT    EXPECTED  CURRENT_VERSION  CURRENT_VALUE\nk    conflict  0         1                first\n',
      err: '',
    });
    const j = await kvctl(['--json', 'cas', 'k', '7', 'third']);
    expect(j.code).toBe(EXIT.CONFLICT);
    expect(JSON.parse(j.out)).toEqual({
      key: 'k',
      succeeded: false,
      expectedVersion: 7,
      currentVersion: 1,
      currentValue: 'first',
      currentValueEncoding: 'utf8',
      revision: 1,
    });
    expect((await kvctl(['cas', 'k', '1', 'second'])).code).toBe(EXIT.OK);
  });

  it('del deletes, reports absent keys and conditional conflicts', async () => {
    await kvctl(['put', 'k', 'v']);
    expect(await kvctl(['del', 'k', '--expected-version', '5'])).toEqual({
      code: EXIT.CONFLICT,
      out: 'KEY  RESULT    EXPECTED  CURRENT_VERSION\nk    conflict  5         1\n',
      err: '',
    });
    expect(await kvctl(['del', 'k'])).toEqual({ code: EXIT.OK, out: 'KEY  RESULT   REVISION\nk    deleted  2\n', err: '' });
    expect(await kvctl(['del', 'k'])).toEqual({ code: EXIT.OK, out: 'KEY  RESULT  REVISION\nk    absent  2\n', err: '' });
    expect(JSON.parse((await kvctl(['--json', 'del', 'k'])).out)).toEqual({ key: 'k', succeeded: true, deleted: false, revision: 2 });
  });
});

describe('txn', () => {
  it('applies every write when the compares hold, nothing (exit code 2) when one fails, and refuses bad arguments', async () => {
    const ok = await kvctl(['txn', '--compare', '/a=0', '--put', '/a=1', '--put', '/b=x=y']);
    expect(ok.code).toBe(EXIT.OK);
    expect(ok.out).toMatch(/^RESULT\s+REVISION\s+SHARD\s+FAILED_COMPARES\nok\s+1\s+1\s+-\n$/);
    expect(JSON.parse((await kvctl(['--json', 'get', '/b'])).out)).toMatchObject({ key: '/b', value: 'x=y', version: 1 });
    const no = await kvctl(['--json', 'txn', '--compare', '/a=0', '--delete', '/b']);
    expect(no.code).toBe(EXIT.CONFLICT);
    expect(JSON.parse(no.out)).toEqual({ succeeded: false, revision: 1, shard: 1, failedCompares: [0] });
    expect((await kvctl(['get', '/b'])).code).toBe(EXIT.OK);
    const bad = await kvctl(['txn', '--put', 'novalue']);
    expect(bad.code).toBe(EXIT.USAGE);
    expect(bad.err).toMatch(/not key=value/);
    expect((await kvctl(['txn'])).code).toBe(EXIT.USAGE);
  });
});

describe('trigger', () => {
  it('fires without storing, printing a table or one JSON document', async () => {
    await kvctl(['put', 'k', 'stored']);
    expect(await kvctl(['trigger', 'k', 'fired'])).toEqual({
      code: EXIT.OK,
      out: `KEY  REVISION  TIMESTAMP\nk    2         ${ISO0}\n`,
      err: '',
    });
    const j = await kvctl(['--json', 'trigger', 'absent', 'x']);
    expect(j.code).toBe(EXIT.OK);
    expect(JSON.parse(j.out)).toEqual({ key: 'absent', revision: 3, timestampMs: T0 });
    expect(backend.calls.trigger).toBe(2);
    expect(new TextDecoder().decode(backend.sm.get('k')!.value)).toBe('stored');
    expect(backend.sm.get('k')!.version).toBe(1);
    expect(backend.sm.get('absent')).toBeUndefined();
    expect(backend.sm.eventsSince(2, '', 10).events.map((e) => `${e.type} ${e.key}=${new TextDecoder().decode(e.value)}`)).toEqual([
      'trigger k=fired',
      'trigger absent=x',
    ]);
  });

  it('reads the value from a file with @file or from stdin with -', async () => {
    const file = join(dir, 'trigger-value');
    writeFileSync(file, Buffer.from([0xff, 0x00, 0x41]));
    expect((await kvctl(['trigger', 'f', `@${file}`])).code).toBe(EXIT.OK);
    async function* stdin() {
      yield 'from ';
      yield utf8('stdin');
    }
    expect((await kvctl(['trigger', 's', '-'], { stdin: stdin() })).code).toBe(EXIT.OK);
    const values = backend.sm.eventsSince(1, '', 10).events.map((e) => [e.type, e.key, Buffer.from(e.value!).toString('hex')]);
    expect(values).toEqual([
      ['trigger', 'f', 'ff0041'],
      ['trigger', 's', Buffer.from('from stdin').toString('hex')],
    ]);
    const missing = await kvctl(['trigger', 'k', `@${join(dir, 'missing')}`]);
    expect(missing.code).toBe(EXIT.ERROR);
    expect(missing.err).toMatch(/^kvctl: ENOENT: cannot read .*missing/);
    expect(backend.calls.trigger).toBe(2);
  });

  it('reports invalid keys and usage errors', async () => {
    expect(await kvctl(['trigger', '', 'v'])).toEqual({ code: EXIT.ERROR, out: '', err: 'kvctl: INVALID_ARGUMENT: INVALID_KEY: key must not be empty\n' });
    const usage = await kvctl(['trigger', 'k']);
    expect(usage.code).toBe(EXIT.USAGE);
    expect(usage.err).toMatch(/^kvctl: USAGE: [^\n]+\n$/);
    expect(backend.calls.trigger).toBe(0);
  });
});

describe('ls', () => {
  beforeEach(async () => {
    for (const k of ['app/a', 'app/b', 'app/c', 'other']) backend.apply({ type: 'put', key: k, value: utf8(k.toUpperCase()) });
  });

  it('lists a prefix as a table, one page unless --all', async () => {
    expect(await kvctl(['ls', 'app/'])).toEqual({
      code: EXIT.OK,
      out: [
        'KEY    VERSION  TIMESTAMP                 VALUE',
        `app/a  1        ${ISO0}  APP/A`,
        `app/b  2        ${ISO0}  APP/B`,
        `app/c  3        ${ISO0}  APP/C`,
        '',
      ].join('\n'),
      err: '',
    });
    const page = await kvctl(['ls', 'app/', '--limit', '2', '--keys-only']);
    expect(page.out).toBe(`KEY    VERSION  TIMESTAMP\napp/a  1        ${ISO0}\napp/b  2        ${ISO0}\n`);
    const token = /--page-token (\S+)/.exec(page.err)![1]!;
    expect((await kvctl(['ls', 'app/', '--page-token', token, '--keys-only'])).out).toMatch(/^KEY.*\napp\/c /);
    const all = await kvctl(['ls', '--all', '--limit', '1', '--keys-only']);
    expect(all.out.trim().split('\n').slice(1).map((l) => l.split(/\s+/)[0])).toEqual(['app/a', 'app/b', 'app/c', 'other']);
    expect(all.err).toBe('');
  });

  it('--shard lists one shard (its group id), with its revision; 0 is a usage error', async () => {
    const one = await kvctl(['--json', 'ls', 'app/', '--shard', '1', '--keys-only']);
    expect(one.code).toBe(EXIT.OK);
    const doc = JSON.parse(one.out) as { items: { key: string }[]; revision: number };
    expect(doc.items.map((i) => i.key)).toEqual(['app/a', 'app/b', 'app/c']);
    expect(doc.revision).toBeGreaterThan(0);
    expect((await kvctl(['ls', 'app/', '--shard', '0'])).code).toBe(EXIT.USAGE);
  });

  it('prints one JSON document with --json', async () => {
    const j = await kvctl(['--json', 'ls', 'app/', '--limit', '2']);
    const doc = JSON.parse(j.out) as { items: unknown[]; nextPageToken: string; revision: number };
    expect(doc.items).toEqual([
      { key: 'app/a', value: 'APP/A', valueEncoding: 'utf8', version: 1, timestampMs: T0 },
      { key: 'app/b', value: 'APP/B', valueEncoding: 'utf8', version: 2, timestampMs: T0 },
    ]);
    expect(doc.nextPageToken).toBeTruthy();
    expect(doc.revision).toBe(4);
    const keys = JSON.parse((await kvctl(['--json', 'ls', 'app/', '--all', '--keys-only'])).out) as { items: object[] };
    expect(keys.items).toEqual([
      { key: 'app/a', version: 1, timestampMs: T0 },
      { key: 'app/b', version: 2, timestampMs: T0 },
      { key: 'app/c', version: 3, timestampMs: T0 },
    ]);
  });
});

describe('watch', () => {
  it('prints events until interrupted', async () => {
    backend.apply({ type: 'put', key: 'w/1', value: utf8('one') });
    const ac = new AbortController();
    const stdout = new Captured();
    const stderr = new Captured();
    const done = main(['--endpoints', srv.address, 'watch', 'w/', '--from-revision', '1'], { stdout, stderr, env: {}, signal: ac.signal });
    await stdout.waitFor(/w\/1/);
    backend.apply({ type: 'put', key: 'x', value: utf8('ignored') });
    backend.apply({ type: 'delete', key: 'w/1' });
    await stdout.waitFor(/DELETE/);
    ac.abort();
    expect(await done).toBe(EXIT.OK);
    expect(stdout.text).toBe(
      'REVISION    SHARD  TYPE     KEY  VALUE\n' + //
        '1           1      PUT      w/1  one\n' +
        '3           1      DELETE   w/1\n',
    );
    expect(stderr.text).toBe('');
  });

  it('prints trigger events with their value', async () => {
    const ac = new AbortController();
    const stdout = new Captured();
    const done = main(['--endpoints', srv.address, 'watch', 't/', '--from-revision', '1'], { stdout, stderr: new Captured(), env: {}, signal: ac.signal });
    backend.apply({ type: 'triggerPut', key: 't/1', value: utf8('fired') });
    backend.apply({ type: 'put', key: 't/1', value: utf8('stored') });
    await stdout.waitFor(/stored/);
    ac.abort();
    expect(await done).toBe(EXIT.OK);
    expect(stdout.text).toBe('REVISION    SHARD  TYPE     KEY  VALUE\n1           1      TRIGGER  t/1  fired\n2           1      PUT      t/1  stored\n');

    const ac2 = new AbortController();
    const json = new Captured();
    const done2 = main(['--endpoints', srv.address, '--json', 'watch', 't/', '--from-revision', '1'], { stdout: json, stderr: new Captured(), env: {}, signal: ac2.signal });
    await json.waitFor(/stored/);
    ac2.abort();
    expect(await done2).toBe(EXIT.OK);
    expect(json.text.trim().split('\n').map((l) => JSON.parse(l) as unknown)).toEqual([
      { type: 'trigger', key: 't/1', value: 'fired', valueEncoding: 'utf8', revision: 1, shard: 1, timestampMs: T0 },
      { type: 'put', key: 't/1', value: 'stored', valueEncoding: 'utf8', revision: 2, shard: 1, timestampMs: T0 },
    ]);
  });

  it('prints one JSON document per event with --json', async () => {
    const ac = new AbortController();
    const stdout = new Captured();
    const done = main(['--endpoints', srv.address, '--json', 'watch', '', '--from-revision', '1'], { stdout, stderr: new Captured(), env: {}, signal: ac.signal });
    backend.apply({ type: 'put', key: 'a', value: Uint8Array.of(0xff) });
    await stdout.waitFor(/\n/);
    ac.abort();
    expect(await done).toBe(EXIT.OK);
    expect(JSON.parse(stdout.text)).toEqual({ type: 'put', key: 'a', value: '/w==', valueEncoding: 'base64', revision: 1, shard: 1, timestampMs: T0 });
  });

  it('reports a compacted start revision', async () => {
    for (let i = 0; i < 3; i++) backend.apply({ type: 'put', key: 'k', value: utf8('v') });
    backend.compact(3);
    const r = await kvctl(['watch', '', '--from-revision', '1']);
    expect(r.code).toBe(EXIT.ERROR);
    expect(r.err).toMatch(/^kvctl: OUT_OF_RANGE: .*oldest available revision 3\)\n$/);
    // With --json the error is one JSON object on stderr.
    const j = await kvctl(['--json', 'watch', '', '--from-revision', '1']);
    expect(j.code).toBe(EXIT.ERROR);
    expect(JSON.parse(j.err)).toEqual({ error: { code: 'OUT_OF_RANGE', message: expect.any(String), compactRevision: 3 } });
  });
});

describe('status', () => {
  it('prints the cluster: nodes, then every group with leader, term, voters, learners and lag', async () => {
    backend.apply({ type: 'put', key: 'k', value: utf8('v') });
    const r = await kvctl(['status']);
    expect(r.err).toBe('');
    expect(r.code).toBe(EXIT.OK);
    expect(r.out).toMatch(/^NODE +ADDRESS +STATE +UP +HEALTH +MAP_EPOCH\n1 +\S+ +\S+ +up +\S+ +\d+\n/);
    expect(r.out).toMatch(/\nGROUP +POOL +INDEX +LEADER +TERM +VOTERS +LEARNERS +LAG\n/);
    expect(r.out).toMatch(/\n1 +\S+ +\S+ +1 +1 +1 +- +1:0\n/);
    const j = JSON.parse((await kvctl(['--json', 'status'])).out) as { nodes: object[]; groups: object[] };
    expect(j.nodes).toEqual([expect.objectContaining({ id: 1, up: true })]);
    expect(j.groups).toContainEqual(expect.objectContaining({ group: 1, leader: 1, term: 1, voters: [1], learners: [], lag: { 1: 0 } }));
  });

  it('reports unreachable endpoints and exits 1', async () => {
    const dead = await serve(new MemoryBackend());
    await dead.close(0);
    const stdout = new Captured();
    const stderr = new Captured();
    const code = await main(['--endpoints', `${srv.address},${dead.address}`, '--timeout', '2000', 'status'], { stdout, stderr, env: {} });
    expect(code).toBe(EXIT.ERROR);
    expect(stdout.text).toMatch(/\n1 +\S+ +\S+ +up /);
    expect(stdout.text).toContain(dead.address);
    expect(stderr.text).toMatch(new RegExp(`^kvctl: (UNAVAILABLE|DEADLINE_EXCEEDED): ${dead.address}: .+\\n$`));
  });
});

describe('errors and usage', () => {
  it('prints one error line for failed requests', async () => {
    const r = await kvctl(['put', '', 'v']);
    expect(r.code).toBe(EXIT.ERROR);
    expect(r.err).toBe('kvctl: INVALID_ARGUMENT: INVALID_KEY: key must not be empty\n');
    const missing = await kvctl(['put', 'k', `@${join(dir, 'missing')}`]);
    expect(missing.code).toBe(EXIT.ERROR);
    expect(missing.err).toMatch(/^kvctl: ENOENT: cannot read .*missing/);
  });

  it('fails with UNAVAILABLE when no endpoint answers', async () => {
    const dead = await serve(new MemoryBackend());
    await dead.close(0);
    const stderr = new Captured();
    const code = await main(['--timeout', '500', 'get', 'k'], { stdout: new Captured(), stderr, env: { KVCASCADE_ENDPOINTS: dead.address } });
    expect(code).toBe(EXIT.ERROR);
    expect(stderr.text.split('\n')).toHaveLength(2);
    expect(stderr.text).toMatch(/^kvctl: (UNAVAILABLE|DEADLINE_EXCEEDED): /);
  });

  it('uses KVCASCADE_ENDPOINTS when --endpoints is absent', async () => {
    await kvctl(['put', 'k', 'v']);
    const stdout = new Captured();
    expect(await main(['get', 'k'], { stdout, stderr: new Captured(), env: { KVCASCADE_ENDPOINTS: ` ${srv.address} ,` } })).toBe(EXIT.OK);
    expect(stdout.text).toMatch(/k\s+1/);
  });

  it('rejects bad command lines with exit code 64 and one line', async () => {
    for (const args of [['put', 'k'], ['frobnicate'], ['get', 'k', '--version', 'x'], ['cas', 'k', '-1', 'v'], ['--timeout', '0', 'get', 'k'], ['get', 'k', '--time', 'yesterday']]) {
      const r = await kvctl(args);
      expect(r.code, args.join(' ')).toBe(EXIT.USAGE);
      expect(r.err, args.join(' ')).toMatch(/^kvctl: USAGE: [^\n]+\n$/);
      expect(r.out).toBe('');
    }
    const both = await kvctl(['get', 'k', '--version', '1', '--time', '5']);
    expect(both).toMatchObject({ code: EXIT.USAGE, err: 'kvctl: USAGE: give at most one of --version and --time\n' });
  });

  it('prints help with exit code 0', async () => {
    const r = await kvctl(['--help']);
    expect(r.code).toBe(EXIT.OK);
    expect(r.out).toMatch(/Usage: kvctl/);
    expect(r.out).toMatch(/put .*<key> <value>/);
    expect(r.out).toMatch(/trigger .*<key> <value>/);
  });
});

describe('a stopped cluster', () => {
  /** A loopback port nothing listens on (bound, then released). */
  const deadPort = async (): Promise<number> => {
    const { createServer } = await import('node:net');
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as { port: number }).port;
    await new Promise((r) => s.close(r));
    return port;
  };

  it('is reported at once, naming every endpoint, not after the deadline; with --json as one JSON object', async () => {
    const eps = [await deadPort(), await deadPort()].map((p) => `127.0.0.1:${p}`);
    const t0 = Date.now();
    const r = await runAt(eps.join(','), ['--timeout', '60000', 'get', 'k']);
    expect(r.code).toBe(EXIT.ERROR);
    expect(r.err).toBe(`kvctl: UNAVAILABLE: no node answered at ${eps.join(', ')} (connection refused): is the cluster running?\n`);
    expect(Date.now() - t0).toBeLessThan(30_000); // well before the 60 s deadline
    const j = await runAt(eps.join(','), ['--json', '--timeout', '60000', 'put', 'k', 'v']);
    expect(j.code).toBe(EXIT.ERROR);
    expect(JSON.parse(j.err)).toEqual({ error: { code: 'UNAVAILABLE', message: expect.stringContaining('no node answered') } });
  });

  it('a deadline shorter than a connection says which node did not answer, not gRPC internals', async () => {
    const ep = `127.0.0.1:${await deadPort()}`;
    const r = await runAt(ep, ['--timeout', '1', 'put', 'k', 'v']);
    expect(r.code).toBe(EXIT.ERROR);
    expect(r.err).not.toMatch(/name resolution|Resolution note/);
    expect(r.err).toMatch(new RegExp(`^kvctl: (DEADLINE_EXCEEDED|UNAVAILABLE): .*${ep.replace(/\./g, '\\.')}`));
  });
});
