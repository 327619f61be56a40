/**
 * Conversion between Raft messages and the peer protocol's wire objects
 * (proto/kvcascade/v1/peer.proto), and the validation of every message a peer sends:
 * `decodePeerMessage` is the only way a received wire message becomes a `Message`.
 */
import {
  decodeConfChange,
  EntryType,
  isBoundedUint,
  MAX_RAFT_INDEX,
  MAX_RAFT_TERM,
  MAX_SNAPSHOT_BYTES,
  MessageType,
  type Entry,
  type Message,
  type NodeId,
  type SnapshotMeta,
} from '../raft/index.js';
import { MAX_NODE_ID } from '../sharding/types.js';

/**
 * The wire shape of a Raft message as @grpc/proto-loader presents it (camelCase, longs as
 * numbers). Received objects are untrusted: `decodePeerMessage` checks every field.
 */
export interface WireMessage {
  type: string;
  group: number;
  from: number;
  to: number;
  term: number;
  index?: number;
  logTerm?: number;
  entries?: { term: number; index: number; type: number; data: Uint8Array }[];
  commit?: number;
  reject?: boolean;
  rejectHint?: number;
  snapshot?: { index: number; term: number; conf?: { voters?: number[]; learners?: number[] } } | null;
  offset?: number;
  chunk?: Uint8Array;
  done?: boolean;
  total?: number;
  crc?: number;
  context?: string;
  transferee?: number;
  quiesce?: boolean;
}

/** The longest `context` (a read request id, or "transfer" on a vote request) a peer may send. */
export const MAX_PEER_CONTEXT_LENGTH = 256;

/** Why a peer message was refused (a stable code for metrics; the error message has the details). */
export type PeerMessageErrorCode =
  /** Not an object, or a field of the wrong JavaScript type. */
  | 'malformed'
  /** A `type` that is not a Raft message type. */
  | 'unknown-type'
  /** `Hup` or `Beat`: generated inside a replica, never sent over the network. */
  | 'local-only'
  /** `from` is not the authenticated sending node. */
  | 'forged-sender'
  /** `to` is not this node. */
  | 'wrong-recipient'
  /** A node id, group, term, index, offset or length outside its bounds. */
  | 'out-of-bounds'
  /** A field this message type needs is absent. */
  | 'missing-field'
  /** A field this message type never carries is present. */
  | 'unexpected-field'
  /** Entries that are not contiguous, out of term order, of an unknown type, or an undecodable membership change. */
  | 'bad-entries'
  /** Snapshot metadata or chunk position that no correct leader sends. */
  | 'bad-snapshot';

/** A peer message that failed validation; `code` says which rule it broke. */
export class PeerMessageError extends Error {
  constructor(
    readonly code: PeerMessageErrorCode,
    message: string,
  ) {
    super(`invalid peer message: ${message}`);
    this.name = 'PeerMessageError';
  }
}

/** Who is talking to whom: the authenticated sending node and the receiving node. */
export interface PeerMessageContext {
  /** The node the message arrived from (authenticated by the transport, e.g. by its TLS identity). */
  readonly sender: NodeId;
  /** This node. */
  readonly self: NodeId;
}

/** Optional fields beyond the header (type, group, from, to, term). */
type Field =
  | 'index'
  | 'logTerm'
  | 'entries'
  | 'commit'
  | 'reject'
  | 'rejectHint'
  | 'snapshot'
  | 'offset'
  | 'chunk'
  | 'done'
  | 'total'
  | 'crc'
  | 'context'
  | 'transferee'
  | 'quiesce';

const ALL_FIELDS: readonly Field[] = [
  'index',
  'logTerm',
  'entries',
  'commit',
  'reject',
  'rejectHint',
  'snapshot',
  'offset',
  'chunk',
  'done',
  'total',
  'crc',
  'context',
  'transferee',
  'quiesce',
];

