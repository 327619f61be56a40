/**
 * `kvctl ext init <dir>`: writes a new extension project in TypeScript: a typed module, a vitest
 * test on `kvcascade/testing`, the build (tsc) and the scripts to test and load it. kvcascade is a
 * devDependency (types and the test kit): it is never packed into the extension.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Options of {@link writeExtensionProject}. */
export interface ExtInitOptions {
  /** The package name (default: the folder's name, made a valid npm name). */
  readonly name?: string;
  /** The devDependency spec of kvcascade (default: `file:` this kvcascade's own folder). */
  readonly kvcascade?: string;
}

/** The folder of the kvcascade package this code belongs to (the nearest package.json named kvcascade above it). */
export function kvcascadeRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj) && (JSON.parse(readFileSync(pj, 'utf8')) as { name?: string }).name === 'kvcascade') return dir;
    if (dirname(dir) === dir) throw new Error('cannot find the kvcascade package this kvctl belongs to');
    dir = dirname(dir);
  }
}

/**
 * Writes a new extension project into `dir` (created; it must be empty or absent). Returns the
 * files written (relative paths). Throws when `dir` holds anything already.
 */
export function writeExtensionProject(dir: string, o: ExtInitOptions = {}): string[] {
  const root = resolve(dir);
  if (existsSync(root) && readdirSync(root).length > 0) throw new Error(`${dir} is not empty: ext init writes a new project into an empty or new folder`);
  const name = o.name ?? (basename(root).toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[._-]+/, '') || 'my-extension');
  const kvcascade = o.kvcascade ?? `file:${kvcascadeRoot()}`;
  const own = JSON.parse(readFileSync(join(kvcascadeRoot(), 'package.json'), 'utf8')) as { devDependencies?: Record<string, string> };
  const dev = own.devDependencies ?? {};
  const files: Record<string, string> = {
    'package.json': `${JSON.stringify(
      {
        name,
        version: '0.1.0',
        description: 'A kvcascade extension',
        type: 'module',
        main: 'dist/index.js',
        files: ['dist'],
        scripts: {
          build: 'tsc -p tsconfig.build.json',
          typecheck: 'tsc -p tsconfig.json',
          test: 'vitest run',
          load: 'npm run build && kvctl ext load .',
        },
        devDependencies: {
          '@types/node': dev['@types/node'] ?? '^20.19.0',
          kvcascade,
          typescript: dev.typescript ?? '~5.9.3',
          vitest: dev.vitest ?? '^4.1.12',
        },
      },
      null,
      2,
    )}\n`,
    'tsconfig.json': `${JSON.stringify(
      {
        compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, types: ['node'], skipLibCheck: true, noEmit: true },
        include: ['src', 'test'],
      },
      null,
      2,
    )}\n`,
    'tsconfig.build.json': `${JSON.stringify({ extends: './tsconfig.json', compilerOptions: { noEmit: false, outDir: 'dist', rootDir: 'src' }, include: ['src'] }, null, 2)}\n`,
    '.gitignore': 'node_modules/\ndist/\n',
    'src/index.ts': `// ${name}: a kvcascade extension. Runs on the leader of each data shard, after each change is committed.
import type { ExtensionContext, ExtensionEvent } from 'kvcascade/extension';

const text = (bytes: Uint8Array | undefined): string => new TextDecoder().decode(bytes);

/** Counts the puts of each key under \`/in/\` into \`/counts/<key>\` (ctx.config.prefix changes \`/in/\`). */
export function initialize(ctx: ExtensionContext): void {
  const prefix = typeof ctx.config.prefix === 'string' ? ctx.config.prefix : '/in/';
  ctx.watch(
    prefix,
    async (event: ExtensionEvent) => {
      const key = \`/counts/\${event.key.slice(prefix.length)}\`;
      // A read-compare-write loop: its writes carry the event as their idempotency key, so a
      // redelivered event (after a leader change) is not counted twice.
      for (;;) {
        const current = await ctx.kv.get(key);
        const n = current.found ? Number(text(current.value)) : 0;
        const r = await ctx.kv.put(key, String(n + 1), { expectedVersion: current.version });
        if (r.succeeded) break;
      }
      ctx.log.debug('counted', { key: event.key, version: event.version, created: event.created });
    },
    { events: ['put'] },
  );
}
`,
    'test/index.test.ts': `import { describe, expect, it } from 'vitest';
import { testExtension } from 'kvcascade/testing';
import * as extension from '../src/index.js';

describe('${name}', () => {
  it('counts the puts of each key, once each even when every event is delivered again', async () => {
    const t = await testExtension(extension);
    await t.put('/in/a', 'x');
    await t.put('/in/a', 'y');
    await t.put('/in/b', 'z');
    await t.settled();
    expect(t.get('/counts/a')).toBe('2');
    expect(t.get('/counts/b')).toBe('1');
    await t.redeliver(); // as a new leader may after a failure
    expect(t.get('/counts/a')).toBe('2');
    expect(t.deadLetters()).toEqual([]);
    await t.stop();
  });
});
`,
    'README.md': `# ${name}

A [kvcascade](https://github.com/) extension in TypeScript.

\`\`\`sh
npm install          # kvcascade (types, test kit, kvctl), typescript, vitest: devDependencies only
npm test             # unit tests against an in-memory shard (kvcascade/testing)
npm run build        # tsc: dist/
npm run load         # build, then kvctl ext load . (needs a running cluster and its admin token)
\`\`\`

\`kvctl ext load .\` packs what \`npm pack\` would (here \`dist/\` and package.json) plus the
production dependencies (\`dependencies\`), never the devDependencies.
`,
  };
  for (const [rel, body] of Object.entries(files)) {
    const path = join(root, rel);
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, body);
  }
  return Object.keys(files);
}
