/**
 * The receiving side of the gRPC peer transport, on a real loopback server: a stream is bound to
 * one sending node (here, without TLS, the first batch's sender; under mutual TLS the
 * certificate's node), and batches or messages claiming anyone else never reach Raft.
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GrpcPeerTransport, loadPeerProto, type PeerAuthenticator } from '../../src/node/grpc-transport.js';
import type { Message } from '../../src/raft/index.js';
import { silentLogger } from '../../src/log.js';

const SELF = 1;
const MEMBERS = new Set([1, 2, 3]);

let server: grpc.Server;
let transport: GrpcPeerTransport;
let received: Message[];
let address: string;
let identity: ReturnType<PeerAuthenticator>;
/** The map epoch the server under test names when it refuses a non-member. */
const SERVER_MAP_EPOCH = 42;

async function serve(): Promise<void> {
  server = new grpc.Server();
  transport = new GrpcPeerTransport(SELF, new Map(), { log: silentLogger() });
  received = [];
  transport.onMessages((ms) => received.push(...ms));
  transport.register(server, { isMember: (id) => MEMBERS.has(id), mapEpoch: () => SERVER_MAP_EPOCH, authenticate: () => identity });
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  address = `127.0.0.1:${port}`;
}

beforeEach(async () => {
  identity = 'unauthenticated';
  await serve();
});

afterEach(async () => {
  await transport.close();
  server.forceShutdown();
});

type Stream = grpc.ClientDuplexStream<unknown, unknown>;

/** Opens a raw Peer.Raft stream to the server under test. */
function open(): { stream: Stream; ended: Promise<{ code: number; details: string }>; close(): void } {
  const pkg = loadPeerProto() as unknown as { kvcascade: { v1: { peer: { Peer: grpc.ServiceClientConstructor } } } };
  const client = new pkg.kvcascade.v1.peer.Peer(address, grpc.credentials.createInsecure()) as unknown as grpc.Client & { raft(): Stream };
  const stream = client.raft();
  stream.on('data', () => {});
  const ended = new Promise<{ code: number; details: string }>((resolve) => {
    stream.on('error', (e: grpc.ServiceError) => resolve({ code: e.code, details: e.details }));
    stream.on('end', () => resolve({ code: grpc.status.OK, details: 'ended' }));
  });
  return { stream, ended, close: () => client.close() };
}

const heartbeat = (from: number, to = SELF) => ({ type: 'Heartbeat', group: 1, from, to, term: 5, commit: 0 });

/** Resolves once the transport has handed `n` messages to Raft (or counted `n` rejections). */
async function until(cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met within 5 s');
    await new Promise((r) => setImmediate(r));
  }
}

describe('peer transport, receiving side', () => {
  it('delivers a member\'s own messages', async () => {
    const s = open();
    s.stream.write({ fromNode: 2, seq: 1, messages: [heartbeat(2)] });
    await until(() => received.length === 1);
    expect(received[0]).toMatchObject({ type: 'Heartbeat', from: 2, to: SELF, term: 5 });
    s.close();
  });

  it('drops a message whose from is not the batch sender, and one addressed to another node', async () => {
    const s = open();
    s.stream.write({ fromNode: 2, seq: 1, messages: [heartbeat(3), heartbeat(2, 3), heartbeat(2)] });
    await until(() => received.length === 1);
    expect(received.map((m) => m.from)).toEqual([2]);
    expect(transport.rejectedMessages).toBe(2);
    s.close();
  });

  it('ends a stream whose batches switch sender, claim this node, or come from a non-member', async () => {
    for (const [first, second] of [
      [2, 3],
      [SELF, SELF],
      [9, 9],
    ] as const) {
      const s = open();
      s.stream.write({ fromNode: first, seq: 1, messages: [] });
      if (first !== second || first === SELF) s.stream.write({ fromNode: second, seq: 2, messages: [heartbeat(second)] });
      const end = await s.ended;
      expect(end.code).toBe(grpc.status.PERMISSION_DENIED);
      s.close();
    }
    expect(received).toEqual([]);
    expect(transport.rejectedBatches).toBe(3);
  });

  it('under TLS binds the stream to the certificate\'s node and refuses callers without one', async () => {
    identity = 3;
    const impostor = open();
    impostor.stream.write({ fromNode: 2, seq: 1, messages: [heartbeat(2)] });
    expect((await impostor.ended).code).toBe(grpc.status.PERMISSION_DENIED);
    impostor.close();
    const honest = open();
    honest.stream.write({ fromNode: 3, seq: 1, messages: [heartbeat(3)] });
    await until(() => received.length === 1);
    honest.close();
    identity = undefined;
    const anonymous = open();
    anonymous.stream.write({ fromNode: 3, seq: 1, messages: [heartbeat(3)] });
    expect((await anonymous.ended).code).toBe(grpc.status.UNAUTHENTICATED);
    anonymous.close();
    expect(received.map((m) => m.from)).toEqual([3]);
  });

  it('tells a non-member dialler it was refused, with this node\'s map epoch; a member is never told so', async () => {
    const outsider = new GrpcPeerTransport(9, new Map([[SELF, address]]), { log: silentLogger() });
    const member = new GrpcPeerTransport(2, new Map([[SELF, address]]), { log: silentLogger() });
    try {
      const refusals: { by: number; mapEpoch: number }[] = [];
      member.onRefusedAsNonMember((r) => refusals.push({ ...r }));
      const refused = new Promise<{ by: number; mapEpoch: number }>((resolve) => outsider.onRefusedAsNonMember(resolve));
      outsider.send([heartbeat(9) as unknown as Message]);
      member.send([heartbeat(2) as unknown as Message]);
      expect(await refused).toEqual({ by: SELF, mapEpoch: SERVER_MAP_EPOCH });
      await until(() => received.some((m) => m.from === 2));
      expect(refusals).toEqual([]);
      expect(received.some((m) => m.from === 9)).toBe(false);
    } finally {
      await outsider.close();
      await member.close();
    }
  });
});

