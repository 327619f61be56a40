/**
 * The state machine is durable in each node's engine: a restart rebuilds it from its records and
 * replays only later entries, and nodes crashing at random points under load (with snapshot
 * installs, log compaction and retention compaction going on) always recover to the state that
 * replaying the committed log gives, and converge with the other replicas.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DATA_GROUP, KvNode, META_GROUP, type NodeOptions } from '../../src/node/kv-node.js';
import { decodeProposal } from '../../src/node/envelope.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { EntryType, SeededRandom } from '../../src/raft/index.js';
import { KvStateMachine, type Command, type CommandOrigin, type WriteSession } from '../../src/statemachine/index.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { RaftLogStore, stateKeyPrefix } from '../../src/storage/raft-log-store.js';
import { loadState, readStateMeta } from '../../src/storage/state-store.js';
import { silentLogger } from '../../src/log.js';
import { expectSameReads, recordsSnapshot, replicaStates } from '../support/records-state.js';

const enc = (s: string) => new TextEncoder().encode(s);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const deadline = (ms = 2000) => ({ deadlineMs: Date.now() + ms });
const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

let open: KvNode[] = [];
afterEach(async () => {
  for (const n of open) await n.stop().catch(() => {});
  open = [];
});

async function openNode(id: number, engine: MemoryEngine, hub: LoopbackHub, extra: Partial<NodeOptions>): Promise<KvNode> {
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7100 + i}`] as [number, string]));
  const node = await KvNode.open({ id, members, tickMs: 5, log: silentLogger(), onFatal: () => {}, ...extra }, engine, hub.transport(id));
  open.push(node);
  return node;
}

async function leaderOf(nodes: KvNode[], stopped: Set<KvNode> = new Set()): Promise<KvNode> {
  for (;;) {
    const l = nodes.find((n) => !stopped.has(n) && n.replica(DATA_GROUP)?.isLeader);
    if (l) return l;
    await sleep(5);
  }
}

/** Applies committed entries to `sm` exactly as a replica does. */
function replay(sm: KvStateMachine, entries: readonly { index: number; type: EntryType; data: Uint8Array }[]): void {
  for (const e of entries) {
    let cmd: Command = { type: 'noop' };
    let ts = sm.lastTimestampMs;
    let origin: CommandOrigin = 'system';
    let session: WriteSession | undefined;
    let hops = 0;
    if (e.type === EntryType.Normal && e.data.length > 0) {
      try {
        const p = decodeProposal(e.data);
        cmd = p.command;
        ts = p.timestampMs;
        origin = p.origin;
        session = p.session;
        hops = p.hops;
      } catch {
        // applied as a no-op, as the replica does
      }
    }
    sm.apply(e.index, ts, cmd, origin, session, hops);
  }
}

/**
 * What a node restarting on `engine` will recover, checked against replaying its durable log from
 * its durable snapshot: returns per group whether the records were used (else the snapshot is).
 */
type Ledger = Map<number, Map<number, { index: number; type: EntryType; data: Uint8Array }>>;

/** Records every committed entry `node`'s replicas apply into `ledger` (per group, by index): the committed log, whatever is compacted. */
function recordApplied(node: KvNode, ledger: Ledger): void {
  for (const g of [META_GROUP, DATA_GROUP]) {
    const r = node.replica(g);
    if (!r) continue;
    const apply = r.apply.bind(r);
    r.apply = (rd) => {
      let m = ledger.get(g);
      if (!m) ledger.set(g, (m = new Map()));
      for (const e of rd.committedEntries) m.set(e.index, e);
      apply(rd);
    };
  }
}

/**
 * What a node restarting on `engine` will recover, checked against replaying the committed log:
 * from its durable snapshot when that has data, else (a records snapshot) from the start, with the
 * entries `ledger` saw applied. Returns per group whether the records were used (else the snapshot is).
 */
