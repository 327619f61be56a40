/** Round-trip, canonicality and garbage-rejection tests of the binary command codec. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  COMMAND_FORMAT_VERSION,
  MAX_KEY_BYTES,
  ValidationError,
  decodeCommand,
  encodeCommand,
  usesNewerPutFlags,
  type Command,
} from '../../src/statemachine/index.js';
import { b, commandArb } from './helpers.js';

/** Decodes, requiring that any failure is a ValidationError (never another exception). */
function tryDecode(bytes: Uint8Array): Command | ValidationError {
  try {
    return decodeCommand(bytes);
  } catch (e) {
    if (e instanceof ValidationError) return e;
    throw e;
  }
}

describe('command codec', () => {
  it('round-trips every command exactly (property)', () => {
    fc.assert(
      fc.property(commandArb(), (cmd) => {
        const bytes = encodeCommand(cmd);
        expect(decodeCommand(bytes)).toEqual(cmd);
        expect(encodeCommand(decodeCommand(bytes))).toEqual(bytes);
      }),
      { numRuns: 500 },
    );
  });

  it('is compact', () => {
    expect(encodeCommand({ type: 'noop' }).length).toBe(2);
    expect(encodeCommand({ type: 'put', key: 'key', value: b('value') }).length).toBe(2 + 1 + 4 + 6);
    expect(encodeCommand({ type: 'delete', key: 'k', expectedVersion: 300 }).length).toBe(2 + 1 + 2 + 2);
  });

  it('currentOnConflict is put flag bit2, exclusive with returnPrevious, and flagged as newer than pre-V5 decoders', () => {
    const cmd = { type: 'put' as const, key: 'k', value: b('v'), expectedVersion: 3, currentOnConflict: true };
    const bytes = encodeCommand(cmd);
    expect(bytes[2]).toBe(1 | 4); // version, tag, flags: expected version + currentOnConflict
    expect(decodeCommand(bytes)).toEqual(cmd);
    expect(usesNewerPutFlags(cmd)).toBe(true);
    expect(usesNewerPutFlags({ type: 'put', key: 'k', value: b('v'), expectedVersion: 3, returnPrevious: true })).toBe(false);
    expect(usesNewerPutFlags({ type: 'put', key: 'k', value: b('v'), currentOnConflict: false })).toBe(false);
    expect(decodeCommand(encodeCommand({ type: 'put', key: 'k', value: b(''), currentOnConflict: false }))).toEqual({ type: 'put', key: 'k', value: new Uint8Array(0) });
    expect(() => encodeCommand({ type: 'put', key: 'k', value: b('v'), returnPrevious: true, currentOnConflict: true })).toThrow(/exclusive/);
    const both = encodeCommand({ type: 'put', key: 'k', value: b('v'), returnPrevious: true });
    both[2] = 2 | 4;
    expect(() => decodeCommand(both)).toThrow(/exclusive/);
    const unknown = encodeCommand({ type: 'put', key: 'k', value: b('v') });
    unknown[2] = 8;
    expect(() => decodeCommand(unknown)).toThrow(/unknown put flags 8/);
  });

  it('drops returnPrevious: false and keeps BOM and astral characters in keys', () => {
    expect(decodeCommand(encodeCommand({ type: 'put', key: '\ufeffk\u{1f600}', value: b(''), returnPrevious: false })))
      .toEqual({ type: 'put', key: '\ufeffk\u{1f600}', value: new Uint8Array(0) });
  });

  it('decoded values are copies that do not alias the input buffer', () => {
    const bytes = encodeCommand({ type: 'put', key: 'k', value: b('abc') });
    const cmd = decodeCommand(bytes) as { value: Uint8Array };
    bytes.fill(0);
    expect(cmd.value).toEqual(b('abc'));
  });

  it('encodes revokeLeaseKeys under its own tag 7 (the older tags unchanged) and round-trips it', () => {
    for (const lease of [1, 300, Number.MAX_SAFE_INTEGER]) {
      const bytes = encodeCommand({ type: 'revokeLeaseKeys', lease });
      expect([...bytes.subarray(0, 2)]).toEqual([COMMAND_FORMAT_VERSION, 7]);
      expect(decodeCommand(bytes)).toEqual({ type: 'revokeLeaseKeys', lease });
    }
    expect(encodeCommand({ type: 'revokeLeaseKeys', lease: 300 }).length).toBe(2 + 2);
    expect([...encodeCommand({ type: 'compact', revision: 1 }).subarray(0, 2)]).toEqual([COMMAND_FORMAT_VERSION, 6]);
    for (const lease of [0, -1, 1.5, Number.MAX_SAFE_INTEGER + 1, '1']) {
      expect(() => encodeCommand({ type: 'revokeLeaseKeys', lease } as unknown as Command)).toThrow(ValidationError);
    }
  });

  it('refuses to encode invalid commands', () => {
    expect(() => encodeCommand({ type: 'put', key: '', value: b('') })).toThrow(ValidationError);
    expect(() => encodeCommand({ type: 'put', key: 'x'.repeat(MAX_KEY_BYTES + 1), value: b('') })).toThrow(ValidationError);
  });

  it.each([
    ['empty input', []],
    ['unknown format version', [99, 5]],
    ['unknown tag', [COMMAND_FORMAT_VERSION, 42]],
    ['truncated put', [COMMAND_FORMAT_VERSION, 1, 0, 3, 0x6b]],
    ['unknown put flags', [COMMAND_FORMAT_VERSION, 1, 0x80, 1, 0x6b, 0]],
    ['trailing bytes', [COMMAND_FORMAT_VERSION, 5, 0]],
    ['non-canonical varint', [COMMAND_FORMAT_VERSION, 6, 0x80, 0x00]],
    ['varint too long', [COMMAND_FORMAT_VERSION, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]],
    ['varint above 2^53', [COMMAND_FORMAT_VERSION, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]],
    ['invalid UTF-8 key', [COMMAND_FORMAT_VERSION, 2, 0, 2, 0xc3, 0x28]],
    ['encoded surrogate key', [COMMAND_FORMAT_VERSION, 2, 0, 3, 0xed, 0xa0, 0x80]],
    ['empty key', [COMMAND_FORMAT_VERSION, 2, 0, 0]],
    ['huge length', [COMMAND_FORMAT_VERSION, 4, 1, 0x6b, 0xff, 0xff, 0xff, 0xff, 0x0f]],
    ['too many txn ops', [COMMAND_FORMAT_VERSION, 3, 0xff, 0x01]],
    ['unknown txn op', [COMMAND_FORMAT_VERSION, 3, 0, 1, 7, 1, 0x6b]],
    ['duplicate txn keys', [COMMAND_FORMAT_VERSION, 3, 0, 2, 2, 1, 0x6b, 2, 1, 0x6b]],
    ['revokeLeaseKeys of lease 0', [COMMAND_FORMAT_VERSION, 7, 0]],
    ['truncated revokeLeaseKeys', [COMMAND_FORMAT_VERSION, 7]],
    ['revokeLeaseKeys with trailing bytes', [COMMAND_FORMAT_VERSION, 7, 1, 0]],
    ['revokeLeaseKeys with a non-canonical id', [COMMAND_FORMAT_VERSION, 7, 0x81, 0x00]],
  ])('rejects %s with a ValidationError', (_name, bytes) => {
    const r = tryDecode(new Uint8Array(bytes));
    expect(r).toBeInstanceOf(ValidationError);
    expect((r as ValidationError).message.length).toBeGreaterThan(10);
  });

  it('rejects non-Uint8Array input', () => {
    expect(tryDecode('hello' as unknown as Uint8Array)).toBeInstanceOf(ValidationError);
  });

  it('random garbage either fails with ValidationError or is a canonical encoding (property)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), fc.boolean(), (raw, fixHeader) => {
        const bytes = fixHeader && raw.length > 0 ? Uint8Array.of(COMMAND_FORMAT_VERSION, ...raw) : raw;
        const r = tryDecode(bytes);
        if (!(r instanceof ValidationError)) expect(encodeCommand(r)).toEqual(bytes);
      }),
      { numRuns: 2000 },
    );
  });

  it('mutated and truncated encodings fail cleanly or stay canonical (property)', () => {
    fc.assert(
      fc.property(commandArb(), fc.nat(), fc.integer({ min: 0, max: 255 }), fc.nat(), (cmd, pos, byte, cut) => {
        const bytes = encodeCommand(cmd);
        const mutated = bytes.slice();
        mutated[pos % mutated.length] = byte;
        for (const candidate of [mutated, bytes.subarray(0, cut % bytes.length)]) {
          const r = tryDecode(candidate);
          if (!(r instanceof ValidationError)) expect(encodeCommand(r)).toEqual(candidate);
        }
      }),
      { numRuns: 1000 },
    );
  });
});