describe('peer transport, sending side', () => {
  it("sends a refused vote's commit point to a peer that reads it, and strips it for a peer of an older version", async () => {
    // An "older" peer: the Peer service announcing nothing in its headers (no packed batches, no
    // commit points), recording the wire messages it receives.
    const pkg = loadPeerProto() as unknown as { kvcascade: { v1: { peer: { Peer: grpc.ServiceClientConstructor } } } };
    const older = new grpc.Server();
    const got: Record<string, unknown>[] = [];
    older.addService(pkg.kvcascade.v1.peer.Peer.service, {
      Raft: (call: grpc.ServerDuplexStream<{ messages?: Record<string, unknown>[] }, unknown>) => {
        call.sendMetadata(new grpc.Metadata());
        call.on('data', (b) => got.push(...(b.messages ?? [])));
      },
    });
    const olderPort = await new Promise<number>((res, rej) => older.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
    const sender = new GrpcPeerTransport(2, new Map([[SELF, address], [3, `127.0.0.1:${olderPort}`]]), { log: silentLogger() });
    const refusal = (to: number): Message => ({ type: 'VoteResp' as Message['type'], group: 1, from: 2, to, term: 5, reject: true, commit: 26, logTerm: 3 });
    try {
      // The first batches of a stream go out before the receiver's headers arrive (without the
      // commit point): resend until the current peer has one with it (Raft resends too).
      await until(() => {
        const done = received.some((m) => m.type === 'VoteResp' && m.commit !== undefined) && got.length > 0;
        if (!done) sender.send([refusal(SELF), refusal(3)]);
        return done;
      });
      expect(received.find((m) => m.type === 'VoteResp' && m.commit !== undefined)).toMatchObject({ commit: 26, logTerm: 3, reject: true });
      expect(got.every((m) => !m['commit'] && !m['logTerm'])).toBe(true);
      expect(got[got.length - 1]).toMatchObject({ type: 'VoteResp', reject: true });
    } finally {
      await sender.close();
      older.forceShutdown();
    }
  });
});

describe('peer transport, a peer coming back', () => {
  it('dials a peer at once when it opens a stream to this node, not after the backoff its downtime built up', async () => {
    // Node 2's address, with nothing listening there yet (node 2 is down).
    const probe = new grpc.Server();
    const port2 = await new Promise<number>((res, rej) => probe.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
    probe.forceShutdown();
    const address2 = `127.0.0.1:${port2}`;
    const one = new GrpcPeerTransport(SELF, new Map([[2, address2]]), { log: silentLogger() });
    const fromOne: Message[] = [];
    let server2: grpc.Server | undefined;
    let two: GrpcPeerTransport | undefined;
    try {
      // Node 1 keeps sending to node 2 while it is down: its redial backoff grows to its longest (1 s).
      const downUntil = Date.now() + 2500;
      while (Date.now() < downUntil) {
        one.send([heartbeat(SELF, 2) as unknown as Message]);
        await new Promise((r) => setTimeout(r, 25));
      }
      // Node 1's server stands in for node 1's peer listener (the suite's `transport` is node 1's receiving side).
      const server1 = new grpc.Server();
      one.register(server1, { isMember: (id) => MEMBERS.has(id), authenticate: () => 'unauthenticated' });
      const port1 = await new Promise<number>((res, rej) => server1.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
      const heardTwo: Message[] = [];
      one.onMessages((ms) => heardTwo.push(...ms));
      try {
        // Node 2 comes back and talks to node 1 first.
        server2 = new grpc.Server();
        two = new GrpcPeerTransport(2, new Map([[SELF, `127.0.0.1:${port1}`]]), { log: silentLogger() });
        two.onMessages((ms) => fromOne.push(...ms));
        two.register(server2, { isMember: (id) => MEMBERS.has(id), authenticate: () => 'unauthenticated' });
        await new Promise<number>((res, rej) => server2!.bindAsync(address2, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
        two.send([heartbeat(2) as unknown as Message]);
        await until(() => heardTwo.length > 0);
        // Node 1's next message reaches it (before: dropped while node 1 waited out its backoff).
        one.send([heartbeat(SELF, 2) as unknown as Message]);
        const deadline = Date.now() + 400;
        while (fromOne.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
        expect(fromOne.map((m) => m.from)).toEqual([SELF]);
      } finally {
        server1.forceShutdown();
      }
    } finally {
      await one.close();
      await two?.close();
      server2?.forceShutdown();
    }
  }, 15_000);
});
