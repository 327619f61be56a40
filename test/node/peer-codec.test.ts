/**
 * Tests of the peer message codec: every rule `decodePeerMessage` enforces, one rejection at a
 * time, and fast-check properties: valid messages round-trip (also through the real protobuf
 * encoding), and arbitrary input is either accepted within the bounds or refused with a
 * PeerMessageError, never anything else.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { loadPeerProto } from '../../src/node/grpc-transport.js';
import { decodePacked, encodePacked } from '../../src/node/peer-binary.js';
import {
  decodePeerMessage,
  forOlderPeer,
  fromWire,
  withoutCommitPoint,
  MAX_PEER_CONTEXT_LENGTH,
  PeerMessageError,
  toWire,
  type PeerMessageErrorCode,
  type WireMessage,
} from '../../src/node/peer-codec.js';
import {
  ConfChangeType,
  encodeConfChange,
  EntryType,
  MAX_RAFT_INDEX,
  MAX_RAFT_TERM,
  MAX_SNAPSHOT_BYTES,
  MessageType,
  type Entry,
  type Message,
} from '../../src/raft/index.js';
import { MAX_NODE_ID } from '../../src/sharding/types.js';
import { ScenarioNetwork } from '../sim/scenario.js';

const CTX = { sender: 2, self: 1 };
const bytes = (...b: number[]): Uint8Array => new Uint8Array(b);
const cc = (type: ConfChangeType, nodeId: number): Uint8Array => encodeConfChange({ type, nodeId });

/** A valid append from 2 to 1 at term 5 after (index 10, term 4). */
function app(over: Partial<WireMessage> = {}): WireMessage {
  return {
    type: MessageType.App,
    group: 7,
    from: 2,
    to: 1,
    term: 5,
    index: 10,
    logTerm: 4,
    commit: 9,
    entries: [
      { term: 4, index: 11, type: EntryType.Normal, data: bytes(1) },
      { term: 5, index: 12, type: EntryType.ConfChange, data: cc(ConfChangeType.AddLearner, 4) },
    ],
    ...over,
  };
}

function heartbeat(over: Partial<WireMessage> = {}): WireMessage {
  return { type: MessageType.Heartbeat, group: 7, from: 2, to: 1, term: 5, commit: 3, ...over };
}

function snap(over: Partial<WireMessage> = {}): WireMessage {
  return {
    type: MessageType.Snap,
    group: 7,
    from: 2,
    to: 1,
    term: 5,
    snapshot: { index: 20, term: 4, conf: { voters: [1, 2, 3], learners: [4] } },
    offset: 4,
    chunk: bytes(1, 2, 3),
    total: 10,
    ...over,
  };
}