interface TypeRule {
  /** Fields the message must carry. */
  readonly required: readonly Field[];
  /** Further fields it may carry. */
  readonly optional: readonly Field[];
  /** A follower's forwarded request: term 0 (it takes the leader's term). Every other type has a term >= 1. */
  readonly forwarded?: true;
}

/**
 * The message types `Raft` sends (everything but `Hup` and `Beat`), with the fields each one's
 * handler relies on. What a type's handler never reads it never receives either.
 */
const RULES: ReadonlyMap<string, TypeRule> = new Map<MessageType, TypeRule>([
  [MessageType.Prop, { required: ['entries'], optional: [], forwarded: true }],
  [MessageType.App, { required: ['index', 'logTerm', 'commit'], optional: ['entries'] }],
  [MessageType.AppResp, { required: [], optional: ['index', 'reject', 'rejectHint', 'logTerm'] }],
  [MessageType.Vote, { required: ['index', 'logTerm'], optional: ['context'] }],
  [MessageType.VoteResp, { required: [], optional: ['reject', 'commit', 'logTerm'] }],
  [MessageType.PreVote, { required: ['index', 'logTerm'], optional: ['context'] }],
  [MessageType.PreVoteResp, { required: [], optional: ['reject', 'commit', 'logTerm'] }],
  // `total` on every chunk of a snapshot held in memory, only on the last one of a streamed transfer (with `crc`).
  [MessageType.Snap, { required: ['snapshot', 'offset'], optional: ['chunk', 'done', 'total', 'crc'] }],
  [MessageType.SnapChunkResp, { required: ['snapshot', 'offset'], optional: ['reject'] }],
  [MessageType.Heartbeat, { required: ['commit'], optional: ['context', 'quiesce'] }],
  [MessageType.HeartbeatResp, { required: [], optional: ['context'] }],
  [MessageType.ReadIndex, { required: ['context'], optional: [], forwarded: true }],
  [MessageType.ReadIndexResp, { required: ['index', 'context'], optional: [] }],
  [MessageType.TransferLeader, { required: [], optional: ['transferee'], forwarded: true }],
  [MessageType.TimeoutNow, { required: [], optional: [] }],
]);

/** Each field's bit in a presence bit set (its position in ALL_FIELDS). */
const FIELD_BIT: ReadonlyMap<Field, number> = new Map(ALL_FIELDS.map((f, i) => [f, 1 << i]));

/** RULES as bit sets: the fields a type needs, and those it needs or may carry. */
const RULE_MASKS: ReadonlyMap<string, { readonly required: number; readonly allowed: number }> = new Map(
  [...RULES].map(([type, rule]) => {
    const mask = (fs: readonly Field[]) => fs.reduce((m, f) => m | FIELD_BIT.get(f)!, 0);
    return [type, { required: mask(rule.required), allowed: mask(rule.required) | mask(rule.optional) }];
  }),
);

const LOCAL_ONLY = new Set<string>([MessageType.Hup, MessageType.Beat]);
const EMPTY = new Uint8Array(0);

/** Encodes a message for the wire (only fields the message sets). */
export function toWire(m: Message): WireMessage {
  const w: WireMessage = { type: m.type, group: m.group, from: m.from, to: m.to, term: m.term };
  if (m.index !== undefined) w.index = m.index;
  if (m.logTerm !== undefined) w.logTerm = m.logTerm;
  if (m.entries && m.entries.length > 0) w.entries = m.entries.map((e) => ({ term: e.term, index: e.index, type: e.type, data: e.data }));
  if (m.commit !== undefined) w.commit = m.commit;
  if (m.reject) w.reject = true;
  if (m.rejectHint !== undefined) w.rejectHint = m.rejectHint;
  if (m.snapshot) {
    w.snapshot = {
      index: m.snapshot.index,
      term: m.snapshot.term,
      conf: { voters: [...m.snapshot.conf.voters], learners: [...m.snapshot.conf.learners] },
    };
  }
  if (m.offset !== undefined) w.offset = m.offset;
  if (m.chunk && m.chunk.length > 0) w.chunk = m.chunk;
  if (m.done) w.done = true;
  if (m.total !== undefined) w.total = m.total;
  if (m.crc !== undefined) w.crc = m.crc;
  if (m.context !== undefined) w.context = m.context;
  if (m.transferee !== undefined) w.transferee = m.transferee;
  if (m.quiesce) w.quiesce = true;
  return w;
}

