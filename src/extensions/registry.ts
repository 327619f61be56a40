/**
 * The replicated extension registry, kept in the metadata group as ordinary keys:
 * `/ext/<name>/meta` (the record, written last: the commit point),
 * `/ext/<name>/pkg/<generation>/<chunk>` (the package bytes in chunks under the value limit) and
 * `/ext/<name>/claim` (the last generation handed out, and the load holding it while in
 * progress: a load claims its generation with a conditional write before writing any chunk, and
 * commits the record only if its claim still stands, so two loads never share chunk keys).
 */
import { EXTENSION_REGISTRY_PREFIX } from '../sharding/index.js';
import { PackageError } from './package.js';
import type { IsolationMode } from './sandbox/runner.js';

/** Key prefix of the registry in the metadata group (reserved: out of clients' reach). */
export const REGISTRY_PREFIX = EXTENSION_REGISTRY_PREFIX;
/** Bytes per package chunk (below the 1 MiB value limit). */
export const PACKAGE_CHUNK_BYTES = 768 * 1024;

/** One registered extension. */
export interface ExtensionRecord {
  readonly name: string;
  /** The package.json version. */
  readonly version: string;
  /** Bumped on every load: names the chunk set and lets nodes tell versions apart. */
  readonly generation: number;
  readonly sha256: string;
  readonly size: number;
  readonly chunks: number;
  /** JSON configuration given at load time. */
  readonly config: Record<string, unknown>;
  /** Set for native extensions: the shared library inside the package. */
  readonly native?: string;
  /**
   * Run lambdas in the node's own thread (trusted, latency-critical). Kept (set with `isolation:
   * 'in-process'`) for nodes that do not know `isolation`.
   */
  readonly inProcess?: boolean;
  /** Worker restarts within a minute before the extension pauses (circuit breaker); default: the node's. */
  readonly maxRestartsPerMinute?: number;
  /** The circuit breaker's first pause (ms); default: the node's. */
  readonly pauseMs?: number;
  /** Where the lambdas run (see {@link isolationOf}); absent: `inProcess`, else the node's default. */
  readonly isolation?: IsolationMode;
  readonly loadedAtMs: number;
  /**
   * Legacy (single data shard): revision + 1 of data shard 1 when the extension was first
   * registered. Read as `startRevisions['1']` when that is absent (see {@link startRevisionOf}).
   */
  readonly startRevision?: number;
  /**
   * Per data shard (group id → revision + 1) when the extension was first registered: a watch
   * with no delivery cursor yet starts there in that shard, so changes made once `load` returned
   * are never missed. A shard with no entry did not exist then, and is delivered from its start.
   */
  readonly startRevisions?: Readonly<Record<string, number>>;
  /**
   * Which set of delivery cursors the watches use (absent or 0: the original keys). A load with
   * an explicit start (`from`) sets it to its generation, so the cursors of earlier loads are
   * ignored and delivery starts exactly at the start points (see `cursorKey`).
   */
  readonly cursorEpoch?: number;
}

/**
 * What an unload without `purge` leaves in the registry (`/ext/<name>/unloaded`): where the
 * unloaded extension's watches started and which cursors they used, so that loading it again
 * resumes from its delivery cursors (events written meanwhile are delivered), and its last
 * generation (generations never go back). Removed by the next load, or by an unload with purge.
 */
export interface UnloadedRecord {
  readonly name: string;
  readonly version: string;
  readonly generation: number;
  readonly startRevisions: Readonly<Record<string, number>>;
  readonly cursorEpoch?: number;
  readonly unloadedAtMs: number;
}

/** Key of the record an unload leaves (see {@link UnloadedRecord}). */
export function unloadedKey(name: string): string {
  return `${REGISTRY_PREFIX}${name}/unloaded`;
}

/** Encodes an unloaded record. */
export function encodeUnloaded(r: UnloadedRecord): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(r));
}

