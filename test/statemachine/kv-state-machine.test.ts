/** Example-based tests of every state machine command, read, compaction and history edge case. */
import { describe, expect, it } from 'vitest';
import {
  CompactedRevisionError,
  KvStateMachine,
  MAX_KEY_BYTES,
  MAX_TXN_OPS,
  MAX_VALUE_BYTES,
  ValidationError,
  encodeCommand,
  type Command,
  type ApplyOutput,
} from '../../src/statemachine/index.js';
import { b, s } from './helpers.js';

/** Applies commands at consecutive indices with a fixed or given timestamp. */
class Driver {
  index = 0;
  constructor(readonly m = new KvStateMachine()) {}
  run(cmd: Command, ts = 1000): ApplyOutput {
    return this.m.apply(++this.index, ts, cmd);
  }
  put(key: string, value: string, ts = 1000, extra: { expectedVersion?: number; returnPrevious?: boolean; currentOnConflict?: boolean } = {}): ApplyOutput {
    return this.run({ type: 'put', key, value: b(value), ...extra }, ts);
  }
  del(key: string, ts = 1000, expectedVersion?: number): ApplyOutput {
    return this.run(expectedVersion === undefined ? { type: 'delete', key } : { type: 'delete', key, expectedVersion }, ts);
  }
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    if (e instanceof ValidationError) return e.code;
    throw e;
  }
  return undefined;
}