/**
 * A message as a peer that reads no commit points on vote responses can take it: a refused
 * (pre-)vote's `commit`/`logTerm` (see `Raft.commitPoint`, added in 2026-12) removed, anything
 * else unchanged. Such a peer's decoder refuses the fields (and with them the whole batch).
 */
export function withoutCommitPoint(m: Message): Message {
  if ((m.type !== MessageType.VoteResp && m.type !== MessageType.PreVoteResp) || m.commit === undefined) return m;
  const { commit: _commit, logTerm: _logTerm, ...rest } = m;
  return rest;
}

/**
 * A message as a peer of an older version can take, or undefined when it cannot take it at all.
 * Older peers read every snapshot chunk with its `total` and know no `crc` (the packed codec of
 * an older peer refuses a whole batch with an unknown field): the last chunk of a streamed
 * transfer goes without its `crc` (an old follower checks the snapshot's own trailing checksum),
 * its other chunks cannot go (their total is not known yet), so a streamed transfer to an old
 * follower is refused at the sender, which says why (grpc-transport.ts). A peer says it reads
 * streamed transfers with the `kv-peer-snapstream` stream header.
 */
export function forOlderPeer(m: Message): Message | undefined {
  if (m.type !== MessageType.Snap) return m;
  if (m.total === undefined) return undefined;
  if (m.crc === undefined) return m;
  const { crc: _crc, ...rest } = m;
  return rest;
}

/**
 * Decodes and validates a wire message received from the authenticated node `ctx.sender` by
 * node `ctx.self`. Throws a {@link PeerMessageError} on anything a correct peer never sends:
 * - a type that is unknown or local-only (`Hup`, `Beat`);
 * - `to` other than `self`, or `from` other than `sender` (a forwarded `TransferLeader`
 *   names its target in `transferee`, so `from` is always the sender);
 * - a group that is not a safe integer >= 0; node ids outside 1..`MAX_NODE_ID`;
 * - a term above `MAX_RAFT_TERM` (so `term + 1` stays exact everywhere), a term of 0 except on
 *   the requests followers forward (`Prop`, `ReadIndex`, `TransferLeader`, which must have 0);
 *   indexes and commit indexes above `MAX_RAFT_INDEX`; snapshot offsets and lengths above
 *   `MAX_SNAPSHOT_BYTES`; a `context` longer than `MAX_PEER_CONTEXT_LENGTH`;
 * - a field the type needs missing, or one it never carries present;
 * - append entries that do not continue `index` contiguously, whose terms decrease, exceed the
 *   message's term or precede `logTerm`, of an unknown type, or membership changes that do not
 *   decode; forwarded proposals with anything but application entries;
 * - snapshot metadata newer than the message's term, with invalid or duplicate member ids, or
 *   a chunk that does not lie within the snapshot.
 * Absent proto3 scalars read as their defaults (0, false, empty), as protobuf defines.
 */
export function decodePeerMessage(w: unknown, ctx: PeerMessageContext): Message {
  if (!isNodeId(ctx.self) || !isNodeId(ctx.sender)) throw new PeerMessageError('malformed', 'invalid decoding context');
  if (ctx.sender === ctx.self) throw new PeerMessageError('forged-sender', `node ${ctx.self} received a message from itself`);
  const m = decodeStructure(w);
  if (m.to !== ctx.self) throw new PeerMessageError('wrong-recipient', `${m.type} for node ${m.to} delivered to node ${ctx.self}`);
  if (m.from !== ctx.sender) throw new PeerMessageError('forged-sender', `${m.type} from ${m.from} sent by node ${ctx.sender}`);
  return m;
}

