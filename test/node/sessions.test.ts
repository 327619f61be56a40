/**
 * Client sessions through the node (src/node/kv-node.ts, replica.ts): a write retried with the same
 * session applies once across leader changes, restarts from the durable records (no log replay),
 * whole-cluster power cuts, and followers that catch up by snapshot; a forgotten seq is refused.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DATA_GROUP, KvNode, type NodeOptions } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { ValidationError, type WriteSession } from '../../src/statemachine/index.js';
import { MemoryEngine, scanAll } from '../../src/storage/kv-engine.js';
import { stateKeyPrefix } from '../../src/storage/raft-log-store.js';
import { DEFAULT_JOURNAL_MAX_RECORDS } from '../../src/storage/session-journal.js';
import { silentLogger } from '../../src/log.js';
import { expectSameReads, replicaState, replicaStates } from '../support/records-state.js';

const enc = (s: string) => new TextEncoder().encode(s);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));
const SID = 'node-test-session-0001';
const call = (session: WriteSession, ms = 3000) => ({ deadlineMs: Date.now() + ms, session });

let open: KvNode[] = [];
afterEach(async () => {
  for (const n of open) await n.stop().catch(() => {});
  open = [];
});

async function openNode(id: number, engine: MemoryEngine, hub: LoopbackHub, extra: Partial<NodeOptions>): Promise<KvNode> {
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7200 + i}`] as [number, string]));
  const node = await KvNode.open({ id, members, tickMs: 5, log: silentLogger(), onFatal: () => {}, ...extra }, engine, hub.transport(id));
  open.push(node);
  return node;
}

async function leaderOf(nodes: KvNode[], skip: Set<KvNode> = new Set()): Promise<KvNode> {
  for (;;) {
    const l = nodes.find((n) => !skip.has(n) && n.replica(DATA_GROUP)?.isLeader);
    if (l) return l;
    await sleep(5);
  }
}

async function converged(nodes: KvNode[]): Promise<void> {
  const until = Date.now() + 20_000;
  for (;;) {
    const rs = nodes.map((n) => n.replica(DATA_GROUP)!);
    const commit = rs[0]!.status().commit;
    if (rs.every((r) => r.appliedIndex === commit && r.status().commit === commit)) return;
    if (Date.now() > until) throw new Error('replicas did not converge');
    await sleep(10);
  }
}

async function cluster(opts: Partial<NodeOptions> = {}) {
  const hub = new LoopbackHub();
  const engines = [1, 2, 3].map(() => new MemoryEngine());
  const nodes = await Promise.all(engines.map((e, i) => openNode(i + 1, e, hub, opts)));
  for (const n of nodes) n.start();
  return { hub, engines, nodes };
}

describe('client sessions on a node', () => {
  it('a put retried with the same session, on the old leader or a new one, applies once and answers alike', async () => {
    const { hub, nodes } = await cluster();
    const l = await leaderOf(nodes);
    const s1 = { id: SID, seq: 1, ackedBelow: 0 };
    const first = await l.put({ key: '/p', value: enc('v') }, call(s1));
    const again = await l.put({ key: '/p', value: enc('v') }, call(s1));
    expect(again).toEqual(first);
    // Both attempts in flight at once: both get the one result.
    const s2 = { id: SID, seq: 2, ackedBelow: 1 };
    const [a, b] = await Promise.all([l.put({ key: '/p', value: enc('w') }, call(s2)), l.put({ key: '/p', value: enc('w') }, call(s2))]);
    expect(b).toEqual(a);
    expect(a.version).toBe(first.version + 1);
    // A new leader knows the session too: the log carried it.
    for (const n of nodes) if (n !== l) { hub.blocked.add(`${l.id}>${n.id}`); hub.blocked.add(`${n.id}>${l.id}`); }
    const l2 = await leaderOf(nodes, new Set([l]));
    expect(await l2.put({ key: '/p', value: enc('w') }, call(s2))).toEqual(a);
    const g = await l2.get({ key: '/p', consistency: 'linearizable' }, { deadlineMs: Date.now() + 3000 });
    expect(g.version).toBe(a.version);
    // Acknowledged seqs are forgotten: a late retry is refused, never applied.
    await l2.delete({ key: '/q' }, call({ id: SID, seq: 3, ackedBelow: 3 }));
    const late = await l2.put({ key: '/p', value: enc('v') }, call(s1)).then(() => undefined, (e: unknown) => e);
    expect(late).toBeInstanceOf(ValidationError);
    expect((late as ValidationError).code).toBe('SESSION_EXPIRED');
    expect((await l2.get({ key: '/p', consistency: 'linearizable' }, { deadlineMs: Date.now() + 3000 })).version).toBe(a.version);
    // Bad sessions are refused before anything is proposed.
    await expect(l2.put({ key: '/p', value: enc('x') }, call({ id: 'short', seq: 1, ackedBelow: 0 }))).rejects.toThrow(/INVALID_ARGUMENT/);
    hub.blocked.clear();
  });

  it('a restart from the durable records (no log replay) and a whole-cluster power cut keep the session table', async () => {
    const opts = { snapshotEveryEntries: 1_000_000 };
    const { hub, engines, nodes: first } = await cluster(opts);
    let nodes = first;
    const l = await leaderOf(nodes);
    const sess = (seq: number) => ({ id: SID, seq, ackedBelow: 0 });
    const results = [];
    for (let seq = 1; seq <= 5; seq++) results.push(await l.put({ key: '/d', value: enc(`v${seq}`) }, call(sess(seq))));
    const trig = await l.trigger({ key: '/t', value: enc('t') }, call(sess(6)));
    const txn = await l.txn({ compares: [{ key: '/d', version: results[4]!.version }], writes: [{ type: 'delete', key: '/d' }] }, call(sess(7)));
    await converged(nodes);
    // 1. A clean stop, then a power cut: the table comes back from the records, before any replay.
    // The states are read once stopped: until then a leader change (a busy machine) applies a no-op.
    for (const n of nodes) await n.stop();
    open = [];
    let disks = engines.map((e) => e.crash(0));
    const before = await replicaStates(nodes, disks); // from the records: the heap holds reserved keys only (indexDropCold)
    nodes = await Promise.all(disks.map((e, i) => openNode(i + 1, e, hub, opts)));
    nodes.forEach((n, i) => {
      const sm = n.replica(DATA_GROUP)!.internalsForTests().sm;
      expectSameReads(sm, before[i]!);
      expect(sm.session(SID)!.results.map(([q]) => q)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    });
    for (const n of nodes) n.start();
    let l2 = await leaderOf(nodes);
    const rev = l2.replica(DATA_GROUP)!.revision;
    expect(await l2.put({ key: '/d', value: enc('v3') }, call(sess(3)))).toEqual(results[2]);
    expect(await l2.trigger({ key: '/t', value: enc('t') }, call(sess(6)))).toEqual(trig);
    expect(await l2.txn({ compares: [{ key: '/d', version: results[4]!.version }], writes: [{ type: 'delete', key: '/d' }] }, call(sess(7)))).toEqual(txn);
    expect(l2.replica(DATA_GROUP)!.revision).toBe(rev);
    // 2. A power cut without a clean stop, right after an acknowledged write: recovery (records
    // plus whatever log replay they need) still answers its retry from the session.
    const eighth = await l2.put({ key: '/d', value: enc('v8') }, call(sess(8)));
    disks = disks.map((e) => e.crash());
    for (const n of nodes) await n.stop().catch(() => {});
    open = [];
    nodes = await Promise.all(disks.map((e, i) => openNode(i + 1, e, hub, opts)));
    for (const n of nodes) n.start();
    l2 = await leaderOf(nodes);
    expect(await l2.put({ key: '/d', value: enc('v8') }, call(sess(8), 5000))).toEqual(eighth);
    const g = await l2.get({ key: '/d', consistency: 'linearizable' }, { deadlineMs: Date.now() + 3000 });
    expect(g.version).toBe(eighth.version);
    await converged(nodes);
    const after = await replicaStates(nodes, disks);
    for (const b of after) expect(same(b, after[0]!)).toBe(true);
  });

  it('a power cut after the session journal folded: a retried write answers from the session and is not applied twice', async () => {
    const opts = { snapshotEveryEntries: 1_000_000 };
    const { hub, engines, nodes: first } = await cluster(opts);
    let nodes = first;
    const l = await leaderOf(nodes);
    // One write per round, well past the journal's bound: its oldest records are folded into the base records.
    const n = DEFAULT_JOURNAL_MAX_RECORDS + 72;
    const results = [];
    for (let seq = 1; seq <= n; seq++) results.push(await l.put({ key: `/f${seq % 7}`, value: enc(`v${seq}`) }, call({ id: SID, seq, ackedBelow: Math.max(0, seq - 3) })));
    await converged(nodes);
    const rows = async (e: MemoryEngine, tag: string) => (await scanAll(e, { prefix: `${stateKeyPrefix(DATA_GROUP)}${tag}/` })).length;
    for (const e of engines) {
      expect(await rows(e, 'c')).toBe(1); // the session's base header (folded)
      const journal = await rows(e, 'j');
      expect(journal).toBeGreaterThan(0);
      expect(journal).toBeLessThanOrEqual(DEFAULT_JOURNAL_MAX_RECORDS + 1);
    }
    const disks = engines.map((e) => e.crash());
    for (const node of nodes) await node.stop().catch(() => {});
    open = [];
    nodes = await Promise.all(disks.map((e, i) => openNode(i + 1, e, hub, opts)));
    for (const node of nodes) node.start();
    const l2 = await leaderOf(nodes);
    // A linearizable read commits the new leader's first entry, so every acknowledged write is applied.
    await l2.get({ key: '/f0', consistency: 'linearizable' }, { deadlineMs: Date.now() + 5000 });
    await converged(nodes);
    for (const node of nodes) expect(node.replica(DATA_GROUP)!.internalsForTests().sm.session(SID)!.results.map(([q]) => q)).toEqual([n - 3, n - 2, n - 1, n]);
    const rev = l2.replica(DATA_GROUP)!.revision;
    for (const seq of [n - 1, n]) {
      expect(await l2.put({ key: `/f${seq % 7}`, value: enc(`v${seq}`) }, call({ id: SID, seq, ackedBelow: n - 3 }, 5000))).toEqual(results[seq - 1]);
    }
    expect(l2.replica(DATA_GROUP)!.revision).toBe(rev);
    await expect(l2.put({ key: '/f0', value: enc('old') }, call({ id: SID, seq: n - 10, ackedBelow: 0 }))).rejects.toThrow(/SESSION_EXPIRED/);
    await converged(nodes);
    const after = await replicaStates(nodes, disks);
    for (const b of after) expect(same(b, after[0]!)).toBe(true);
  });

  it('a follower that catches up by snapshot receives the session table', async () => {
    const { hub, engines, nodes } = await cluster({ snapshotEveryEntries: 40, keepEntriesAfterSnapshot: 5 });
    const l = await leaderOf(nodes);
    const f = nodes.find((n) => n !== l)!;
    for (const n of nodes) if (n !== f) { hub.blocked.add(`${n.id}>${f.id}`); hub.blocked.add(`${f.id}>${n.id}`); }
    let installs = 0;
    const r = f.replica(DATA_GROUP)!;
    const apply = r.apply.bind(r);
    r.apply = (rd) => {
      if (rd.snapshot) installs++;
      apply(rd);
    };
    const answers = [];
    for (let seq = 1; seq <= 100; seq++) answers.push(await l.put({ key: `/s/${seq % 7}`, value: enc(`${seq}`) }, call({ id: SID, seq, ackedBelow: Math.max(0, seq - 3) })));
    hub.blocked.clear();
    await converged(nodes);
    expect(installs).toBeGreaterThan(0);
    const state = (n: KvNode) => replicaState(n, engines[nodes.indexOf(n)]!);
    expect(same(await state(f), await state(l))).toBe(true);
    expect(f.replica(DATA_GROUP)!.internalsForTests().sm.session(SID)!.results.map(([q]) => q)).toEqual([97, 98, 99, 100]);
    // The follower, leading now, answers the retry of the last write from its session.
    await l.stop();
    open = open.filter((n) => n !== l);
    const rest = nodes.filter((n) => n !== l);
    const l2 = await leaderOf(rest);
    expect(await l2.put({ key: '/s/2', value: enc('100') }, call({ id: SID, seq: 100, ackedBelow: 97 }, 5000))).toEqual(answers[99]);
  });
});
