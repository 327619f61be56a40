/** Resolves an extension's location (a folder with package.json, or a file) to the file URL to import, or to the shared library of a native package. */
import { readFile, stat } from 'node:fs/promises';
import { dirname, extname, join, resolve as resolvePath } from 'node:path';
import { pathToFileURL } from 'node:url';

/** Conditions honoured in package.json `exports`, like Node's `import()`; `require` is a fallback for CommonJS-only packages. */
const IMPORT_CONDITIONS = new Set(['node', 'import', 'module-sync', 'default']);

async function isFile(p: string): Promise<boolean> {
  return (await stat(p).catch(() => undefined))?.isFile() ?? false;
}

async function isDir(p: string): Promise<boolean> {
  return (await stat(p).catch(() => undefined))?.isDirectory() ?? false;
}

/** Picks the target of an `exports` value for the root entry, or undefined when it has none. */
function exportsTarget(value: unknown, conditions: ReadonlySet<string>, depth = 0): string | undefined {
  if (depth > 16 || value === null || value === undefined) return undefined;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    for (const v of value) {
      const t = exportsTarget(v, conditions, depth + 1);
      if (t !== undefined) return t;
    }
    return undefined;
  }
  if (typeof value !== 'object') return undefined;
  const o = value as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.some((k) => k.startsWith('.'))) return '.' in o ? exportsTarget(o['.'], conditions, depth + 1) : undefined;
  for (const k of keys) {
    if (conditions.has(k)) {
      const t = exportsTarget(o[k], conditions, depth + 1);
      if (t !== undefined) return t;
    }
  }
  return undefined;
}

/** Like CommonJS `main` resolution: the file itself, with .js/.mjs/.cjs added, or an index file in it. */
async function resolveMain(dir: string, main: string): Promise<string | undefined> {
  const base = resolvePath(dir, main);
  if (await isFile(base)) return base;
  if (!extname(base)) {
    for (const ext of ['.js', '.mjs', '.cjs']) if (await isFile(base + ext)) return base + ext;
  }
  if (await isDir(base)) {
    for (const f of ['index.js', 'index.mjs', 'index.cjs']) if (await isFile(join(base, f))) return join(base, f);
  }
  return undefined;
}

/** What an extension location holds: a JS module to import, or a native (C ABI) package. */
export type ResolvedExtension =
  | { readonly kind: 'module'; readonly url: string }
  | {
      readonly kind: 'native';
      /** The package folder (absolute), to hand to `loadNativeExtensionPackage`. */
      readonly packageDir: string;
      /** The shared library its package.json declares (absolute; may not exist yet, e.g. not built). */
      readonly library: string;
    };

/**
 * Tells a native package from a JS one: a folder whose package.json has `"kvcascade": { "native":
 * "<path of the .so>" }` is native (the library path is resolved against the folder, not checked);
 * anything else resolves like {@link resolveExtensionEntry}. Throws an `Error` saying what is wrong.
 */
export async function resolveExtension(modulePath: string): Promise<ResolvedExtension> {
  const abs = resolvePath(modulePath);
  const pkgPath = join(abs, 'package.json');
  if ((await isDir(abs)) && (await isFile(pkgPath))) {
    let pkg: unknown;
    try {
      pkg = JSON.parse(await readFile(pkgPath, 'utf8'));
    } catch (e) {
      throw new Error(`${pkgPath} is not valid JSON: ${(e as Error).message}`);
    }
    const kvc = pkg !== null && typeof pkg === 'object' ? (pkg as { kvcascade?: unknown }).kvcascade : undefined;
    const native = kvc !== null && typeof kvc === 'object' ? (kvc as { native?: unknown }).native : undefined;
    if (native !== undefined) {
      if (typeof native !== 'string' || native === '') {
        throw new Error(`${pkgPath}: "kvcascade.native" must be the path of the shared library (e.g. "build/libext.so")`);
      }
      return { kind: 'native', packageDir: abs, library: resolvePath(abs, native) };
    }
  }
  return { kind: 'module', url: await resolveExtensionEntry(abs) };
}

/**
 * Returns the `file:` URL of the module to `import()` for `modulePath`: a file is used as is; a
 * folder's package.json is read and its `exports` root entry (conditions node/import/default,
 * then require), else `main`, else `index.js`/`index.mjs`/`index.cjs`, is used. Node itself then
 * honours the package's `type` (ESM or CommonJS) and resolves its own `node_modules`.
 * Throws an `Error` saying what is missing.
 */
export async function resolveExtensionEntry(modulePath: string): Promise<string> {
  const abs = resolvePath(modulePath);
  const st = await stat(abs).catch(() => undefined);
  if (!st) throw new Error(`${abs} does not exist`);
  if (st.isFile()) return pathToFileURL(abs).href;
  if (!st.isDirectory()) throw new Error(`${abs} is neither a file nor a folder`);
  const pkgPath = join(abs, 'package.json');
  let pkg: { exports?: unknown; main?: unknown } = {};
  if (await isFile(pkgPath)) {
    try {
      pkg = JSON.parse(await readFile(pkgPath, 'utf8')) as typeof pkg;
    } catch (e) {
      throw new Error(`${pkgPath} is not valid JSON: ${(e as Error).message}`);
    }
    if (pkg === null || typeof pkg !== 'object') throw new Error(`${pkgPath} is not a JSON object`);
  }
  if (pkg.exports !== undefined) {
    const target = exportsTarget(pkg.exports, IMPORT_CONDITIONS) ?? exportsTarget(pkg.exports, new Set(['require']));
    if (target === undefined) throw new Error(`${pkgPath}: "exports" has no root (".") entry usable by import()`);
    if (!target.startsWith('./')) throw new Error(`${pkgPath}: "exports" target ${JSON.stringify(target)} must start with "./"`);
    const file = resolvePath(abs, target);
    if (!(await isFile(file))) throw new Error(`${pkgPath}: "exports" points to ${file}, which does not exist`);
    return pathToFileURL(file).href;
  }
  if (pkg.main !== undefined) {
    if (typeof pkg.main !== 'string') throw new Error(`${pkgPath}: "main" must be a string`);
    const file = await resolveMain(abs, pkg.main);
    if (!file) throw new Error(`${pkgPath}: "main" points to ${resolvePath(abs, pkg.main)}, which does not exist`);
    return pathToFileURL(file).href;
  }
  const file = await resolveMain(dirname(pkgPath), '.');
  if (!file) throw new Error(`${abs} has no package.json "exports"/"main" and no index.js, index.mjs or index.cjs`);
  return pathToFileURL(file).href;
}
