/** Tests of snapshot encoding: exact round trip, determinism, compactness and rejection of corrupt input. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  KvStateMachine,
  SNAPSHOT_FORMAT_VERSION,
  SNAPSHOT_MAGIC,
  ValidationError,
  type Command,
} from '../../src/statemachine/index.js';
import { crc32 } from '../../src/statemachine/binary.js';
import { b } from './helpers.js';

function sample(): KvStateMachine {
  const m = new KvStateMachine({ maxHistoryRevisions: 50 });
  const cmds: Command[] = [
    { type: 'put', key: 'users/alice', value: b('a1') },
    { type: 'put', key: 'users/bob', value: b('b1') },
    { type: 'triggerPut', key: 'hooks/x', value: b('payload') },
    { type: 'put', key: 'users/alice', value: b('a2') },
    { type: 'delete', key: 'users/bob' },
    { type: 'txn', compares: [], writes: [{ type: 'put', key: 'users/\u{1f600}', value: b('e') }, { type: 'delete', key: 'users/alice' }] },
    { type: 'put', key: 'users/carol', value: new Uint8Array(0) },
    { type: 'compact', revision: 4 },
    { type: 'put', key: 'users/carol', value: b('c2') },
  ];
  cmds.forEach((c, i) => m.apply(i + 1, 1_700_000_000_000 + i * 10, c));
  return m;
}

function restoreError(bytes: Uint8Array): ValidationError | undefined {
  try {
    KvStateMachine.restore(bytes);
    return undefined;
  } catch (e) {
    if (e instanceof ValidationError) return e;
    throw e;
  }
}

/** Re-seals a tampered body with a valid checksum so the structural checks are exercised. */
function reseal(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length + 4);
  out.set(body);
  new DataView(out.buffer).setUint32(body.length, crc32(body));
  return out;
}

describe('snapshot / restore', () => {
  it('round-trips exactly, including reads at old revisions, history, clock and options', () => {
    const m = sample();
    const bytes = m.snapshot();
    const r = KvStateMachine.restore(bytes);
    expect(r.snapshot()).toEqual(bytes);
    for (const p of ['appliedIndex', 'revision', 'compactRevision', 'lastTimestampMs', 'oldestHistoryRevision', 'keyCount', 'userKeyCount', 'maxHistoryRevisions'] as const) {
      expect(r[p]).toEqual(m[p]);
    }
    for (let rev = m.compactRevision; rev <= m.revision; rev++) {
      for (const k of ['users/alice', 'users/bob', 'users/carol', 'users/\u{1f600}', 'hooks/x']) {
        expect(r.get(k, { atRevision: rev })).toEqual(m.get(k, { atRevision: rev }));
      }
    }
    expect(r.eventsSince(r.oldestHistoryRevision)).toEqual(m.eventsSince(m.oldestHistoryRevision));
    expect(r.list('users/')).toEqual(m.list('users/'));
    // both continue identically
    const next: Command = { type: 'put', key: 'users/dave', value: b('d') };
    expect(r.apply(100, 5, next)).toEqual(m.apply(100, 5, next));
    expect(r.snapshot()).toEqual(m.snapshot());
  });

  it('round-trips an empty machine and starts with magic and format version', () => {
    const bytes = new KvStateMachine().snapshot();
    expect([...bytes.subarray(0, 5)]).toEqual([...SNAPSHOT_MAGIC, SNAPSHOT_FORMAT_VERSION]);
    expect(KvStateMachine.restore(bytes).snapshot()).toEqual(bytes);
  });

  it('is compact: prefix-compressed keys, put values stored once', () => {
    const m = new KvStateMachine();
    for (let i = 0; i < 1000; i++) m.apply(i + 1, 1_700_000_000_000 + i, { type: 'put', key: `some/long/common/prefix/${i}`, value: b('v') });
    const bytes = m.snapshot();
    // ~1000 * (key suffix ~4 + version 3 + value 2 + event ~30) plus timestamps; far below naive ~1000 * 60
    expect(bytes.length).toBeLessThan(45_000);
  });

  it('rejects bad magic, version, checksum, truncation and trailing data with MALFORMED_SNAPSHOT', () => {
    const bytes = sample().snapshot();
    const tweak = (i: number): Uint8Array => {
      const c = bytes.slice();
      c[i]! ^= 0x01;
      return c;
    };
    expect(restoreError(tweak(0))?.message).toMatch(/magic/);
    expect(restoreError(reseal(tweak(4).subarray(0, bytes.length - 4)))?.message).toMatch(/format version/);
    expect(restoreError(tweak(20))?.message).toMatch(/checksum/);
    expect(restoreError(bytes.subarray(0, 7))?.code).toBe('MALFORMED_SNAPSHOT');
    expect(restoreError(reseal(Uint8Array.of(...bytes.subarray(0, bytes.length - 4), 0)))?.message).toMatch(/trailing/);
    expect(restoreError(new Uint8Array(0))?.code).toBe('MALFORMED_SNAPSHOT');
    expect(restoreError('x' as unknown as Uint8Array)?.code).toBe('MALFORMED_SNAPSHOT');
  });

  it('any corruption, even with a fixed-up checksum, fails cleanly or restores a self-consistent machine (property)', () => {
    const bytes = sample().snapshot();
    const body = bytes.subarray(0, bytes.length - 4);
    fc.assert(
      fc.property(fc.nat(body.length - 1), fc.integer({ min: 0, max: 255 }), fc.nat(body.length), (pos, byte, cut) => {
        const mutated = body.slice();
        mutated[pos] = byte;
        for (const candidate of [reseal(mutated), reseal(body.subarray(0, cut))]) {
          let m: KvStateMachine | undefined;
          try {
            m = KvStateMachine.restore(candidate);
          } catch (e) {
            expect(e).toBeInstanceOf(ValidationError);
            expect((e as ValidationError).code).toBe('MALFORMED_SNAPSHOT');
          }
          if (m) {
            expect(m.snapshot()).toEqual(candidate);
            m.list('');
            m.eventsSince(m.oldestHistoryRevision);
          }
        }
      }),
      { numRuns: 1000 },
    );
  });
});