describe('put', () => {
  it('stores values, bumps the revision once per write and sets version = revision', () => {
    const d = new Driver();
    const r1 = d.put('k', 'v1', 10);
    expect(r1.result).toEqual({ type: 'put', succeeded: true, revision: 1, version: 1, timestampMs: 10 });
    expect(r1.events).toEqual([{ type: 'put', key: 'k', value: b('v1'), revision: 1, timestampMs: 10 }]);
    d.put('other', 'x', 11);
    const r3 = d.put('k', 'v2', 12);
    expect(r3.result).toMatchObject({ succeeded: true, revision: 3, version: 3 });
    expect(d.m.revision).toBe(3);
    expect(d.m.get('k')).toEqual({ value: b('v2'), version: 3, timestampMs: 12 });
    expect(d.m.keyCount).toBe(2);
  });

  it('counts the keys users wrote apart from reserved ones (system-origin cursors, dead letters)', () => {
    const d = new Driver();
    d.put('/a', '1');
    d.put('/_sys/cursor/x/1/a', '5'); // the Driver applies with system origin
    d.put('/_dlq/x/1', 'letter');
    expect(d.m.keyCount).toBe(3);
    expect(d.m.userKeyCount).toBe(1);
    d.del('/_dlq/x/1');
    d.put('/_sys/cursor/x/1/a', '6'); // an overwrite is no new key
    expect(d.m.userKeyCount).toBe(1);
    expect(d.m.keyCount).toBe(2);
    d.del('/a');
    expect(d.m.userKeyCount).toBe(0);
    expect(KvStateMachine.restore(d.m.snapshot()).userKeyCount).toBe(0);
  });

  it('expectedVersion 0 creates only if absent; conflict returns the current version and no event', () => {
    const d = new Driver();
    expect(d.put('k', 'a', 5, { expectedVersion: 0 }).result).toMatchObject({ succeeded: true, version: 1 });
    const conflict = d.put('k', 'b', 6, { expectedVersion: 0 });
    expect(conflict.result).toEqual({
      type: 'put', succeeded: false, revision: 1, version: 1, timestampMs: 6, current: { version: 1 },
    });
    expect(conflict.events).toEqual([]);
    expect(d.m.revision).toBe(1);
    expect(s(d.m.get('k')?.value)).toBe('a');
  });

  it('expectedVersion must equal the current version; returnPrevious returns the current value on conflict', () => {
    const d = new Driver();
    d.put('k', 'a');
    d.put('k', 'b'); // version 2
    expect(d.put('k', 'c', 1000, { expectedVersion: 1, returnPrevious: true }).result).toMatchObject({
      succeeded: false, revision: 2, version: 2, current: { version: 2, value: b('b') },
    });
    expect(d.put('k', 'c', 1000, { expectedVersion: 2 }).result).toMatchObject({ succeeded: true, revision: 3, version: 3 });
    expect(d.put('missing', 'x', 1000, { expectedVersion: 7, returnPrevious: true }).result).toMatchObject({
      succeeded: false, version: 0, current: { version: 0 },
    });
  });

  it('currentOnConflict: a success carries no previous (nor current) value; a conflict carries the current version and value', () => {
    const d = new Driver();
    d.put('k', 'a');
    const ok = d.put('k', 'b', 1000, { expectedVersion: 1, currentOnConflict: true }).result;
    expect(ok).toEqual({ type: 'put', succeeded: true, revision: 2, version: 2, timestampMs: 1000 });
    const created = d.put('new', 'x', 1000, { expectedVersion: 0, currentOnConflict: true }).result;
    expect(created).toEqual({ type: 'put', succeeded: true, revision: 3, version: 3, timestampMs: 1000 });
    expect(d.put('k', 'c', 1000, { expectedVersion: 1, currentOnConflict: true }).result).toEqual({
      type: 'put', succeeded: false, revision: 3, version: 2, timestampMs: 1000, current: { version: 2, value: b('b') },
    });
    expect(d.put('missing', 'x', 1000, { expectedVersion: 7, currentOnConflict: true }).result).toEqual({
      type: 'put', succeeded: false, revision: 3, version: 0, timestampMs: 1000, current: { version: 0 },
    });
    // Without either flag a conflict reports the version only.
    expect(d.put('k', 'c', 1000, { expectedVersion: 1 }).result).toMatchObject({ succeeded: false, current: { version: 2 } });
    expect(d.put('k', 'c', 1000, { expectedVersion: 1 }).result).not.toHaveProperty('current.value');
  });

  it('returnPrevious on success returns the replaced value, and nothing for a new key', () => {
    const d = new Driver();
    const first = d.put('k', 'a', 1000, { returnPrevious: true }).result;
    expect(first).not.toHaveProperty('previous');
    expect(d.put('k', 'b', 1000, { returnPrevious: true }).result).toMatchObject({ previous: { version: 1, value: b('a') } });
  });

  it('a put after a delete recreates the key; expectedVersion 0 matches a deleted key', () => {
    const d = new Driver();
    d.put('k', 'a');
    d.del('k');
    expect(d.put('k', 'b', 1000, { expectedVersion: 0 }).result).toMatchObject({ succeeded: true, version: 3 });
  });

  it('accepts empty values and maximum-size keys and values', () => {
    const d = new Driver();
    const bigKey = 'k'.repeat(MAX_KEY_BYTES);
    expect(d.run({ type: 'put', key: bigKey, value: new Uint8Array(MAX_VALUE_BYTES) }).result).toMatchObject({ succeeded: true });
    expect(d.put('e', '').result).toMatchObject({ succeeded: true });
    expect(d.m.get('e')?.value).toEqual(new Uint8Array(0));
    expect(d.m.get(bigKey)?.value.length).toBe(MAX_VALUE_BYTES);
  });
});

describe('delete', () => {
  it('writes a tombstone, bumps the revision and emits a delete event', () => {
    const d = new Driver();
    d.put('k', 'a');
    const r = d.del('k', 2000);
    expect(r.result).toEqual({ type: 'delete', succeeded: true, revision: 2, timestampMs: 2000, deleted: true });
    expect(r.events).toEqual([{ type: 'delete', key: 'k', revision: 2, timestampMs: 2000 }]);
    expect(d.m.get('k')).toBeUndefined();
    expect(d.m.get('k', { atRevision: 1 })?.value).toEqual(b('a'));
    expect(d.m.keyCount).toBe(0);
  });

  it('deleting an absent or already deleted key succeeds without a new revision', () => {
    const d = new Driver();
    expect(d.del('nope').result).toMatchObject({ succeeded: true, deleted: false, revision: 0 });
    d.put('k', 'a');
    d.del('k');
    const again = d.del('k');
    expect(again.result).toMatchObject({ succeeded: true, deleted: false, revision: 2 });
    expect(again.events).toEqual([]);
  });

  it('conditional delete checks the version (0 = absent)', () => {
    const d = new Driver();
    d.put('k', 'a');
    expect(d.del('k', 1000, 5).result).toEqual({
      type: 'delete', succeeded: false, revision: 1, timestampMs: 1000, deleted: false, current: { version: 1 },
    });
    expect(d.del('k', 1000, 0).result).toMatchObject({ succeeded: false, current: { version: 1 } });
    expect(d.del('k', 1000, 1).result).toMatchObject({ succeeded: true, deleted: true, revision: 2 });
    expect(d.del('k', 1000, 0).result).toMatchObject({ succeeded: true, deleted: false, revision: 2 });
  });
});

