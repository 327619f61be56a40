/**
 * Decoding a snapshot streamed in chunks (a follower's streamed install): the index pass over a
 * {@link ChunkedByteReader} keeps only the history window's values, the value cursor gives every
 * other value back in order, and together they rebuild exactly the machine that was encoded,
 * whatever the chunk boundaries (down to one byte).
 */
import { describe, expect, it } from 'vitest';
import { ChunkedByteReader, KvStateMachine, VALUE_ON_DISK, ValidationError, type Command, type SnapshotData } from '../../src/statemachine/index.js';
import { runSteps, SnapshotValueCursor } from '../../src/statemachine/snapshot-codec.js';
import { b } from './helpers.js';

/** A machine with old versions (values beyond the history window), tombstones, triggers, hop counts, sessions and a compaction point. */
function sample(): KvStateMachine {
  const m = new KvStateMachine({ maxHistoryRevisions: 8 });
  let i = 0;
  const run = (c: Command, session?: { id: string; seq: number }, hops = 0) =>
    m.apply(++i, 1_700_000_000_000 + i * 10, c, 'client', session ? { ...session, ackedBelow: 0 } : undefined, hops);
  for (let r = 0; r < 6; r++) for (let k = 0; k < 5; k++) run({ type: 'put', key: `k/${k}\u0000${'x'.repeat(k)}`, value: b(`${r}:${k}:${'v'.repeat(50 * k)}`) }, r === 2 ? { id: `session-${k}-abcdefghijklmnop`, seq: 1 } : undefined, k === 3 ? 2 : 0);
  run({ type: 'delete', key: 'k/1\u0000x' });
  run({ type: 'triggerPut', key: 'hooks/t', value: b('trigger payload') });
  run({ type: 'compact', revision: 12 });
  for (let k = 0; k < 3; k++) run({ type: 'put', key: `z/${k}`, value: b('z'.repeat(300)) }, undefined, k === 1 ? 1 : 0);
  return m;
}

/** Splits `bytes` into chunks of the given sizes (cycled). */
function chunked(bytes: Uint8Array, sizes: readonly number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const n = sizes[i % sizes.length]!;
    out.push(Buffer.from(bytes.subarray(at, at + n))); // Buffers, as an engine returns them
    at += n;
  }
  return out;
}

function reader(chunks: readonly Uint8Array[], total: number): ChunkedByteReader {
  return new ChunkedByteReader((seq) => chunks[seq], total - 4, 'MALFORMED_SNAPSHOT');
}

describe('a snapshot decoded from chunks', () => {
  const sm = sample();
  const bytes = sm.snapshot();
  for (const sizes of [[1], [7, 3, 1], [64], [1000], [bytes.length]]) {
    it(`rebuilds the same machine with chunks of ${sizes.join(', ')} bytes`, () => {
      const chunks = chunked(bytes, sizes);
      const restored = runSteps(KvStateMachine.restoreSteps(reader(chunks, bytes.length)));
      const d = restored.toRecords();
      // Values older than the history window stay on disk; the newest are kept (copies, not views).
      const versions = d.keys.flatMap(([, vs]) => vs);
      expect(versions.some((v) => v.value === VALUE_ON_DISK)).toBe(true);
      for (const v of versions) if (v.revision > sm.revision - 8 && v.value !== null) expect(v.value).not.toBe(VALUE_ON_DISK);
      for (const v of versions) if (v.value !== null && v.value !== VALUE_ON_DISK) expect(Buffer.isBuffer(v.value)).toBe(false);
      // The cursor gives the others back, in key then revision order.
      const cursor = new SnapshotValueCursor(reader(chunks, bytes.length));
      const full: SnapshotData = {
        ...d,
        keys: d.keys.map(([k, vs]) => [k, vs.map((v) => (v.value === VALUE_ON_DISK ? { ...v, value: cursor.valueAt(k, v.revision).slice() } : v))] as const),
      };
      expect(Buffer.from(KvStateMachine.fromRecords(full).snapshot()).equals(Buffer.from(bytes))).toBe(true);
    });
  }

  it('fails cleanly on a missing chunk, a truncated input and a value asked out of order', () => {
    const chunks = chunked(bytes, [100]);
    const missing = chunks.filter((_, i) => i !== 2);
    expect(() => runSteps(KvStateMachine.restoreSteps(reader(missing, bytes.length)))).toThrow(ValidationError);
    expect(() => runSteps(KvStateMachine.restoreSteps(reader(chunks, bytes.length - 50)))).toThrow(ValidationError);
    const cursor = new SnapshotValueCursor(reader(chunks, bytes.length));
    cursor.valueAt('k/2\u0000xx', 13);
    expect(() => cursor.valueAt('k/0\u0000', 26)).toThrow(ValidationError);
  });
});