function rejects(w: unknown, code: PeerMessageErrorCode, ctx = CTX): PeerMessageError {
  let err: unknown;
  try {
    decodePeerMessage(w, ctx);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(PeerMessageError);
  expect((err as PeerMessageError).code).toBe(code);
  return err as PeerMessageError;
}

describe('decodePeerMessage: message types', () => {
  it('refuses the local-only types Hup and Beat', () => {
    for (const type of [MessageType.Hup, MessageType.Beat]) {
      const e = rejects({ type, group: 7, from: 2, to: 1, term: 5 }, 'local-only');
      expect(e.message).toMatch(/local to a replica/);
      rejects({ type, group: 7, from: 2, to: 1, term: 0 }, 'local-only');
    }
  });

  it('refuses unknown types and non-string types', () => {
    rejects({ ...heartbeat(), type: 'Gossip' }, 'unknown-type');
    rejects({ ...heartbeat(), type: '' }, 'unknown-type');
    rejects({ ...heartbeat(), type: 3 }, 'malformed');
    rejects({ ...heartbeat(), type: 'constructor' }, 'unknown-type');
  });

  it('refuses what is not an object', () => {
    for (const w of [null, undefined, 42, 'App', [heartbeat()]]) rejects(w, 'malformed');
  });
});

describe('decodePeerMessage: who is talking', () => {
  it('refuses a from that is not the sending node', () => {
    const e = rejects(heartbeat({ from: 3 }), 'forged-sender');
    expect(e.message).toMatch(/from 3 sent by node 2/);
  });

  it('refuses a message for another node', () => {
    rejects(heartbeat({ to: 3 }), 'wrong-recipient');
  });

  it('refuses a sender talking to itself, and a context with invalid ids', () => {
    rejects(heartbeat({ from: 1 }), 'forged-sender', { sender: 1, self: 1 });
    rejects(heartbeat(), 'malformed', { sender: 0, self: 1 });
    rejects(heartbeat(), 'malformed', { sender: 2, self: MAX_NODE_ID + 1 });
  });

  it('refuses node ids outside 1..MAX_NODE_ID and groups that are not safe integers >= 0', () => {
    rejects(heartbeat({ from: 0 }), 'out-of-bounds', { sender: 2, self: 1 });
    rejects(heartbeat({ to: MAX_NODE_ID + 1 }), 'out-of-bounds', { sender: 2, self: 1 });
    rejects(heartbeat({ from: 2.5 }), 'out-of-bounds');
    rejects(heartbeat({ group: -1 }), 'out-of-bounds');
    rejects(heartbeat({ group: 2 ** 53 }), 'out-of-bounds');
    rejects(heartbeat({ group: '7' as unknown as number }), 'out-of-bounds');
    const atMax = decodePeerMessage(heartbeat({ from: MAX_NODE_ID }), { sender: MAX_NODE_ID, self: 1 });
    expect(atMax.from).toBe(MAX_NODE_ID);
  });

  it('reads absent proto3 scalars as their defaults (group 0)', () => {
    const { group: _g, ...noGroup } = heartbeat();
    expect(decodePeerMessage(noGroup, CTX).group).toBe(0);
    const { to: _t, ...noTo } = heartbeat();
    rejects(noTo, 'out-of-bounds'); // to = 0 is no node
  });
});

describe('decodePeerMessage: terms', () => {
  it('refuses the term 2^53-1 of the attack, and everything above MAX_RAFT_TERM', () => {
    for (const term of [2 ** 53 - 1, 2 ** 53, 18446744073709552000, MAX_RAFT_TERM + 1]) {
      const e = rejects(heartbeat({ term }), 'out-of-bounds');
      expect(e.message).toMatch(/term/);
    }
    expect(decodePeerMessage(heartbeat({ term: MAX_RAFT_TERM }), CTX).term).toBe(MAX_RAFT_TERM);
    expect(decodePeerMessage(heartbeat({ term: 10 ** 12 }), CTX).term).toBe(10 ** 12);
  });

  it('refuses negative, fractional and non-numeric terms', () => {
    for (const term of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY]) rejects(heartbeat({ term }), 'out-of-bounds');
    rejects(heartbeat({ term: '5' as unknown as number }), 'malformed');
  });

  it('refuses term 0 except on the forwarded requests, which must have term 0', () => {
    rejects(heartbeat({ term: 0 }), 'out-of-bounds');
    rejects({ type: MessageType.AppResp, group: 7, from: 2, to: 1, term: 0 }, 'out-of-bounds');
    const prop = { type: MessageType.Prop, group: 7, from: 2, to: 1, term: 0, entries: [{ term: 0, index: 0, type: 0, data: bytes(1) }] };
    expect(decodePeerMessage(prop, CTX).type).toBe(MessageType.Prop);
    rejects({ ...prop, term: 3 }, 'out-of-bounds');
    rejects({ type: MessageType.ReadIndex, group: 7, from: 2, to: 1, term: 9, context: 'r1' }, 'out-of-bounds');
    rejects({ type: MessageType.TransferLeader, group: 7, from: 2, to: 1, term: 9 }, 'out-of-bounds');
  });

  it('bounds the terms and indexes inside a message', () => {
    rejects(app({ logTerm: 6 }), 'out-of-bounds'); // above the message's term
    rejects(app({ index: MAX_RAFT_INDEX + 1 }), 'out-of-bounds');
    rejects(app({ commit: 2 ** 53 - 1 }), 'out-of-bounds');
    rejects(app({ index: MAX_RAFT_INDEX - 1 }), 'out-of-bounds'); // the entries would pass the bound
    rejects({ type: MessageType.AppResp, group: 7, from: 2, to: 1, term: 5, index: 3, reject: true, rejectHint: -1 }, 'out-of-bounds');
    rejects({ type: MessageType.ReadIndexResp, group: 7, from: 2, to: 1, term: 5, index: 2 ** 60, context: 'r' }, 'out-of-bounds');
  });
});