describe('txn', () => {
  it('applies all writes at one revision when every compare holds', () => {
    const d = new Driver();
    d.put('a', '1');
    d.put('gone', 'x');
    const r = d.run({
      type: 'txn',
      compares: [{ key: 'a', version: 1 }, { key: 'b', version: 0 }],
      writes: [
        { type: 'put', key: 'b', value: b('2') },
        { type: 'delete', key: 'gone' },
        { type: 'put', key: 'a', value: b('3') },
        { type: 'delete', key: 'never' },
      ],
    }, 5000);
    expect(r.result).toEqual({ type: 'txn', succeeded: true, revision: 3, timestampMs: 5000, failedCompares: [] });
    expect(r.events).toEqual([
      { type: 'put', key: 'b', value: b('2'), revision: 3, timestampMs: 5000 },
      { type: 'delete', key: 'gone', revision: 3, timestampMs: 5000 },
      { type: 'put', key: 'a', value: b('3'), revision: 3, timestampMs: 5000 },
    ]);
    expect(d.m.revision).toBe(3);
    expect(d.m.get('a')?.version).toBe(3);
    expect(d.m.get('b')?.version).toBe(3);
    expect(d.m.get('gone')).toBeUndefined();
  });

  it('changes nothing when any compare fails and reports which ones failed', () => {
    const d = new Driver();
    d.put('a', '1');
    const r = d.run({
      type: 'txn',
      compares: [{ key: 'a', version: 1 }, { key: 'a', version: 0 }, { key: 'x', version: 3 }],
      writes: [{ type: 'put', key: 'b', value: b('2') }],
    });
    expect(r.result).toMatchObject({ succeeded: false, revision: 1, failedCompares: [1, 2] });
    expect(r.events).toEqual([]);
    expect(d.m.get('b')).toBeUndefined();
    expect(d.m.revision).toBe(1);
  });

  it('treats a deleted key as version 0 in compares', () => {
    const d = new Driver();
    d.put('a', '1');
    d.del('a');
    expect(d.run({ type: 'txn', compares: [{ key: 'a', version: 0 }], writes: [{ type: 'put', key: 'a', value: b('x') }] }).result)
      .toMatchObject({ succeeded: true, revision: 3 });
  });

  it('an empty or no-effect txn succeeds without bumping the revision', () => {
    const d = new Driver();
    expect(d.run({ type: 'txn', compares: [], writes: [] }).result).toMatchObject({ succeeded: true, revision: 0 });
    expect(d.run({ type: 'txn', compares: [], writes: [{ type: 'delete', key: 'x' }] }).events).toEqual([]);
    expect(d.m.revision).toBe(0);
  });

  it('rejects duplicate keys and too many ops', () => {
    const d = new Driver();
    const dup = d.run({ type: 'txn', compares: [], writes: [{ type: 'put', key: 'a', value: b('1') }, { type: 'delete', key: 'a' }] });
    expect(dup.result.type).toBe('rejected');
    expect(dup.result.type === 'rejected' && dup.result.error.code).toBe('DUPLICATE_TXN_KEY');
    const many = Array.from({ length: MAX_TXN_OPS + 1 }, (_, i) => ({ key: `k${i}`, version: 0 }));
    const r = d.run({ type: 'txn', compares: many, writes: [] });
    expect(r.result.type === 'rejected' && r.result.error.code).toBe('TOO_MANY_TXN_OPS');
    const big = new Uint8Array(MAX_VALUE_BYTES);
    const r2 = d.run({ type: 'txn', compares: [], writes: [0, 1, 2].map((i) => ({ type: 'put' as const, key: `k${i}`, value: big })) });
    expect(r2.result.type === 'rejected' && r2.result.error.code).toBe('TXN_TOO_LARGE');
    expect(d.m.revision).toBe(0);
  });
});

