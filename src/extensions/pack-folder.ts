/**
 * Packing an extension folder into a .tgz the way `npm pack` chooses its files (`files`,
 * `.npmignore`, `.gitignore`, and npm's always-excluded names), plus the folder's installed
 * production dependencies (`dependencies`, `optionalDependencies`, installed
 * `peerDependencies`), never its devDependencies. A dependency installed as a link (a `file:`
 * or `link:` dependency, `npm link`, a workspace) is packed as a copy of what it points to, so
 * the package holds no links. Errors name the folder as the user gave it and paths inside it.
 */
import { execFile } from 'node:child_process';
import { copyFile, lstat, mkdir, mkdtemp, readdir, readFile, readlink, realpath, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, posix, relative, resolve, sep } from 'node:path';
import * as tar from 'tar';
import { MAX_PACKAGE_BYTES, MAX_PACKAGE_FILES, MAX_UNPACKED_BYTES, PackageError, readPackageInfo } from './package.js';

/** Options of {@link packFolder}. */
export interface PackFolderOptions {
  /** The npm command run for packages with a `files` list or an ignore file (default `npm`). */
  readonly npm?: string;
  /** Largest packed size (default {@link MAX_PACKAGE_BYTES}). */
  readonly maxBytes?: number;
}

/** How long `npm pack --dry-run` may take. */
const NPM_PACK_TIMEOUT_MS = 60_000;

/**
 * Names npm never packs (npm-packlist's defaults; anywhere in the tree unless rooted with `/`).
 * Used when the folder has no `files` list and no ignore file, so npm is not needed.
 */
const NPM_ALWAYS_EXCLUDED: readonly RegExp[] = [
  /^\.git$/, /^\.svn$/, /^\.hg$/, /^CVS$/, /^\.npmrc$/, /^\.DS_Store$/, /^\._/, /^\..*\.swp$/, /^.*\.orig$/, /^npm-debug\.log$/, /^\.lock-wscript$/, /^\.wafpickle-[0-9]+$/, /^config\.gypi$/,
];
/** Top-level names npm never packs (node_modules is packed from the dependencies instead). */
const NPM_EXCLUDED_AT_ROOT = new Set(['node_modules', 'package-lock.json', '.npmignore', '.gitignore']);

/** One file of the package: where it goes in the archive and where it is read from. */
interface PackedFile {
  readonly to: string;
  readonly from: string;
  readonly size: number;
}

/**
 * Packs `folder` (which must hold a package.json) into a gzipped tar: its own files as `npm
 * pack` would choose them, then its production dependencies from its `node_modules` (links
 * followed and packed as copies). Throws a {@link PackageError} naming what is wrong: a missing
 * dependency (run `npm install`), a symbolic link among its own files, a package over the size
 * limits (with its largest parts), or npm missing where a `files` list or ignore file needs it.
 */
export async function packFolder(folder: string, o: PackFolderOptions = {}): Promise<Uint8Array> {
  const root = resolve(folder);
  const st = await stat(root).catch(() => undefined);
  if (!st?.isDirectory()) throw new PackageError(`${folder} is not a folder`);
  await readPackageInfo(root);
  const files: PackedFile[] = [];
  for (const rel of await ownFiles(root, folder, o.npm ?? 'npm')) {
    const from = join(root, rel);
    const l = await lstat(from);
    if (l.isSymbolicLink()) {
      const target = await readlink(from).catch(() => '?');
      throw new PackageError(`${folder} contains a symbolic link: ${rel} -> ${target}. Extension packages may not contain links: replace it with the file it points to`);
    }
    if (l.isFile()) files.push({ to: rel, from, size: l.size });
  }
  for (const dep of await productionDependencies(root, folder)) files.push(...(await packageFiles(dep.from, dep.to, folder)));
  if (files.length > MAX_PACKAGE_FILES) throw new PackageError(`${folder} packs ${files.length} files, more than the ${MAX_PACKAGE_FILES} an extension package may hold${largestParts(files)}`);
  const unpacked = files.reduce((a, f) => a + f.size, 0);
  if (unpacked > MAX_UNPACKED_BYTES) throw new PackageError(`${folder} packs ${mib(unpacked)} of files, more than the ${mib(MAX_UNPACKED_BYTES)} an extension package may unpack to${largestParts(files)}`);
  const staging = await mkdtemp(join(tmpdir(), 'kvcascade-pack-'));
  try {
    for (const f of files) {
      const to = join(staging, ...f.to.split('/'));
      await mkdir(dirname(to), { recursive: true });
      await copyFile(f.from, to);
    }
    const max = o.maxBytes ?? MAX_PACKAGE_BYTES;
    const chunks: Buffer[] = [];
    let size = 0;
    const entries = [...new Set(files.map((f) => f.to))].sort();
    const stream = tar.create({ gzip: true, cwd: staging, portable: true, noDirRecurse: true }, entries);
    for await (const chunk of stream as unknown as AsyncIterable<Buffer>) {
      size += chunk.length;
      chunks.push(chunk);
    }
    if (size > max) throw new PackageError(`${folder} packs to ${mib(size)}, more than the ${mib(max)} an extension package may be${largestParts(files)}`);
    return new Uint8Array(Buffer.concat(chunks));
  } finally {
    await rm(staging, { recursive: true, force: true, maxRetries: 5 }).catch(() => {});
  }
}

