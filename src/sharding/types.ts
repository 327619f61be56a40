/** The data model of sharding: members, object pools, shards, the cluster map, shard descriptors and their limits. */

/** A node's id (a positive 31-bit integer, unique in the cluster). */
export type NodeId = number;

/** A member is `active` (may host replicas) or `removing` (its replicas are being moved away). */
export type MemberState = 'active' | 'removing';

/** One cluster member, as recorded in the cluster map. */
export interface MemberInfo {
  readonly id: NodeId;
  /** `host:port` clients (and nodes forwarding client requests) dial: the node's client API. */
  readonly address: string;
  /**
   * `host:port` of the node's peer listener (Raft traffic only, mutual TLS in production).
   * Absent only in maps of in-memory test clusters, whose transport needs no address.
   */
  readonly peerAddress?: string;
  readonly state: MemberState;
}

/** The address other nodes dial for `m`'s Raft traffic: its peer address (or, absent one, its client address). */
export function peerAddressOf(m: MemberInfo): string {
  return m.peerAddress ?? m.address;
}

/**
 * A pool is `creating` (shards being bootstrapped, keys still routed to the parent pool),
 * `active` (routed) or `deleting` (still routed, being emptied before removal).
 */
export type PoolState = 'creating' | 'active' | 'deleting';

/** An object pool: a key prefix with its own shard count, replication factor, affinity and retention. */
export interface PoolSpec {
  /** The key prefix (`/cameras`), or `''` for the default pool. */
  readonly name: string;
  readonly shards: number;
  /** Replication factor: voters per shard. */
  readonly replicas: number;
  /** Regular expression source; when it matches a key, its first capture group is hashed instead of the key. */
  readonly affinity?: string;
  /** How long old versions are kept (the node's default when absent). */
  readonly retentionMs?: number;
  readonly state: PoolState;
}

/** One shard: a Raft group holding one hash slice of one pool. */
export interface ShardInfo {
  /** Global Raft group id (never {@link META_GROUP}). */
  readonly group: number;
  readonly pool: string;
  /** Hash slice of the pool: `0 <= index < pool.shards`. */
  readonly index: number;
  /** Desired replicas (voters), first = nothing special; sorted ascending. */
  readonly replicas: readonly NodeId[];
  /** The voters the group was bootstrapped with (never changes after creation). */
  readonly initial: readonly NodeId[];
  /** Where the leader should be (0 = anywhere). */
  readonly preferredLeader: NodeId;
}

/** The whole desired layout of the cluster, as stored in the metadata group. */
export interface ClusterMap {
  /** Metadata revision this map was read at (0 = not yet initialised). */
  readonly epoch: number;
  /** Sorted by id. */
  readonly members: readonly MemberInfo[];
  /** Voters of group 0, sorted. */
  readonly metaVoters: readonly NodeId[];
  /** Sorted by name; always includes the default pool `''` (except in {@link emptyMap}'s uninitialised map). */
  readonly pools: readonly PoolSpec[];
  /** Sorted by group. */
  readonly shards: readonly ShardInfo[];
  /** Next unused group id (> every shard's group). */
  readonly nextGroup: number;
}

/** What a shard's own state machine is told it owns (derived from the map; replicated through the shard's log). */
export interface ShardDescriptor {
  readonly group: number;
  readonly pool: string;
  readonly index: number;
  /** The pool's shard count (the hash modulus). */
  readonly shards: number;
  readonly affinity?: string;
  /** Names of pools nested inside this pool's domain (their keys are not ours), including pools being created. */
  readonly excluded: readonly string[];
  /** Map epoch the descriptor was derived at. */
  readonly epoch: number;
}

/** Most shards one pool may have. */
export const MAX_POOL_SHARDS = 64;
/** Largest replication factor. */
export const MAX_REPLICAS = 7;
/** Most pools in a cluster, the default pool included. */
export const MAX_POOLS = 1024;
/** Longest pool name in UTF-8 bytes. */
export const MAX_POOL_NAME_BYTES = 256;
/** Longest affinity regular expression source in UTF-8 bytes. */
export const MAX_AFFINITY_BYTES = 1024;
/** Name of the default pool, which holds every key in no other pool. */
export const DEFAULT_POOL = '';
/** Raft group id of the metadata group (never a data shard). */
export const META_GROUP = 0;
/** Most voters of the metadata group (see {@link desiredMetaVoterCount}). */
export const META_VOTERS_MAX = 5;
/** Largest valid node id (2^31 - 1). */
export const MAX_NODE_ID = 2 ** 31 - 1;
/** Key prefix of shard-local system keys, owned by every shard whatever its descriptor. */
export const SYSTEM_KEY_PREFIX = '/_sys/';

