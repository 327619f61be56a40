/** The conformance suite of the `Transport` seam: what every implementation (loopback, gRPC) must do, as one function run against each. */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Transport } from '../../src/node/transport.js';
import { EntryType, MessageType, type Message, type NodeId } from '../../src/raft/index.js';
import { MAX_RAFT_INDEX, MAX_RAFT_TERM } from '../../src/raft/bounds.js';

/** A set of connected transports, one per node id, as an implementation's factory builds them. */
export interface TransportCluster {
  /** The transport of each node (the ids given to the factory). */
  readonly transports: ReadonlyMap<NodeId, Transport>;
  /** Takes a node down: closes its transport and whatever listens for it. */
  stop(id: NodeId): Promise<void>;
  /**
   * Brings a stopped node back with a new transport (a restarted process; it may listen at a new
   * address, which its peers learn through `setPeer`, as they would from the cluster map).
   */
  restart(id: NodeId): Promise<Transport>;
  /** Releases everything (transports already stopped are skipped). */
  close(): Promise<void>;
}

/** Builds connected transports for `ids`. */
export type TransportFactory = (ids: readonly NodeId[]) => Promise<TransportCluster>;

const enc = new TextEncoder();

/** Polls `cond` until it holds, failing after `ms`. */
export async function until(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what} not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** Turns bytes into a tagged hex string and drops undefined fields, so messages compare by value whatever byte class a transport hands back. */
export function norm(v: unknown): unknown {
  if (ArrayBuffer.isView(v)) return `bytes:${Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex')}`;
  if (Array.isArray(v)) return v.map(norm);
  if (typeof v === 'object' && v !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = norm(x);
    return out;
  }
  return v;
}

/** One well-formed message of each kind a replica sends to a peer, with every field its type carries set. */
export function sampleMessages(from: NodeId, to: NodeId, group: number): Message[] {
  const conf = { voters: [1, 2, 3], learners: [4] };
  return [
    {
      type: MessageType.App, group, from, to, term: 7, index: 10, logTerm: 6, commit: 9,
      entries: [
        { index: 11, term: 6, type: EntryType.Normal, data: enc.encode('put /a') },
        { index: 12, term: 7, type: EntryType.Normal, data: new Uint8Array(0) },
        { index: 13, term: 7, type: EntryType.Normal, data: new Uint8Array([0, 255, 1, 128]) },
      ],
    },
    { type: MessageType.App, group, from, to, term: 7, index: 13, logTerm: 7, commit: 13 },
    { type: MessageType.AppResp, group, from, to, term: 7, index: 5, reject: true, rejectHint: 4, logTerm: 3 },
    { type: MessageType.AppResp, group, from, to, term: 7, index: 13 },
    { type: MessageType.Vote, group, from, to, term: 8, index: 13, logTerm: 7, context: 'transfer' },
    { type: MessageType.PreVoteResp, group, from, to, term: 9, reject: true },
    { type: MessageType.Heartbeat, group, from, to, term: 7, commit: 12, context: 'read-42' },
    { type: MessageType.HeartbeatResp, group, from, to, term: 7, context: 'read-42' },
    {
      type: MessageType.Snap, group, from, to, term: 7, snapshot: { index: 100, term: 6, conf },
      offset: 4, chunk: new Uint8Array([9, 8, 7, 6]), done: true, total: 8,
    },
    { type: MessageType.SnapChunkResp, group, from, to, term: 7, snapshot: { index: 100, term: 6, conf }, offset: 8 },
    { type: MessageType.ReadIndex, group, from, to, term: 0, context: 'ri-1' },
    { type: MessageType.ReadIndexResp, group, from, to, term: 7, index: 12, context: 'ri-1' },
    { type: MessageType.TransferLeader, group, from, to, term: 0, transferee: to },
    { type: MessageType.TimeoutNow, group, from, to, term: 7 },
    { type: MessageType.Prop, group, from, to, term: 0, entries: [{ index: 0, term: 0, type: EntryType.Normal, data: enc.encode('p') }] },
  ];
}

