/**
 * Extension packages: a folder packed into a gzipped tar (with its own node_modules), and the
 * safe unpacking of such a tarball into a node's data directory.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import * as tar from 'tar';

/** Largest package accepted (packed bytes). */
export const MAX_PACKAGE_BYTES = 32 << 20;
/** Largest total unpacked size. */
export const MAX_UNPACKED_BYTES = 256 << 20;
/** Most files in one package. */
export const MAX_PACKAGE_FILES = 20_000;

/** A package that cannot be packed, uploaded or unpacked; the message says why. */
export class PackageError extends Error {
  constructor(message: string) {
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

/** Packs `folder` (which must hold a package.json) into a .tgz, skipping .git. */
export async function packFolder(folder: string): Promise<Uint8Array> {
  const root = resolve(folder);
  const st = await stat(root).catch(() => undefined);
  if (!st?.isDirectory()) throw new PackageError(`${folder} is not a folder`);
  await readPackageInfo(root);
  const chunks: Buffer[] = [];
  let size = 0;
  const stream = tar.create({ gzip: true, cwd: root, portable: true, filter: (p) => !/(^|\/)\.git(\/|$)/.test(p) }, ['.']);
  for await (const chunk of stream as unknown as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_PACKAGE_BYTES) throw new PackageError(`package is larger than ${MAX_PACKAGE_BYTES} bytes`);
    chunks.push(chunk);
  }
  return new Uint8Array(Buffer.concat(chunks));
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

/**
 * Unpacks a package into `dest` (replaced if present), refusing absolute paths, `..`, links
 * that leave the folder, and anything over the size limits. A tarball made by `npm pack`
 * (everything under `package/`) is unpacked without that prefix. Returns its package.json info.
 */
export async function unpackPackage(tgz: Uint8Array, dest: string): Promise<PackageInfo> {
  if (tgz.length > MAX_PACKAGE_BYTES) throw new PackageError(`package is larger than ${MAX_PACKAGE_BYTES} bytes`);
  const entries = await listEntries(tgz);
  if (entries.length === 0) throw new PackageError('package is empty or not a gzipped tar');
  if (entries.length > MAX_PACKAGE_FILES) throw new PackageError(`package has more than ${MAX_PACKAGE_FILES} files`);
  const names = entries.map((e) => e.path.replace(/^\.\//, ''));
  const npmPacked = names.every((n) => n === 'package' || n === 'package/' || n.startsWith('package/'));
  const total = entries.reduce((a, e) => a + e.size, 0);
  if (total > MAX_UNPACKED_BYTES) throw new PackageError(`package unpacks to more than ${MAX_UNPACKED_BYTES} bytes`);
  await rm(dest, { recursive: true, force: true });
  await mkdir(dest, { recursive: true });
  await new Promise<void>((res, rej) => {
    const x = tar.extract({ cwd: dest, strip: npmPacked ? 1 : 0, preservePaths: false, strict: true });
    x.on('error', rej);
    x.on('close', () => res());
    x.on('finish', () => res());
    Readable.from([Buffer.from(tgz)]).pipe(x);
  }).catch((e: unknown) => {
    throw new PackageError(`cannot unpack: ${(e as Error).message}`);
  });
  return readPackageInfo(dest);
}

async function listEntries(tgz: Uint8Array): Promise<{ path: string; size: number }[]> {
  const out: { path: string; size: number }[] = [];
  await new Promise<void>((res, rej) => {
    const p = tar.list({ onReadEntry: (e) => out.push({ path: e.path, size: e.size ?? 0 }), strict: true });
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
