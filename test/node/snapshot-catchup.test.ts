/**
 * Snapshots that do not stop the world (issue 17): log compaction records only the snapshot's
 * metadata (no whole-state buffer, `KvStateMachine.snapshot` is never called), and a follower
 * that fell behind the compacted log catches up by a snapshot the leader produces from its
 * records, ending with exactly the leader's state (every retained version, the sessions, the
 * revision and the compaction point), installing it stepwise (the records replacement is staged
 * over event-loop turns), also when it crashes in the middle of a chunked transfer.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { DATA_GROUP, KvNode, type NodeOptions } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MessageType } from '../../src/raft/index.js';
import { KvStateMachine } from '../../src/statemachine/index.js';
import { metaKey } from '../../src/storage/raft-log-store.js';
import { converged, mixedWorkload, nodeTrio } from '../support/node-trio.js';
import { replicaState } from '../support/records-state.js';

const enc = (s: string) => new TextEncoder().encode(s);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const deadline = (ms = 5000) => ({ deadlineMs: Date.now() + ms });
const same = (a: Uint8Array, b: Uint8Array) => Buffer.from(a).equals(Buffer.from(b));

afterEach(() => {
  vi.restoreAllMocks();
});

const trio = nodeTrio(7200);
const openNode = trio.open;



function isolate(hub: LoopbackHub, nodes: KvNode[], f: KvNode): void {
  for (const n of nodes) if (n !== f) {
    hub.blocked.add(`${n.id}>${f.id}`);
    hub.blocked.add(`${f.id}>${n.id}`);
  }
}

/** Writes that leave several versions per key, tombstones, triggers, client sessions and a compaction point. */
const workload = (l: KvNode, rounds: number, tag: string, valueBytes = 40): Promise<void> => mixedWorkload(l, rounds, tag, valueBytes, 'catchup');

describe('snapshots from the records', () => {
  it('compaction serialises nothing and stores no snapshot data; a follower behind the compacted log catches up to the same state', async () => {
    const opts: Partial<NodeOptions> = { snapshotEveryEntries: 60, keepEntriesAfterSnapshot: 5, stateUnitBytes: 1024 };
    const { hub, engines, nodes, l, f, fi } = await trio.settled(opts);
    let installs = 0;
    const fr = f.replica(DATA_GROUP)!;
    const apply = fr.apply.bind(fr);
    fr.apply = (rd) => {
      if (rd.snapshot) installs++;
      apply(rd);
    };
    // The install's records replacement is handed out unit by unit, over event-loop turns.
    let units = 0;
    const next = fr.nextReplacementUnit.bind(fr);
    fr.nextReplacementUnit = () => {
      const u = next();
      if (u) units++;
      return u;
    };

    const serialised = vi.spyOn(KvStateMachine.prototype, 'snapshot');
    isolate(hub, nodes, f);
    await workload(l, 60, 'a');
    const lr = l.replica(DATA_GROUP)!;
    expect(lr.status().firstIndex).toBeGreaterThan(fr.appliedIndex + 1); // behind the compacted log
    // No whole-state buffer at compaction: the stored snapshot is metadata only.
    const le = engines[nodes.indexOf(l)]!;
    expect(await le.get(metaKey(DATA_GROUP, 'snap'))).toBeDefined();
    expect(await le.get(metaKey(DATA_GROUP, 'snapdata'))).toBeUndefined();
    expect(serialised).not.toHaveBeenCalled();
    hub.blocked.clear();
    await converged(nodes);
    expect(serialised).not.toHaveBeenCalled();
    serialised.mockRestore();
    expect(installs).toBeGreaterThan(0);
    expect(units).toBeGreaterThanOrEqual(installs);
    expect(fr.installing).toBe(false);
    expect(lr.snapshots.counters.produced).toBeGreaterThan(0);
    // The installed snapshot's data is dropped once the records replacing the state are staged.
    await sleep(50);
    expect(await engines[fi]!.get(metaKey(DATA_GROUP, 'snap'))).toBeDefined();
    expect(await engines[fi]!.get(metaKey(DATA_GROUP, 'snapdata'))).toBeUndefined();
    expect(engines.every((e) => e.openViews === 0)).toBe(true);

    // The same state: versions, sessions, revision, compaction point (the encoding covers all of it).
    const lsm = lr.internalsForTests().sm;
    const fsm = f.replica(DATA_GROUP)!.internalsForTests().sm;
    expect(fsm.appliedIndex).toBe(lsm.appliedIndex);
    expect(fsm.revision).toBe(lsm.revision);
    expect(fsm.compactRevision).toBe(lsm.compactRevision);
    expect(fsm.compactRevision).toBeGreaterThan(0);
    expect(fsm.sessionCount).toBe(lsm.sessionCount);
    expect(fsm.sessionCount).toBe(2);
    // From the records: the heap holds reserved keys only (indexDropCold, the default).
    expect(same(await replicaState(f, engines[fi]!), await replicaState(l, le))).toBe(true);
    for (let rev = lsm.compactRevision; rev <= lsm.revision; rev++) {
      expect(fsm.get('/k/1/3', { atRevision: rev })).toEqual(lsm.get('/k/1/3', { atRevision: rev }));
    }
    // The follower serves the data.
    const got = await f.get({ key: '/k/2/4', consistency: 'serializable' }, deadline());
    expect(got).toEqual(await l.get({ key: '/k/2/4', consistency: 'serializable' }, deadline()));
  });
});

describe('a crash in the middle of a chunked snapshot transfer', () => {
  it('recovers: the restarted follower starts over and ends with the leader\'s state', async () => {
    const opts: Partial<NodeOptions> = { snapshotEveryEntries: 60, keepEntriesAfterSnapshot: 5 };
    const { hub, engines, nodes, l, f, fi } = await trio.settled(opts, { latencyMs: 1 });
    isolate(hub, nodes, f);
    await workload(l, 40, 'big', 30_000); // a state of several 1 MiB chunks
    const lr = l.replica(DATA_GROUP)!;
    expect(lr.status().firstIndex).toBeGreaterThan(f.replica(DATA_GROUP)!.appliedIndex + 1);

    // The follower takes the first chunk, then the power goes while the next is on its way.
    const fr = f.replica(DATA_GROUP)!;
    const step = fr.internalsForTests().raw.step.bind(fr.internalsForTests().raw);
    let chunks = 0;
    let cut: () => void = () => {};
    const cutAt = new Promise<void>((resolve) => (cut = resolve));
    fr.internalsForTests().raw.step = (m) => {
      if (m.type === MessageType.Snap) {
        chunks++;
        if ((m.offset ?? 0) > 0) {
          cut(); // lost with the power: the follower holds the first chunk only
          return;
        }
      }
      step(m);
    };
    hub.blocked.clear();
    await cutAt;
    isolate(hub, nodes, f);
    engines[fi] = engines[fi]!.crash(0);
    await f.stop().catch(() => {});
    trio.forget(f);
    expect(chunks).toBeGreaterThanOrEqual(2);

    nodes[fi] = await openNode(f.id, engines[fi]!, hub, opts);
    nodes[fi]!.start();
    hub.blocked.clear();
    await l.put({ key: '/k/last', value: enc('2') }, deadline());
    await converged(nodes);
    const fsm = nodes[fi]!.replica(DATA_GROUP)!.internalsForTests().sm;
    expect(fsm.compactRevision).toBe(lr.compactRevision);
    expect(same(await replicaState(nodes[fi]!, engines[fi]!), await replicaState(l, engines[nodes.indexOf(l)]!))).toBe(true);
    expect(engines.every((e) => e.openViews === 0)).toBe(true);
  });
});