describe('decodePeerMessage: fields per type', () => {
  it('requires what each handler relies on', () => {
    for (const f of ['index', 'logTerm', 'commit'] as const) {
      const w = app();
      delete w[f];
      rejects(w, 'missing-field');
    }
    const { commit: _c, ...hbNoCommit } = heartbeat();
    rejects(hbNoCommit, 'missing-field');
    rejects({ type: MessageType.Vote, group: 7, from: 2, to: 1, term: 5, index: 3 }, 'missing-field');
    rejects({ type: MessageType.ReadIndex, group: 7, from: 2, to: 1, term: 0 }, 'missing-field');
    rejects({ type: MessageType.ReadIndexResp, group: 7, from: 2, to: 1, term: 5, index: 3 }, 'missing-field');
    rejects({ type: MessageType.Prop, group: 7, from: 2, to: 1, term: 0 }, 'missing-field');
    rejects({ type: MessageType.Prop, group: 7, from: 2, to: 1, term: 0, entries: [] }, 'missing-field');
    rejects(snap({ snapshot: null }), 'missing-field');
    rejects({ type: MessageType.SnapChunkResp, group: 7, from: 2, to: 1, term: 5, offset: 3 }, 'missing-field');
    rejects({ type: MessageType.AppResp, group: 7, from: 2, to: 1, term: 5, index: 3, reject: true }, 'missing-field');
  });

  it('refuses fields a type never carries', () => {
    rejects(heartbeat({ entries: app().entries! }), 'unexpected-field');
    rejects(heartbeat({ chunk: bytes(1) }), 'unexpected-field');
    rejects({ type: MessageType.TimeoutNow, group: 7, from: 2, to: 1, term: 5, snapshot: snap().snapshot! }, 'unexpected-field');
    rejects({ type: MessageType.HeartbeatResp, group: 7, from: 2, to: 1, term: 5, commit: 4 }, 'unexpected-field');
    rejects({ type: MessageType.VoteResp, group: 7, from: 2, to: 1, term: 5, index: 4 }, 'unexpected-field');
  });

  it('treats proto3 empties as absent and ignores proto-loader oneof markers', () => {
    const m = decodePeerMessage({ ...heartbeat(), entries: [], chunk: bytes(), reject: false, done: false, _context: 'context' }, CTX);
    expect(m).toEqual({ type: MessageType.Heartbeat, group: 7, from: 2, to: 1, term: 5, commit: 3 });
  });

  it('refuses fields of the wrong JavaScript type', () => {
    rejects(heartbeat({ context: 5 as unknown as string }), 'malformed');
    rejects({ type: MessageType.VoteResp, group: 7, from: 2, to: 1, term: 5, reject: 'yes' }, 'malformed');
    rejects(snap({ chunk: [1, 2, 3] as unknown as Uint8Array }), 'malformed');
    rejects(app({ entries: {} as unknown as [] }), 'malformed');
    rejects(app({ entries: [null as unknown as Entry] }), 'malformed');
  });

  it('carries the quiesce flag on heartbeats only, through the proto encoding', () => {
    expect(decodePeerMessage(heartbeat({ quiesce: true }), CTX).quiesce).toBe(true);
    expect(decodePeerMessage(heartbeat({ quiesce: false }), CTX).quiesce).toBeUndefined();
    rejects(heartbeat({ quiesce: 'yes' as unknown as boolean }), 'malformed');
    rejects({ ...app(), quiesce: true }, 'unexpected-field');
    const hb = { type: MessageType.Heartbeat, group: 7, from: 2, to: 1, term: 5, commit: 3, quiesce: true };
    const rpc = (loadPeerProto() as unknown as { kvcascade: { v1: { peer: { Peer: { service: { Raft: RaftRpc } } } } } }).kvcascade.v1.peer.Peer.service.Raft;
    const [w] = rpc.requestDeserialize(rpc.requestSerialize({ fromNode: 2, seq: 1, messages: [toWire(hb)] })).messages;
    expect(decodePeerMessage(w, CTX).quiesce).toBe(true);
  });

  it('bounds the context', () => {
    rejects(heartbeat({ context: 'x'.repeat(MAX_PEER_CONTEXT_LENGTH + 1) }), 'out-of-bounds');
    expect(decodePeerMessage(heartbeat({ context: 'x'.repeat(MAX_PEER_CONTEXT_LENGTH) }), CTX).context).toHaveLength(MAX_PEER_CONTEXT_LENGTH);
    expect(decodePeerMessage(heartbeat({ context: '' }), CTX).context).toBe(''); // optional: presence kept
  });
});