/** `n` bytes in MiB, one decimal. */
function mib(n: number): string {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

/** What to say about a package too large: its largest parts (top folders, each dependency), and what to do. */
function largestParts(files: readonly PackedFile[]): string {
  const parts = new Map<string, number>();
  for (const f of files) {
    const m = /^((?:node_modules\/(?:@[^/]+\/)?[^/]+\/)+)/.exec(f.to);
    const part = m ? m[1]!.slice(0, -1) : f.to.split('/')[0]!;
    parts.set(part, (parts.get(part) ?? 0) + f.size);
  }
  const top = [...parts].sort((a, b) => b[1] - a[1]).slice(0, 5);
  return (
    `. Largest parts (unpacked): ${top.map(([p, n]) => `${p} ${mib(n)}`).join(', ')}. ` +
    'Only production dependencies are packed: keep build and test tools in devDependencies, trim the "files" list, or bundle the extension into one file'
  );
}

/**
 * The package's own files (posix paths relative to `root`), as `npm pack` chooses them: with a
 * `files` list or an ignore file, asked of npm itself (`npm pack --dry-run --json`, scripts not
 * run); otherwise every file but the names npm always leaves out. `node_modules` is not among them.
 */
async function ownFiles(root: string, shown: string, npm: string): Promise<string[]> {
  const pkg = JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { files?: unknown };
  const ignoreFile = (await Promise.all(['.npmignore', '.gitignore'].map((f) => stat(join(root, f)).then(() => f, () => undefined)))).find((f) => f !== undefined);
  if (pkg.files !== undefined || ignoreFile) return npmPackFiles(root, shown, npm, pkg.files !== undefined ? 'a "files" list' : `a ${ignoreFile}`);
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(root, rel), { withFileTypes: true })) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if ((!rel && NPM_EXCLUDED_AT_ROOT.has(e.name)) || NPM_ALWAYS_EXCLUDED.some((r) => r.test(e.name))) continue;
      if (e.isDirectory()) await walk(path);
      else out.push(path);
    }
  };
  await walk('');
  return out;
}

/** The files `npm pack` would pack from `root`, its own only (node_modules entries left to the dependency walk). */
function npmPackFiles(root: string, shown: string, npm: string, why: string): Promise<string[]> {
  return new Promise((res, rej) => {
    execFile(npm, ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, timeout: NPM_PACK_TIMEOUT_MS, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
        const detail = missing ? `${npm} was not found` : `npm pack failed: ${String(stderr).trim().split('\n').slice(-3).join(' ') || err.message}`;
        return rej(new PackageError(`${shown} has ${why}, which npm applies: ${detail}. Install npm, or load a tarball made with \`npm pack\``));
      }
      try {
        const doc = JSON.parse(String(stdout)) as { files?: { path: string }[] }[];
        const files = (doc[0]?.files ?? []).map((f) => f.path.split(sep).join('/')).filter((p) => !p.startsWith('node_modules/'));
        res(files);
      } catch (e) {
        rej(new PackageError(`${shown}: cannot read what npm pack would pack: ${(e as Error).message}`));
      }
    });
  });
}

/** An installed dependency to pack: its real folder and where it goes in the archive. */
interface PackedDependency {
  readonly from: string;
  readonly to: string;
}

interface DependencyNode {
  /** Its real folder (links resolved). */
  readonly real: string;
  /** Its folder in the archive ('' for the extension itself). */
  readonly at: string;
  /** Whether its archive folder mirrors its real place under the extension's folder (no link on the way). */
  readonly mirrored: boolean;
  /** The real folders from the extension down to it (cycles stop there). */
  readonly chain: readonly string[];
}

/**
 * The production dependencies installed for the package at `root`, transitively, each found
 * the way Node resolves it (its own node_modules, then its ancestors'), and placed in the archive
 * so that Node resolves it the same way there: where it lies under `root`, or, below a link,
 * nested under the package that needs it. Throws a PackageError listing those not installed.
 */