async function checkRecoverable(engine: MemoryEngine, smOptions: NodeOptions['stateMachine'] = {}, ledger: Ledger = new Map(), deadVersions = false): Promise<Map<number, boolean>> {
  const store = await RaftLogStore.open(engine); // only read (never flushed or closed)
  const used = new Map<number, boolean>();
  for (const g of store.groups()) {
    const ms = store.storageFor(g);
    const snap = ms.snapshot();
    const snapIndex = snap?.meta.index ?? 0;
    const meta = await readStateMeta(engine, g);
    if (!meta || meta.appliedIndex < snapIndex) {
      used.set(g, false);
      continue;
    }
    used.set(g, true);
    const recovered = KvStateMachine.fromRecords((await loadState(engine, g, { deadVersions }))!.data);
    // A dropCold node's restart (coldKeys) loads the same: single-version live keys as key and revision, the rest as without it.
    const full = (await loadState(engine, g, { values: false, deadVersions }))!;
    const cold = (await loadState(engine, g, { values: false, deadVersions, coldKeys: true }))!;
    const coldKeys = new Map(cold.cold!.keys.map((k, i) => [k, cold.cold!.revisions[i]!]));
    expect(cold.data.keys).toEqual(full.data.keys.filter(([k]) => !coldKeys.has(k)));
    for (const [k, v] of full.data.keys) if (coldKeys.has(k)) expect(v.map((x) => [x.revision, x.value === null])).toEqual([[coldKeys.get(k), false]]);
    expect({ ...cold.data, keys: [] }).toEqual({ ...full.data, keys: [] });
    expect(cold.written).toEqual(full.written);
    // Never ahead of the durable log: every applied entry is on disk. (The commit index on disk is
    // a lower bound, written with term and vote changes only: recovery raises it to the applied index.)
    expect(recovered.appliedIndex).toBeLessThanOrEqual(ms.lastIndex());
    if (snap && snap.data.length === 0) {
      // A records snapshot: the log before it is gone here; replay the committed log from the start.
      const ref = new KvStateMachine(smOptions);
      const seen = ledger.get(g) ?? new Map();
      const all = Array.from({ length: recovered.appliedIndex }, (_, i) => seen.get(i + 1));
      expect(all.every((e) => e !== undefined), `group ${g}: the ledger holds entries 1..${recovered.appliedIndex}`).toBe(true);
      replay(ref, all as { index: number; type: EntryType; data: Uint8Array }[]);
      expect(same(recovered.snapshot(), ref.snapshot()), `group ${g} at ${recovered.appliedIndex} (from the start)`).toBe(true);
      continue;
    }
    const ref = snap ? KvStateMachine.restore(snap.data) : new KvStateMachine(smOptions);
    replay(ref, ms.entries(snapIndex + 1, recovered.appliedIndex + 1));
    expect(ref.appliedIndex).toBe(recovered.appliedIndex);
    expect(same(recovered.snapshot(), ref.snapshot()), `group ${g} at ${recovered.appliedIndex}`).toBe(true);
  }
  return used;
}

/** Waits until every node has applied the same index in both groups (nothing in flight). */
async function converged(nodes: KvNode[], timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const done = [META_GROUP, DATA_GROUP].every((g) => {
      const rs = nodes.map((n) => n.replica(g)!);
      const commit = rs[0]!.status().commit;
      return rs.every((r) => r.appliedIndex === commit && r.status().commit === commit);
    });
    if (done) return;
    if (Date.now() > until) throw new Error('replicas did not converge');
    await sleep(10);
  }
}

/**
 * The replicas' states of `group` read from their records at one applied index: converges, reads
 * them one after another, and reads again when a replica applied more meanwhile (a retention
 * compaction the leader proposes on its own). The comparison the callers make stays theirs.
 */
async function convergedStates(nodes: KvNode[], engines: readonly MemoryEngine[], group: number = DATA_GROUP): Promise<Buffer[]> {
  for (let attempt = 0; ; attempt++) {
    await converged(nodes);
    const states = await replicaStates(nodes, engines, group);
    const applied = states.map((b) => KvStateMachine.restore(b).appliedIndex);
    if (applied.every((a) => a === applied[0]) || attempt === 20) return states;
  }
}

