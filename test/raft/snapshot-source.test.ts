/**
 * A leader's Raft core sending a streamed snapshot (its Storage returns one without data): it asks
 * its host for each chunk at the follower's offset (`Ready.snapshotReads`) and sends what the host
 * hands back (`RawNode.snapshotChunk`), with `total` and the end checksum only on the last chunk;
 * stale answers are ignored; a follower refusing the final chunk (checksum) makes the transfer
 * start over from offset 0; a leadership change drops the reads and the transfers.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage, MessageType, RawNode, Role, SeededRandom, type Message, type Snapshot, type SnapshotRead, type Storage } from '../../src/raft/index.js';
import { compactedLeaderStorage, readyRound } from '../support/raft-rounds.js';

const conf = { voters: [1, 2], learners: [] };
const DATA = Uint8Array.from({ length: 25 }, (_, i) => i + 1);
const CRC = 0xdeadbeef;
const CHUNK = 10;

/** The leader's storage: a log compacted at 50 (term 3) whose snapshot is streamed (no data). */
const leaderStorage = (s: MemoryStorage): Storage => compactedLeaderStorage(s, conf, new Uint8Array([1]), true);

function pair(opts: { acceptCrc?: number } = {}) {
  const mem = new Map([[1, new MemoryStorage(conf)], [2, new MemoryStorage(conf)]]);
  const leader = new RawNode({ id: 1, storage: leaderStorage(mem.get(1)!), random: new SeededRandom(1), snapshotChunkBytes: CHUNK, applied: 50 });
  const received: Uint8Array[] = [];
  const accepted: Snapshot[] = [];
  const follower = new RawNode({
    id: 2,
    storage: mem.get(2)!,
    random: new SeededRandom(2),
    snapshotSink: {
      chunk: (_m, offset, bytes) => {
        if (offset === 0) received.length = 0;
        received.push(bytes.slice());
        return true;
      },
    },
    acceptSnapshot: (s) => {
      accepted.push(s);
      return s.crc === (opts.acceptCrc ?? CRC) && Buffer.concat(received).equals(Buffer.from(DATA));
    },
  });
  const nodes = new Map([[1, leader], [2, follower]]);
  const reads: SnapshotRead[] = [];
  const wire: Message[] = [];
  /** One round on every node: take its Ready, queue its messages and reads, advance. */
  const round = (): void =>
    readyRound(nodes, mem, (msgs, rs) => {
      wire.push(...msgs);
      reads.push(...rs);
    });
  const deliver = (filter: (m: Message) => Message | undefined = (m) => m): void => {
    for (const m of wire.splice(0)) {
      const f = filter(m);
      if (f) nodes.get(f.to)!.step(f);
    }
  };
  /** The host's answer to a read: the bytes of DATA at its offset. */
  const answer = (r: SnapshotRead, over: { bytes?: Uint8Array } = {}): boolean => {
    const end = Math.min(DATA.length, r.offset + CHUNK);
    const last = end === DATA.length;
    return leader.snapshotChunk({ to: r.to, index: r.meta.index, offset: r.offset, bytes: over.bytes ?? DATA.subarray(r.offset, end), last, ...(last ? { crc: CRC } : {}) });
  };
  return { leader, follower, reads, wire, round, deliver, answer, accepted, received };
}

/** Elects node 1 and runs until it asks for the first chunk. */
function untilFirstRead(p: ReturnType<typeof pair>): void {
  p.leader.campaign();
  for (let i = 0; i < 10 && p.reads.length === 0; i++) {
    p.round();
    p.deliver();
  }
  expect(p.leader.raft.role).toBe(Role.Leader);
  expect(p.reads).toEqual([{ to: 2, meta: { index: 50, term: 3, conf }, offset: 0 }]);
}

describe('a leader sending a streamed snapshot', () => {
  it('asks its host for each chunk at the follower\'s offset and sends total and the end checksum with the last one only', () => {
    const p = pair();
    untilFirstRead(p);
    expect(p.leader.snapshotTransfers()).toEqual([{ to: 2, index: 50 }]);
    const sent: Message[] = [];
    for (let k = 0; k < 3; k++) {
      p.round(); // the leader's request for the next chunk
      const r = p.reads.shift()!;
      expect(r.offset).toBe(k * CHUNK);
      expect(p.answer(r)).toBe(true);
      expect(p.answer(r)).toBe(false); // answered already: a duplicate is stale
      p.round();
      sent.push(...p.wire.filter((m) => m.type === MessageType.Snap));
      p.deliver();
      p.round(); // the follower's acknowledgement, or its install
      p.deliver();
    }
    expect(sent.map((m) => [m.offset, m.chunk!.length, m.done ?? false, m.total, m.crc])).toEqual([
      [0, 10, false, undefined, undefined],
      [10, 10, false, undefined, undefined],
      [20, 5, true, 25, CRC],
    ]);
    expect(p.accepted).toHaveLength(1);
    expect(p.accepted[0]).toMatchObject({ streamed: true, crc: CRC, meta: { index: 50 } });
    for (let i = 0; i < 5; i++) {
      p.round();
      p.deliver();
    }
    expect(p.leader.raft.progress(2)?.match).toBe(p.leader.raft.log.lastIndex()); // 54: the new term's no-op replicated after the snapshot
    expect(p.leader.snapshotTransfers()).toEqual([]);
  });

  it('ignores answers for another offset or snapshot, and a follower refusing the final chunk makes the transfer start over at 0', () => {
    const p = pair({ acceptCrc: CRC });
    untilFirstRead(p);
    const r0 = p.reads.shift()!;
    expect(p.leader.snapshotChunk({ to: 2, index: 49, offset: 0, bytes: DATA.subarray(0, 10), last: false })).toBe(false);
    expect(p.leader.snapshotChunk({ to: 2, index: 50, offset: 10, bytes: DATA.subarray(10, 20), last: false })).toBe(false);
    expect(p.leader.snapshotChunk({ to: 3, index: 50, offset: 0, bytes: DATA.subarray(0, 10), last: false })).toBe(false);
    expect(p.answer(r0)).toBe(true);
    for (const _ of [1, 2]) {
      p.round();
      p.deliver();
      p.round();
      p.deliver();
      p.round();
      expect(p.answer(p.reads.shift()!)).toBe(true);
    }
    // The final chunk arrives with a corrupted end checksum: the follower's host refuses the snapshot.
    p.round();
    p.deliver((m) => (m.type === MessageType.Snap && m.done ? { ...m, crc: 1 } : m));
    expect(p.accepted.at(-1)?.crc).toBe(1);
    expect(p.follower.raft.log.committed).toBe(0);
    // The leader resends from the acknowledged offset; the follower has no transfer any more and asks for 0.
    for (let i = 0; i < 6 && !p.reads.some((r) => r.offset === 0); i++) {
      p.leader.tick();
      p.round();
      p.deliver();
      for (const r of p.reads.splice(0)) if (r.offset !== 0) p.answer(r);
      p.round();
      p.deliver();
      p.round();
    }
    const restart = p.reads.find((r) => r.offset === 0);
    expect(restart, 'a new transfer from offset 0').toBeDefined();
  });

  it('drops its reads and transfers when it loses leadership; the new transfer of the next leader starts at 0', () => {
    const p = pair();
    untilFirstRead(p);
    p.leader.raft.becomeFollower(4, 0);
    expect(p.leader.snapshotTransfers()).toEqual([]);
    expect(p.answer(p.reads.shift()!)).toBe(false); // not a leader: stale
    expect(p.leader.hasReady() ? (p.leader.ready().snapshotReads ?? []) : []).toEqual([]);
  });
});