describe('triggerPut, noop, rejected and skipped commands', () => {
  it('triggerPut stores nothing but produces an event at a new revision', () => {
    const d = new Driver();
    const r = d.run({ type: 'triggerPut', key: 't', value: b('go') }, 77);
    expect(r.result).toEqual({ type: 'trigger', revision: 1, timestampMs: 77 });
    expect(r.events).toEqual([{ type: 'trigger', key: 't', value: b('go'), revision: 1, timestampMs: 77 }]);
    expect(d.m.get('t')).toBeUndefined();
    expect(d.m.list('').items).toEqual([]);
  });

  it('noop advances the applied index and clock only', () => {
    const d = new Driver();
    expect(d.run({ type: 'noop' }, 50)).toEqual({ applied: true, result: { type: 'noop', revision: 0, timestampMs: 50 }, events: [] });
    expect(d.m.appliedIndex).toBe(1);
    expect(d.m.lastTimestampMs).toBe(50);
    expect(d.m.revision).toBe(0);
  });

  it('invalid commands are returned as rejected (never thrown) and change nothing but the index', () => {
    const d = new Driver();
    const bad: unknown[] = [
      { type: 'put', key: '', value: b('x') },
      { type: 'put', key: 'x'.repeat(MAX_KEY_BYTES + 1), value: b('x') },
      { type: 'put', key: '\u00e9'.repeat(MAX_KEY_BYTES / 2 + 1), value: b('x') },
      { type: 'put', key: 'k', value: new Uint8Array(MAX_VALUE_BYTES + 1) },
      { type: 'put', key: 'k', value: 'not bytes' },
      { type: 'put', key: 'k', value: b('x'), expectedVersion: -1 },
      { type: 'put', key: 'k', value: b('x'), expectedVersion: 1.5 },
      { type: 'put', key: '\ud800', value: b('x') },
      { type: 'delete', key: 42 },
      { type: 'bogus' },
      null,
      { type: 'txn', compares: 'no', writes: [] },
      { type: 'txn', compares: [], writes: [{ type: 'wat', key: 'k' }] },
    ];
    const codes = bad.map((c) => {
      const r = d.run(c as Command);
      expect(r.applied).toBe(true);
      expect(r.events).toEqual([]);
      return r.result.type === 'rejected' ? r.result.error.code : r.result.type;
    });
    expect(codes).toEqual([
      'INVALID_KEY', 'KEY_TOO_LONG', 'KEY_TOO_LONG', 'VALUE_TOO_LARGE', 'INVALID_VALUE', 'INVALID_NUMBER', 'INVALID_NUMBER',
      'INVALID_KEY', 'INVALID_KEY', 'INVALID_COMMAND', 'INVALID_COMMAND', 'INVALID_COMMAND', 'INVALID_COMMAND',
    ]);
    expect(d.m.appliedIndex).toBe(bad.length);
    expect(d.m.revision).toBe(0);
  });

  it('re-applying an index <= appliedIndex is skipped (idempotent restart)', () => {
    const d = new Driver();
    d.put('k', 'a');
    d.put('k', 'b');
    const again = d.m.apply(1, 1000, { type: 'put', key: 'k', value: b('zzz') });
    expect(again).toEqual({ applied: false, result: { type: 'skipped', appliedIndex: 2, revision: 2 }, events: [] });
    expect(s(d.m.get('k')?.value)).toBe('b');
    // gaps are allowed
    expect(d.m.apply(10, 1000, { type: 'noop' }).applied).toBe(true);
    expect(d.m.apply(9, 1000, { type: 'noop' }).applied).toBe(false);
    expect(d.m.appliedIndex).toBe(10);
  });

  it('throws for invalid index or timestamp (host bugs)', () => {
    const m = new KvStateMachine();
    expect(codeOf(() => m.apply(0, 1, { type: 'noop' }))).toBe('INVALID_NUMBER');
    expect(codeOf(() => m.apply(1.5, 1, { type: 'noop' }))).toBe('INVALID_NUMBER');
    expect(codeOf(() => m.apply(1, -1, { type: 'noop' }))).toBe('INVALID_NUMBER');
    expect(codeOf(() => m.apply(1, Number.NaN, { type: 'noop' }))).toBe('INVALID_NUMBER');
    expect(m.appliedIndex).toBe(0);
  });

  it('applyEntry decodes entries, treats empty data as noop and rejects garbage', () => {
    const m = new KvStateMachine();
    expect(m.applyEntry(1, 5, new Uint8Array(0)).result.type).toBe('noop');
    expect(m.applyEntry(2, 5, encodeCommand({ type: 'put', key: 'k', value: b('v') })).result).toMatchObject({ succeeded: true });
    const bad = m.applyEntry(3, 5, new Uint8Array([9, 9, 9]));
    expect(bad.result.type === 'rejected' && bad.result.error.code).toBe('MALFORMED_COMMAND');
    expect(m.appliedIndex).toBe(3);
    expect(m.revision).toBe(1);
  });
});

