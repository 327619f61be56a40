/** Routing: which pool, shard and Raft group a key belongs to, and which keys a shard owns. */
import { ShardingError } from './errors.js';
import {
  MAX_POOL_NAME_BYTES,
  SHARD_LOCAL_PREFIXES,
  isShardLocalKey,
  type ClusterMap,
  type PoolSpec,
  type ShardDescriptor,
  type ShardInfo,
} from './types.js';

const FNV_OFFSET = 0x811c9dc5;
const FNV_PRIME = 0x01000193;
const SLASH = 0x2f;

/**
 * The stable 32-bit hash that decides where data lives: FNV-1a (32-bit) over the UTF-8 bytes of
 * `s` (a lone surrogate is encoded as U+FFFD, like `TextEncoder`), followed by murmur3's `fmix32`
 * finaliser so that small moduli (`% shards`) see well-mixed low bits. NEVER change it: every
 * stored key's shard follows from it.
 */
export function hashKey(s: string): number {
  let h = FNV_OFFSET;
  const n = s.length;
  for (let i = 0; i < n; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      h = Math.imul(h ^ c, FNV_PRIME);
      continue;
    }
    if (c < 0x800) {
      h = Math.imul(h ^ (0xc0 | (c >> 6)), FNV_PRIME);
      h = Math.imul(h ^ (0x80 | (c & 0x3f)), FNV_PRIME);
      continue;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const d = c <= 0xdbff && i + 1 < n ? s.charCodeAt(i + 1) : 0;
      if (d >= 0xdc00 && d <= 0xdfff) {
        const cp = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
        h = Math.imul(h ^ (0xf0 | (cp >> 18)), FNV_PRIME);
        h = Math.imul(h ^ (0x80 | ((cp >> 12) & 0x3f)), FNV_PRIME);
        h = Math.imul(h ^ (0x80 | ((cp >> 6) & 0x3f)), FNV_PRIME);
        h = Math.imul(h ^ (0x80 | (cp & 0x3f)), FNV_PRIME);
        continue;
      }
      c = 0xfffd;
    }
    h = Math.imul(h ^ (0xe0 | (c >> 12)), FNV_PRIME);
    h = Math.imul(h ^ (0x80 | ((c >> 6) & 0x3f)), FNV_PRIME);
    h = Math.imul(h ^ (0x80 | (c & 0x3f)), FNV_PRIME);
  }
  return fmix32(h);
}

/** murmur3's 32-bit finaliser (avalanche), as an unsigned 32-bit number. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Length of `s` in UTF-8 bytes (a lone surrogate counts as the 3 bytes of U+FFFD). */
export function utf8Length(s: string): number {
  let bytes = 0;
  const n = s.length;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) bytes += 1;
    else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < n && s.charCodeAt(i + 1) >= 0xdc00 && s.charCodeAt(i + 1) <= 0xdfff) {
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes;
}

/** Most compiled affinity expressions kept in the cache. */
const REGEX_CACHE_MAX = 1024;
const regexCache = new Map<string, RegExp>();

/** The compiled affinity expression for `source` (cached; the oldest entry is evicted beyond the bound). */
function compiled(source: string): RegExp {
  let re = regexCache.get(source);
  if (re === undefined) {
    re = new RegExp(source);
    if (regexCache.size >= REGEX_CACHE_MAX) regexCache.delete(regexCache.keys().next().value as string);
    regexCache.set(source, re);
  }
  return re;
}

/**
 * The part of `key` that is hashed: the first capture group of the pool's affinity expression
 * when it matches `key` (and the group took part in the match), otherwise the whole key.
 */
export function affinityPart(pool: PoolSpec | ShardDescriptor, key: string): string {
  if (pool.affinity === undefined) return key;
  const m = compiled(pool.affinity).exec(key);
  return m !== null && m[1] !== undefined ? m[1] : key;
}

/** Whether pool `name` matches `key`: `key === name` or `key` starts with `name + '/'` (the default pool `''` matches every key). */
export function poolMatches(name: string, key: string): boolean {
  if (name === '') return true;
  return key.length === name.length
    ? key === name
    : key.length > name.length && key.charCodeAt(name.length) === SLASH && key.startsWith(name);
}

/**
 * The longest name `has` accepts among the pool names that could match `key` (`key` itself when
 * `self`, and every `key.slice(0, i)` with `key[i] === '/'`), else `''` if `has('')`, else undefined.
 * Only names up to MAX_POOL_NAME_BYTES long are tried (no pool name is longer).
 */
function longestMatching(key: string, has: (name: string) => boolean, self: boolean): string | undefined {
  if (self && key.length > 0 && key.length <= MAX_POOL_NAME_BYTES && has(key)) return key;
  for (let i = Math.min(key.length - 1, MAX_POOL_NAME_BYTES); i > 0; i--) {
    if (key.charCodeAt(i) === SLASH) {
      const name = key.slice(0, i);
      if (has(name)) return name;
    }
  }
  return has('') ? '' : undefined;
}

/** Lookup tables derived once per (immutable) map object. */
interface RouteIndex {
  /** Pools that route keys: state `active` or `deleting`. */
  readonly routable: Map<string, PoolSpec>;
  readonly pools: Map<string, PoolSpec>;
  /** Shards of each pool, by index. */
  readonly shardsOf: Map<string, ShardInfo[]>;
  readonly byGroup: Map<number, ShardInfo>;
  /** `routable.has`, bound once (poolOf's lookups). */
  readonly isRoutable: (name: string) => boolean;
  /** The default pool when it is the only routable one (every key's pool, without a lookup). */
  readonly onlyPool: PoolSpec | undefined;
}

