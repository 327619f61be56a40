/**
 * Extension packages: the safe unpacking of an uploaded gzipped tar into a node's data directory,
 * their limits, digest and package.json (a folder is packed by pack-folder.ts). Packages hold
 * only files and folders at relative paths: links (symbolic or hard), absolute or `..` paths,
 * devices and FIFOs are refused when unpacking an upload.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar';

/** Largest package accepted (packed bytes). */
export const MAX_PACKAGE_BYTES = 32 << 20;
/** Largest total unpacked size. */
export const MAX_UNPACKED_BYTES = 256 << 20;
/** Most files in one package. */
export const MAX_PACKAGE_FILES = 20_000;

/**
 * A package that cannot be packed, uploaded or unpacked; the message says why. Recognised by
 * `name` ('PackageError', subclasses included) where errors cross module boundaries; `code`
 * tells some kinds apart (see {@link UnsafePackageEntryError}).
 */
export class PackageError extends Error {
  constructor(
    message: string,
    /** A machine-readable kind, when there is one (e.g. `UNSAFE_ENTRY`). */
    readonly code?: string,
  ) {
    super(message);
    this.name = 'PackageError';
  }
}

/** What a package declares in its package.json. */
export interface PackageInfo {
  readonly name: string;
  readonly version: string;
  /** Set for native extensions: the shared library, relative to the package root. */
  readonly native: string | undefined;
}

/** Reads a .tgz file from disk (bounded). */
export async function readTarball(path: string): Promise<Uint8Array> {
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile()) throw new PackageError(`${path} is not a file`);
  if (st.size > MAX_PACKAGE_BYTES) throw new PackageError(`package is larger than ${MAX_PACKAGE_BYTES} bytes`);
  return new Uint8Array(await readFile(path));
}

/** Hex SHA-256 of a package. */
export function packageDigest(tgz: Uint8Array): string {
  return createHash('sha256').update(tgz).digest('hex');
}

/** {@link PackageError.code} of an {@link UnsafePackageEntryError}. */
export const UNSAFE_ENTRY = 'UNSAFE_ENTRY';

/**
 * A tar entry an extension package may not hold: a symbolic or hard link (wherever it points),
 * an absolute path or one with a `..` segment, a device, a FIFO or any other special entry. The
 * message names the entry; nothing of the package was written. A PackageError (same `name`, so
 * callers that stop retrying on one stop on this too) with code {@link UNSAFE_ENTRY}, which the
 * admin service answers with INVALID_ARGUMENT.
 */
export class UnsafePackageEntryError extends PackageError {
  constructor(
    /** The entry's path as the archive holds it. */
    readonly entry: string,
    why: string,
  ) {
    super(`refused package entry ${JSON.stringify(entry)}: ${why}`, UNSAFE_ENTRY);
  }
}

/** One tar entry, as read (before anything is written). */
interface EntryInfo {
  readonly path: string;
  /** tar's entry type: File, Directory, SymbolicLink, Link, CharacterDevice, FIFO, ... */
  readonly type: string;
  readonly size: number;
  readonly linkpath: string | undefined;
}

/** The entry types a package may hold: files and folders. */
const PLAIN_TYPES = new Set(['File', 'OldFile', 'ContiguousFile', 'Directory']);

const NO_LINKS = 'extension packages may not contain links (pack the folder without them, e.g. with `npm pack`)';

/**
 * Why `e` may not be unpacked (a sentence), or undefined when it is a file or folder at a
 * relative path without `..`. Links are refused wherever they point: npm packages need none, and
 * a link inside the folder can still be swapped for one outside by a later entry.
 */
function unsafeEntry(e: EntryInfo): string | undefined {
  if (isAbsolutePath(e.path)) return 'its path is absolute; package entries must be relative to the package root';
  if (hasDotDot(e.path)) return "its path contains '..'; package entries must stay inside the package";
  if (e.type === 'SymbolicLink' || e.type === 'Link') {
    const kind = e.type === 'SymbolicLink' ? 'a symbolic link' : 'a hard link';
    const target = e.linkpath ?? '';
    // A symlink's target is relative to its own folder; a hard link's to the archive root.
    const resolved = e.type === 'SymbolicLink' ? posix.normalize(posix.join(posix.dirname(e.path), target)) : posix.normalize(target);
    const outside = isAbsolutePath(target) || resolved === '..' || resolved.startsWith('../');
    return `it is ${kind} to ${JSON.stringify(target)}${outside ? ', outside the package' : ''}; ${NO_LINKS}`;
  }
  if (!PLAIN_TYPES.has(e.type)) {
    const what: Record<string, string> = { CharacterDevice: 'a character device', BlockDevice: 'a block device', FIFO: 'a FIFO' };
    return `it is ${what[e.type] ?? `a ${e.type} entry`}; extension packages may hold only files and folders`;
  }
  return undefined;
}

function isAbsolutePath(p: string): boolean {
  return p.startsWith('/') || p.startsWith('\\') || /^[a-zA-Z]:/.test(p);
}

function hasDotDot(p: string): boolean {
  return p.split(/[\\/]/).includes('..');
}