/**
 * Decodes and validates a wire message without knowing who sent it: every check of
 * {@link decodePeerMessage} except that `from` is the sender and `to` this node.
 * @deprecated Receivers must call `decodePeerMessage`; this remains for the transport until it does.
 */
export function fromWire(w: WireMessage): Message {
  return decodeStructure(w);
}

function decodeStructure(input: unknown): Message {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new PeerMessageError('malformed', 'not an object');
  const w = input as Record<string, unknown>;
  const type = w['type'];
  if (typeof type !== 'string') throw new PeerMessageError('malformed', 'type is not a string');
  if (LOCAL_ONLY.has(type)) throw new PeerMessageError('local-only', `${type} is local to a replica and never sent by a peer`);
  const rule = RULES.get(type);
  if (!rule) throw new PeerMessageError('unknown-type', `unknown message type ${JSON.stringify(type.slice(0, 40))}`);

  const group = scalar(w, 'group', 0);
  if (!isBoundedUint(group, Number.MAX_SAFE_INTEGER)) throw new PeerMessageError('out-of-bounds', `group ${show(group)} is not an integer >= 0`);
  const from = nodeId(scalar(w, 'from', 0), 'from');
  const to = nodeId(scalar(w, 'to', 0), 'to');
  const term = bounded(scalar(w, 'term', 0), MAX_RAFT_TERM, 'term');
  if (rule.forwarded && term !== 0) throw new PeerMessageError('out-of-bounds', `${type} is forwarded with term 0, got term ${term}`);
  if (!rule.forwarded && term === 0) throw new PeerMessageError('out-of-bounds', `${type} needs a term >= 1`);

  // Which fields are present (proto3: an empty repeated or bytes field and `false` are absent),
  // as a bit set over ALL_FIELDS (this runs for every message received: no allocation).
  let bits = 0;
  for (let i = 0; i < ALL_FIELDS.length; i++) {
    const f = ALL_FIELDS[i]!;
    const v = w[f];
    if (v === undefined || v === null || v === false) continue;
    if ((f === 'entries' || f === 'chunk') && isEmptySequence(v)) continue;
    bits |= 1 << i;
  }
  const masks = RULE_MASKS.get(type)!;
  if ((bits & masks.required) !== masks.required) {
    const f = ALL_FIELDS.find((_, i) => (masks.required & (1 << i)) !== 0 && (bits & (1 << i)) === 0)!;
    throw new PeerMessageError('missing-field', `${type} needs ${f}`);
  }
  if ((bits & ~masks.allowed) !== 0) {
    const f = ALL_FIELDS.find((_, i) => (bits & ~masks.allowed & (1 << i)) !== 0)!;
    throw new PeerMessageError('unexpected-field', `${type} never carries ${f}`);
  }
  const present = { has: (f: Field): boolean => (bits & FIELD_BIT.get(f)!) !== 0 };

  const out: { -readonly [K in keyof Message]: Message[K] } = { type: type as MessageType, group, from, to, term };
  if (present.has('index')) out.index = bounded(w['index'], MAX_RAFT_INDEX, 'index');
  if (present.has('logTerm')) {
    out.logTerm = bounded(w['logTerm'], MAX_RAFT_TERM, 'logTerm');
    if (out.logTerm > term) throw new PeerMessageError('out-of-bounds', `logTerm ${out.logTerm} is above the message's term ${term}`);
  }
  if (present.has('commit')) out.commit = bounded(w['commit'], MAX_RAFT_INDEX, 'commit');
  if (present.has('reject')) {
    if (w['reject'] !== true) throw new PeerMessageError('malformed', 'reject is not a boolean');
    out.reject = true;
  }
  if (present.has('rejectHint')) out.rejectHint = bounded(w['rejectHint'], MAX_RAFT_INDEX, 'rejectHint');
  if (type === MessageType.AppResp && out.reject && (out.index === undefined || out.rejectHint === undefined)) {
    throw new PeerMessageError('missing-field', 'a rejecting AppResp needs index and rejectHint');
  }
  if (present.has('offset')) out.offset = bounded(w['offset'], MAX_SNAPSHOT_BYTES, 'offset');
  if (present.has('total')) out.total = bounded(w['total'], MAX_SNAPSHOT_BYTES, 'total');
  if (present.has('crc')) out.crc = bounded(w['crc'], 0xffff_ffff, 'crc');
  if (present.has('chunk')) {
    if (!(w['chunk'] instanceof Uint8Array)) throw new PeerMessageError('malformed', 'chunk is not bytes');
    out.chunk = w['chunk'];
  }
  if (present.has('done')) {
    if (w['done'] !== true) throw new PeerMessageError('malformed', 'done is not a boolean');
    out.done = true;
  }
  if (present.has('context')) {
    const c = w['context'];
    if (typeof c !== 'string') throw new PeerMessageError('malformed', 'context is not a string');
    if (c.length > MAX_PEER_CONTEXT_LENGTH) {
      throw new PeerMessageError('out-of-bounds', `context of ${c.length} characters (at most ${MAX_PEER_CONTEXT_LENGTH})`);
    }
    out.context = c;
  }
  if (present.has('transferee')) out.transferee = nodeId(w['transferee'], 'transferee');
  if (present.has('quiesce')) {
    if (w['quiesce'] !== true) throw new PeerMessageError('malformed', 'quiesce is not a boolean');
    out.quiesce = true;
  }
  if (present.has('entries')) out.entries = decodeEntries(w['entries'], out);
  if (present.has('snapshot')) out.snapshot = decodeSnapshotMeta(w['snapshot'], term);
  if (type === MessageType.Snap) {
    const end = out.offset! + (out.chunk?.length ?? 0);
    if (out.total !== undefined && end > out.total) throw new PeerMessageError('bad-snapshot', `chunk [${out.offset}, ${end}) lies beyond the snapshot's ${out.total} bytes`);
    if (out.done && out.total === undefined) throw new PeerMessageError('missing-field', 'the last chunk of a snapshot needs total');
    if (out.done && end !== out.total) throw new PeerMessageError('bad-snapshot', `last chunk ends at ${end}, not at the snapshot's end ${out.total}`);
    if (out.crc !== undefined && !out.done) throw new PeerMessageError('unexpected-field', 'only the last chunk of a snapshot carries crc');
  }
  return out;
}

