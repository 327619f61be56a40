/** Conversion between Raft messages and the peer protocol's wire objects (proto/kvcascade/v1/peer.proto). */
import { MessageType, type Entry, type Message, type SnapshotMeta } from '../raft/index.js';

/** The wire shape of a Raft message as @grpc/proto-loader presents it (camelCase, longs as numbers). */
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
  context?: string;
}

const TYPES = new Set<string>(Object.values(MessageType));

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
  if (m.chunk) w.chunk = m.chunk;
  if (m.done) w.done = true;
  if (m.total !== undefined) w.total = m.total;
  if (m.context !== undefined) w.context = m.context;
  return w;
}

/** Decodes and validates a wire message; throws on anything malformed. */
export function fromWire(w: WireMessage): Message {
  if (!TYPES.has(w.type)) throw new Error(`unknown raft message type ${JSON.stringify(w.type)}`);
  for (const f of ['group', 'from', 'to', 'term'] as const) {
    if (!Number.isSafeInteger(w[f]) || w[f] < 0) throw new Error(`bad raft message field ${f}`);
  }
  const entries: Entry[] | undefined = w.entries?.map((e) => ({
    term: e.term,
    index: e.index,
    type: e.type,
    data: e.data instanceof Uint8Array ? e.data : new Uint8Array(0),
  }));
  let snapshot: SnapshotMeta | undefined;
  if (w.snapshot) {
    snapshot = {
      index: w.snapshot.index,
      term: w.snapshot.term,
      conf: { voters: w.snapshot.conf?.voters ?? [], learners: w.snapshot.conf?.learners ?? [] },
    };
  }
  return {
    type: w.type as MessageType,
    group: w.group,
    from: w.from,
    to: w.to,
    term: w.term,
    ...(w.index !== undefined && w.index !== null ? { index: w.index } : {}),
    ...(w.logTerm !== undefined && w.logTerm !== null ? { logTerm: w.logTerm } : {}),
    ...(entries && entries.length > 0 ? { entries } : {}),
    ...(w.commit !== undefined && w.commit !== null ? { commit: w.commit } : {}),
    ...(w.reject ? { reject: true } : {}),
    ...(w.rejectHint !== undefined && w.rejectHint !== null ? { rejectHint: w.rejectHint } : {}),
    ...(snapshot ? { snapshot } : {}),
    ...(w.offset !== undefined && w.offset !== null ? { offset: w.offset } : {}),
    ...(w.chunk && w.chunk.length > 0 ? { chunk: w.chunk } : {}),
    ...(w.done ? { done: true } : {}),
    ...(w.total !== undefined && w.total !== null ? { total: w.total } : {}),
    ...(w.context !== undefined && w.context !== null && w.context !== '' ? { context: w.context } : {}),
  };
}
