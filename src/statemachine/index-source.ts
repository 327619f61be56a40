/** Where a state machine reads keys' latest versions from once its key index is served from durable storage (issue 17): the synchronous source and what the machine tells it. */
import type { VersionRecord } from './types.js';

/**
 * The store of a state machine's latest versions (see `KvStateMachine.attachIndex`): on a node, the
 * group's `l/<key>` and version records in the engine behind a bounded hot-index cache
 * (storage/state-store.ts `EngineIndexSource`). Reads are synchronous so `apply` stays synchronous
 * and deterministic: the answer depends only on the records, which every replica has identically
 * at the same applied index. The machine itself answers for keys written since the last durable
 * point (its overlay) and asks the source only about the others.
 */
export interface IndexSource {
  /**
   * The newest version of `key` in the durable records, as a head (a tombstone has a null value,
   * any other version the `VALUE_ON_DISK` placeholder), or undefined when the records hold none;
   * a key whose newest version is a tombstone may also read as undefined (both mean "no live version").
   * `mayExist`, asked only when the source would read storage, may answer false when the machine
   * knows the key has no live version (the source then answers undefined without reading).
   */
  latest(key: string, mayExist?: () => boolean): VersionRecord | undefined;
  /** `key`'s newest version is now `head` and durable (the source may cache it; a head, never value bytes). */
  durable(key: string, head: VersionRecord): void;
}