function decodeEntries(v: unknown, m: { type: MessageType; term: number; index?: number; logTerm?: number }): Entry[] {
  if (!Array.isArray(v)) throw new PeerMessageError('malformed', 'entries is not a list');
  const prop = m.type === MessageType.Prop;
  const base = m.index ?? 0;
  if (!prop && base + v.length > MAX_RAFT_INDEX) throw new PeerMessageError('out-of-bounds', `entries past index ${MAX_RAFT_INDEX}`);
  let prevTerm = Math.max(1, m.logTerm ?? 0);
  const out: Entry[] = [];
  for (let i = 0; i < v.length; i++) {
    const e: unknown = v[i];
    if (typeof e !== 'object' || e === null) throw new PeerMessageError('malformed', `entry ${i} is not an object`);
    const r = e as Record<string, unknown>;
    const term = bounded(scalar(r, 'term', 0), MAX_RAFT_TERM, `entries[${i}].term`);
    const index = bounded(scalar(r, 'index', 0), MAX_RAFT_INDEX, `entries[${i}].index`);
    const type = scalar(r, 'type', EntryType.Normal);
    const data = r['data'] === undefined || r['data'] === null ? EMPTY : r['data'];
    if (!(data instanceof Uint8Array)) throw new PeerMessageError('malformed', `entries[${i}].data is not bytes`);
    if (type !== EntryType.Normal && type !== EntryType.ConfChange) {
      throw new PeerMessageError('bad-entries', `entries[${i}] has unknown type ${show(type)}`);
    }
    if (prop) {
      // A follower forwards application data only (membership changes are proposed on the
      // leader); the leader assigns term and index.
      if (type !== EntryType.Normal) throw new PeerMessageError('bad-entries', 'a forwarded proposal carries a membership change');
      if (term !== 0 || index !== 0) throw new PeerMessageError('bad-entries', `forwarded entry ${i} has term ${term} and index ${index}, not 0`);
    } else {
      if (index !== base + 1 + i) throw new PeerMessageError('bad-entries', `entries[${i}] has index ${index}, expected ${base + 1 + i}`);
      if (term < prevTerm || term > m.term) {
        throw new PeerMessageError('bad-entries', `entries[${i}] has term ${term}, outside [${prevTerm}, ${m.term}]`);
      }
      prevTerm = term;
      if (type === EntryType.ConfChange) {
        let nodeId: number;
        try {
          nodeId = decodeConfChange(data).nodeId;
        } catch {
          throw new PeerMessageError('bad-entries', `entries[${i}] is not a valid membership change`);
        }
        if (nodeId > MAX_NODE_ID) throw new PeerMessageError('bad-entries', `entries[${i}] changes the membership of node ${nodeId}`);
      }
    }
    out.push({ term, index, type, data });
  }
  return out;
}