/**
 * Unpacks a package into `dest` (replaced if present). Every entry is checked before anything
 * is written: a link (symbolic or hard, even one pointing inside the package), an absolute path,
 * a `..` path, a device or FIFO is refused with an {@link UnsafePackageEntryError} naming it, and
 * a package over the size limits with a {@link PackageError}. A tarball made by `npm pack`
 * (everything under `package/`) is unpacked without that prefix. On any failure `dest` is
 * removed. Returns its package.json info.
 */
export async function unpackPackage(tgz: Uint8Array, dest: string): Promise<PackageInfo> {
  if (tgz.length > MAX_PACKAGE_BYTES) throw new PackageError(`package is larger than ${MAX_PACKAGE_BYTES} bytes`);
  const entries = await listEntries(tgz);
  if (entries.length === 0) throw new PackageError('package is empty or not a gzipped tar');
  if (entries.length > MAX_PACKAGE_FILES) throw new PackageError(`package has more than ${MAX_PACKAGE_FILES} files`);
  for (const e of entries) {
    const why = unsafeEntry(e);
    if (why) throw new UnsafePackageEntryError(e.path, why);
  }
  const names = entries.map((e) => e.path.replace(/^\.\//, ''));
  const npmPacked = names.every((n) => n === 'package' || n === 'package/' || n.startsWith('package/'));
  const total = entries.reduce((a, e) => a + e.size, 0);
  if (total > MAX_UNPACKED_BYTES) throw new PackageError(`package unpacks to more than ${MAX_UNPACKED_BYTES} bytes`);
  await removeTree(dest);
  await mkdir(dest, { recursive: true });
  try {
    await extract(tgz, dest, npmPacked ? 1 : 0);
    return await readPackageInfo(dest);
  } catch (e) {
    await removeTree(dest).catch(() => {});
    throw e;
  }
}

/** How long an extraction that failed may go on writing the files it had started. */
const SETTLE_MS = 5_000;

/**
 * Extracts `tgz` (already checked entry by entry) into `dest`. Settles only once tar wrote
 * everything it started, failure included, so that removing `dest` afterwards cannot race with
 * writes still in flight (which made `rm` fail with ENOTEMPTY and left files behind).
 */
async function extract(tgz: Uint8Array, dest: string, strip: number): Promise<void> {
  await new Promise<void>((res, rej) => {
    let failure: Error | undefined;
    let settled = false;
    const settle = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (failure) rej(failure);
      else res();
    };
    let timer: NodeJS.Timeout | undefined;
    const x = tar.extract({
      cwd: dest,
      strip,
      preservePaths: false,
      strict: true,
      // Checked already; refused here too should the archive read differently the second time.
      filter: (_path, entry) => 'type' in entry && PLAIN_TYPES.has(entry.type),
    });
    x.on('error', (e: Error) => {
      failure ??= e;
      // Writes already started go on: wait for tar to finish them (bounded: a broken stream may never end).
      timer ??= setTimeout(settle, SETTLE_MS);
    });
    x.on('finish', settle);
    x.on('end', settle);
    Readable.from([Buffer.from(tgz)]).pipe(x);
  }).catch((e: unknown) => {
    throw new PackageError(`cannot unpack: ${(e as Error).message}`);
  });
}

/** Removes a folder tree, retrying on the transient errors (ENOTEMPTY, EBUSY) of a tree still changing. */
export async function removeTree(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
}

async function listEntries(tgz: Uint8Array): Promise<EntryInfo[]> {
  const out: EntryInfo[] = [];
  await new Promise<void>((res, rej) => {
    const p = tar.list({
      onReadEntry: (e) => out.push({ path: e.path, type: e.type, size: e.size ?? 0, linkpath: e.linkpath }),
      strict: true,
    });
    p.on('error', rej);
    p.on('end', () => res());
    p.on('close', () => res());
    Readable.from([Buffer.from(tgz)]).pipe(p as unknown as NodeJS.WritableStream);
  }).catch((e: unknown) => {
    throw new PackageError(`not a valid gzipped tar: ${(e as Error).message}`);
  });
  return out;
}

/** Reads and checks `<root>/package.json`. */
export async function readPackageInfo(root: string): Promise<PackageInfo> {
  let raw: string;
  try {
    raw = await readFile(join(root, 'package.json'), 'utf8');
  } catch {
    throw new PackageError('an extension needs a package.json at its root');
  }
  let pkg: { name?: unknown; version?: unknown; kvcascade?: { native?: unknown } };
  try {
    pkg = JSON.parse(raw) as typeof pkg;
  } catch (e) {
    throw new PackageError(`package.json is not valid JSON: ${(e as Error).message}`);
  }
  const name = typeof pkg.name === 'string' && pkg.name ? pkg.name : undefined;
  if (!name) throw new PackageError('package.json has no "name"');
  const native = typeof pkg.kvcascade?.native === 'string' ? pkg.kvcascade.native : undefined;
  if (native && (native.startsWith('/') || native.split('/').includes('..'))) {
    throw new PackageError('"kvcascade.native" must be a path inside the package');
  }
  return { name, version: typeof pkg.version === 'string' ? pkg.version : '0.0.0', native };
}

/** Writes a package to a file (kvctl's `ext pack`, tests). */
export async function writeTarball(tgz: Uint8Array, path: string): Promise<void> {
  await writeFile(path, tgz);
}