describe('durable state machine', () => {
  it('comes back from disk on restart: the applied index is recovered and the log is not replayed', async () => {
    const hub = new LoopbackHub();
    let engines = [1, 2, 3].map(() => new MemoryEngine());
    const opts = { snapshotEveryEntries: 1_000_000 };
    let nodes = await Promise.all(engines.map((e, i) => openNode(i + 1, e, hub, opts)));
    for (const n of nodes) n.start();
    const l = await leaderOf(nodes);
    await Promise.all(Array.from({ length: 8 }, async (_, w) => {
      for (let i = 0; i < 30; i++) await l.put({ key: `/r/${w}/${i % 7}`, value: enc(`${w}-${i}`) }, deadline(5000));
    }));
    await l.delete({ key: '/r/0/0' }, deadline());
    await l.trigger({ key: '/r/t', value: enc('t') }, deadline());
    // A lambda's write (hop count 4): the count is recorded with the version and event, on disk.
    const lambdaPut = await l.execute(DATA_GROUP, { type: 'put', key: '/r/lambda', value: enc('l') }, { ...deadline(), hops: 4 }, 'client');
    if (lambdaPut.type !== 'put') throw new Error(`unexpected ${lambdaPut.type}`);
    await converged(nodes);
    // The replicas' states from their records (the heap holds reserved keys only: `indexDropCold`, the default).
    const states = await replicaStates(nodes, engines);
    const before = nodes.map((n, i) => ({ applied: n.replica(DATA_GROUP)!.appliedIndex, bytes: states[i]! }));
    expect(before[0]!.applied).toBeGreaterThan(240);
    for (const n of nodes) await n.stop();
    open = [];
    engines = engines.map((e) => e.crash(0)); // a graceful stop left everything durable

    nodes = await Promise.all(engines.map((e, i) => openNode(i + 1, e, hub, opts)));
    const replayed = [0, 0, 0];
    nodes.forEach((n, i) => {
      const r = n.replica(DATA_GROUP)!;
      // Before running anything: the machine is back at the applied index, from disk.
      expect(r.appliedIndex).toBe(before[i]!.applied);
      expect(r.status().applied).toBe(before[i]!.applied);
      expectSameReads(r.internalsForTests().sm, before[i]!.bytes); // every key and version as before the stop
      expect(r.status().firstIndex).toBe(1); // the whole log is there, yet not replayed
      expect(r.hopsOf(lambdaPut.revision)).toBe(4);
      n.observer = { applied: (g, entries) => { if (g === DATA_GROUP) replayed[i]! += entries; } };
      n.start();
    });
    const l2 = await leaderOf(nodes);
    const g = await l2.get({ key: '/r/3/2', consistency: 'linearizable' }, deadline(5000));
    expect(g.found).toBe(true);
    await l2.put({ key: '/r/after', value: enc('x') }, deadline());
    await converged(nodes);
    // Only the new term's entries (its no-op and the put) were applied after the restart.
    for (const n of replayed) expect(n).toBeLessThanOrEqual(5);
  });

  // Where a power cut lands during a follower's snapshot install, and what its disk then holds.
  const cuts = [
    { at: 'before the install is written', expect: 'records' },
    { at: 'after the snapshot, before its state', expect: 'stale records' },
    { at: 'in the middle of the state replacement', expect: 'no records' },
    { at: 'after the state replacement', expect: 'records' },
  ] as const;
  for (const cut of cuts) {
    it(`recovers when the power is cut during a snapshot install: ${cut.at}`, async () => {
      const opts: Partial<NodeOptions> = {
        snapshotEveryEntries: 100,
        keepEntriesAfterSnapshot: 10,
        stateUnitBytes: 512,
        maxBatchBytes: 2048,
      };
      const hub = new LoopbackHub();
      const engines = [1, 2, 3].map(() => new MemoryEngine({ latencyMs: 1 }));
      const nodes = await Promise.all(engines.map((e, i) => openNode(i + 1, e, hub, opts)));
      const ledger: Ledger = new Map();
      for (const n of nodes) recordApplied(n, ledger);
      for (const n of nodes) n.start();
      const l = await leaderOf(nodes);
      const f = nodes.find((n) => n !== l)!;
      const fi = nodes.indexOf(f);
      await l.put({ key: '/s/first', value: enc('1') }, deadline());
      for (const n of nodes) if (n !== f) { hub.blocked.add(`${n.id}>${f.id}`); hub.blocked.add(`${f.id}>${n.id}`); }
      await Promise.all(Array.from({ length: 4 }, async (_, w) => {
        for (let i = 0; i < 80; i++) await l.put({ key: `/s/${w}/${i % 30}`, value: enc(`${w}-${i}-${'y'.repeat(i % 50)}`) }, deadline(5000));
      }));
      // The follower's engine: once the install is applied, cut the power right after the batch
      // that makes the chosen part durable (the batch in flight, if any, is lost).
      const engine = engines[fi]!;
      const metaKey = `${stateKeyPrefix(DATA_GROUP)}meta`;
      const isMeta = (k: string | Uint8Array) => (typeof k === 'string' ? k : Buffer.from(k).toString('latin1')) === metaKey;
      let armed = false;
      let cutDone: () => void = () => {};
      const crashed = new Promise<void>((resolve) => (cutDone = resolve));
      const cutNow = () => {
        armed = false;
        engines[fi] = engine.crash(0);
        cutDone();
      };
      const batch = engine.batch.bind(engine);
      engine.batch = async (ops, o) => {
        const hasSnap = ops.some((op) => op.key === `g/${DATA_GROUP.toString(16).padStart(8, '0')}/snap`);
        const delMeta = ops.some((op) => op.type === 'del' && isMeta(op.key));
        const putMeta = ops.some((op) => op.type === 'put' && isMeta(op.key));
        const watching = armed;
        await batch(ops, o);
        if (!watching || !armed) return;
        if (cut.expect === 'stale records' && hasSnap) cutNow();
        else if (cut.expect === 'no records' && delMeta && !putMeta) cutNow();
        else if (cut.at === 'after the state replacement' && putMeta) cutNow();
      };
      const r = f.replica(DATA_GROUP)!;
      const apply = r.apply.bind(r);
      r.apply = (rd) => {
        apply(rd);
        if (!rd.snapshot) return;
        if (cut.at === 'before the install is written') cutNow();
        else armed = true;
      };
      hub.blocked.clear();
      await crashed;
      await f.stop().catch(() => {});
      open = open.filter((n) => n !== f);
      const snapIndex = (await RaftLogStore.open(engines[fi]!)).storageFor(DATA_GROUP).snapshot()?.meta.index ?? 0;
      const meta = await readStateMeta(engines[fi]!, DATA_GROUP);
      const state = !meta ? 'no records' : meta.appliedIndex < snapIndex ? 'stale records' : 'records';
      expect(state).toBe(cut.expect);
      await checkRecoverable(engines[fi]!, {}, ledger);
      nodes[fi] = await openNode(f.id, engines[fi]!, hub, opts);
      nodes[fi]!.start();
      await (await leaderOf(nodes)).put({ key: '/s/last', value: enc('2') }, deadline(5000));
      const bytes = await convergedStates(nodes, engines);
      for (const b of bytes) expect(same(b, bytes[0]!)).toBe(true);
    });
  }

  // Seeds 4 and 5 with the version sweep: compactions leave their versions for the node's
  // background sweep, whose unsynced units the crashes cut anywhere.
  for (const [seed, sweep] of [[1, false], [2, false], [3, false], [4, true], [5, true]] as const) {
    it(`recovers to the replay of the committed log after random crashes under load (seed ${seed}${sweep ? ', version sweep' : ''})`, async () => {
      const rnd = new SeededRandom(seed * 7919);
      const pick = (n: number) => Math.floor((rnd.nextU32() / 2 ** 32) * n);
      const hub = new LoopbackHub();
      const engines = [1, 2, 3].map(() => new MemoryEngine({ latencyMs: 1 }));
      // Small snapshots, a short catch-up tail, tiny replacement units and small engine batches:
      // a node that was down catches up by snapshot, and a crash can land between any two units
      // (after a snapshot, in the middle of the state replacement that follows it).
      const opts: Partial<NodeOptions> = {
        snapshotEveryEntries: 120,
        keepEntriesAfterSnapshot: 15,
        stateUnitBytes: 1024,
        maxBatchBytes: 4096,
        retentionMs: 150,
        retentionCheckMs: 40,
        stateMachine: { maxHistoryRevisions: 50 },
        ...(sweep ? { sweepVersions: true, sweepPassIntervalMs: 50 } : {}),
      };
      const nodes = await Promise.all(engines.map((e, i) => openNode(i + 1, e, hub, opts)));
      let swept = 0;
      let installs = 0;
      const ledger: Ledger = new Map();
      const watchInstalls = (n: KvNode) => {
        recordApplied(n, ledger);
        const r = n.replica(DATA_GROUP)!;
        const apply = r.apply.bind(r);
        r.apply = (rd) => {
          if (rd.snapshot) installs++;
          apply(rd);
        };
      };
      for (const n of nodes) {
        watchInstalls(n);
        n.start();
      }
      const down = new Set<KvNode>();
      let stop = false;
      let acked = 0;
      // Progress, not wall time, paces the crashes: under a loaded machine a fixed sleep let too
      // few writes through (acked <= 200, no snapshot install), so the test waits for acks.
      const ackWaiters: { target: number; resolve: () => void }[] = [];
      const onAck = () => {
        acked++;
        for (let k = ackWaiters.length - 1; k >= 0; k--) if (acked >= ackWaiters[k]!.target) ackWaiters.splice(k, 1)[0]!.resolve();
      };
      /** Resolves once `more` further writes were acknowledged (or after `timeoutMs`: the checks below then say what is missing). */
      const acks = (more: number, timeoutMs = 20_000) =>
        new Promise<void>((resolve) => {
          const t = setTimeout(resolve, timeoutMs);
          ackWaiters.push({ target: acked + more, resolve: () => (clearTimeout(t), resolve()) });
        });
      // Odd writers use a client session and retry a failed write with the same seq until it is
      // answered (as a client does after an unknown outcome): the session table goes through the
      // same crashes, snapshot installs and recoveries as the data.
      let expired = 0;
      const writer = async (w: number) => {
        const id = `crash-writer-${w}-session`;
        let seq = 0;
        let ackedBelow = 0;
        for (let n = 0; !stop; n++) {
          const key = `/c/${w}/${n % 25}`;
          const session = w % 2 === 1 ? { id, seq: ++seq, ackedBelow } : undefined;
          for (let attempt = 0; ; attempt++) {
            try {
              const o = { ...deadline(), ...(session ? { session } : {}) };
              const l = await leaderOf(nodes, down);
              const kind = n % 7;
              if (kind === 5) await l.delete({ key }, o);
              else if (kind === 6) await l.trigger({ key, value: enc(`t${n}`) }, o);
              else await l.put({ key, value: enc(`${w}:${n}:${'x'.repeat(n % 40)}`) }, o);
              onAck();
              if (session) ackedBelow = session.seq + 1;
              break;
            } catch (e) {
              if ((e as { code?: string }).code === 'SESSION_EXPIRED') expired++;
              await sleep(3);
              if (!session || stop) break;
            }
          }
        }
      };
      const writers = Array.from({ length: 6 }, (_, w) => writer(w));
      let fromRecords = 0;
      for (let crash = 0; crash < 6; crash++) {
        await Promise.all([sleep(60 + pick(200)), acks(40)]);
        const i = pick(3);
        const victim = nodes[i]!;
        down.add(victim);
        engines[i] = engines[i]!.crash(pick(2)); // maybe keep the batch in flight, whole
        await victim.stop().catch(() => {});
        open = open.filter((n) => n !== victim);
        swept += victim.versionSweep?.deleted ?? 0;
        const used = await checkRecoverable(engines[i]!, opts.stateMachine, ledger, sweep);
        if (used.get(DATA_GROUP)) fromRecords++;
        // Half the time stay down long enough to need a snapshot: more writes than a snapshot
        // interval plus the kept tail (the leader's log then no longer holds what this node lacks).
        if (pick(2) !== 0) await Promise.all([sleep(150 + pick(250)), acks(opts.snapshotEveryEntries! + opts.keepEntriesAfterSnapshot! + 10)]);
        const node = await openNode(i + 1, engines[i]!, hub, opts);
        watchInstalls(node);
        nodes[i] = node;
        down.delete(victim);
        node.start();
      }
      await sleep(100);
      stop = true;
      await Promise.allSettled(writers);
      for (const g of [META_GROUP, DATA_GROUP]) {
        const states = await convergedStates(nodes, engines, g);
        for (const s of states) expect(same(s, states[0]!), `group ${g}`).toBe(true);
      }
      // A final power cut of every node after a clean stop: each recovers from its records exactly
      // the state it stopped with (the others may apply a little more meanwhile: retention runs).
      for (let i = 0; i < 3; i++) {
        // The stopped machine reads its older versions' values from the engine: keep it readable
        // through the node's stop (its close is a no-op here), then cut the power.
        engines[i]!.close = async () => {};
        await nodes[i]!.stop();
        swept += nodes[i]!.versionSweep?.deleted ?? 0;
        const stoppedWith = await recordsSnapshot(engines[i]!); // what it wrote, synced or not
        expectSameReads(nodes[i]!.replica(DATA_GROUP)!.internalsForTests().sm, stoppedWith); // the stopped machine agrees with it
        engines[i] = engines[i]!.crash(0);
        const used = await checkRecoverable(engines[i]!, opts.stateMachine, ledger, sweep);
        expect(used.get(DATA_GROUP)).toBe(true);
        const sm = KvStateMachine.fromRecords((await loadState(engines[i]!, DATA_GROUP, { deadVersions: sweep }))!.data);
        expect(same(sm.snapshot(), stoppedWith)).toBe(true);
      }
      open = [];
      expect(acked).toBeGreaterThan(200);
      expect(expired).toBe(0);
      expect(nodes[0]!.replica(DATA_GROUP)!.internalsForTests().sm.sessionCount).toBe(3);
      expect(installs).toBeGreaterThan(0);
      expect(fromRecords).toBeGreaterThan(0);
      if (sweep) expect(swept).toBeGreaterThan(0);
    });
  }
});