async function productionDependencies(root: string, shown: string): Promise<PackedDependency[]> {
  const rootReal = await realpath(root);
  const placed = new Map<string, string>();
  const missing: string[] = [];
  const inside = (p: string) => p === rootReal || p.startsWith(rootReal + sep);
  const visit = async (node: DependencyNode): Promise<void> => {
    const pkg = JSON.parse(await readFile(join(node.real, 'package.json'), 'utf8')) as Record<string, unknown>;
    const names = (field: string) => Object.keys((pkg[field] as Record<string, string> | undefined) ?? {});
    const wanted = [...names('dependencies').map((n) => [n, true] as const), ...names('optionalDependencies').map((n) => [n, false] as const), ...names('peerDependencies').map((n) => [n, false] as const)];
    const seen = new Set<string>();
    for (const [name, required] of wanted) {
      if (seen.has(name)) continue;
      seen.add(name);
      const found = await locate(name, node.real);
      if (!found) {
        if (required) missing.push(node.at ? `${name} (needed by ${node.at})` : name);
        continue;
      }
      if (node.chain.includes(found.real)) continue; // an ancestor: resolved by walking up
      let at: string;
      let mirrored: boolean;
      if (node.mirrored && inside(found.path)) {
        // Where it lies under the extension's folder; a link (file: dependency) becomes a copy there.
        at = relative(rootReal, found.path).split(sep).join('/');
        mirrored = found.real === found.path;
      } else {
        at = `${node.at ? `${node.at}/` : ''}node_modules/${name}`;
        mirrored = false;
      }
      if (placed.has(at)) continue;
      placed.set(at, found.real);
      await visit({ real: found.real, at, mirrored, chain: [...node.chain, found.real] });
    }
  };
  await visit({ real: rootReal, at: '', mirrored: true, chain: [rootReal] });
  if (missing.length > 0) {
    const list = missing.slice(0, 8).join(', ') + (missing.length > 8 ? ` and ${missing.length - 8} more` : '');
    throw new PackageError(`${shown}: dependencies not installed: ${list}. Run \`npm install\` (or \`npm install --omit=dev\`) in ${shown} first`);
  }
  return [...placed].map(([to, from]) => ({ from, to }));
}

/** Finds dependency `name` from the real folder `from` as Node would (node_modules of it and its ancestors). */
async function locate(name: string, from: string): Promise<{ path: string; real: string } | undefined> {
  for (let dir = from; ; dir = dirname(dir)) {
    if (posix.basename(dir.split(sep).join('/')) !== 'node_modules') {
      const path = join(dir, 'node_modules', ...name.split('/'));
      const st = await stat(join(path, 'package.json')).catch(() => undefined);
      if (st?.isFile()) return { path: await realpathOfParent(path), real: await realpath(path) };
    }
    if (dirname(dir) === dir) return undefined;
  }
}

/** `path` with its parent folders' links resolved (the entry itself may stay a link). */
async function realpathOfParent(path: string): Promise<string> {
  const parent = dirname(path);
  return join(await realpath(parent), path.slice(parent.length + 1));
}

/**
 * The files of an installed dependency at real folder `from`, placed under `to`: everything but
 * its own node_modules (its dependencies are packed by the walk) and `.git`. A symbolic link
 * inside it is followed when it points to a file or folder inside the dependency, else refused.
 */
async function packageFiles(from: string, to: string, shown: string): Promise<PackedFile[]> {
  const out: PackedFile[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(from, rel), { withFileTypes: true })) {
      if (!rel && (e.name === 'node_modules' || e.name === '.git')) continue;
      const path = rel ? `${rel}/${e.name}` : e.name;
      const abs = join(from, path);
      let isDir = e.isDirectory();
      let size = 0;
      if (e.isSymbolicLink()) {
        const real = await realpath(abs).catch(() => undefined);
        if (!real || !(real === from || real.startsWith(from + sep))) {
          const target = await readlink(abs).catch(() => '?');
          throw new PackageError(`${shown}: ${to}/${path} is a symbolic link to ${target}, outside that dependency; extension packages may not contain links`);
        }
        const st = await stat(real);
        isDir = st.isDirectory();
        size = st.size;
      } else if (e.isFile()) size = (await stat(abs)).size;
      else if (!isDir) continue; // sockets, FIFOs: never packed
      if (isDir) await walk(path);
      else out.push({ to: `${to}/${path}`, from: abs, size });
    }
  };
  await walk('');
  return out;
}
