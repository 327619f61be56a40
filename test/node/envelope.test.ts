// Covers src/node/envelope.ts: V3 entries record the origin (client | system) with the timestamp and hop count; V4
// entries add the write's client session; V1 and V2 entries (written before origins existed) still decode, as
// system-origin; malformed payloads are refused.
import { describe, expect, it } from 'vitest';
import { decodeProposal, encodeProposal, PROPOSAL_ENVELOPE_VERSION, PROPOSAL_SESSION_ENVELOPE_VERSION } from '../../src/node/envelope.js';
import { KvStateMachine, encodeCommand, type Command } from '../../src/statemachine/index.js';

const cmd: Command = { type: 'put', key: '/_sys/shard', value: new TextEncoder().encode('{"epoch":1}') };

/** An entry payload in an old envelope format: `[version][timestamp f64]` (V1) or `[version][timestamp f64][hops]` (V2). */
function legacy(version: 1 | 2, timestampMs: number, hops: number): Uint8Array {
  const body = encodeCommand(cmd);
  const header = version === 1 ? 9 : 10;
  const out = new Uint8Array(header + body.length);
  const view = new DataView(out.buffer);
  view.setUint8(0, version);
  view.setFloat64(1, timestampMs);
  if (version === 2) view.setUint8(9, hops);
  out.set(body, header);
  return out;
}

