/**
 * A window of snapshot chunks in flight (`RaftConfig.snapshotChunksInFlight`): the leader keeps up
 * to N chunks travelling to a follower, which takes a chunk only at its received offset and answers
 * a gap with that offset; the leader resends from there once (the rejections of the rest of the
 * window name the same offset), and a transfer that does not advance for two heartbeat responses
 * is resent from the acknowledged offset. Both kinds of snapshot: held in memory (the follower
 * joins the chunks) and streamed (the leader's host reads each chunk on request, the follower's
 * sink stores them). Whatever is lost, duplicated or reordered, the follower installs exactly the
 * leader's bytes.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MemoryStorage, MessageType, RawNode, Role, SeededRandom, type Message, type SnapshotRead, type Storage } from '../../src/raft/index.js';
import { compactedLeaderStorage, readyRound } from '../support/raft-rounds.js';

const conf = { voters: [1, 2], learners: [] };
const CRC = 0x1234abcd;

interface Opts {
  readonly window: number;
  readonly chunk: number;
  readonly size: number;
  readonly streamed: boolean;
}

/** The leader's storage: a log compacted at 50 (term 3) whose snapshot holds `data` (or is streamed: no data). */
const leaderStorage = (s: MemoryStorage, data: Uint8Array, streamed: boolean): Storage => compactedLeaderStorage(s, conf, data, streamed);

/** A leader and a follower joined by a wire the test controls (it may drop, duplicate or reorder snapshot messages). */
function pair(o: Opts) {
  const data = Uint8Array.from({ length: o.size }, (_, i) => (i * 7 + 3) % 251);
  const mem = new Map([[1, new MemoryStorage(conf)], [2, new MemoryStorage(conf)]]);
  const leader = new RawNode({ id: 1, storage: leaderStorage(mem.get(1)!, data, o.streamed), random: new SeededRandom(1), snapshotChunkBytes: o.chunk, snapshotChunksInFlight: o.window, applied: 50 });
  /** What the follower's sink took, in order (streamed). */
  const taken: Array<[number, Uint8Array]> = [];
  const installed: Uint8Array[] = [];
  const follower = new RawNode({
    id: 2,
    storage: mem.get(2)!,
    random: new SeededRandom(2),
    ...(o.streamed
      ? {
          snapshotSink: {
            chunk: (_m, offset, bytes) => {
              if (offset === 0) taken.length = 0;
              taken.push([offset, bytes.slice()]);
              return true;
            },
          },
        }
      : {}),
    acceptSnapshot: (s) => {
      installed.push(s.streamed ? Buffer.concat(taken.map(([, b]) => b)) : s.data.slice());
      return true;
    },
  });
  const nodes = new Map([[1, leader], [2, follower]]);
  const reads: SnapshotRead[] = [];
  const wire: Message[] = [];
  const snapsSent: Message[] = [];
  const round = (): void =>
    readyRound(nodes, mem, (msgs, rs) => {
      wire.push(...msgs);
      snapsSent.push(...msgs.filter((m) => m.type === MessageType.Snap));
      reads.push(...rs);
    });
  /** The leader's host answers every read asked: the bytes of the snapshot at its offset. */
  const answerReads = (): void => {
    for (const r of reads.splice(0)) {
      const end = Math.min(data.length, r.offset + o.chunk);
      const last = end === data.length;
      leader.snapshotChunk({ to: r.to, index: r.meta.index, offset: r.offset, bytes: data.subarray(r.offset, end), last, ...(last ? { crc: CRC } : {}) });
    }
  };
  const step = (m: Message): void => nodes.get(m.to)!.step(m);
  /** Rounds, reads answered and every message delivered in order, `n` times. */
  const settle = (n = 1): void => {
    for (let i = 0; i < n; i++) {
      round();
      answerReads();
      round();
      for (const m of wire.splice(0)) step(m);
    }
  };
  const done = (): boolean => follower.raft.log.committed >= 50;
  return { data, leader, follower, wire, snapsSent, installed, taken, round, answerReads, step, settle, done };
}