describe('decodePeerMessage: entries', () => {
  it('accepts a well-formed append', () => {
    const m = decodePeerMessage(app(), CTX);
    expect(m.entries!.map((e) => [e.index, e.term, e.type])).toEqual([
      [11, 4, EntryType.Normal],
      [12, 5, EntryType.ConfChange],
    ]);
  });

  it('refuses entries that do not continue index contiguously', () => {
    const [a, b] = app().entries!;
    rejects(app({ entries: [{ ...a!, index: 12 }, { ...b!, index: 13 }] }), 'bad-entries'); // gap after index
    rejects(app({ entries: [a!, { ...b!, index: 14 }] }), 'bad-entries'); // gap inside
    rejects(app({ entries: [a!, { ...b!, index: 11 }] }), 'bad-entries'); // repeated index
    rejects(app({ entries: [{ ...b!, index: 12 }, { ...a!, index: 11 }] }), 'bad-entries'); // out of order
  });

  it('refuses entry terms that decrease, exceed the message term or precede logTerm', () => {
    const [a, b] = app().entries!;
    rejects(app({ entries: [{ ...a!, term: 5 }, { ...b!, term: 4 }] }), 'bad-entries');
    rejects(app({ entries: [a!, { ...b!, term: 6 }] }), 'bad-entries');
    rejects(app({ entries: [{ ...a!, term: 3 }, b!] }), 'bad-entries');
    rejects(app({ entries: [{ ...a!, term: MAX_RAFT_TERM + 1 }, b!] }), 'out-of-bounds');
  });

  it('refuses unknown entry types', () => {
    const [a] = app().entries!;
    for (const type of [2, -1, 0.5, 255]) rejects(app({ entries: [{ ...a!, type }] }), 'bad-entries');
  });

  it('refuses membership changes that do not decode', () => {
    const [a] = app().entries!;
    const enc = new TextEncoder();
    for (const data of [
      bytes(0xff, 0xfe),
      enc.encode('null'),
      enc.encode('{"type":0}'),
      enc.encode('{"type":"AddVoter","nodeId":3}'),
      enc.encode('{"type":7,"nodeId":3}'),
      enc.encode('{"type":0,"nodeId":0}'),
      enc.encode('{"type":0,"nodeId":1.5}'),
      enc.encode('{"type":0,"nodeId":3,"context":5}'),
      cc(ConfChangeType.AddVoter, MAX_NODE_ID + 1),
    ]) {
      rejects(app({ entries: [{ ...a!, type: EntryType.ConfChange, data }] }), 'bad-entries');
    }
  });

  it('refuses entry data that is not bytes', () => {
    const [a] = app().entries!;
    rejects(app({ entries: [{ ...a!, data: 'abc' as unknown as Uint8Array }] }), 'malformed');
  });

  it('accepts only application entries, with term and index 0, in a forwarded proposal', () => {
    const prop = (e: Partial<Entry>): WireMessage => ({
      type: MessageType.Prop,
      group: 7,
      from: 2,
      to: 1,
      term: 0,
      entries: [{ term: 0, index: 0, type: EntryType.Normal, data: bytes(1), ...e }],
    });
    expect(decodePeerMessage(prop({}), CTX).entries).toHaveLength(1);
    rejects(prop({ type: EntryType.ConfChange, data: cc(ConfChangeType.RemoveNode, 1) }), 'bad-entries');
    rejects(prop({ term: 3 }), 'bad-entries');
    rejects(prop({ index: 8 }), 'bad-entries');
  });
});