/** Runs the Transport conformance suite against the implementation `factory` builds. */
export function transportConformance(name: string, factory: TransportFactory): void {
  describe(`Transport conformance: ${name}`, () => {
    const IDS = [1, 2, 3];
    let cluster: TransportCluster;
    const inbox = new Map<NodeId, Message[]>();
    const unreachable: NodeId[] = [];

    beforeAll(async () => {
      cluster = await factory(IDS);
      for (const id of IDS) {
        inbox.set(id, []);
        const t = cluster.transports.get(id)!;
        t.onMessages((ms) => inbox.get(id)!.push(...ms));
        t.onUnreachable((peer) => unreachable.push(peer));
      }
    });
    afterAll(async () => {
      await cluster?.close();
    });
    const t = (id: NodeId): Transport => cluster.transports.get(id)!;
    const clear = (): void => {
      for (const box of inbox.values()) box.length = 0;
    };

    it('delivers each message to its `to` node only, with every field intact', async () => {
      clear();
      const toTwo = sampleMessages(1, 2, 5);
      const toThree = sampleMessages(1, 3, 0xffff_ffff);
      t(1).send([...toTwo, ...toThree]);
      await until(() => inbox.get(2)!.length >= toTwo.length && inbox.get(3)!.length >= toThree.length, 5000, 'delivery');
      await new Promise((r) => setTimeout(r, 20)); // nothing extra arrives after
      expect(inbox.get(2)!.map(norm)).toMatchObject(toTwo.map(norm));
      expect(inbox.get(3)!.map(norm)).toMatchObject(toThree.map(norm));
      expect(inbox.get(1)).toEqual([]);
      for (const m of [...inbox.get(2)!, ...inbox.get(3)!]) expect(m.from).toBe(1);
    });

    it('random append messages (any group, terms and indexes up to their bounds, any bytes) arrive intact', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(
            fc
              .record({
                group: fc.oneof(fc.integer({ min: 0, max: 10 }), fc.constant(Number.MAX_SAFE_INTEGER), fc.maxSafeNat()),
                term: fc.integer({ min: 2, max: MAX_RAFT_TERM }),
                index: fc.integer({ min: 0, max: MAX_RAFT_INDEX - 10 }),
                commit: fc.integer({ min: 0, max: MAX_RAFT_INDEX }),
                datas: fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 4 }),
              })
              .map(({ group, term, index, commit, datas }): Message => ({
                type: MessageType.App,
                group,
                from: 1,
                to: 2,
                term,
                index,
                logTerm: term - 1,
                commit,
                entries: datas.map((data, i) => ({ index: index + 1 + i, term, type: EntryType.Normal, data })),
              })),
            { minLength: 1, maxLength: 8 },
          ),
          async (msgs) => {
            clear();
            t(1).send(msgs);
            await until(() => inbox.get(2)!.length >= msgs.length, 5000, 'delivery');
            expect(inbox.get(2)!.map(norm)).toMatchObject(msgs.map((m) => norm({ ...m, entries: m.entries!.length > 0 ? m.entries : undefined })));
          },
        ),
        { numRuns: 30 },
      );
    });

    it('keeps the order of one sender\'s messages to one peer, across sends and groups', async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.record({ to: fc.constantFrom(2, 3), group: fc.integer({ min: 0, max: 3 }), burst: fc.integer({ min: 1, max: 20 }) }), { minLength: 1, maxLength: 15 }),
          async (sends) => {
            clear();
            let seq = 0;
            const expected = new Map<NodeId, number[]>([[2, []], [3, []]]);
            for (const s of sends) {
              const batch: Message[] = [];
              for (let i = 0; i < s.burst; i++) {
                seq++;
                batch.push({ type: MessageType.Heartbeat, group: s.group, from: 1, to: s.to, term: 1, commit: seq });
                expected.get(s.to)!.push(seq);
              }
              t(1).send(batch);
            }
            await until(() => inbox.get(2)!.length >= expected.get(2)!.length && inbox.get(3)!.length >= expected.get(3)!.length, 5000, 'delivery');
            expect(inbox.get(2)!.map((m) => m.commit)).toEqual(expected.get(2));
            expect(inbox.get(3)!.map((m) => m.commit)).toEqual(expected.get(3));
          },
        ),
        { numRuns: 25 },
      );
    });

    it('carries traffic both ways and between every pair at once', async () => {
      clear();
      for (const from of IDS) for (const to of IDS) if (from !== to) t(from).send([{ type: MessageType.HeartbeatResp, group: 1, from, to, term: 3 }]);
      await until(() => IDS.every((id) => inbox.get(id)!.length >= 2), 5000, 'delivery');
      for (const id of IDS) expect(inbox.get(id)!.map((m) => m.from).sort()).toEqual(IDS.filter((x) => x !== id));
    });

    it('does not throw on an empty send or a message to an unknown node', async () => {
      clear();
      expect(() => t(1).send([])).not.toThrow();
      expect(() => t(1).send([{ type: MessageType.Heartbeat, group: 1, from: 1, to: 99, term: 1, commit: 0 }])).not.toThrow();
      // The transport still works after that.
      t(1).send([{ type: MessageType.Heartbeat, group: 1, from: 1, to: 2, term: 1, commit: 77 }]);
      await until(() => inbox.get(2)!.length >= 1, 5000, 'delivery');
      expect(inbox.get(2)!.map((m) => m.commit)).toEqual([77]);
    });

    it('a message to a node that went down is dropped or reported, never thrown, and the others keep working', async () => {
      clear();
      await cluster.stop(3);
      const before = unreachable.length;
      for (let i = 0; i < 5; i++) {
        expect(() => t(1).send([{ type: MessageType.Heartbeat, group: 1, from: 1, to: 3, term: 1, commit: i }])).not.toThrow();
        await new Promise((r) => setTimeout(r, 5));
      }
      t(1).send([{ type: MessageType.Heartbeat, group: 1, from: 1, to: 2, term: 1, commit: 5 }]);
      await until(() => inbox.get(2)!.length >= 1, 5000, 'delivery');
      expect(inbox.get(3)).toEqual([]);
      // A report, when the implementation gives one, names only the down peer.
      expect(unreachable.slice(before).every((p) => p === 3)).toBe(true);
    });

    it('a node that comes back after being down receives again (the sender keeps no stuck state)', async () => {
      clear();
      const back = await cluster.restart(3);
      const got: Message[] = [];
      back.onMessages((ms) => got.push(...ms));
      // Best effort: a sender may drop while it reconnects, so it re-sends as Raft would, until one arrives.
      const deadline = Date.now() + 8000;
      let n = 0;
      while (got.length === 0) {
        if (Date.now() > deadline) throw new Error('no delivery to the restarted node within 8 s');
        t(1).send([{ type: MessageType.Heartbeat, group: 1, from: 1, to: 3, term: 2, commit: ++n }]);
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(got[0]).toMatchObject({ type: MessageType.Heartbeat, from: 1, to: 3, term: 2 });
      // And in order from then on.
      const start = got.length;
      const batch = Array.from({ length: 50 }, (_, i): Message => ({ type: MessageType.Heartbeat, group: 1, from: 1, to: 3, term: 3, commit: 1000 + i }));
      t(1).send(batch);
      await until(() => got.filter((m) => m.term === 3).length >= 50, 5000, 'delivery after restart');
      expect(got.slice(start).filter((m) => m.term === 3).map((m) => m.commit)).toEqual(batch.map((m) => m.commit));
    });

    it('carries a large snapshot chunk (1 MiB) intact', async () => {
      clear();
      const chunk = new Uint8Array(1 << 20).map((_, i) => (i * 31 + 7) & 0xff);
      const m: Message = { type: MessageType.Snap, group: 2, from: 1, to: 2, term: 4, snapshot: { index: 9, term: 3, conf: { voters: [1, 2, 3], learners: [] } }, offset: 0, chunk, done: true, total: chunk.length };
      t(1).send([m]);
      await until(() => inbox.get(2)!.length >= 1, 5000, 'delivery');
      expect(norm(inbox.get(2)![0])).toMatchObject(norm(m) as object);
    });

    it('after close a transport neither delivers what it is sent nor throws on send, and close is idempotent', async () => {
      clear();
      const t2 = t(2);
      await t2.close();
      await expect(t2.close()).resolves.toBeUndefined();
      expect(() => t2.send([{ type: MessageType.Heartbeat, group: 1, from: 2, to: 1, term: 1, commit: 1 }])).not.toThrow();
      t(1).send([{ type: MessageType.Heartbeat, group: 1, from: 1, to: 2, term: 1, commit: 2 }]);
      await new Promise((r) => setTimeout(r, 100));
      expect(inbox.get(2)).toEqual([]);
      expect(inbox.get(1)).toEqual([]);
    });
  });
}
