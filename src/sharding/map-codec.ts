/** Storage format of the cluster map (records under `/_cluster/` in the metadata group) and of shard descriptors. */
import { ShardingError } from './errors.js';
import { compareStrings, poolMatches } from './routing.js';
import {
  DEFAULT_POOL,
  MAX_NODE_ID,
  MAX_POOLS,
  MAX_POOL_SHARDS,
  MAX_REPLICAS,
  type ClusterMap,
  type MemberInfo,
  type NodeId,
  type PoolSpec,
  type ShardDescriptor,
  type ShardInfo,
} from './types.js';
import { isIntIn, validateAffinity, validateMember, validatePoolName } from './validation.js';

/** Key prefix of the cluster map in the metadata group. */
export const CLUSTER_PREFIX = '/_cluster/';
/** Key of the map's global record: JSON `{nextGroup, metaVoters}`. */
export const CLUSTER_INFO_KEY = `${CLUSTER_PREFIX}info`;
/** Prefix of member records: `<id as 10 digits>` → JSON {@link MemberInfo}. */
export const CLUSTER_MEMBERS_PREFIX = `${CLUSTER_PREFIX}members/`;
/** Prefix of pool records: `<encodeURIComponent(name)>` (`~default` for the default pool) → JSON {@link PoolSpec}. */
export const CLUSTER_POOLS_PREFIX = `${CLUSTER_PREFIX}pools/`;
/** Prefix of shard records: `<group as 10 digits>` → JSON {@link ShardInfo}. */
export const CLUSTER_SHARDS_PREFIX = `${CLUSTER_PREFIX}shards/`;

const DEFAULT_POOL_KEY = '~default';

function pad10(n: number): string {
  return String(n).padStart(10, '0');
}

/** The record key of member `id`. */
export function memberKey(id: NodeId): string {
  return CLUSTER_MEMBERS_PREFIX + pad10(id);
}

/** The record key of pool `name`. */
export function poolKey(name: string): string {
  return CLUSTER_POOLS_PREFIX + (name === DEFAULT_POOL ? DEFAULT_POOL_KEY : encodeURIComponent(name));
}

/** The record key of shard `group`. */
export function shardKey(group: number): string {
  return CLUSTER_SHARDS_PREFIX + pad10(group);
}

function encodeMember(m: MemberInfo): string {
  return JSON.stringify({ id: m.id, address: m.address, ...(m.peerAddress !== undefined ? { peerAddress: m.peerAddress } : {}), state: m.state });
}

function encodePool(p: PoolSpec): string {
  return JSON.stringify({
    name: p.name,
    shards: p.shards,
    replicas: p.replicas,
    ...(p.affinity !== undefined ? { affinity: p.affinity } : {}),
    ...(p.retentionMs !== undefined ? { retentionMs: p.retentionMs } : {}),
    state: p.state,
  });
}

function encodeShard(s: ShardInfo): string {
  return JSON.stringify({
    group: s.group,
    pool: s.pool,
    index: s.index,
    replicas: [...s.replicas],
    initial: [...s.initial],
    preferredLeader: s.preferredLeader,
  });
}

/** The map as metadata records (key → JSON), keys in ascending order. The epoch is not stored (it is the records' revision). */
export function encodeClusterMap(map: ClusterMap): Map<string, string> {
  const out: [string, string][] = [[CLUSTER_INFO_KEY, JSON.stringify({ nextGroup: map.nextGroup, metaVoters: [...map.metaVoters] })]];
  for (const m of map.members) out.push([memberKey(m.id), encodeMember(m)]);
  for (const p of map.pools) out.push([poolKey(p.name), encodePool(p)]);
  for (const s of map.shards) out.push([shardKey(s.group), encodeShard(s)]);
  return new Map(out.sort((a, b) => compareStrings(a[0], b[0])));
}

/** The records to write and delete to turn the stored `before` map into `after` (only changed records), keys sorted. */
export function diffClusterMaps(before: ClusterMap, after: ClusterMap): { puts: { key: string; value: string }[]; deletes: string[] } {
  const a = encodeClusterMap(before);
  const b = encodeClusterMap(after);
  const puts: { key: string; value: string }[] = [];
  const deletes: string[] = [];
  for (const [key, value] of b) if (a.get(key) !== value) puts.push({ key, value });
  for (const key of a.keys()) if (!b.has(key)) deletes.push(key);
  return { puts, deletes };
}

/** A record parser that names its key in every error. */
class Reader {
  constructor(private readonly where: string) {}

  fail(why: string): never {
    throw new ShardingError('INVALID_MAP', `${this.where}: ${why}`);
  }