describe('decodePeerMessage: snapshots', () => {
  it('accepts a chunk inside its snapshot', () => {
    const m = decodePeerMessage(snap(), CTX);
    expect(m.snapshot).toEqual({ index: 20, term: 4, conf: { voters: [1, 2, 3], learners: [4] } });
    expect(decodePeerMessage(snap({ offset: 7, done: true }), CTX).done).toBe(true);
    // an empty snapshot: one empty, final chunk
    expect(decodePeerMessage(snap({ offset: 0, total: 0, chunk: bytes(), done: true }), CTX).total).toBe(0);
  });

  it('takes a streamed transfer: total only on the last chunk, with the end checksum', () => {
    const mid = decodePeerMessage(snap({ total: undefined }), CTX);
    expect(mid.total).toBeUndefined();
    const last = decodePeerMessage(snap({ offset: 7, total: 10, done: true, crc: 0xfedcba98 }), CTX);
    expect(last).toMatchObject({ done: true, total: 10, crc: 0xfedcba98 });
    expect(decodePeerMessage(toWire(last), CTX)).toEqual(last);
    expect(decodePacked(encodePacked([{ ...last, from: 2, to: 1 }]))[0]).toMatchObject({ crc: 0xfedcba98, total: 10, done: true });
    rejects(snap({ total: undefined, offset: 7, done: true }), 'missing-field'); // a last chunk needs its total
    rejects(snap({ crc: 5 }), 'unexpected-field'); // only the last chunk carries the end checksum
    rejects(snap({ offset: 7, done: true, crc: 2 ** 32 }), 'out-of-bounds');
    rejects(snap({ offset: 7, done: true, crc: -1 }), 'out-of-bounds');
  });

  it('adapts messages for a peer of an older version: a streamed chunk cannot go, a last chunk goes without its checksum', () => {
    const base = fromWire(snap());
    expect(forOlderPeer(base)).toBe(base);
    expect(forOlderPeer(fromWire(snap({ total: undefined })))).toBeUndefined();
    const last = fromWire(snap({ offset: 7, done: true, crc: 9 }));
    const old = forOlderPeer(last)!;
    const { crc: _crc, ...withoutCrc } = last;
    expect(old).toEqual(withoutCrc);
    expect('crc' in old).toBe(false);
    const hb = fromWire({ type: MessageType.Heartbeat, group: 1, from: 2, to: 1, term: 3, commit: 0 } as WireMessage);
    expect(forOlderPeer(hb)).toBe(hb);
  });

  it("carries a refused vote's commit point, bounded like any commit and term, and strips it for an older peer", () => {
    for (const type of [MessageType.VoteResp, MessageType.PreVoteResp]) {
      const m = { type, group: 7, from: 2, to: 1, term: 5, reject: true, commit: 26, logTerm: 3 } as WireMessage;
      const decoded = decodePeerMessage(m, CTX);
      expect(decoded).toEqual(m);
      expect(decodePeerMessage(toWire(decoded), CTX)).toEqual(m);
      expect(decodePacked(encodePacked([{ ...decoded, from: 2, to: 1 }]))[0]).toMatchObject({ commit: 26, logTerm: 3 });
      rejects({ ...m, logTerm: 6 }, 'out-of-bounds'); // the entry's term cannot exceed the message's
      const old = withoutCommitPoint(decoded);
      expect(old).toEqual({ type, group: 7, from: 2, to: 1, term: 5, reject: true });
      expect('commit' in old || 'logTerm' in old).toBe(false);
    }
    const app = fromWire({ type: MessageType.Heartbeat, group: 1, from: 2, to: 1, term: 3, commit: 2 } as WireMessage);
    expect(withoutCommitPoint(app)).toBe(app);
  });

  it('refuses chunks beyond the snapshot, a premature last chunk, and huge offsets', () => {
    rejects(snap({ offset: 8 }), 'bad-snapshot');
    rejects(snap({ offset: 11, chunk: bytes() }), 'bad-snapshot');
    rejects(snap({ done: true }), 'bad-snapshot');
    rejects(snap({ total: MAX_SNAPSHOT_BYTES + 1 }), 'out-of-bounds');
    rejects(snap({ offset: -4 }), 'out-of-bounds');
  });

  it('refuses snapshot metadata newer than the message, or with bad member ids', () => {
    const meta = snap().snapshot!;
    rejects(snap({ snapshot: { ...meta, term: 6 } }), 'bad-snapshot');
    rejects(snap({ snapshot: { ...meta, index: 2 ** 53 } }), 'out-of-bounds');
    rejects(snap({ snapshot: { ...meta, conf: { voters: [1, 2, 2], learners: [] } } }), 'bad-snapshot');
    rejects(snap({ snapshot: { ...meta, conf: { voters: [1, 2], learners: [2] } } }), 'bad-snapshot');
    rejects(snap({ snapshot: { ...meta, conf: { voters: [1, 0], learners: [] } } }), 'out-of-bounds');
    rejects(snap({ snapshot: { ...meta, conf: { voters: 3 as unknown as number[] } } }), 'malformed');
  });

  it('reads an absent configuration as empty (proto3)', () => {
    const m = decodePeerMessage(snap({ snapshot: { index: 20, term: 4 } }), CTX);
    expect(m.snapshot!.conf).toEqual({ voters: [], learners: [] });
  });
});

describe('decodePeerMessage: leader transfer', () => {
  it('takes the forwarded form: from = the forwarding follower, the target in transferee', () => {
    const w = { type: MessageType.TransferLeader, group: 7, from: 2, to: 1, term: 0, transferee: 3 };
    expect(decodePeerMessage(w, CTX)).toEqual(w);
    // without a transferee the sender asks for leadership itself
    expect(decodePeerMessage({ ...w, transferee: undefined }, CTX).transferee).toBeUndefined();
    rejects({ ...w, transferee: 0 }, 'out-of-bounds');
    // the old forwarded form (from = the transferee) is a forgery now
    rejects({ ...w, from: 3 }, 'forged-sender');
  });

  it('a follower forwards a transfer in that form, and the leader carries it out', () => {
    const net = new ScenarioNetwork([1, 2, 3]);
    net.stabilize();
    net.campaign(1);
    net.propose(1, 'a', '1');
    net.host(2).node.transferLeader(3);
    net.flushReadies();
    const fwd = net.queue.find((m) => m.type === MessageType.TransferLeader)!;
    expect(fwd).toMatchObject({ from: 2, to: 1, term: 0, transferee: 3 });
    // it passes the decoder as a message from node 2 to node 1
    expect(decodePeerMessage(toWire(fwd), { sender: 2, self: 1 })).toEqual(fwd);
    net.stabilize();
    expect(net.leaders()).toEqual([3]);
  });
});