function decodeSnapshotMeta(v: unknown, term: number): SnapshotMeta {
  if (typeof v !== 'object' || v === null) throw new PeerMessageError('malformed', 'snapshot is not an object');
  const s = v as Record<string, unknown>;
  const index = bounded(scalar(s, 'index', 0), MAX_RAFT_INDEX, 'snapshot.index');
  const snapTerm = bounded(scalar(s, 'term', 0), MAX_RAFT_TERM, 'snapshot.term');
  if (snapTerm > term) throw new PeerMessageError('bad-snapshot', `snapshot term ${snapTerm} is above the message's term ${term}`);
  const conf = s['conf'] ?? {};
  if (typeof conf !== 'object' || conf === null) throw new PeerMessageError('malformed', 'snapshot.conf is not an object');
  const c = conf as Record<string, unknown>;
  const voters = nodeIds(c['voters'], 'snapshot.conf.voters');
  const learners = nodeIds(c['learners'], 'snapshot.conf.learners');
  if (new Set([...voters, ...learners]).size !== voters.length + learners.length) {
    throw new PeerMessageError('bad-snapshot', 'snapshot configuration lists a node twice');
  }
  return { index, term: snapTerm, conf: { voters, learners } };
}

function nodeIds(v: unknown, field: string): NodeId[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new PeerMessageError('malformed', `${field} is not a list`);
  return v.map((id, i) => nodeId(id, `${field}[${i}]`));
}

/** A proto3 scalar with implicit presence: absent reads as its default. */
function scalar(w: Record<string, unknown>, f: string, dflt: number): unknown {
  const v = w[f];
  return v === undefined || v === null ? dflt : v;
}

function isNodeId(v: unknown): v is NodeId {
  return typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= MAX_NODE_ID;
}

function nodeId(v: unknown, field: string): NodeId {
  if (typeof v !== 'number') throw new PeerMessageError('malformed', `${field} is not a number`);
  if (!isNodeId(v)) throw new PeerMessageError('out-of-bounds', `${field} ${v} is not a node id (1..${MAX_NODE_ID})`);
  return v;
}

function bounded(v: unknown, max: number, field: string): number {
  if (typeof v !== 'number') throw new PeerMessageError('malformed', `${field} is not a number`);
  if (!isBoundedUint(v, max)) throw new PeerMessageError('out-of-bounds', `${field} ${v} is not an integer in [0, ${max}]`);
  return v;
}

/** A short, never-throwing rendering of an untrusted value for an error message. */
function show(v: unknown): string {
  return typeof v === 'number' || typeof v === 'boolean' ? String(v) : typeof v === 'string' ? JSON.stringify(v.slice(0, 40)) : typeof v;
}

function isEmptySequence(v: unknown): boolean {
  return (Array.isArray(v) || v instanceof Uint8Array) && v.length === 0;
}
