/**
 * A follower's Raft core with a snapshot sink: received chunks go to the sink in order and are not
 * kept; the acknowledgements are as without a sink; a refused chunk is dropped unanswered; the
 * installed snapshot is `streamed` with no data, and nothing after it is handed out in its Ready.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage, MessageType, RawNode, SeededRandom, type Message, type SnapshotMeta } from '../../src/raft/index.js';

const conf = { voters: [1, 2], learners: [] };
const meta: SnapshotMeta = { index: 50, term: 3, conf };
const snap = (offset: number, bytes: number, done: boolean): Message => ({
  type: MessageType.Snap, group: 0, from: 1, to: 2, term: 3, snapshot: meta, offset, chunk: new Uint8Array(bytes).fill(offset % 251), total: 30, done,
});

function follower(take: (offset: number, bytes: Uint8Array) => boolean, accept = true) {
  const storage = new MemoryStorage(conf);
  const got: Array<[number, number]> = [];
  const node = new RawNode({
    id: 2,
    storage,
    random: new SeededRandom(7),
    snapshotSink: { chunk: (m, offset, bytes) => m.index === 50 && (got.push([offset, bytes.length]), take(offset, bytes)) },
    acceptSnapshot: (s) => accept && s.streamed === true && s.data.length === 0,
  });
  const sent = (): Message[] => {
    const out = node.raft.msgs;
    node.raft.msgs = [];
    return out;
  };
  return { node, got, sent };
}

describe('a snapshot sink', () => {
  it('gets every chunk in order, once; the core installs a streamed snapshot with no data', () => {
    const f = follower(() => true);
    f.node.step(snap(0, 10, false));
    expect(f.sent()).toMatchObject([{ type: MessageType.SnapChunkResp, offset: 10, reject: false }]);
    f.node.step(snap(0, 10, false)); // a resend of what was taken: acknowledged, not taken again
    expect(f.sent()).toMatchObject([{ type: MessageType.SnapChunkResp, offset: 10 }]);
    f.node.step(snap(20, 10, true)); // a gap: asks for what is missing
    expect(f.sent()).toMatchObject([{ type: MessageType.SnapChunkResp, offset: 10, reject: true }]);
    f.node.step(snap(10, 10, false));
    f.sent();
    f.node.step(snap(20, 10, true));
    expect(f.got).toEqual([[0, 10], [10, 10], [20, 10]]);
    expect(f.sent()).toMatchObject([{ type: MessageType.AppResp, index: 50 }]);
    const rd = f.node.ready();
    expect(rd.snapshot).toMatchObject({ meta, streamed: true });
    expect(rd.snapshot!.data.length).toBe(0);
    expect(rd.committedEntries).toEqual([]);
  });

  it('drops a refused chunk unanswered (the leader resends it later) and installs nothing the host does not accept', () => {
    let refuse = true;
    const f = follower(() => !refuse);
    f.node.step(snap(0, 10, false));
    expect(f.sent()).toEqual([]);
    expect(f.node.raft.droppedMessages).toBe(1);
    refuse = false;
    f.node.step(snap(0, 10, false));
    f.node.step(snap(10, 20, true));
    expect(f.node.ready().snapshot?.streamed).toBe(true);

    const g = follower(() => true, false);
    g.node.step(snap(0, 10, false));
    g.node.step(snap(10, 20, true));
    expect(g.sent().at(-1)).toMatchObject({ type: MessageType.AppResp, index: 0 });
    expect(g.node.hasReady() && g.node.ready().snapshot).toBeFalsy();
  });
});