describe('timestamps', () => {
  it('are made monotonic: effective = max(last, given), for every applied command', () => {
    const d = new Driver();
    expect(d.put('a', '1', 100).result).toMatchObject({ timestampMs: 100 });
    expect(d.put('a', '2', 90).result).toMatchObject({ timestampMs: 100 }); // clock went backwards: clamped
    expect(d.run({ type: 'noop' }, 150).result).toMatchObject({ timestampMs: 150 });
    expect(d.put('a', '3', 120).events[0]!.timestampMs).toBe(150);
    expect(d.m.get('a')).toMatchObject({ version: 3, timestampMs: 150 });
    expect(d.m.lastTimestampMs).toBe(150);
  });
});

describe('get at revision / time', () => {
  function history(): Driver {
    const d = new Driver();
    d.put('k', 'v1', 100); // rev 1
    d.put('x', 'x1', 200); // rev 2
    d.put('k', 'v2', 300); // rev 3
    d.del('k', 400); // rev 4
    d.put('k', 'v3', 400); // rev 5 (same ms as rev 4)
    return d;
  }

  it('reads the value as of a revision across overwrites and deletes', () => {
    const d = history();
    const at = (rev: number): string | undefined => s(d.m.get('k', { atRevision: rev })?.value);
    expect([0, 1, 2, 3, 4, 5].map(at)).toEqual([undefined, 'v1', 'v1', 'v2', undefined, 'v3']);
    expect(d.m.get('k', { atRevision: 2 })).toEqual({ value: b('v1'), version: 1, timestampMs: 100 });
    expect(codeOf(() => d.m.get('k', { atRevision: 6 }))).toBe('FUTURE_REVISION');
  });

  it('reads as of a time: the newest revision with timestamp <= time', () => {
    const d = history();
    const at = (t: number): string | undefined => s(d.m.get('k', { atTimeMs: t })?.value);
    expect([50, 100, 250, 300, 399, 400, 10_000].map(at)).toEqual([undefined, 'v1', 'v1', 'v2', 'v2', 'v3', 'v3']);
    expect(d.m.revisionAtTime(399)).toBe(3);
    expect(d.m.revisionAtTime(400)).toBe(5);
    expect(d.m.revisionAtTime(-5)).toBe(0);
  });

  it('rejects contradictory or invalid read options', () => {
    const d = history();
    expect(codeOf(() => d.m.get('k', { atRevision: 1, atTimeMs: 5 } as never))).toBe('INVALID_ARGUMENT');
    expect(codeOf(() => d.m.get('k', { atRevision: -1 }))).toBe('INVALID_NUMBER');
    expect(codeOf(() => d.m.get(''))).toBe('INVALID_KEY');
  });
});