describe('ByteWriter and ByteChunks', () => {
  it('writes doubles big-endian and strings as UTF-8, as DataView and TextEncoder do', async () => {
    const { ByteWriter } = await import('../../src/statemachine/binary.js');
    for (const v of [0, -0, 1.5, -2.25, 1_764_780_000_000, Number.MAX_SAFE_INTEGER, Number.MIN_VALUE, Infinity, NaN]) {
      const w = new ByteWriter(4);
      w.u8(9);
      w.f64(v);
      const out = w.written();
      const view = new DataView(out.buffer, out.byteOffset, out.length);
      expect(out.length).toBe(9);
      expect(Object.is(view.getFloat64(1), v)).toBe(true);
    }
    for (const s of ['', 'abc', 'key/0001', 'é', '日本語', 'a😀b', 'x'.repeat(300)]) {
      const w = new ByteWriter(2);
      w.str(s);
      const utf8 = new TextEncoder().encode(s);
      expect(w.written().subarray(w.written().length - utf8.length)).toEqual(utf8);
    }
  });

  it('hands out disjoint zeroed views, gives back an untouched tail, and gives large requests arrays of their own', async () => {
    const { ByteChunks } = await import('../../src/statemachine/binary.js');
    const chunks = new ByteChunks(1024, 256);
    const a = chunks.take(100);
    a.subarray(0, 60).fill(1); // the writer used 60 bytes
    chunks.trim(a, 60);
    const b = chunks.take(100);
    expect(b.every((x) => x === 0)).toBe(true);
    expect(b.byteOffset).toBe(a.byteOffset + 60);
    b.fill(2);
    expect(a.subarray(0, 60).every((x) => x === 1)).toBe(true);
    chunks.trim(a, 10); // not the last view: nothing given back
    expect(chunks.take(10).byteOffset).toBe(b.byteOffset + 100);
    const big = chunks.take(300);
    expect(big.byteOffset).toBe(0);
    expect(big.buffer.byteLength).toBe(300);
    const views = Array.from({ length: 30 }, () => chunks.take(100)); // past the chunk: a new one
    expect(new Set(views.map((v) => v.buffer)).size).toBeGreaterThan(1);
    for (const v of views) expect(v.length).toBe(100);
  });
});
