/**
 * Errors as an extension's author needs them: where in the package an import or initialize
 * failure happened (file and line, found for a syntax error with `node --check`, which reports
 * what a dynamic import does not), and every path given relative to the package, never the
 * node's staging or data folder it was unpacked to.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** Most files of a package checked with `node --check` to find a syntax error. */
const MAX_CHECKED_FILES = 200;
/** How long one `node --check` may take. */
const CHECK_TIMEOUT_MS = 10_000;

/** The package folder holding the module at `moduleUrl` (the nearest folder with a package.json), or undefined. */
export function packageRootOf(moduleUrl: string): string | undefined {
  let path: string;
  try {
    path = moduleUrl.startsWith('file:') ? fileURLToPath(moduleUrl) : moduleUrl;
  } catch {
    return undefined;
  }
  for (let dir = dirname(path); ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    if (dirname(dir) === dir) return undefined;
  }
}

/** `text` with the package folder `root` (as a path or a file URL) taken out: paths relative to the package. */
export function relativeToPackage(text: string, root: string | undefined): string {
  if (!root) return text;
  const url = pathToFileURL(root).href;
  return text.split(`${url}/`).join('').split(`${root}${sep}`).join('').split(url).join('.').split(root).join('.');
}

/** The first `file:line:column` of `e`'s stack inside the package folder `root` (relative), if any. */
export function locationIn(e: unknown, root: string): string | undefined {
  const stack = (e as { stack?: unknown } | null)?.stack;
  if (typeof stack !== 'string') return undefined;
  const url = pathToFileURL(root).href;
  for (const line of stack.split('\n').slice(1)) {
    const m = /\(?((?:file:\/\/)?\/[^\s()]+):(\d+):(\d+)\)?\s*$/.exec(line);
    if (!m) continue;
    const file = m[1]!;
    if (file.startsWith(`${url}/`) || file.startsWith(`${root}${sep}`)) {
      if (file.includes('/node_modules/')) continue;
      return `${relativeToPackage(file, root)}:${m[2]}:${m[3]}`;
    }
  }
  return undefined;
}

/**
 * Why importing the extension's module at `moduleUrl` failed, for its author: the error with
 * the file and line it happened at (a syntax error: the file, line, source line and caret, as
 * `node --check` gives them), paths relative to the package.
 */
export function describeImportFailure(e: unknown, moduleUrl: string): string {
  const root = packageRootOf(moduleUrl);
  const err = e as { name?: unknown; message?: unknown } | null;
  const message = typeof err?.message === 'string' ? err.message : String(e);
  const name = typeof err?.name === 'string' ? err.name : 'Error';
  if (!root) return `${name}: ${message}`;
  if (name === 'SyntaxError') {
    const found = findSyntaxError(root, moduleUrl, message);
    if (found) return relativeToPackage(found, root);
  }
  const at = locationIn(e, root);
  return relativeToPackage(`${name}: ${message}${at ? ` (at ${at})` : ''}`, root);
}

/**
 * Runs `node --check` on the package's own JavaScript files (its main module first, then the
 * others; node_modules last) until one reports the syntax error `message`; returns what it said
 * (`file:line`, the source line, the caret, the error), or undefined.
 */
function findSyntaxError(root: string, moduleUrl: string, message: string): string | undefined {
  const files: string[] = [];
  const main = moduleUrl.startsWith('file:') ? fileURLToPath(moduleUrl) : moduleUrl;
  files.push(main);
  const deps: string[] = [];
  const walk = (dir: string, into: string[]): void => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const d of entries) {
      if (files.length + deps.length > MAX_CHECKED_FILES) return;
      const p = join(dir, d.name);
      if (d.isDirectory()) {
        if (d.name === '.git') continue;
        walk(p, d.name === 'node_modules' ? deps : into);
      } else if (/\.(m|c)?js$/.test(d.name) && p !== main) into.push(p);
    }
  };
  walk(root, files);
  for (const file of [...files, ...deps].slice(0, MAX_CHECKED_FILES)) {
    let out = '';
    try {
      execFileSync(process.execPath, ['--check', file], { stdio: ['ignore', 'ignore', 'pipe'], timeout: CHECK_TIMEOUT_MS, encoding: 'utf8' });
      continue;
    } catch (x) {
      out = String((x as { stderr?: unknown }).stderr ?? '');
    }
    const lines = out.split('\n');
    const errLine = lines.findIndex((l) => /^SyntaxError: /.test(l));
    if (errLine < 0 || lines[errLine] !== `SyntaxError: ${message}`) continue;
    const where = lines[0]!.trim();
    const source = lines.slice(1, errLine).filter((l) => l.trim() !== '');
    const rel = relative(root, file).split(sep).join('/');
    const loc = where.startsWith(file) ? `${rel}${where.slice(file.length)}` : where;
    return [`${loc}: SyntaxError: ${message}`, ...source.map((l) => `  ${l}`)].join('\n');
  }
  return undefined;
}