  /** Parses `text` as a JSON object with exactly the `required` fields and some of the `optional` ones. */
  object(text: string, required: readonly string[], optional: readonly string[] = []): Record<string, unknown> {
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch (e) {
      this.fail(`malformed JSON (${(e as Error).message})`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) this.fail('not a JSON object');
    const o = v as Record<string, unknown>;
    for (const k of required) if (!(k in o)) this.fail(`missing field ${k}`);
    for (const k of Object.keys(o)) if (!required.includes(k) && !optional.includes(k)) this.fail(`unknown field ${JSON.stringify(k)}`);
    return o;
  }

  int(o: Record<string, unknown>, field: string, min: number, max: number): number {
    const v = o[field];
    if (!isIntIn(v, min, max)) this.fail(`${field} must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
    return v;
  }

  string(o: Record<string, unknown>, field: string): string {
    const v = o[field];
    if (typeof v !== 'string') this.fail(`${field} must be a string, got ${JSON.stringify(v)}`);
    return v;
  }

  /** A sorted copy of a list of distinct node ids of `min..max` entries. */
  nodeIds(o: Record<string, unknown>, field: string, min: number, max: number): NodeId[] {
    const v = o[field];
    if (!Array.isArray(v) || v.length < min || v.length > max) this.fail(`${field} must be a list of ${min} to ${max} node ids`);
    for (const n of v) if (!isIntIn(n, 1, MAX_NODE_ID)) this.fail(`${field} holds an invalid node id ${JSON.stringify(n)}`);
    const ids = [...(v as number[])].sort((a, b) => a - b);
    for (let i = 1; i < ids.length; i++) if (ids[i] === ids[i - 1]) this.fail(`${field} names node ${ids[i]} twice`);
    return ids;
  }

  /** Runs `f`, turning a ShardingError into INVALID_MAP for this record. */
  check<T>(f: () => T): T {
    try {
      return f();
    } catch (e) {
      if (e instanceof ShardingError) this.fail(e.message);
      throw e;
    }
  }
}

const MEMBER_STATES = ['active', 'removing'];
const POOL_STATES = ['creating', 'active', 'deleting'];

function decodeMember(key: string, value: string): MemberInfo {
  const r = new Reader(key);
  const suffix = key.slice(CLUSTER_MEMBERS_PREFIX.length);
  if (!/^[0-9]{10}$/.test(suffix)) r.fail('the member key must end in a 10-digit id');
  const o = r.object(value, ['id', 'address', 'state'], ['peerAddress']);
  const id = r.int(o, 'id', 1, MAX_NODE_ID);
  if (pad10(id) !== suffix) r.fail(`id ${id} does not match the key`);
  const address = r.string(o, 'address');
  const peerAddress = o.peerAddress === undefined ? undefined : r.string(o, 'peerAddress');
  r.check(() => validateMember(id, address, peerAddress));
  const state = r.string(o, 'state');
  if (!MEMBER_STATES.includes(state)) r.fail(`unknown member state ${JSON.stringify(state)}`);
  return { id, address, ...(peerAddress !== undefined ? { peerAddress } : {}), state: state as MemberInfo['state'] };
}

function decodePool(key: string, value: string): PoolSpec {
  const r = new Reader(key);
  const o = r.object(value, ['name', 'shards', 'replicas', 'state'], ['affinity', 'retentionMs']);
  const name = r.string(o, 'name');
  if (name !== DEFAULT_POOL) r.check(() => validatePoolName(name));
  if (poolKey(name) !== key) r.fail(`pool name ${JSON.stringify(name)} does not match the key`);
  const shards = r.int(o, 'shards', 1, MAX_POOL_SHARDS);
  const replicas = r.int(o, 'replicas', 1, MAX_REPLICAS);
  const state = r.string(o, 'state');
  if (!POOL_STATES.includes(state)) r.fail(`unknown pool state ${JSON.stringify(state)}`);
  if (name === DEFAULT_POOL && state !== 'active') r.fail('the default pool must be active');
  const pool: { -readonly [K in keyof PoolSpec]: PoolSpec[K] } = { name, shards, replicas, state: state as PoolSpec['state'] };
  if (o.affinity !== undefined) pool.affinity = r.check(() => validateAffinity(o.affinity, 'INVALID_MAP'));
  if (o.retentionMs !== undefined) pool.retentionMs = r.int(o, 'retentionMs', 0, Number.MAX_SAFE_INTEGER);
  return pool;
}

function decodeShard(key: string, value: string): ShardInfo {
  const r = new Reader(key);
  const suffix = key.slice(CLUSTER_SHARDS_PREFIX.length);
  if (!/^[0-9]{10}$/.test(suffix)) r.fail('the shard key must end in a 10-digit group id');
  const o = r.object(value, ['group', 'pool', 'index', 'replicas', 'initial', 'preferredLeader']);
  const group = r.int(o, 'group', 1, Number.MAX_SAFE_INTEGER);
  if (pad10(group) !== suffix) r.fail(`group ${group} does not match the key`);
  const pool = r.string(o, 'pool');
  const index = r.int(o, 'index', 0, MAX_POOL_SHARDS - 1);
  const replicas = r.nodeIds(o, 'replicas', 1, MAX_REPLICAS);
  const initial = r.nodeIds(o, 'initial', 1, MAX_REPLICAS);
  const preferredLeader = r.int(o, 'preferredLeader', 0, MAX_NODE_ID);
  if (preferredLeader !== 0 && !replicas.includes(preferredLeader)) r.fail(`preferred leader ${preferredLeader} is not a replica`);
  return { group, pool, index, replicas, initial, preferredLeader };
}

function decodeInfo(value: string): { nextGroup: number; metaVoters: NodeId[] } {
  const r = new Reader(CLUSTER_INFO_KEY);
  const o = r.object(value, ['nextGroup', 'metaVoters']);
  return { nextGroup: r.int(o, 'nextGroup', 1, Number.MAX_SAFE_INTEGER), metaVoters: r.nodeIds(o, 'metaVoters', 0, Number.MAX_SAFE_INTEGER) };
}

/**
 * The map stored in `records` (a scan of {@link CLUSTER_PREFIX}), read at metadata revision
 * `epoch`. Records outside the info, members, pools and shards subtrees are ignored (room for
 * later additions); no known record at all decodes to the uninitialised map. Every known record
 * is validated strictly, and the whole for consistency (an info record and an active default
 * pool exist; every pool has exactly its shards `0..shards-1`; shards name existing pools and
 * members; metadata voters are members; member addresses are unique; `nextGroup` exceeds every
 * group). Throws ShardingError INVALID_MAP naming the bad key.
 */
export function decodeClusterMap(records: Iterable<{ key: string; value: string }>, epoch: number): ClusterMap {
  if (!isIntIn(epoch, 0, Number.MAX_SAFE_INTEGER)) throw new ShardingError('INVALID_MAP', `invalid epoch ${String(epoch)}`);
  let info: { nextGroup: number; metaVoters: NodeId[] } | undefined;
  const members = new Map<NodeId, MemberInfo>();
  const pools = new Map<string, PoolSpec>();
  const shards = new Map<number, ShardInfo>();
  const seen = new Set<string>();
  let known = 0;
  for (const { key, value } of records) {
    if (typeof key !== 'string' || typeof value !== 'string') throw new ShardingError('INVALID_MAP', `record ${JSON.stringify(key)}: key and value must be strings`);
    const isKnown =
      key === CLUSTER_INFO_KEY || key.startsWith(CLUSTER_MEMBERS_PREFIX) || key.startsWith(CLUSTER_POOLS_PREFIX) || key.startsWith(CLUSTER_SHARDS_PREFIX);
    if (!isKnown) continue;
    if (seen.has(key)) throw new ShardingError('INVALID_MAP', `${key}: the record is given twice`);
    seen.add(key);
    known++;
    if (key === CLUSTER_INFO_KEY) info = decodeInfo(value);
    else if (key.startsWith(CLUSTER_MEMBERS_PREFIX)) {
      const m = decodeMember(key, value);
      members.set(m.id, m);
    } else if (key.startsWith(CLUSTER_POOLS_PREFIX)) {
      const p = decodePool(key, value);
      pools.set(p.name, p);
    } else {
      const s = decodeShard(key, value);
      shards.set(s.group, s);
    }
  }
  if (known === 0) return { epoch, members: [], metaVoters: [], pools: [], shards: [], nextGroup: 1 };
  const fail = (key: string, why: string): never => {
    throw new ShardingError('INVALID_MAP', `${key}: ${why}`);
  };
  if (info === undefined) return fail(CLUSTER_INFO_KEY, 'missing (the map has other records)');
  if (!pools.has(DEFAULT_POOL)) fail(poolKey(DEFAULT_POOL), 'the default pool is missing');
  if (pools.size > MAX_POOLS) fail(CLUSTER_POOLS_PREFIX, `more than ${MAX_POOLS} pools`);
  const addresses = new Map<string, NodeId>();
  for (const m of [...members.values()].sort((a, b) => a.id - b.id)) {
    for (const a of m.peerAddress !== undefined ? [m.address, m.peerAddress] : [m.address]) {
      const other = addresses.get(a);
      if (other !== undefined) fail(memberKey(m.id), `address ${a} is also member ${other}'s`);
      addresses.set(a, m.id);
    }
  }
  for (const v of info.metaVoters) if (!members.has(v)) fail(CLUSTER_INFO_KEY, `metadata voter ${v} is not a member`);
  if (members.size > 0 && info.metaVoters.length === 0) fail(CLUSTER_INFO_KEY, 'the metadata group has no voters');
  const slots = new Map<string, (ShardInfo | undefined)[]>();
  for (const p of pools.values()) slots.set(p.name, new Array<ShardInfo | undefined>(p.shards).fill(undefined));
  const sortedShards = [...shards.values()].sort((a, b) => a.group - b.group);
  for (const s of sortedShards) {
    const key = shardKey(s.group);
    const pool = pools.get(s.pool);
    if (pool === undefined) return fail(key, `pool ${JSON.stringify(s.pool)} does not exist`);
    if (s.index >= pool.shards) fail(key, `index ${s.index} is out of range for pool ${JSON.stringify(s.pool)} with ${pool.shards} shards`);
    const slot = slots.get(s.pool)!;
    if (slot[s.index] !== undefined) fail(key, `shard ${s.index} of pool ${JSON.stringify(s.pool)} is also group ${slot[s.index]!.group}`);
    slot[s.index] = s;
    for (const r of s.replicas) if (!members.has(r)) fail(key, `replica ${r} is not a member`);
    if (s.group >= info.nextGroup) fail(CLUSTER_INFO_KEY, `nextGroup ${info.nextGroup} is not above group ${s.group}`);
  }
  for (const [name, slot] of slots) {
    const missing = slot.findIndex((s) => s === undefined);
    if (missing >= 0) fail(poolKey(name), `shard ${missing} of the pool is missing`);
  }
  return {
    epoch,
    members: [...members.values()].sort((a, b) => a.id - b.id),
    metaVoters: info.metaVoters,
    pools: [...pools.values()].sort((a, b) => compareStrings(a.name, b.name)),
    shards: sortedShards,
    nextGroup: info.nextGroup,
  };
}

/** A shard descriptor as JSON (the value of the shard-local descriptor key). */
export function encodeDescriptor(d: ShardDescriptor): string {
  return JSON.stringify({
    group: d.group,
    pool: d.pool,
    index: d.index,
    shards: d.shards,
    ...(d.affinity !== undefined ? { affinity: d.affinity } : {}),
    excluded: [...d.excluded],
    epoch: d.epoch,
  });
}

/**
 * Parses and validates a descriptor written by {@link encodeDescriptor}: group >= 1, a valid pool
 * name (or the default pool), `0 <= index < shards <= MAX_POOL_SHARDS`, a valid affinity,
 * distinct excluded pools each strictly inside the pool's domain (returned sorted), epoch >= 0.
 * Throws ShardingError INVALID_MAP.
 */
export function decodeDescriptor(s: string): ShardDescriptor {
  const r = new Reader('shard descriptor');
  if (typeof s !== 'string') r.fail('not a string');
  const o = r.object(s, ['group', 'pool', 'index', 'shards', 'excluded', 'epoch'], ['affinity']);
  const group = r.int(o, 'group', 1, Number.MAX_SAFE_INTEGER);
  const pool = r.string(o, 'pool');
  if (pool !== DEFAULT_POOL) r.check(() => validatePoolName(pool));
  const shards = r.int(o, 'shards', 1, MAX_POOL_SHARDS);
  const index = r.int(o, 'index', 0, shards - 1);
  const ex = o.excluded;
  if (!Array.isArray(ex) || ex.length > MAX_POOLS) r.fail('excluded must be a list of pool names');
  const excluded: string[] = [];
  for (const name of ex as unknown[]) {
    r.check(() => validatePoolName(name));
    const n = name as string;
    if (n === pool || !poolMatches(pool, n)) r.fail(`excluded pool ${JSON.stringify(n)} is not inside pool ${JSON.stringify(pool)}`);
    excluded.push(n);
  }
  excluded.sort(compareStrings);
  for (let i = 1; i < excluded.length; i++) if (excluded[i] === excluded[i - 1]) r.fail(`excluded names ${JSON.stringify(excluded[i])} twice`);
  const epoch = r.int(o, 'epoch', 0, Number.MAX_SAFE_INTEGER);
  return {
    group,
    pool,
    index,
    shards,
    ...(o.affinity !== undefined ? { affinity: r.check(() => validateAffinity(o.affinity, 'INVALID_MAP')) } : {}),
    excluded,
    epoch,
  };
}