/**
 * Key prefix of extension dead letters (`/_dlq/<extension>/<revision><key>`, and the gap letters
 * `/_dlq/<extension>/gap-<shard>-<from>-<to>`). Shard-local like {@link SYSTEM_KEY_PREFIX}: a dead
 * letter lives in the shard whose event it records, so every shard owns the prefix, and a listing
 * of it spans every data shard (see `shardsForPrefix`). Readable by operators holding the admin token.
 */
export const DEAD_LETTER_PREFIX = '/_dlq/';

/** The shard-local prefixes: keys under them are owned by every shard, whatever its descriptor. */
export const SHARD_LOCAL_PREFIXES: readonly string[] = [SYSTEM_KEY_PREFIX, DEAD_LETTER_PREFIX];

/** Whether `key` is shard-local (under one of {@link SHARD_LOCAL_PREFIXES}). */
export function isShardLocalKey(key: string): boolean {
  return key.startsWith(SYSTEM_KEY_PREFIX) || key.startsWith(DEAD_LETTER_PREFIX);
}

/** Start of the system keyspace: `/_sys/`, `/_cluster/`, `/_dlq/` and any future `/_<name>`. */
export const SYSTEM_KEYSPACE_PREFIX = '/_';

/** Key prefix of the extension registry (in the metadata group): `/ext/<name>/meta` and package chunks. */
export const EXTENSION_REGISTRY_PREFIX = '/ext/';

/**
 * The prefixes of the reserved keyspace (see {@link isReservedKey}): written only by the cluster
 * itself, never by clients or extension lambdas.
 */
export const RESERVED_KEY_PREFIXES: readonly string[] = [SYSTEM_KEYSPACE_PREFIX, EXTENSION_REGISTRY_PREFIX];

/**
 * Whether `key` is reserved: it starts with `/_` (the system keyspace: shard descriptors and
 * delivery cursors under `/_sys/`, the cluster map under `/_cluster/`, dead letters under
 * `/_dlq/`, and any future `/_<name>`) or with `/ext/` (the extension registry). Reserved keys
 * are written only by the cluster itself: the KV service refuses clients' reads and writes of
 * them (PERMISSION_DENIED; dead letters are readable with the admin token), and every shard's
 * state machine refuses client-origin commands that touch them.
 */
export function isReservedKey(key: string): boolean {
  return key.startsWith(SYSTEM_KEYSPACE_PREFIX) || key.startsWith(EXTENSION_REGISTRY_PREFIX);
}

/**
 * Whether some reserved key starts with `prefix`, so a listing or watch of `prefix` may meet
 * reserved keys: `''`, `/`, `/_`, `/e`, `/ex`, `/ext` and every prefix inside the reserved
 * keyspace. A listing or watch of such a prefix that is not itself {@link prefixInReserved}
 * leaves the reserved keys out.
 */
export function prefixTouchesReserved(prefix: string): boolean {
  return RESERVED_KEY_PREFIXES.some((r) => r.startsWith(prefix) || prefix.startsWith(r));
}

/**
 * Whether `prefix` lies inside the reserved keyspace: every key starting with it is reserved, and
 * it names more than the bare `/_` (`/_sys/`, `/_d`, `/ext/x`...). Clients may not list or watch
 * such a prefix (dead letters aside, with the admin token). The bare `/_` (like `/` and `''`)
 * only covers the reserved keyspace: listing it is allowed and returns no reserved key, so nothing.
 */
export function prefixInReserved(prefix: string): boolean {
  return (prefix.startsWith(SYSTEM_KEYSPACE_PREFIX) && prefix.length > SYSTEM_KEYSPACE_PREFIX.length) || prefix.startsWith(EXTENSION_REGISTRY_PREFIX);
}

/**
 * Whether a listing or watch of `prefix` must leave reserved keys out: some reserved key starts
 * with it, but it is not itself inside the reserved keyspace (whose listings, allowed only to the
 * cluster itself and to operators reading dead letters, show what they asked for).
 */
export function hidesReservedKeys(prefix: string): boolean {
  return prefixTouchesReserved(prefix) && !prefixInReserved(prefix);
}

/** Desired number of metadata voters for `activeMembers` active members: 5 if at least 5, else 3 if at least 3, else all. */
export function desiredMetaVoterCount(activeMembers: number): number {
  if (activeMembers >= META_VOTERS_MAX) return META_VOTERS_MAX;
  if (activeMembers >= 3) return 3;
  return Math.max(0, activeMembers);
}
