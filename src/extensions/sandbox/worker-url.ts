/** Locates the sandbox entry modules (the worker thread's and the child process's): the compiled .js next to this file, or (when running from TypeScript sources, e.g. under vitest) a cached on-the-fly transpilation (with the native adapter and a link to the project's node_modules). */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The sandbox's entry modules: `worker-entry` (worker threads) and `process-entry` (child processes). */
export type SandboxEntry = 'worker-entry' | 'process-entry';

const cached = new Map<SandboxEntry, Promise<URL>>();

/**
 * The URL to start extension workers with. In a build (`dist/`), that is the compiled
 * `worker-entry.js` beside this module. When this module runs from its `.ts` source (tests, dev),
 * Node cannot start a `.ts` worker, so the entry and the modules it imports (statically or with
 * `import()`: the sandbox, and the native adapter and sync kv bridge for native extensions) are
 * transpiled with the `typescript` dev dependency into `<tmpdir>/kvcascade-sandbox-<hash>/`, with a
 * `node_modules` link to the project's (the native adapter loads `koffi` from there). Done once per
 * hash of the sources and of that node_modules path; reused across processes.
 */
export function workerEntryUrl(): Promise<URL> {
  return sandboxEntryUrl('worker-entry');
}

/** The URL of a sandbox entry module (`worker-entry` or `process-entry`), located as `workerEntryUrl` explains. */
export function sandboxEntryUrl(entry: SandboxEntry): Promise<URL> {
  let p = cached.get(entry);
  if (!p) {
    p = locate(entry).catch((e: unknown) => {
      cached.delete(entry);
      throw e;
    });
    cached.set(entry, p);
  }
  return p;
}

async function locate(entry: SandboxEntry): Promise<URL> {
  const compiled = new URL(`./${entry}.js`, import.meta.url);
  if (compiled.protocol === 'file:' && existsSync(fileURLToPath(compiled))) return compiled;
  const source = new URL(`./${entry}.ts`, import.meta.url);
  if (source.protocol !== 'file:' || !existsSync(fileURLToPath(source))) {
    throw new Error(`cannot find the extension sandbox entry (looked for ${compiled.href} and ${source.href})`);
  }
  return transpileWorker(fileURLToPath(source));
}

/** The nearest `node_modules` folder at or above `dir`, if any. */
function nearestNodeModules(dir: string): string | undefined {
  for (let d = dir; ; d = dirname(d)) {
    const nm = join(d, 'node_modules');
    if (existsSync(nm)) return nm;
    if (dirname(d) === d) return undefined;
  }
}

const RELATIVE_IMPORT = /(?:\bfrom\s*|\bimport\s*\(?\s*)['"](\.{1,2}\/[^'"]+)['"]/g;

async function transpileWorker(entry: string): Promise<URL> {
  const root = dirname(dirname(entry)); // src/extensions: the worker may import ../api.js-style siblings
  // Collect the entry's relative imports from the sources (type-only ones too: harmless, they transpile to nothing).
  const sources = new Map<string, string>(); // path relative to root (.ts) → source
  const queue = [entry];
  while (queue.length > 0) {
    const file = queue.pop()!;
    const rel = relative(root, file);
    if (rel.startsWith('..') || sources.has(rel)) continue;
    const code = await readFile(file, 'utf8');
    sources.set(rel, code);
    for (const m of code.matchAll(RELATIVE_IMPORT)) {
      const dep = resolve(dirname(file), m[1]!).replace(/\.js$/, '.ts');
      if (!existsSync(dep)) throw new Error(`worker module ${file} imports ${m[1]}, but ${dep} does not exist`);
      queue.push(dep);
    }
  }
  const nodeModules = nearestNodeModules(root);
  const hash = createHash('sha256');
  hash.update(nodeModules ?? '').update('\0');
  for (const [rel, code] of [...sources].sort(([a], [b]) => a.localeCompare(b))) hash.update(rel).update('\0').update(code).update('\0');
  const dir = join(tmpdir(), `kvcascade-sandbox-${hash.digest('hex').slice(0, 16)}`);
  const entryOut = join(dir, relative(root, entry).replace(/\.ts$/, '.js'));
  if (!existsSync(entryOut)) {
    const ts = (await import('typescript')).default;
    const staging = `${dir}.tmp-${process.pid}-${Math.random().toString(36).slice(2)}`;
    for (const [rel, code] of sources) {
      const out = ts.transpileModule(code, {
        fileName: join(root, rel),
        compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022, sourceMap: false, inlineSourceMap: false },
      }).outputText;
      const target = join(staging, rel.replace(/\.ts$/, '.js'));
      await mkdir(dirname(target), { recursive: true });
      await writeFile(target, out);
    }
    await writeFile(join(staging, 'package.json'), '{ "type": "module" }\n');
    if (nodeModules) await symlink(nodeModules, join(staging, 'node_modules'), 'junction');
    try {
      await rename(staging, dir);
    } catch (e) {
      await rm(staging, { recursive: true, force: true });
      if (!existsSync(entryOut)) throw e; // otherwise another process won the race
    }
  }
  return pathToFileURL(entryOut);
}
