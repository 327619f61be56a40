/** A ready round over Raft cores driven by hand in tests (no node, no driver). */
import type { ConfState, MemoryStorage, Message, RawNode, Snapshot, SnapshotRead, Storage } from '../../src/raft/index.js';

/**
 * One round on every node of `nodes` that has a Ready: persists it in the node's `MemoryStorage`
 * of `mem` (an installed snapshot as one placeholder byte: the tests check the data elsewhere),
 * hands its messages (early and late alike) and its snapshot reads to `out`, and advances.
 */
export function readyRound(nodes: ReadonlyMap<number, RawNode>, mem: ReadonlyMap<number, MemoryStorage>, out: (msgs: readonly Message[], reads: readonly SnapshotRead[]) => void): void {
  for (const [id, n] of nodes) {
    if (!n.hasReady()) continue;
    const rd = n.ready();
    const st = mem.get(id)!;
    if (rd.snapshot) st.applySnapshot({ ...rd.snapshot, data: new Uint8Array([1]) });
    st.append(rd.entries);
    if (rd.hardState) st.setHardState(rd.hardState);
    out([...rd.earlyMessages, ...rd.messages], rd.snapshotReads ?? []);
    n.advance(rd);
  }
}

/**
 * A leader's storage for snapshot-transfer tests: `s` holding a log compacted at 50 (term 3, voted
 * for node 1) with entries 51–53, whose snapshot carries `data`; `streamed` makes `snapshot()`
 * answer it without data (the host serves its chunks on request).
 */
export function compactedLeaderStorage(s: MemoryStorage, conf: ConfState, data: Uint8Array, streamed: boolean): Storage {
  s.applySnapshot({ meta: { index: 50, term: 3, conf }, data });
  s.append([51, 52, 53].map((index) => ({ term: 3, index, type: 0, data: new Uint8Array(0) })));
  s.setHardState({ term: 3, vote: 1, commit: 53 });
  return {
    initialState: () => s.initialState(),
    entries: (lo, hi) => s.entries(lo, hi),
    term: (i) => s.term(i),
    firstIndex: () => s.firstIndex(),
    lastIndex: () => s.lastIndex(),
    snapshot: (): Snapshot => (streamed ? { meta: s.snapshot()!.meta, data: new Uint8Array(0), streamed: true } : s.snapshot()!),
  };
}
