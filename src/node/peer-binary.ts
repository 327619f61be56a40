/**
 * A compact binary encoding of a batch of Raft messages (`RaftBatch.packed`, peer.proto): one
 * byte string for all messages of a batch, written and read field by field, instead of one
 * protobuf object per message and per entry (protobufjs `fromObject`/`toObject` on both sides).
 * Decoding only splits the bytes into wire objects of the shape `decodePeerMessage` validates;
 * every rule of that validation still applies.
 *
 * Layout, per message (numbers are unsigned LEB128 varints of at most 8 bytes, below 2^53):
 *   u8 type code (TYPE_CODES), group, from, to, term, flags (bit i = field FIELDS[i] present),
 *   then the present fields in FIELDS order: numbers as varints; entries as a count then per entry
 *   term, index, type, data length, data; snapshot as index, term, voter count, voters, learner
 *   count, learners; chunk as length then bytes; context as UTF-8 length then bytes.
 */
import { MessageType, type Message } from '../raft/index.js';
import { PeerMessageError, type WireMessage } from './peer-codec.js';

/** Message types by code (append only: a code is part of the wire format). */
const TYPE_CODES: readonly string[] = [
  MessageType.Hup,
  MessageType.Beat,
  MessageType.Prop,
  MessageType.App,
  MessageType.AppResp,
  MessageType.Vote,
  MessageType.VoteResp,
  MessageType.PreVote,
  MessageType.PreVoteResp,
  MessageType.Snap,
  MessageType.SnapChunkResp,
  MessageType.Heartbeat,
  MessageType.HeartbeatResp,
  MessageType.ReadIndex,
  MessageType.ReadIndexResp,
  MessageType.TransferLeader,
  MessageType.TimeoutNow,
];
const CODE_OF = new Map(TYPE_CODES.map((t, i) => [t, i]));

const F_INDEX = 1 << 0;
const F_LOG_TERM = 1 << 1;
const F_ENTRIES = 1 << 2;
const F_COMMIT = 1 << 3;
const F_REJECT = 1 << 4;
const F_REJECT_HINT = 1 << 5;
const F_SNAPSHOT = 1 << 6;
const F_OFFSET = 1 << 7;
const F_CHUNK = 1 << 8;
const F_DONE = 1 << 9;
const F_TOTAL = 1 << 10;
const F_CONTEXT = 1 << 11;
const F_TRANSFEREE = 1 << 12;
const F_QUIESCE = 1 << 13;
/** Added with streamed snapshot transfers: a peer of an older version refuses a batch with it (grpc-transport.ts sends it only to peers that read it). */
const F_CRC = 1 << 14;
const F_ALL = (1 << 15) - 1;

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });

/** A growable byte buffer. */
class Writer {
  buf: Uint8Array;
  pos = 0;
  constructor(size: number) {
    this.buf = new Uint8Array(size);
  }
  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
  }
  byte(b: number): void {
    this.room(1);
    this.buf[this.pos++] = b;
  }
  varint(n: number): void {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`cannot encode ${n} as an unsigned varint`);
    this.room(8);
    while (n >= 0x80) {
      this.buf[this.pos++] = (n % 0x80) | 0x80;
      n = Math.floor(n / 0x80);
    }
    this.buf[this.pos++] = n;
  }
  bytes(b: Uint8Array): void {
    this.varint(b.length);
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
}

/** Encodes `msgs` (as `toWire` would send them: only fields the message sets) into one byte string. */
export function encodePacked(msgs: readonly Message[]): Uint8Array {
  let size = 64;
  for (const m of msgs) {
    size += 48;
    if (m.entries) for (const e of m.entries) size += 24 + e.data.length;
    if (m.chunk) size += m.chunk.length;
  }
  const w = new Writer(size);
  w.varint(msgs.length);
  for (const m of msgs) {
    const code = CODE_OF.get(m.type);
    if (code === undefined) throw new RangeError(`unknown message type ${m.type}`);
    w.byte(code);
    w.varint(m.group);
    w.varint(m.from);
    w.varint(m.to);
    w.varint(m.term);
    const hasEntries = m.entries !== undefined && m.entries.length > 0;
    const hasChunk = m.chunk !== undefined && m.chunk.length > 0;
    const flags =
      (m.index !== undefined ? F_INDEX : 0) |
      (m.logTerm !== undefined ? F_LOG_TERM : 0) |
      (hasEntries ? F_ENTRIES : 0) |
      (m.commit !== undefined ? F_COMMIT : 0) |
      (m.reject ? F_REJECT : 0) |
      (m.rejectHint !== undefined ? F_REJECT_HINT : 0) |
      (m.snapshot ? F_SNAPSHOT : 0) |
      (m.offset !== undefined ? F_OFFSET : 0) |
      (hasChunk ? F_CHUNK : 0) |
      (m.done ? F_DONE : 0) |
      (m.total !== undefined ? F_TOTAL : 0) |
      (m.context !== undefined ? F_CONTEXT : 0) |
      (m.transferee !== undefined ? F_TRANSFEREE : 0) |
      (m.quiesce ? F_QUIESCE : 0) |
      (m.crc !== undefined ? F_CRC : 0);
    w.varint(flags);
    if (flags & F_INDEX) w.varint(m.index!);
    if (flags & F_LOG_TERM) w.varint(m.logTerm!);
    if (flags & F_ENTRIES) {
      w.varint(m.entries!.length);
      for (const e of m.entries!) {
        w.varint(e.term);
        w.varint(e.index);
        w.varint(e.type);
        w.bytes(e.data);
      }
    }
    if (flags & F_COMMIT) w.varint(m.commit!);
    if (flags & F_REJECT_HINT) w.varint(m.rejectHint!);
    if (flags & F_SNAPSHOT) {
      const s = m.snapshot!;
      w.varint(s.index);
      w.varint(s.term);
      w.varint(s.conf.voters.length);
      for (const v of s.conf.voters) w.varint(v);
      w.varint(s.conf.learners.length);
      for (const l of s.conf.learners) w.varint(l);
    }
    if (flags & F_OFFSET) w.varint(m.offset!);
    if (flags & F_CHUNK) w.bytes(m.chunk!);
    if (flags & F_TOTAL) w.varint(m.total!);
    if (flags & F_CONTEXT) w.bytes(utf8.encode(m.context!));
    if (flags & F_TRANSFEREE) w.varint(m.transferee!);
    if (flags & F_CRC) w.varint(m.crc!);
  }
  return w.buf.subarray(0, w.pos);
}

