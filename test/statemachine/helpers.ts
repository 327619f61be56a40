/** Shared test helpers for the state machine tests: byte helpers and fast-check arbitraries for keys, values and commands. */
import fc from 'fast-check';
import type { Command, TxnWrite } from '../../src/statemachine/index.js';

/** UTF-8 bytes of a string (test convenience). */
export function b(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

/** Decodes UTF-8 bytes to a string (test convenience). */
export function s(bytes: Uint8Array | undefined): string | undefined {
  return bytes === undefined ? undefined : new TextDecoder().decode(bytes);
}

/** A small key universe mixing ASCII, shared prefixes, BMP private-use and astral characters (to exercise byte order). */
export const KEY_POOL: readonly string[] = [
  'a', 'ab', 'abc', 'abd', 'b', 'ba', 'b/x', 'b/y', 'c', '\u00e9', '\ue000', '\ue000x', '\u{1f600}', '\u{1f600}a', 'z',
];

/** A key from the pool. */
export const poolKey: fc.Arbitrary<string> = fc.constantFrom(...KEY_POOL);

/** A short value. */
export const smallValue: fc.Arbitrary<Uint8Array> = fc.uint8Array({ maxLength: 6 });

/** Arbitrary well-formed keys of any shape (for codec tests). */
export const anyKey: fc.Arbitrary<string> = fc.string({ unit: 'grapheme', minLength: 1, maxLength: 12 });

/** Arbitrary canonical command (as `decodeCommand` returns it: optional fields omitted rather than false). */
export function commandArb(key: fc.Arbitrary<string> = anyKey, value: fc.Arbitrary<Uint8Array> = fc.uint8Array({ maxLength: 40 })): fc.Arbitrary<Command> {
  const version = fc.oneof(fc.nat(20), fc.maxSafeNat());
  const write: fc.Arbitrary<TxnWrite> = fc.oneof(
    fc.record({ type: fc.constant('put' as const), key, value }),
    fc.record({ type: fc.constant('delete' as const), key }),
  );
  return fc.oneof(
    fc.record(
      { type: fc.constant('put' as const), key, value, expectedVersion: version, returnPrevious: fc.constant(true as const) },
      { requiredKeys: ['type', 'key', 'value'] },
    ),
    fc.record(
      { type: fc.constant('put' as const), key, value, expectedVersion: version, currentOnConflict: fc.constant(true as const) },
      { requiredKeys: ['type', 'key', 'value', 'currentOnConflict'] },
    ),
    fc.record({ type: fc.constant('delete' as const), key, expectedVersion: version }, { requiredKeys: ['type', 'key'] }),
    fc.record({
      type: fc.constant('txn' as const),
      compares: fc.array(fc.record({ key, version }), { maxLength: 4 }),
      writes: fc.uniqueArray(write, { maxLength: 4, selector: (w) => w.key }),
    }),
    fc.record({ type: fc.constant('triggerPut' as const), key, value }),
    fc.constant({ type: 'noop' as const }),
    fc.record({ type: fc.constant('compact' as const), revision: version }),
    fc.record({ type: fc.constant('revokeLeaseKeys' as const), lease: fc.oneof(fc.integer({ min: 1, max: 20 }), fc.constant(Number.MAX_SAFE_INTEGER)) }),
  );
}