const indexes = new WeakMap<ClusterMap, RouteIndex>();

function indexOf(map: ClusterMap): RouteIndex {
  let ix = indexes.get(map);
  if (ix === undefined) {
    const routable = new Map<string, PoolSpec>();
    const pools = new Map<string, PoolSpec>();
    for (const p of map.pools) {
      pools.set(p.name, p);
      if (p.state === 'active' || p.state === 'deleting') routable.set(p.name, p);
    }
    const shardsOf = new Map<string, ShardInfo[]>();
    const byGroup = new Map<number, ShardInfo>();
    for (const s of map.shards) {
      byGroup.set(s.group, s);
      let arr = shardsOf.get(s.pool);
      if (arr === undefined) shardsOf.set(s.pool, (arr = []));
      arr[s.index] = s;
    }
    const only = routable.size === 1 ? routable.get('') : undefined;
    ix = { routable, pools, shardsOf, byGroup, isRoutable: (n) => routable.has(n), onlyPool: only };
    indexes.set(map, ix);
  }
  return ix;
}

/**
 * The pool `key` belongs to: the routable (`active` or `deleting`) pool with the longest name
 * matching it. Pools being created do not route yet: their keys still go to the parent.
 * Throws ShardingError INVALID_MAP on a map without a routable default pool (not initialised).
 */
export function poolOf(map: ClusterMap, key: string): PoolSpec {
  const ix = indexOf(map);
  if (ix.onlyPool !== undefined) return ix.onlyPool;
  const name = longestMatching(key, ix.isRoutable, true);
  if (name === undefined) throw new ShardingError('INVALID_MAP', `the cluster map (epoch ${map.epoch}) has no default pool: it is not initialised`);
  return ix.routable.get(name)!;
}

/** The shard of `key`: in its pool, the shard with index `hashKey(affinityPart(pool, key)) % pool.shards`. */
export function shardOf(map: ClusterMap, key: string): ShardInfo {
  const pool = poolOf(map, key);
  const index = pool.shards === 1 ? 0 : hashKey(affinityPart(pool, key)) % pool.shards;
  const shard = indexOf(map).shardsOf.get(pool.name)?.[index];
  if (shard === undefined) throw new ShardingError('INVALID_MAP', `the cluster map (epoch ${map.epoch}) has no shard ${index} of pool ${JSON.stringify(pool.name)}`);
  return shard;
}

/**
 * Every shard that may hold keys starting with `prefix`, sorted by group. A routable pool P is
 * included iff some key starting with `prefix` routes to P: either P's name starts with
 * `prefix` (then the key P itself does), or P is the longest routable pool with
 * `prefix.startsWith(P + '/')` (the default pool when there is none), which holds every key
 * starting with `prefix` that no pool in the first group takes. A prefix under (or equal to) a
 * shard-local prefix (`/_sys/`, `/_dlq/`: keys every shard may hold) spans the shards of every
 * routable pool.
 */
export function shardsForPrefix(map: ClusterMap, prefix: string): ShardInfo[] {
  const ix = indexOf(map);
  const included = new Set<string>();
  if (SHARD_LOCAL_PREFIXES.some((p) => prefix.startsWith(p))) for (const name of ix.routable.keys()) included.add(name);
  for (const name of ix.routable.keys()) if (name.startsWith(prefix)) included.add(name);
  const enclosing = longestMatching(prefix, (n) => ix.routable.has(n), false);
  if (enclosing !== undefined) included.add(enclosing);
  const out: ShardInfo[] = [];
  for (const name of included) for (const s of ix.shardsOf.get(name) ?? []) if (s !== undefined) out.push(s);
  return out.sort((a, b) => a.group - b.group);
}

const excludedSets = new WeakMap<ShardDescriptor, Set<string>>();

/**
 * Whether the shard described by `d` owns `key`: shard-local keys (under `/_sys/`: descriptor and
 * delivery cursors; under `/_dlq/`: dead letters) always; otherwise the key must match the
 * shard's pool, no excluded (nested) pool, and hash to the shard's index.
 */
export function ownsKey(d: ShardDescriptor, key: string): boolean {
  if (isShardLocalKey(key)) return true;
  if (!poolMatches(d.pool, key)) return false;
  if (d.excluded.length > 0) {
    let ex = excludedSets.get(d);
    if (ex === undefined) excludedSets.set(d, (ex = new Set(d.excluded)));
    const set = ex;
    if (longestMatching(key, (n) => n !== '' && set.has(n), true) !== undefined) return false;
  }
  return hashKey(affinityPart(d, key)) % d.shards === d.index;
}

/**
 * The descriptor of shard `group` at this map's epoch, or undefined if no such shard. Its
 * `excluded` lists every pool (any state) whose name lies strictly inside the shard's pool's domain, sorted.
 */
export function descriptorOf(map: ClusterMap, group: number): ShardDescriptor | undefined {
  const ix = indexOf(map);
  const shard = ix.byGroup.get(group);
  if (shard === undefined) return undefined;
  const pool = ix.pools.get(shard.pool);
  if (pool === undefined) return undefined;
  const excluded = map.pools
    .filter((p) => p.name !== pool.name && poolMatches(pool.name, p.name))
    .map((p) => p.name)
    .sort(compareStrings);
  return {
    group: shard.group,
    pool: pool.name,
    index: shard.index,
    shards: pool.shards,
    ...(pool.affinity !== undefined ? { affinity: pool.affinity } : {}),
    excluded,
    epoch: map.epoch,
  };
}

/** Code-unit order (the order `Array.prototype.sort` uses by default), as a comparator. */
export function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