/** Reads {@link encodePacked}'s layout; every read is bounds-checked. */
class Reader {
  pos = 0;
  constructor(private readonly buf: Uint8Array) {}
  get done(): boolean {
    return this.pos >= this.buf.length;
  }
  byte(): number {
    if (this.pos >= this.buf.length) throw malformed('truncated');
    return this.buf[this.pos++]!;
  }
  varint(): number {
    let n = 0;
    let mul = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.byte();
      n += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        if (!Number.isSafeInteger(n)) throw malformed('number out of range');
        return n;
      }
      mul *= 0x80;
    }
    throw malformed('varint longer than 8 bytes');
  }
  bytes(): Uint8Array {
    const n = this.varint();
    if (n > this.buf.length - this.pos) throw malformed('truncated bytes');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  /** A count of items each at least `minBytes` long (bounded by what is left, so a forged count allocates nothing). */
  count(minBytes: number): number {
    const n = this.varint();
    if (n * minBytes > this.buf.length - this.pos) throw malformed('count beyond the data');
    return n;
  }
}

function malformed(why: string): PeerMessageError {
  return new PeerMessageError('malformed', `packed batch: ${why}`);
}

/**
 * Splits a packed batch into wire messages for `decodePeerMessage` (which still validates each);
 * entry data and chunks alias `bytes`. Throws a {@link PeerMessageError} ('malformed') when the
 * bytes do not follow the layout (the whole batch is then unusable).
 */
export function decodePacked(bytes: Uint8Array): WireMessage[] {
  const r = new Reader(bytes);
  const n = r.count(6);
  const out: WireMessage[] = [];
  for (let i = 0; i < n; i++) {
    const code = r.byte();
    const type = TYPE_CODES[code] ?? `code ${code}`;
    const w: WireMessage = { type, group: r.varint(), from: r.varint(), to: r.varint(), term: r.varint() };
    const flags = r.varint();
    if (flags & ~F_ALL) throw malformed(`unknown flags ${flags}`);
    if (flags & F_INDEX) w.index = r.varint();
    if (flags & F_LOG_TERM) w.logTerm = r.varint();
    if (flags & F_ENTRIES) {
      const k = r.count(4);
      const entries: NonNullable<WireMessage['entries']> = [];
      for (let j = 0; j < k; j++) entries.push({ term: r.varint(), index: r.varint(), type: r.varint(), data: r.bytes() });
      w.entries = entries;
    }
    if (flags & F_COMMIT) w.commit = r.varint();
    if (flags & F_REJECT) w.reject = true;
    if (flags & F_REJECT_HINT) w.rejectHint = r.varint();
    if (flags & F_SNAPSHOT) {
      const index = r.varint();
      const term = r.varint();
      const voters: number[] = [];
      for (let j = r.count(1); j > 0; j--) voters.push(r.varint());
      const learners: number[] = [];
      for (let j = r.count(1); j > 0; j--) learners.push(r.varint());
      w.snapshot = { index, term, conf: { voters, learners } };
    }
    if (flags & F_OFFSET) w.offset = r.varint();
    if (flags & F_CHUNK) w.chunk = r.bytes();
    if (flags & F_DONE) w.done = true;
    if (flags & F_TOTAL) w.total = r.varint();
    if (flags & F_CONTEXT) {
      try {
        w.context = fromUtf8.decode(r.bytes());
      } catch (e) {
        if (e instanceof PeerMessageError) throw e;
        throw malformed('context is not UTF-8');
      }
    }
    if (flags & F_TRANSFEREE) w.transferee = r.varint();
    if (flags & F_QUIESCE) w.quiesce = true;
    if (flags & F_CRC) w.crc = r.varint();
    out.push(w);
  }
  if (!r.done) throw malformed('bytes after the last message');
  return out;
}
