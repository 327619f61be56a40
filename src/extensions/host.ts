/**
 * The ExtensionHost seam: everything the extension manager needs of the node it runs on, owned
 * by extensions/ and shaped by what the manager does. Which data shards this node leads (pushed
 * as leadership changes, never polled); per shard hosted here, local reads (system keys
 * included), a subscription to its committed events from a revision (each event carrying its
 * lambda hop count), its current revision, and proposals of system commands with a deadline; the
 * metadata group (the extension registry) through the same shard handle; and the cluster map.
 * The KvNode adapter (kv-node-host.ts) implements it for a real node; testing/memory-host.ts
 * is its in-memory twin.
 */
import type { Scheduler } from '../node/scheduler.js';
import type { ClusterMap } from '../sharding/index.js';
import type { Command, CommandResult, KvEvent, WriteSession } from '../statemachine/types.js';

/** A data shard (or the metadata group) this node gained (`leader` true) or lost the leadership of, in `term`. */
export interface LeadershipChange {
  readonly group: number;
  readonly term: number;
  readonly leader: boolean;
}

/** A committed event of a shard, with the hop count of the lambda chain that wrote it (0 for clients). */
export type HostEvent = KvEvent & { readonly hops: number };

/** Where a shard's committed events go (whole revisions, in revision order). */
export interface HostEventSink {
  /** Events of one or more whole revisions; `upTo` is the highest revision now fully seen. */
  events(events: readonly HostEvent[], upTo: number): void;
  /** Nothing new under the prefix up to `revision`. */
  progress(revision: number): void;
  /** The subscription ended; `compactRevision` is set when the history it needed was compacted. */
  canceled(reason: string, compactRevision?: number): void;
  /** Flow control: false while the sink is backed up (the subscription then pauses). */
  writable?(): boolean;
  /** Flow control: called once when a backed-up sink can take more. */
  onDrain?(cb: () => void): void;
}

/** An event subscription; `cancel` ends it (no call reaches its sink after). */
export interface HostSubscription {
  cancel(): void;
}

/** A key as stored: its value and version (the revision that wrote it). */
export interface HostEntry {
  readonly value: Uint8Array;
  readonly version: number;
}

/** One page of a local listing (`nextAfter` set when more keys follow). */
export interface HostPage {
  readonly items: readonly { readonly key: string; readonly value?: Uint8Array; readonly version: number }[];
  readonly nextAfter?: string;
}

/**
 * What the cluster writes into a shard itself (extensions, leases): puts, deletes and txns of
 * shard-local (system) keys, and the lease revoke of a shard (`revokeLeaseKeys`).
 */
export type SystemCommand = Extract<Command, { type: 'put' | 'delete' | 'txn' | 'revokeLeaseKeys' }>;

/**
 * One group (a data shard, or the metadata group) hosted on this node. Reads are local (this
 * replica's applied state, system keys included); proposals succeed only where this node leads.
 */
export interface HostShard {
  readonly group: number;
  /** Whether this node leads the group now. */
  isLeader(): boolean;
  /**
   * Whether this node leads the group and heard from a quorum of its members within an election
   * timeout (a leader lease on the node's clock). False on a leader that was just paused, before
   * it learns it was deposed; lambdas start only while it holds. Absent: `isLeader` stands in.
   */
  holdsLease?(): boolean;
  /** The key as applied here (undefined when absent). */
  get(key: string): HostEntry | undefined;
  /**
   * The key as of `revision` as applied here (undefined when absent then); throws when that
   * history was compacted. Optional: hosts without it give events no previous version.
   */
  getAt?(key: string, revision: number): HostEntry | undefined;
  /** A page of keys under `prefix` as applied here, in key order. */
  list(prefix: string, o: { readonly limit: number; readonly after?: string; readonly keysOnly?: boolean }): HostPage;
  /** The highest revision applied here. */
  revision(): number;
  /**
   * The group's current revision, no older than any write acknowledged before the call: confirmed
   * with a quorum where this node leads; elsewhere once this replica applied what it knows
   * committed (waiting until `untilMs` at most, so a little older at worst: the safe side).
   */
  currentRevision(untilMs: number): Promise<number>;
  /** Resolves once local reads here reflect every write acknowledged before the call (leader only). */
  barrier(deadlineMs: number): Promise<void>;
  /** Subscribes to the group's committed events under `prefix` from `fromRevision` (history first). */
  subscribe(prefix: string, fromRevision: number, sink: HostEventSink, progressIntervalMs: number): HostSubscription;
  /**
   * Proposes a system command (shard-local or registry keys, which clients cannot write) and
   * resolves with its result once applied; rejects when this node does not lead or `deadlineMs` passes.
   * With `session` (a client's, e.g. a put with a lease), the shard applies it at most once per (id, seq).
   */
  propose(cmd: SystemCommand, deadlineMs: number, session?: WriteSession): Promise<CommandResult>;
}

/** The node an extension manager runs on. */
export interface ExtensionHost {
  /** This node's id. */
  readonly nodeId: number;
  /** The cluster map this node routes with. */
  shardMap(): ClusterMap;
  /** Calls `fn` with each new cluster map; returns an unsubscribe function. */
  onShardMapChanged(fn: (map: ClusterMap) => void): () => void;
  /** The data shards this node leads now (group → term); the metadata group is not among them. */
  ledShards(): ReadonlyMap<number, number>;
  /**
   * Calls `fn` whenever this node gains or loses the leadership of a data shard (a new term led
   * here again reads as a loss then a gain); returns an unsubscribe function. A change may be
   * reported again after {@link ledShards} already shows it: listeners are idempotent.
   */
  onLeadershipChanged(fn: (change: LeadershipChange) => void): () => void;
  /** The group `group` as hosted here (undefined when this node hosts no replica of it). */
  shard(group: number): HostShard | undefined;
  /** The metadata group (the extension registry); throws when it is not hosted here. */
  meta(): HostShard;
  /**
   * The node's clock and timers, which the extension layer (delivery, dispatchers, registry
   * writes, lambda services) runs on: virtual under the simulator. Absent: the wall clock
   * (`realScheduler`).
   */
  readonly clock?: Scheduler;
}
