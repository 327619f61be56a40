/**
 * The replicated extension registry, kept in the metadata group as ordinary keys:
 * `/ext/<name>/meta` (the record, written last: the commit point) and
 * `/ext/<name>/pkg/<generation>/<chunk>` (the package bytes in chunks under the value limit).
 */
import { PackageError } from './package.js';

/** Key prefix of the registry in the metadata group. */
export const REGISTRY_PREFIX = '/ext/';
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
  /** Run lambdas in the node's own thread (trusted, latency-critical). Default false: worker threads. */
  readonly inProcess?: boolean;
  readonly loadedAtMs: number;
  /**
   * The data shard's revision when the extension was first registered: a watch with no
   * delivery cursor yet starts there, so changes made once `load` returned are never missed.
   */
  readonly startRevision?: number;
}

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

/** Key of an extension's record. */
export function metaKey(name: string): string {
  return `${REGISTRY_PREFIX}${name}/meta`;
}

/** Prefix of one generation's chunks. */
export function chunkPrefix(name: string, generation: number): string {
  return `${REGISTRY_PREFIX}${name}/pkg/${String(generation).padStart(12, '0')}/`;
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

/** Decodes a record value; throws on anything malformed. */
export function decodeRecord(bytes: Uint8Array): ExtensionRecord {
  const r = JSON.parse(new TextDecoder().decode(bytes)) as ExtensionRecord;
  if (typeof r.name !== 'string' || typeof r.generation !== 'number' || typeof r.chunks !== 'number' || typeof r.sha256 !== 'string') {
    throw new Error('malformed extension record');
  }
  return r;
}

/** Splits a package into chunks. */
export function splitPackage(tgz: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let off = 0; off < tgz.length; off += PACKAGE_CHUNK_BYTES) out.push(tgz.subarray(off, Math.min(tgz.length, off + PACKAGE_CHUNK_BYTES)));
  return out;
}