describe('compaction', () => {
  it('keeps reads at and after the compaction point exact and rejects older ones', () => {
    const d = new Driver();
    d.put('k', 'v1', 100); // 1
    d.put('k', 'v2', 200); // 2
    d.put('j', 'j1', 300); // 3
    d.del('j', 400); // 4
    d.put('k', 'v3', 500); // 5
    d.put('z', 'z1', 600); // 6
    d.del('z', 700); // 7
    expect(d.m.compact(4)).toBe(4);
    expect(d.m.compactRevision).toBe(4);
    expect(s(d.m.get('k', { atRevision: 4 })?.value)).toBe('v2');
    expect(d.m.get('j', { atRevision: 4 })).toBeUndefined();
    expect(s(d.m.get('k', { atRevision: 5 })?.value)).toBe('v3');
    expect(s(d.m.get('z', { atRevision: 6 })?.value)).toBe('z1');
    let err: unknown;
    try {
      d.m.get('k', { atRevision: 3 });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CompactedRevisionError);
    expect((err as CompactedRevisionError).oldestRevision).toBe(4);
    expect((err as CompactedRevisionError).requestedRevision).toBe(3);
    expect(() => d.m.get('k', { atTimeMs: 350 })).toThrow(CompactedRevisionError);
    expect(s(d.m.get('k', { atTimeMs: 400 })?.value)).toBe('v2');
    // compacting backwards or to the same point is a no-op; the future is rejected
    expect(d.m.compact(2)).toBe(4);
    expect(codeOf(() => d.m.compact(8))).toBe('FUTURE_REVISION');
    // history before the compaction point is gone
    expect(() => d.m.eventsSince(3)).toThrow(CompactedRevisionError);
    expect(d.m.eventsSince(4).events.map((e) => e.revision)).toEqual([4, 5, 6, 7]);
    // compact everything: latest state intact
    d.m.compact(7);
    expect(d.m.list('').items.map((i) => [i.key, s(i.value)])).toEqual([['k', 'v3']]);
    expect(s(d.m.get('k', { atRevision: 7 })?.value)).toBe('v3');
  });

  it('is replicated via the compact command (no revision bump; future is rejected)', () => {
    const d = new Driver();
    d.put('k', '1');
    d.put('k', '2');
    expect(d.run({ type: 'compact', revision: 2 }, 5).result).toEqual({ type: 'compact', compactRevision: 2, revision: 2, timestampMs: 1000 });
    const r = d.run({ type: 'compact', revision: 9 });
    expect(r.result.type === 'rejected' && r.result.error.code).toBe('FUTURE_REVISION');
    expect(d.m.revision).toBe(2);
  });

  it('retentionCompactRevision picks the newest revision older than the window', () => {
    const d = new Driver();
    d.put('a', '1', 1_000); // 1
    d.put('a', '2', 2_000); // 2
    d.put('a', '3', 3_000); // 3
    expect(d.m.retentionCompactRevision(1_500, 1_000)).toBe(0);
    expect(d.m.retentionCompactRevision(3_500, 1_000)).toBe(2);
    expect(d.m.retentionCompactRevision(100_000, 1_000)).toBe(3);
    d.m.compact(d.m.retentionCompactRevision(3_500, 1_000));
    expect(s(d.m.get('a', { atTimeMs: 2_500 })?.value)).toBe('2');
    expect(() => d.m.get('a', { atTimeMs: 1_999 })).toThrow(CompactedRevisionError);
    expect(d.m.retentionCompactRevision(1_500, 1_000)).toBe(2);
  });
});