/** Decodes an unloaded record; undefined when malformed. */
export function decodeUnloaded(bytes: Uint8Array): UnloadedRecord | undefined {
  try {
    const r = JSON.parse(new TextDecoder().decode(bytes)) as UnloadedRecord;
    if (typeof r !== 'object' || r === null || typeof r.name !== 'string' || !isRevision(r.generation) || typeof r.startRevisions !== 'object' || r.startRevisions === null) return undefined;
    for (const v of Object.values(r.startRevisions)) if (!isRevision(v)) return undefined;
    if (r.cursorEpoch !== undefined && !isRevision(r.cursorEpoch)) return undefined;
    return r;
  } catch {
    return undefined;
  }
}

/**
 * Where a record's lambdas run: its `isolation`, else `in-process` for `inProcess: true`, else
 * undefined (the node's default; native packages always run in a worker).
 */
export function isolationOf(r: Pick<ExtensionRecord, 'isolation' | 'inProcess'>): IsolationMode | undefined {
  if (r.isolation === 'worker' || r.isolation === 'process' || r.isolation === 'in-process') return r.isolation;
  return r.inProcess ? 'in-process' : undefined;
}

/** The data group a legacy record's `startRevision` belongs to (the single data shard of old clusters). */
export const LEGACY_DATA_GROUP = 1;

/** Extension names: lowercase letters, digits, `.`, `_`, `-`; 1 to 64 characters. */
export function validateExtensionName(name: string): string {
  if (!/^[a-z0-9][a-z0-9._-]{0,63}$/.test(name)) {
    throw new PackageError(`invalid extension name ${JSON.stringify(name)}: use 1-64 of a-z 0-9 . _ - (starting with a letter or digit)`);
  }
  return name;
}

/** A registry-safe name derived from an npm package name (`@scope/pkg` → `scope-pkg`). */
export function nameFromPackage(pkgName: string): string {
  return validateExtensionName(pkgName.replace(/^@/, '').replace(/[/]/g, '-').toLowerCase().slice(0, 64));
}

/** Key an operator's `ext resume` writes (a timestamp): every node resumes its paused runner of `name` when it changes. */
export function resumeKey(name: string): string {
  return `${REGISTRY_PREFIX}${name}/resume`;
}

/** Key of an extension's record. */
export function metaKey(name: string): string {
  return `${REGISTRY_PREFIX}${name}/meta`;
}

/** Prefix of one generation's chunks. */
export function chunkPrefix(name: string, generation: number): string {
  return `${packagePrefix(name)}${String(generation).padStart(12, '0')}/`;
}

/** Prefix of every generation's chunks of an extension. */
export function packagePrefix(name: string): string {
  return `${REGISTRY_PREFIX}${name}/pkg/`;
}

/** The generation a chunk key (see {@link chunkKey}) belongs to, or undefined for any other key. */
export function chunkGeneration(key: string): number | undefined {
  const m = /\/pkg\/([0-9]{12})\/[0-9]{6}$/.exec(key);
  return m ? Number(m[1]) : undefined;
}

/** Key of an extension's load claim (see {@link LoadClaim}). */
export function claimKey(name: string): string {
  return `${REGISTRY_PREFIX}${name}/claim`;
}

/**
 * An extension's load claim. A load takes it (a put conditional on the version it read) for
 * the next generation before writing that generation's chunks, and releases it in the same txn
 * that writes the record, conditional on its claim being unchanged. Generations are never handed
 * out twice, so chunks of different loads never mix, and a load whose claim was taken over
 * cannot commit. Whether a held claim stops another load is the manager's call (see
 * `ExtensionManager.load`). The key stays after an unload, so generations keep increasing.
 */
export interface LoadClaim {
  /** The generation handed out last (being written while the claim is held). */
  readonly generation: number;
  /** The node whose load holds (or held) it. */
  readonly node: number;
  /** Which loader of that node (random per manager instance: a restarted node is another loader). */
  readonly loader: string;
  /** Wall-clock time until which a load in progress holds it. */
  readonly expiresAtMs: number;
  /** Released: no load holds it (it committed or gave up). */
  readonly released: boolean;
}

/** Encodes a load claim as a value. */
export function encodeClaim(c: LoadClaim): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(c));
}