/** Elects node 1 (messages delivered in order) until its first snapshot chunks are on the wire. */
function elect(p: ReturnType<typeof pair>): void {
  p.leader.campaign();
  for (let i = 0; i < 10 && !p.wire.some((m) => m.type === MessageType.Snap); i++) {
    p.round();
    p.answerReads();
    p.round();
    const out = p.wire.splice(0);
    for (const m of out) {
      if (m.type === MessageType.Snap) p.wire.push(m);
      else p.step(m);
    }
  }
  expect(p.leader.raft.role).toBe(Role.Leader);
}

const offsetsOf = (ms: readonly Message[]): number[] => ms.map((m) => m.offset ?? 0);

/** Elects node 1 and lets it fill its window (the streamed host answering each read); returns the chunks then on the wire. */
function electAndFill(p: ReturnType<typeof pair>, window: number): Message[] {
  elect(p);
  for (let i = 0; i < window; i++) {
    p.round();
    p.answerReads();
  }
  p.round();
  return p.wire.filter((m) => m.type === MessageType.Snap);
}

for (const streamed of [false, true]) {
  describe(`a window of snapshot chunks (${streamed ? 'streamed' : 'in memory'})`, () => {
    it('keeps the window full before any acknowledgement, and a transfer delivered in order completes with the leader\'s bytes', () => {
      const p = pair({ window: 4, chunk: 10, size: 95, streamed });
      // Before the follower answered anything, four chunks are out (streamed: one more is asked as each answer comes back, so all four go once the reads are answered).
      expect(offsetsOf(electAndFill(p, 4))).toEqual([0, 10, 20, 30]);
      for (let i = 0; i < 20 && !p.done(); i++) p.settle();
      expect(p.done()).toBe(true);
      expect(p.installed).toHaveLength(1);
      expect(Buffer.from(p.installed[0]!).equals(Buffer.from(p.data))).toBe(true);
      // Every chunk went exactly once.
      expect(offsetsOf(p.snapsSent)).toEqual([0, 10, 20, 30, 40, 50, 60, 70, 80, 90]);
      for (let i = 0; i < 5; i++) p.settle();
      expect(p.leader.raft.progress(2)?.match).toBe(p.leader.raft.log.lastIndex());
    });

    it('a lost middle chunk is resent once from the follower\'s offset; the installed snapshot is byte-identical', () => {
      const p = pair({ window: 4, chunk: 10, size: 95, streamed });
      elect(p);
      let dropped = false;
      for (let i = 0; i < 30 && !p.done(); i++) {
        p.round();
        p.answerReads();
        p.round();
        for (const m of p.wire.splice(0)) {
          if (!dropped && m.type === MessageType.Snap && m.offset === 20) {
            dropped = true;
            continue;
          }
          p.step(m);
        }
      }
      expect(dropped).toBe(true);
      expect(p.done()).toBe(true);
      expect(Buffer.from(p.installed[0]!).equals(Buffer.from(p.data))).toBe(true);
      // Chunk 20 went twice (lost, then resent after the follower's rejection); the rejections of 30 and 40 naming 20 caused one resend, not two.
      const sent = offsetsOf(p.snapsSent);
      expect(sent.filter((o) => o === 20)).toHaveLength(2);
      expect(sent.filter((o) => o === 30)).toHaveLength(2);
      expect(sent.filter((o) => o === 90)).toHaveLength(1);
      if (streamed) expect(p.taken.map(([o]) => o)).toEqual([0, 10, 20, 30, 40, 50, 60, 70, 80, 90]);
    });

    it('ignores duplicated and reordered chunks: the follower takes each offset once, in order', () => {
      const p = pair({ window: 4, chunk: 10, size: 95, streamed });
      const [c0, c10, c20, c30] = electAndFill(p, 4);
      p.wire.length = 0;
      // 0, 0 again, 20 before 10, 10, 10 again, 30.
      for (const m of [c0!, c0!, c20!, c10!, c10!, c30!]) p.step(m);
      const answers = p.follower.raft.msgs.filter((m) => m.type === MessageType.SnapChunkResp);
      expect(answers.map((m) => [m.offset, m.reject])).toEqual([[10, false], [10, false], [10, true], [20, false], [20, false], [20, true]]);
      for (let i = 0; i < 30 && !p.done(); i++) p.settle();
      expect(p.done()).toBe(true);
      expect(Buffer.from(p.installed[0]!).equals(Buffer.from(p.data))).toBe(true);
      if (streamed) expect(p.taken.map(([o]) => o)).toEqual([0, 10, 20, 30, 40, 50, 60, 70, 80, 90]);
    });

    it('a window whose chunks are all lost is resent from the acknowledged offset once no acknowledgement came for two heartbeat intervals, one chunk at a time until it advances', () => {
      const p = pair({ window: 4, chunk: 10, size: 95, streamed });
      expect(offsetsOf(electAndFill(p, 4))).toEqual([0, 10, 20, 30]);
      p.wire.length = 0; // the whole window is lost
      const before = p.snapsSent.length;
      const resentAfter: number[][] = [];
      for (let beat = 0; beat < 4; beat++) {
        p.leader.tick(); // a heartbeat; its response is delivered, snapshot chunks are held back
        for (let i = 0; i < 2; i++) {
          p.round();
          p.answerReads();
          p.round();
          for (const m of p.wire.splice(0)) if (m.type !== MessageType.Snap) p.step(m);
        }
        resentAfter.push(offsetsOf(p.snapsSent.slice(before)));
      }
      // The first response only notes the offset; two more without progress resend one chunk, from 0
      // (streamed: the host's read of it is answered in the next beat of this harness).
      expect(resentAfter.slice(0, 2)).toEqual([[], []]);
      expect(resentAfter[3]).toEqual([0]);
      // Those resends were lost too; from now on the network delivers, and heartbeats go on.
      for (let i = 0; i < 60 && !p.done(); i++) {
        p.leader.tick();
        p.settle();
      }
      expect(p.done()).toBe(true);
      expect(Buffer.from(p.installed[0]!).equals(Buffer.from(p.data))).toBe(true);
    });

    it('property: with random losses, duplicates and reorderings of chunks and their answers, the follower installs exactly the leader\'s bytes', () => {
      const op = fc.oneof(
        fc.constant({ kind: 'deliver' as const }),
        fc.constant({ kind: 'drop' as const }),
        fc.constant({ kind: 'dup' as const }),
        fc.record({ kind: fc.constant('swap' as const), at: fc.nat(8) }),
        fc.constant({ kind: 'tick' as const }),
      );
      fc.assert(
        fc.property(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 1, max: 17 }), fc.integer({ min: 1, max: 120 }), fc.array(op, { minLength: 1, maxLength: 200 }), (window, chunk, size, ops) => {
          const p = pair({ window, chunk, size, streamed });
          elect(p);
          const faulty = (m: Message): boolean => m.type === MessageType.Snap || m.type === MessageType.SnapChunkResp;
          const pump = (): void => {
            p.round();
            p.answerReads();
            p.round();
          };
          // The adversary's schedule: faults only on snapshot messages (elections stay out of it).
          for (const o of ops) {
            if (p.done()) break;
            pump();
            const i = p.wire.findIndex(faulty);
            for (const m of p.wire.filter((x) => !faulty(x))) p.step(m);
            const chunks = p.wire.filter(faulty);
            p.wire.length = 0;
            p.wire.push(...chunks);
            if (o.kind === 'tick') p.leader.tick();
            if (i < 0 || p.wire.length === 0) continue;
            if (o.kind === 'deliver') p.step(p.wire.shift()!);
            else if (o.kind === 'drop') p.wire.shift();
            else if (o.kind === 'dup') p.step(p.wire[0]!);
            else if (o.kind === 'swap') {
              const j = o.at % p.wire.length;
              p.step(p.wire.splice(j, 1)[0]!);
            }
          }
          // Then a fair network with heartbeats: the transfer must finish.
          for (let i = 0; i < 400 && !p.done(); i++) {
            if (i % 3 === 0) p.leader.tick();
            p.settle();
          }
          expect(p.done()).toBe(true);
          const last = p.installed.at(-1)!;
          expect(Buffer.from(last).equals(Buffer.from(p.data))).toBe(true);
          if (streamed) {
            // The sink took a contiguous run of chunks from 0 (after the last restart at 0).
            let at = 0;
            for (const [o, b] of p.taken) {
              expect(o).toBe(at);
              at += b.length;
            }
            expect(at).toBe(size);
          }
        }),
        { numRuns: 150, seed: 17 },
      );
    });
  });
}