describe('fromWire (structure only, for the transport until it calls decodePeerMessage)', () => {
  it('applies every structural rule but not the sender/recipient checks', () => {
    expect(fromWire(heartbeat({ from: 3, to: 9 })).from).toBe(3);
    expect(() => fromWire(heartbeat({ term: 2 ** 53 - 1 }))).toThrow(PeerMessageError);
    expect(() => fromWire({ ...heartbeat(), type: MessageType.Hup })).toThrow(/local to a replica/);
  });
});

// ------------------------------------------------------------------ properties

const nodeIdArb = fc.oneof(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 1, max: MAX_NODE_ID }));
const termArb = fc.oneof(fc.integer({ min: 1, max: 20 }), fc.integer({ min: 1, max: MAX_RAFT_TERM }));
const indexArb = fc.oneof(fc.nat(50), fc.integer({ min: 0, max: MAX_RAFT_INDEX - 10 }));
const dataArb = fc.uint8Array({ maxLength: 12 });
const contextArb = fc.string({ maxLength: MAX_PEER_CONTEXT_LENGTH });
const opt = <T>(arb: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> => fc.option(arb, { nil: undefined });
/** Removes undefined fields (messages set only what they use). */
const clean = (m: Record<string, unknown>): Message => Object.fromEntries(Object.entries(m).filter(([, v]) => v !== undefined)) as unknown as Message;

const confArb = fc
  .uniqueArray(nodeIdArb, { minLength: 1, maxLength: 7 })
  .chain((ids) => fc.nat(ids.length - 1).map((k) => ({ voters: ids.slice(0, Math.max(1, ids.length - k)), learners: ids.slice(Math.max(1, ids.length - k)) })));

/** Entries of an append after (index, logTerm) at `term`. */
const appendEntriesArb = (index: number, logTerm: number, term: number): fc.Arbitrary<Entry[]> =>
  fc
    .array(
      fc.record({
        bump: fc.boolean(),
        conf: fc.boolean(),
        data: dataArb,
        change: fc.record({ type: fc.constantFrom(ConfChangeType.AddVoter, ConfChangeType.AddLearner, ConfChangeType.RemoveNode), nodeId: nodeIdArb }),
      }),
      { maxLength: 5 },
    )
    .map((specs) => {
      let t = Math.max(1, logTerm);
      return specs.map((s, i) => {
        if (s.bump && t < term) t++;
        return s.conf
          ? { term: t, index: index + 1 + i, type: EntryType.ConfChange, data: encodeConfChange(s.change) }
          : { term: t, index: index + 1 + i, type: EntryType.Normal, data: s.data };
      });
    });

/** A valid message from `from` to `to` of any network type, as Raft would send it. */
const validMessageArb: fc.Arbitrary<Message> = fc
  .record({
    group: fc.oneof(fc.nat(10), fc.nat()),
    ids: fc.uniqueArray(nodeIdArb, { minLength: 2, maxLength: 2 }),
    term: termArb,
    kind: fc.constantFrom(...Object.values(MessageType).filter((t) => t !== MessageType.Hup && t !== MessageType.Beat)),
  })
  .chain(({ group, ids, term, kind }) => {
    const head = { type: kind, group, from: ids[0]!, to: ids[1]!, term };
    const fwd = { ...head, term: 0 };
    switch (kind) {
      case MessageType.Prop:
        return fc
          .array(dataArb, { minLength: 1, maxLength: 4 })
          .map((ds) => clean({ ...fwd, entries: ds.map((data) => ({ term: 0, index: 0, type: EntryType.Normal, data })) }));
      case MessageType.App:
        return fc
          .record({ index: indexArb, logTerm: fc.nat(term), commit: indexArb })
          .chain((r) => appendEntriesArb(r.index, r.logTerm, term).map((entries) => clean({ ...head, ...r, entries: entries.length > 0 ? entries : undefined })));
      case MessageType.AppResp:
        return fc.oneof(
          fc.constant(clean(head)),
          indexArb.map((index) => clean({ ...head, index })),
          fc.record({ index: indexArb, rejectHint: indexArb, logTerm: opt(fc.nat(term)) }).map((r) => clean({ ...head, ...r, reject: true })),
        );
      case MessageType.Vote:
      case MessageType.PreVote:
        return fc.record({ index: indexArb, logTerm: fc.nat(term), context: opt(fc.constant('transfer')) }).map((r) => clean({ ...head, ...r }));
      case MessageType.VoteResp:
      case MessageType.PreVoteResp:
        return fc.oneof(
          fc.boolean().map((reject) => clean({ ...head, reject: reject ? true : undefined })),
          fc.record({ commit: indexArb, logTerm: fc.nat(term) }).map((r) => clean({ ...head, ...r, reject: true })),
        );
      case MessageType.TimeoutNow:
        return fc.constant(clean(head));
      case MessageType.Snap:
        return fc
          .record({ index: indexArb, snapTerm: fc.nat(term), conf: confArb, total: fc.nat(64), a: fc.nat(64), b: fc.nat(64), done: fc.boolean(), streamed: fc.boolean(), crc: fc.nat(0xffff_ffff) })
          .map((r) => {
            const offset = Math.min(r.a, r.total);
            const end = r.done ? r.total : Math.min(r.total, offset + r.b);
            const chunk = end > offset ? new Uint8Array(end - offset).fill(7) : undefined;
            // A streamed transfer: total and the end checksum on the last chunk only.
            const total = r.streamed && !r.done ? undefined : r.total;
            const crc = r.streamed && r.done ? r.crc : undefined;
            return clean({ ...head, snapshot: { index: r.index, term: r.snapTerm, conf: r.conf }, offset, total, chunk, done: r.done || undefined, crc });
          });
      case MessageType.SnapChunkResp:
        return fc
          .record({ index: indexArb, snapTerm: fc.nat(term), conf: confArb, offset: fc.nat(), reject: fc.boolean() })
          .map((r) => clean({ ...head, snapshot: { index: r.index, term: r.snapTerm, conf: r.conf }, offset: r.offset, reject: r.reject || undefined }));
      case MessageType.Heartbeat:
        return fc
          .record({ commit: indexArb, context: opt(contextArb), quiesce: fc.boolean() })
          .map((r) => clean({ ...head, commit: r.commit, context: r.context, quiesce: r.quiesce || undefined }));
      case MessageType.HeartbeatResp:
        return opt(contextArb).map((context) => clean({ ...head, context }));
      case MessageType.ReadIndex:
        return contextArb.map((context) => clean({ ...fwd, context }));
      case MessageType.ReadIndexResp:
        return fc.record({ index: indexArb, context: contextArb }).map((r) => clean({ ...head, ...r }));
      case MessageType.TransferLeader:
        return opt(nodeIdArb).map((transferee) => clean({ ...fwd, transferee }));
      default:
        throw new Error(`no generator for ${kind}`);
    }
  });

/** Buffers from protobuf decoding compare as plain byte arrays. */
function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return [...v];
  if (Array.isArray(v)) return v.map(plain);
  if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

interface RaftRpc {
  requestSerialize(v: unknown): Buffer;
  requestDeserialize(b: Buffer): { messages: unknown[]; packed: Uint8Array };
}
const rpc = (loadPeerProto() as unknown as { kvcascade: { v1: { peer: { Peer: { service: { Raft: RaftRpc } } } } } }).kvcascade.v1.peer.Peer
  .service.Raft;

describe('decodePeerMessage: properties', () => {
  it('round-trips every valid message: decodePeerMessage(toWire(m)) equals m', () => {
    fc.assert(
      fc.property(validMessageArb, (m) => {
        expect(decodePeerMessage(toWire(m), { sender: m.from, self: m.to })).toEqual(m);
      }),
      { numRuns: 2000 },
    );
  });

  it('round-trips every valid message through the real protobuf encoding of the peer protocol', () => {
    fc.assert(
      fc.property(validMessageArb, (m) => {
        const [w] = rpc.requestDeserialize(rpc.requestSerialize({ fromNode: m.from, seq: 1, messages: [toWire(m)] })).messages;
        expect(plain(decodePeerMessage(w, { sender: m.from, self: m.to }))).toEqual(plain(m));
      }),
      { numRuns: 500 },
    );
  });

  it('refuses a valid message once its term passes the bound, or it is attributed to another node', () => {
    fc.assert(
      fc.property(validMessageArb, fc.integer({ min: MAX_RAFT_TERM + 1, max: Number.MAX_SAFE_INTEGER }), nodeIdArb, (m, big, other) => {
        const ctx = { sender: m.from, self: m.to };
        expect(() => decodePeerMessage({ ...toWire(m), term: big }, ctx)).toThrow(PeerMessageError);
        fc.pre(other !== m.from && other !== m.to);
        expect(() => decodePeerMessage(toWire(m), { ...ctx, sender: other })).toThrow(PeerMessageError);
        expect(() => decodePeerMessage(toWire(m), { ...ctx, self: other })).toThrow(PeerMessageError);
      }),
      { numRuns: 500 },
    );
  });

  it('on arbitrary input (garbage, or valid messages with fields replaced), accepts within the bounds or throws a PeerMessageError', () => {
    const fields = ['type', 'group', 'from', 'to', 'term', 'index', 'logTerm', 'entries', 'commit', 'reject', 'rejectHint', 'snapshot', 'offset', 'chunk', 'done', 'total', 'crc', 'context', 'transferee'];
    const value = fc.oneof(
      fc.constant(undefined),
      fc.constantFrom(0, 1, 2, -1, 0.5, 2 ** 53 - 1, MAX_RAFT_TERM, MAX_RAFT_TERM + 1, Number.NaN, null, true, false, '', 'transfer'),
      fc.constantFrom(...Object.values(MessageType)),
      fc.nat(20),
      dataArb,
      fc.array(fc.record({ term: fc.nat(5), index: fc.nat(60), type: fc.nat(2), data: fc.oneof(dataArb, fc.anything()) }), { maxLength: 3 }),
      fc.anything(),
    );
    const mutated = fc
      .tuple(validMessageArb, fc.array(fc.tuple(fc.constantFrom(...fields), value), { maxLength: 3 }))
      .map(([m, edits]) => {
        const w: Record<string, unknown> = { ...toWire(m), from: 2, to: 1 };
        for (const [f, v] of edits) w[f] = v;
        return w;
      });
    let accepted = 0;
    let refused = 0;
    fc.assert(
      fc.property(fc.oneof(mutated, fc.anything()), (w) => {
        let m: Message;
        try {
          m = decodePeerMessage(w, CTX);
        } catch (e) {
          if (!(e instanceof PeerMessageError)) throw e;
          refused++;
          return;
        }
        accepted++;
        expect(m.from).toBe(2);
        expect(m.to).toBe(1);
        expect(m.term).toBeLessThanOrEqual(MAX_RAFT_TERM);
        expect(m.type === MessageType.Hup || m.type === MessageType.Beat).toBe(false);
        for (const e of m.entries ?? []) expect(e.term).toBeLessThanOrEqual(m.term);
      }),
      { numRuns: 5000 },
    );
    expect(accepted).toBeGreaterThan(500);
    expect(refused).toBeGreaterThan(500);
  });
});

describe('packed batches (peer-binary.ts)', () => {
  it('round-trips every valid message, alone and in batches, also through the RaftBatch protobuf', () => {
    fc.assert(
      fc.property(fc.array(validMessageArb, { minLength: 1, maxLength: 5 }), (ms) => {
        const wires = decodePacked(encodePacked(ms));
        expect(wires.map((w, i) => decodePeerMessage(w, { sender: ms[i]!.from, self: ms[i]!.to }))).toEqual(ms);
        const batch = rpc.requestDeserialize(rpc.requestSerialize({ fromNode: 1, seq: 1, packed: encodePacked(ms) }));
        const again = decodePacked(batch.packed);
        expect(plain(again.map((w, i) => decodePeerMessage(w, { sender: ms[i]!.from, self: ms[i]!.to })))).toEqual(plain(ms));
      }),
      { numRuns: 1000 },
    );
  });

  it('refuses bytes that do not follow the layout with a malformed PeerMessageError, never anything else', () => {
    const good = encodePacked([toMessage(app()), toMessage(heartbeat())]);
    const refusal = (b: Uint8Array): string | undefined => {
      try {
        decodePacked(b);
        return undefined;
      } catch (e) {
        expect(e).toBeInstanceOf(PeerMessageError);
        return (e as PeerMessageError).code;
      }
    };
    for (let cut = 0; cut < good.length; cut++) expect(refusal(good.subarray(0, cut))).toBe('malformed'); // truncated anywhere
    expect(refusal(new Uint8Array([...good, 0]))).toBe('malformed'); // trailing bytes
    expect(refusal(bytes(0xff, 0xff, 0xff, 0x0f))).toBe('malformed'); // a count of messages beyond the data
    expect(refusal(bytes(1, 3, 7, 2, 1, 5, 0xff, 0x7f))).toBe('malformed'); // unknown flags
    expect(refusal(bytes(1, 3, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01))).toBe('malformed'); // a 9-byte varint
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (b) => {
        let wires: WireMessage[];
        try {
          wires = decodePacked(b);
        } catch (e) {
          expect(e).toBeInstanceOf(PeerMessageError);
          return;
        }
        for (const w of wires) {
          try {
            decodePeerMessage(w, CTX);
          } catch (e) {
            expect(e).toBeInstanceOf(PeerMessageError);
          }
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('refuses unknown type codes and local-only types as decodePeerMessage does', () => {
    const [hup] = decodePacked(encodePacked([{ type: MessageType.Hup, group: 1, from: 2, to: 1, term: 1 }]));
    expect(() => decodePeerMessage(hup, CTX)).toThrow(expect.objectContaining({ code: 'local-only' }));
    const [unknown] = decodePacked(bytes(1, 99, 1, 2, 1, 1, 0));
    expect(() => decodePeerMessage(unknown, CTX)).toThrow(expect.objectContaining({ code: 'unknown-type' }));
  });
});

/** A wire message as the Raft message it decodes to (from 2 to 1). */
function toMessage(w: WireMessage): Message {
  return decodePeerMessage(w, CTX);
}
