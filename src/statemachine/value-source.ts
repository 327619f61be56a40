/** Where a state machine's values live once they leave the heap: the placeholder its index holds instead, and the synchronous source it reads them back from. */

/**
 * The value of a version whose bytes are not in the heap: a {@link VersionRecord} (types.ts) holding
 * this exact array (compare by identity, never by content) has a value, held by the machine's
 * {@link ValueSource}. Only machines with a source attached (`KvStateMachine.attachValues`) hold it;
 * their `toRecords()` may contain it, `snapshot()` never does.
 */
export const VALUE_ON_DISK: Uint8Array = Object.freeze(new Uint8Array(0)) as Uint8Array;

/**
 * The store a state machine reads released values from (see `KvStateMachine.attachValues`): on a
 * node, the group's version records in the engine behind a bounded cache (storage/value-store.ts).
 * Reads are synchronous so `apply` and reads stay synchronous and deterministic; a source must return
 * exactly the bytes the machine wrote for that version.
 */
export interface ValueSource {
  /** The value of `key`'s version at `revision`, or undefined when the store does not hold it (the machine then throws). */
  read(key: string, revision: number): Uint8Array | undefined;
  /** A value the machine just dropped from the heap because the store now holds it durably (a cache may keep it). */
  released(key: string, revision: number, value: Uint8Array): void;
}