describe('list', () => {
  it('lists live keys by prefix in byte order with pagination and keysOnly', () => {
    const d = new Driver();
    for (const k of ['b/2', 'b/1', 'a', 'b/3', 'c', 'b', 'b/\u{1f600}', 'b/\ue000']) d.put(k, `v-${k}`);
    d.del('b/3');
    const p1 = d.m.list('b/', { limit: 2 });
    expect(p1.items.map((i) => i.key)).toEqual(['b/1', 'b/2']);
    expect(p1.nextAfter).toBe('b/2');
    const p2 = d.m.list('b/', { limit: 2, after: p1.nextAfter! });
    // UTF-8 byte order: U+E000 (EE 80 80) sorts before U+1F600 (F0 9F 98 80)
    expect(p2.items.map((i) => i.key)).toEqual(['b/\ue000', 'b/\u{1f600}']);
    expect(p2.nextAfter).toBeUndefined();
    expect(d.m.list('b/', { keysOnly: true }).items[0]).toEqual({ key: 'b/1', version: 2, timestampMs: 1000 });
    expect(d.m.list('', { limit: 100 }).items.map((i) => i.key)).toEqual(['a', 'b', 'b/1', 'b/2', 'b/\ue000', 'b/\u{1f600}', 'c']);
    expect(d.m.list('', { after: 'b/2' }).items.map((i) => i.key)).toEqual(['b/\ue000', 'b/\u{1f600}', 'c']);
    expect(d.m.list('b/', { after: 'a' }).items.length).toBe(4);
    expect(d.m.list('b/', { after: 'zz' }).items).toEqual([]);
    expect(d.m.list('nothing').items).toEqual([]);
    expect(d.m.list('b/', { limit: 4 }).nextAfter).toBeUndefined();
  });

  it('validates its arguments', () => {
    const m = new KvStateMachine();
    expect(codeOf(() => m.list('', { limit: 0 }))).toBe('INVALID_ARGUMENT');
    expect(codeOf(() => m.list('', { limit: 1e9 }))).toBe('INVALID_ARGUMENT');
    expect(codeOf(() => m.list('x'.repeat(MAX_KEY_BYTES + 1)))).toBe('KEY_TOO_LONG');
  });
});

describe('eventsSince (watch history)', () => {
  it('serves a resumable, prefix-filtered stream without splitting a revision', () => {
    const d = new Driver();
    d.put('a/1', 'x'); // 1
    d.run({ type: 'txn', compares: [], writes: [
      { type: 'put', key: 'a/2', value: b('y') },
      { type: 'put', key: 'b/1', value: b('z') },
      { type: 'put', key: 'a/3', value: b('w') },
    ] }); // 2
    d.run({ type: 'triggerPut', key: 'a/t', value: b('fire') }); // 3
    d.del('a/1'); // 4
    d.put('b/2', 'q'); // 5
    const page1 = d.m.eventsSince(1, 'a/', 2);
    expect(page1.events.map((e) => [e.type, e.key, e.revision])).toEqual([['put', 'a/1', 1]]);
    expect(page1).toMatchObject({ nextRevision: 2, more: true, revision: 5 });
    const page2 = d.m.eventsSince(page1.nextRevision, 'a/', 1);
    expect(page2.events.map((e) => e.key)).toEqual(['a/2', 'a/3']); // whole txn even though limit is 1
    const page3 = d.m.eventsSince(page2.nextRevision, 'a/', 10);
    expect(page3.events.map((e) => [e.type, e.key])).toEqual([['trigger', 'a/t'], ['delete', 'a/1']]);
    expect(page3).toMatchObject({ nextRevision: 6, more: false });
    expect(d.m.eventsSince(6, 'a/')).toEqual({ events: [], nextRevision: 6, more: false, revision: 5 });
    expect(d.m.eventsSince(99).nextRevision).toBe(99);
    expect(codeOf(() => d.m.eventsSince(0))).toBe('INVALID_ARGUMENT');
  });

  it('keeps only the last maxHistoryRevisions revisions', () => {
    const d = new Driver(new KvStateMachine({ maxHistoryRevisions: 3 }));
    for (let i = 0; i < 6; i++) d.put(`k${i}`, 'v');
    expect(d.m.oldestHistoryRevision).toBe(4);
    expect(d.m.eventsSince(4).events.map((e) => e.revision)).toEqual([4, 5, 6]);
    try {
      d.m.eventsSince(3);
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(CompactedRevisionError);
      expect((e as CompactedRevisionError).oldestRevision).toBe(4);
    }
  });

  it('keeps history within maxHistoryBytes but always the newest revision', () => {
    const d = new Driver(new KvStateMachine({ maxHistoryBytes: 200 }));
    d.run({ type: 'triggerPut', key: 'a', value: new Uint8Array(100) }); // 1 + 100 + 64 = 165 bytes
    d.run({ type: 'triggerPut', key: 'b', value: new Uint8Array(100) });
    expect(d.m.oldestHistoryRevision).toBe(2);
    d.run({ type: 'triggerPut', key: 'c', value: new Uint8Array(1000) });
    expect(d.m.oldestHistoryRevision).toBe(3);
    expect(d.m.eventsSince(3).events.length).toBe(1);
  });
});
