/** Tests of kvd's configuration: the two planes' addresses, the peer TLS requirement, how the admin token may be given, and the extension isolation defaults. */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/bin/kvd-config.js';

const dir = mkdtempSync(join(tmpdir(), 'kvcascade-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const PEERS = '1=127.0.0.1:7001/127.0.0.1:7101,2=127.0.0.1:7002/127.0.0.1:7102,3=127.0.0.1:7003/127.0.0.1:7103';
const base = ['--id', '1', '--listen', '127.0.0.1:7001', '--peer-listen', '127.0.0.1:7101', '--peers', PEERS];

describe('kvd configuration', () => {
  it('reads client and peer addresses of every member', () => {
    const cfg = parseConfig([...base, '--insecure-peers']);
    expect([...cfg.peers]).toEqual([[1, '127.0.0.1:7001'], [2, '127.0.0.1:7002'], [3, '127.0.0.1:7003']]);
    expect([...cfg.peerAddresses]).toEqual([[1, '127.0.0.1:7101'], [2, '127.0.0.1:7102'], [3, '127.0.0.1:7103']]);
    expect(cfg.peerListen).toBe('127.0.0.1:7101');
    expect(cfg.advertisePeer).toBe('127.0.0.1:7101');
    expect(cfg.warnings.join('\n')).toMatch(/--insecure-peers: .* Local development only/);
  });

  it('--state-write-delay-ms and --[no-]sync-before-apply (session lone12) are unset unless given', () => {
    const unset = parseConfig([...base, '--insecure-peers']);
    expect(unset.stateWriteDelayMs).toBeUndefined();
    expect(unset.syncBeforeApply).toBeUndefined();
    const off = parseConfig([...base, '--insecure-peers', '--state-write-delay-ms', '0', '--no-sync-before-apply']);
    expect(off.stateWriteDelayMs).toBe(0);
    expect(off.syncBeforeApply).toBe(false);
    expect(parseConfig([...base, '--insecure-peers', '--sync-before-apply']).syncBeforeApply).toBe(true);
    expect(() => parseConfig([...base, '--insecure-peers', '--state-write-delay-ms', '-1'])).toThrow();
  });

  it('--legacy-conditional-puts (rolling upgrade) is off unless given', () => {
    expect(parseConfig([...base, '--insecure-peers']).legacyConditionalPuts).toBeUndefined();
    expect(parseConfig([...base, '--insecure-peers', '--legacy-conditional-puts']).legacyConditionalPuts).toBe(true);
  });

  it("takes LevelDB's table-file and block-cache bounds from the flags (unset: LevelDB's defaults)", () => {
    const unset = parseConfig([...base, '--insecure-peers']);
    expect(unset.leveldbMaxOpenFiles).toBeUndefined();
    expect(unset.leveldbCacheMib).toBeUndefined();
    const set = parseConfig([...base, '--insecure-peers', '--leveldb-max-open-files', '40', '--leveldb-cache-mib', '16']);
    expect(set.leveldbMaxOpenFiles).toBe(40);
    expect(set.leveldbCacheMib).toBe(16);
  });

  it('takes dropping cold keys from the heap from the flags or the file (unset: the node default, on), and refuses a non-boolean', () => {
    expect(parseConfig([...base, '--insecure-peers']).indexDropCold).toBeUndefined();
    expect(parseConfig([...base, '--insecure-peers', '--no-index-drop-cold']).indexDropCold).toBe(false);
    expect(parseConfig([...base, '--insecure-peers', '--index-drop-cold']).indexDropCold).toBe(true);
    const file = join(dir, 'drop-cold.json');
    writeFileSync(file, JSON.stringify({ indexDropCold: false }));
    expect(parseConfig([...base, '--insecure-peers', '--config', file]).indexDropCold).toBe(false);
    expect(parseConfig([...base, '--insecure-peers', '--config', file, '--index-drop-cold']).indexDropCold).toBe(true); // the flag wins
    writeFileSync(file, JSON.stringify({ indexDropCold: 'no' }));
    expect(() => parseConfig([...base, '--insecure-peers', '--config', file])).toThrow(/indexDropCold must be true or false/);
  });

  it('binds --listen and advertises --advertise (a DNS name), as in a container', () => {
    const dns = '1=kvd-0.kvd:7379/kvd-0.kvd:7380,2=kvd-1.kvd:7379/kvd-1.kvd:7380,3=kvd-2.kvd:7379/kvd-2.kvd:7380';
    const cfg = parseConfig(['--id', '1', '--listen', '0.0.0.0:7379', '--advertise', 'kvd-0.kvd:7379', '--peer-listen', '0.0.0.0:7380', '--advertise-peer', 'kvd-0.kvd:7380', '--peers', dns, '--insecure-peers']);
    expect(cfg.listen).toBe('0.0.0.0:7379');
    expect(cfg.advertise).toBe('kvd-0.kvd:7379');
    expect(cfg.peers.get(2)).toBe('kvd-1.kvd:7379');
    expect(cfg.peerAddresses.get(3)).toBe('kvd-2.kvd:7380');
    // Without --advertise, --listen is advertised.
    expect(parseConfig([...base, '--insecure-peers']).advertise).toBe('127.0.0.1:7001');
    // A wildcard cannot be advertised, and the advertised address must be this node's in --peers.
    expect(() => parseConfig(['--id', '1', '--listen', '0.0.0.0:7379'])).toThrow(/give --advertise host:port/);
    expect(() => parseConfig(['--id', '1', '--listen', '0.0.0.0:7379', '--advertise', 'kvd-9.kvd:7379', '--peer-listen', '0.0.0.0:7380', '--advertise-peer', 'kvd-0.kvd:7380', '--peers', dns, '--insecure-peers'])).toThrow(
      /client address in --peers \(kvd-0.kvd:7379\) differs from --advertise kvd-9.kvd:7379/,
    );
    expect(() => parseConfig(['--id', '1', '--listen', '127.0.0.1:7001', '--advertise', 'no-port'])).toThrow(/--advertise "no-port" is not host:port/);
    // Adding itself is an admin operation.
    const joining = ['--id', '4', '--listen', '127.0.0.1:7004', '--peer-listen', '127.0.0.1:7104', '--join', 'kvd-0.kvd:7379', '--insecure-peers', '--join-auto-add'];
    expect(() => parseConfig(joining)).toThrow(/--join-auto-add needs --join .* and the admin token/);
    expect(parseConfig([...joining, '--admin-token', 'a-long-enough-admin-token']).joinAutoAdd).toBe(true);
  });

  it('refuses to start with peers and no peer TLS unless --insecure-peers', () => {
    expect(() => parseConfig(base)).toThrow(/refusing to start: the peer listener would accept unauthenticated Raft traffic/);
    const tls = ['--tls-cert', 'n.pem', '--tls-key', 'n.key', '--tls-ca', 'ca.pem'];
    const cfg = parseConfig([...base, ...tls]);
    expect([cfg.peerTlsCert, cfg.peerTlsKey, cfg.peerTlsCa]).toEqual(['n.pem', 'n.key', 'ca.pem']);
    expect(() => parseConfig([...base, ...tls, '--insecure-peers'])).toThrow(/not both/);
    // A certificate without a CA cannot authenticate peers.
    expect(() => parseConfig([...base, '--tls-cert', 'n.pem', '--tls-key', 'n.key'])).toThrow(/refusing to start/);
  });

  it('needs a peer listener of its own when the cluster has other members', () => {
    expect(() => parseConfig(['--id', '1', '--listen', '127.0.0.1:7001', '--peers', PEERS, '--insecure-peers'])).toThrow(/--peer-listen is required/);
    expect(() => parseConfig(['--id', '1', '--listen', '127.0.0.1:7001', '--peer-listen', '127.0.0.1:7001', '--peers', '1=127.0.0.1:7001/127.0.0.1:7001', '--insecure-peers'])).toThrow(/must not be the client port/);
    expect(() => parseConfig(['--id', '1', '--listen', '127.0.0.1:7001', '--peer-listen', '127.0.0.1:7101', '--peers', '1=127.0.0.1:7001/127.0.0.1:7101,2=127.0.0.1:7002', '--insecure-peers'])).toThrow(/member 2 in --peers has no peer address/);
    expect(() => parseConfig(['--id', '1', '--listen', '127.0.0.1:7001', '--peer-listen', '127.0.0.1:7101', '--peers', '1=127.0.0.1:7001/127.0.0.1:7199', '--insecure-peers'])).toThrow(/differs from --advertise-peer/);
    expect(() => parseConfig(['--id', '1', '--listen', '127.0.0.1:7001', '--peers', '1=bad', '--insecure-peers'])).toThrow(/CLIENT_HOST:PORT\/PEER_HOST:PORT/);
    // A single node needs no peer plane.
    expect(parseConfig(['--id', '1', '--listen', '127.0.0.1:7001']).peerListen).toBeUndefined();
    // Joining needs one too.
    expect(() => parseConfig(['--id', '4', '--listen', '127.0.0.1:7004', '--join', '127.0.0.1:7001'])).toThrow(/--peer-listen is required/);
  });

  it('takes the admin token from a private file, and warns when it is on the command line', () => {
    const file = join(dir, 'token');
    writeFileSync(file, 'a-token-of-at-least-16-chars\n', { mode: 0o600 });
    expect(parseConfig(['--id', '1', '--listen', '127.0.0.1:7001', '--admin-token-file', file]).adminToken).toBe('a-token-of-at-least-16-chars');
    chmodSync(file, 0o644);
    expect(() => parseConfig(['--id', '1', '--listen', '127.0.0.1:7001', '--admin-token-file', file])).toThrow(/readable or writable by other users \(mode 644\): chmod 600/);
    const flag = parseConfig(['--id', '1', '--listen', '127.0.0.1:7001', '--admin-token', 'a-token-of-at-least-16-chars']);
    expect(flag.adminToken).toBe('a-token-of-at-least-16-chars');
    expect(flag.warnings.join('\n')).toMatch(/--admin-token puts the admin token in the process list/);
  });

  it('takes the default extension isolation and memory budget from flags or the file', () => {
    const cfg = parseConfig([...base, '--insecure-peers', '--extension-isolation', 'worker', '--extension-memory-mb', '300']);
    expect(cfg).toMatchObject({ extensionIsolation: 'worker', extensionMemoryMb: 300 });
    const none = parseConfig([...base, '--insecure-peers']);
    expect(none.extensionIsolation).toBeUndefined();
    expect(none.extensionMemoryMb).toBeUndefined();
    const file = join(dir, 'iso.json');
    writeFileSync(file, JSON.stringify({ extensionIsolation: 'process', extensionMemoryMb: 128 }));
    expect(parseConfig([...base, '--insecure-peers', '--config', file])).toMatchObject({ extensionIsolation: 'process', extensionMemoryMb: 128 });
    expect(() => parseConfig([...base, '--insecure-peers', '--extension-isolation', 'vm'])).toThrow(/must be process, worker or in-process/);
    expect(() => parseConfig([...base, '--insecure-peers', '--extension-memory-mb', '8'])).toThrow(/>= 16/);
  });

  it('takes the extension heap limit from the flag or the file', () => {
    expect(parseConfig([...base, '--insecure-peers', '--extension-heap-mb', '48']).extensionHeapMb).toBe(48);
    expect(parseConfig([...base, '--insecure-peers']).extensionHeapMb).toBeUndefined();
    const file = join(dir, 'heap.json');
    writeFileSync(file, JSON.stringify({ extensionHeapMb: 64 }));
    expect(parseConfig([...base, '--insecure-peers', '--config', file]).extensionHeapMb).toBe(64);
    expect(() => parseConfig([...base, '--insecure-peers', '--extension-heap-mb', '4'])).toThrow(/--extension-heap-mb must be an integer >= 8/);
  });

  it('takes the malloc trim threshold and interval from the flags or the file (unset: the defaults), and refuses bad ones with a clear message', () => {
    const unset = parseConfig([...base, '--insecure-peers']);
    expect(unset.mallocTrimMib).toBeUndefined();
    expect(unset.mallocTrimIntervalMs).toBeUndefined();
    const set = parseConfig([...base, '--insecure-peers', '--malloc-trim-mib', '0', '--malloc-trim-interval-ms', '5000']);
    expect(set.mallocTrimMib).toBe(0);
    expect(set.mallocTrimIntervalMs).toBe(5000);
    expect(() => parseConfig([...base, '--insecure-peers', '--malloc-trim-mib', '-3'])).toThrow(/--malloc-trim-mib must be a non-negative integer/);
    expect(() => parseConfig([...base, '--insecure-peers', '--malloc-trim-mib', 'lots'])).toThrow(/--malloc-trim-mib must be a non-negative integer/);
    expect(() => parseConfig([...base, '--insecure-peers', '--malloc-trim-interval-ms', '10'])).toThrow(/--malloc-trim-interval-ms must be an integer >= 1000/);
    const file = join(dir, 'trim.json');
    writeFileSync(file, JSON.stringify({ mallocTrimMib: 64, mallocTrimIntervalMs: 30000 }));
    const fromFile = parseConfig([...base, '--insecure-peers', '--config', file]);
    expect([fromFile.mallocTrimMib, fromFile.mallocTrimIntervalMs]).toEqual([64, 30000]);
    writeFileSync(file, JSON.stringify({ mallocTrimMib: 'big' }));
    expect(() => parseConfig([...base, '--insecure-peers', '--config', file])).toThrow(/--malloc-trim-mib must be an integer from 0 \(never trim\) to 65536 \(got big\)/);
    writeFileSync(file, JSON.stringify({ mallocTrimIntervalMs: 1.5 }));
    expect(() => parseConfig([...base, '--insecure-peers', '--config', file])).toThrow(/--malloc-trim-interval-ms must be an integer >= 1000/);
  });

  it('takes the memory budget from the flag or the file (unset: kvd derives it from the V8 heap limit)', () => {
    expect(parseConfig([...base, '--insecure-peers', '--memory-budget-mib', '512']).memoryBudgetMib).toBe(512);
    expect(parseConfig([...base, '--insecure-peers', '--memory-budget-mib', '0']).memoryBudgetMib).toBe(0);
    expect(parseConfig([...base, '--insecure-peers']).memoryBudgetMib).toBeUndefined();
    const file = join(dir, 'budget.json');
    writeFileSync(file, JSON.stringify({ memoryBudgetMib: 256 }));
    expect(parseConfig([...base, '--insecure-peers', '--config', file]).memoryBudgetMib).toBe(256);
    writeFileSync(file, JSON.stringify({ memoryBudgetMib: -1 }));
    expect(() => parseConfig([...base, '--insecure-peers', '--config', file])).toThrow(/--memory-budget-mib must be a non-negative integer/);
  });

  it('takes the sync pace from the flag or the file (unset: the node default), and refuses a bad one', () => {
    expect(parseConfig([...base, '--insecure-peers', '--sync-pace-ms', '8']).syncPaceMs).toBe(8);
    expect(parseConfig([...base, '--insecure-peers']).syncPaceMs).toBeUndefined();
    expect(parseConfig([...base, '--insecure-peers', '--no-gather-turn']).gatherTurn).toBe(false);
    expect(parseConfig([...base, '--insecure-peers', '--gather-turn']).gatherTurn).toBe(true);
    expect(parseConfig([...base, '--insecure-peers']).gatherTurn).toBeUndefined();
    expect(parseConfig([...base, '--insecure-peers', '--gather-turns', '8']).gatherTurns).toBe(8);
    expect(parseConfig([...base, '--insecure-peers']).gatherTurns).toBeUndefined();
    const file = join(dir, 'pace.json');
    writeFileSync(file, JSON.stringify({ gatherTurns: 0 }));
    expect(() => parseConfig([...base, '--insecure-peers', '--config', file])).toThrow(/--gather-turns must be a positive integer/);
    writeFileSync(file, JSON.stringify({ syncPaceMs: 4 }));
    expect(parseConfig([...base, '--insecure-peers', '--config', file]).syncPaceMs).toBe(4);
    writeFileSync(file, JSON.stringify({ syncPaceMs: 'fast' }));
    expect(() => parseConfig([...base, '--insecure-peers', '--config', file])).toThrow(/--sync-pace-ms must be a non-negative integer/);
  });

  it('takes the log entries kept behind a snapshot from the flag or the file (default 5000)', () => {
    expect(parseConfig([...base, '--insecure-peers']).snapshotKeepEntries).toBe(5000);
    expect(parseConfig([...base, '--insecure-peers', '--snapshot-keep-entries', '200']).snapshotKeepEntries).toBe(200);
    const file = join(dir, 'keep.json');
    writeFileSync(file, JSON.stringify({ snapshotKeepEntries: 1000 }));
    expect(parseConfig([...base, '--insecure-peers', '--config', file]).snapshotKeepEntries).toBe(1000);
    expect(() => parseConfig([...base, '--insecure-peers', '--snapshot-keep-entries', 'x'])).toThrow(/--snapshot-keep-entries/);
  });
});