describe('proposal envelope', () => {
  it('V3 round-trips the origin, timestamp, hops and command', () => {
    expect(PROPOSAL_ENVELOPE_VERSION).toBe(3);
    for (const origin of ['client', 'system'] as const) {
      const data = encodeProposal(1_700_000_000_123, cmd, origin, 4);
      expect(data[0]).toBe(3);
      expect(decodeProposal(data)).toEqual({ timestampMs: 1_700_000_000_123, hops: 4, origin, command: cmd });
    }
  });

  it('V1 and V2 entries still decode, as system-origin (their replay gives the results they had)', () => {
    expect(decodeProposal(legacy(1, 42, 0))).toEqual({ timestampMs: 42, hops: 0, origin: 'system', command: cmd });
    expect(decodeProposal(legacy(2, 43, 7))).toEqual({ timestampMs: 43, hops: 7, origin: 'system', command: cmd });
    // A V2 descriptor write replays as it applied before the origin rule: accepted.
    const sm = new KvStateMachine();
    const p = decodeProposal(legacy(2, 43, 0));
    const descriptor = '{"group":1,"pool":"","index":0,"shards":1,"excluded":[],"epoch":3}';
    const out = sm.apply(1, p.timestampMs, { ...p.command, value: new TextEncoder().encode(descriptor) } as Command, p.origin);
    expect(out.result.type).toBe('put');
  });

  it('a client-origin proposal on a reserved key is rejected when applied', () => {
    const sm = new KvStateMachine();
    const p = decodeProposal(encodeProposal(1, { type: 'put', key: '/_dlq/e/1/x', value: new Uint8Array(1) }, 'client'));
    const out = sm.apply(1, p.timestampMs, p.command, p.origin);
    expect(out.result.type === 'rejected' && out.result.error.code).toBe('RESERVED');
    const q = decodeProposal(encodeProposal(1, { type: 'put', key: '/_dlq/e/1/x', value: new Uint8Array(1) }, 'system'));
    expect(sm.apply(2, q.timestampMs, q.command, q.origin).result.type).toBe('put');
  });

  it('refuses malformed payloads: empty, short, unknown version or origin', () => {
    expect(() => decodeProposal(new Uint8Array(0))).toThrow(/empty/);
    expect(() => decodeProposal(new Uint8Array([3, 0, 0]))).toThrow(/too short/);
    expect(() => decodeProposal(new Uint8Array([9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))).toThrow(/version 9/);
    const bad = encodeProposal(1, cmd, 'client');
    bad[10] = 7;
    expect(() => decodeProposal(bad)).toThrow(/origin 7/);
    expect(() => encodeProposal(1, cmd, 'other' as 'client')).toThrow(RangeError);
  });

  it('V4 carries the client session; without one the entry is still V3', () => {
    const session = { id: 'Ab_-0123456789xyzXYZ', seq: 2 ** 40 + 3, ackedBelow: 2 ** 40 };
    const put: Command = { type: 'put', key: '/k', value: new Uint8Array([1, 2, 3]), expectedVersion: 0 };
    const data = encodeProposal(1_700_000_000_999, put, 'client', 2, session);
    expect(data[0]).toBe(PROPOSAL_SESSION_ENVELOPE_VERSION);
    expect(decodeProposal(data)).toEqual({ timestampMs: 1_700_000_000_999, hops: 2, origin: 'client', command: put, session });
    const plain = decodeProposal(encodeProposal(5, put, 'client'));
    expect(encodeProposal(5, put, 'client')[0]).toBe(PROPOSAL_ENVELOPE_VERSION);
    expect('session' in plain).toBe(false);
    // The state machine deduplicates what the entries carry.
    const sm = new KvStateMachine();
    for (const index of [1, 2]) {
      const p = decodeProposal(data);
      sm.apply(index, p.timestampMs, p.command, p.origin, p.session);
    }
    expect(sm.revision).toBe(1);
    expect(sm.appliedIndex).toBe(2);
  });

  it('decodes interleaved sessions of the same id length exactly (the last id is reused only for the same bytes)', () => {
    const ids = ['aaaaaaaaaaaaaaaaaaaaaa', 'aaaaaaaaaaaaaaaaaaaaab', 'baaaaaaaaaaaaaaaaaaaaa', 'aaaaaaaaaaaaaaaaaaaaab', 'aaaaaaaaaaaaaaaaaaaaaaaa'];
    const cmd: Command = { type: 'put', key: '/k', value: new Uint8Array([1]) };
    for (const [i, id] of [...ids, ...ids.reverse()].entries()) {
      const p = decodeProposal(encodeProposal(1, cmd, 'client', 0, { id, seq: i + 1, ackedBelow: i }));
      expect(p.session).toEqual({ id, seq: i + 1, ackedBelow: i });
    }
  });

  it('refuses a bad session when encoding, and a malformed one when decoding', () => {
    const put: Command = { type: 'put', key: '/k', value: new Uint8Array(0) };
    expect(() => encodeProposal(1, put, 'client', 0, { id: 'short', seq: 1, ackedBelow: 0 })).toThrow(/INVALID_ARGUMENT/);
    expect(() => encodeProposal(1, put, 'client', 0, { id: 'a'.repeat(20), seq: 0, ackedBelow: 0 })).toThrow(/INVALID_ARGUMENT/);
    const good = encodeProposal(1, put, 'client', 0, { id: 'a'.repeat(20), seq: 5, ackedBelow: 5 });
    const badId = good.slice();
    badId[12] = 0x20; // a space in the id
    expect(() => decodeProposal(badId)).toThrow(/malformed proposal session/);
    const truncated = good.subarray(0, 11 + 1 + 10);
    expect(() => decodeProposal(truncated)).toThrow(/malformed proposal session/);
    const acked = good.slice();
    acked[11 + 1 + 20 + 1] = 6; // ackedBelow 6 > seq 5
    expect(() => decodeProposal(acked)).toThrow(/acked_below/);
  });
});

/** The entry layout as encodeProposal wrote it before it used one buffer: header, session trailer, command, each built on its own. */
function separately(ts: number, c: Command, origin: 'client' | 'system', hops: number, session?: { id: string; seq: number; ackedBelow: number }): Uint8Array {
  const body = encodeCommand(c);
  const newer = c.type === 'put' && c.currentOnConflict === true;
  const varint = (n: number): number[] => {
    const out: number[] = [];
    while (n >= 0x80) {
      out.push((n % 0x80) | 0x80);
      n = Math.floor(n / 0x80);
    }
    out.push(n);
    return out;
  };
  const trailer = session ? [session.id.length, ...[...session.id].map((ch) => ch.charCodeAt(0)), ...varint(session.seq), ...varint(session.ackedBelow)] : newer ? [0] : [];
  const out = new Uint8Array(11 + trailer.length + body.length);
  const view = new DataView(out.buffer);
  view.setUint8(0, newer ? 5 : session ? 4 : 3);
  view.setFloat64(1, ts);
  view.setUint8(9, hops);
  view.setUint8(10, origin === 'client' ? 1 : 0);
  out.set(trailer, 11);
  out.set(body, 11 + trailer.length);
  return out;
}

describe('proposal envelope in one buffer', () => {
  it('writes the same bytes as the separate header, session and command, for every command kind, and entries never share bytes', () => {
    const bytes = (n: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 7 + n) & 0xff);
    const cmds: Command[] = [
      { type: 'put', key: 'k', value: bytes(0) },
      { type: 'put', key: 'key/0001', value: bytes(256), expectedVersion: 2 ** 40 + 3 },
      { type: 'put', key: 'ünïcødé/日本', value: bytes(5000), returnPrevious: true },
      { type: 'put', key: 'x'.repeat(300), value: bytes(130), expectedVersion: 0, currentOnConflict: true },
      { type: 'delete', key: 'd/1' },
      { type: 'delete', key: 'é', expectedVersion: 9 },
      { type: 'triggerPut', key: 't', value: bytes(70) },
      { type: 'noop' },
      { type: 'compact', revision: 12345 },
      { type: 'txn', compares: [{ key: 'a', version: 1 }], writes: [{ type: 'put', key: 'a', value: bytes(3) }, { type: 'delete', key: 'b' }] },
    ];
    const sessions = [undefined, { id: 'abcdefghijklmnop', seq: 1, ackedBelow: 0 }, { id: 'S'.repeat(64), seq: 2 ** 50, ackedBelow: 2 ** 49 }];
    const made: Array<[Uint8Array, Uint8Array]> = [];
    for (let i = 0; i < 400; i++) {
      const c = cmds[i % cmds.length]!;
      const s = sessions[i % sessions.length];
      const ts = 1_764_780_000_000 + i * 1.5;
      const expected = separately(ts, c, i % 2 === 0 ? 'client' : 'system', i % 5, s);
      const got = encodeProposal(ts, c, i % 2 === 0 ? 'client' : 'system', i % 5, s);
      expect(got, `case ${i}`).toEqual(expected);
      made.push([got, expected]);
    }
    // Later entries did not write into earlier ones' bytes (they are views of shared chunks).
    for (const [got, expected] of made) expect(got).toEqual(expected);
  });

  it('refuses a bad command as before, and the entries after it are intact', () => {
    expect(() => encodeProposal(1, { type: 'put', key: '', value: new Uint8Array(1) }, 'client')).toThrow(/key/);
    const a = encodeProposal(5, cmd, 'client');
    expect(decodeProposal(a)).toEqual({ timestampMs: 5, hops: 0, origin: 'client', command: cmd });
  });
});