/** Decodes a load claim value; throws on anything malformed. */
export function decodeClaim(bytes: Uint8Array): LoadClaim {
  const c = JSON.parse(new TextDecoder().decode(bytes)) as LoadClaim;
  if (typeof c !== 'object' || c === null || !isRevision(c.generation) || typeof c.node !== 'number' || typeof c.loader !== 'string' || typeof c.expiresAtMs !== 'number' || typeof c.released !== 'boolean') {
    throw new Error('malformed extension load claim');
  }
  return c;
}

/** Whether a load holds `c` at `nowMs` (not released, not expired), wherever it runs. */
export function claimHeld(c: LoadClaim, nowMs: number): boolean {
  return !c.released && c.expiresAtMs > nowMs;
}

/** Key of one chunk. */
export function chunkKey(name: string, generation: number, i: number): string {
  return `${chunkPrefix(name, generation)}${String(i).padStart(6, '0')}`;
}

/** The extension name a registry key belongs to, and whether it is a record. */
export function parseRegistryKey(key: string): { name: string; isMeta: boolean } | undefined {
  if (!key.startsWith(REGISTRY_PREFIX)) return undefined;
  const rest = key.slice(REGISTRY_PREFIX.length);
  const slash = rest.indexOf('/');
  if (slash <= 0) return undefined;
  return { name: rest.slice(0, slash), isMeta: rest.slice(slash) === '/meta' };
}

/** Encodes a record as a value. */
export function encodeRecord(r: ExtensionRecord): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(r));
}

/** Decodes a record value (records written before sharding included); throws on anything malformed. */
export function decodeRecord(bytes: Uint8Array): ExtensionRecord {
  const r = JSON.parse(new TextDecoder().decode(bytes)) as ExtensionRecord;
  if (typeof r !== 'object' || r === null || typeof r.name !== 'string' || typeof r.generation !== 'number' || typeof r.chunks !== 'number' || typeof r.sha256 !== 'string') {
    throw new Error('malformed extension record');
  }
  if (r.cursorEpoch !== undefined && !isRevision(r.cursorEpoch)) throw new Error('malformed extension record: bad cursorEpoch');
  if (r.startRevision !== undefined && !isRevision(r.startRevision)) throw new Error('malformed extension record: bad startRevision');
  if (r.startRevisions !== undefined) {
    const s = r.startRevisions as unknown;
    if (typeof s !== 'object' || s === null || Array.isArray(s)) throw new Error('malformed extension record: bad startRevisions');
    for (const [group, rev] of Object.entries(s)) {
      if (!/^(0|[1-9][0-9]{0,9})$/.test(group) || !isRevision(rev)) throw new Error(`malformed extension record: bad start revision of shard ${JSON.stringify(group)}`);
    }
  }
  return r;
}

function isRevision(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/**
 * Where `record`'s watches start in data shard `group` (a revision + 1), or undefined when the
 * record has none for it: the shard was created after the extension was first registered. An
 * old record's `startRevision` is shard 1's.
 */
export function startRevisionOf(record: ExtensionRecord, group: number): number | undefined {
  return record.startRevisions?.[String(group)] ?? (group === LEGACY_DATA_GROUP ? record.startRevision : undefined);
}

/** Every start point `record` holds (group id → revision + 1), an old record's `startRevision` as shard 1's. */
export function startRevisionsOf(record: ExtensionRecord): Record<string, number> {
  const out: Record<string, number> = { ...(record.startRevisions ?? {}) };
  if (record.startRevision !== undefined && out[String(LEGACY_DATA_GROUP)] === undefined) out[String(LEGACY_DATA_GROUP)] = record.startRevision;
  return out;
}

/** Splits a package into chunks. */
export function splitPackage(tgz: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let off = 0; off < tgz.length; off += PACKAGE_CHUNK_BYTES) out.push(tgz.subarray(off, Math.min(tgz.length, off + PACKAGE_CHUNK_BYTES)));
  return out;
}

/** Whether `record` says where its watches start (records from before start points say nothing). */
export function hasStartPoints(record: ExtensionRecord): boolean {
  return record.startRevisions !== undefined || record.startRevision !== undefined;
}
