/**
 * `kvctl ext init <dir>`: the generated TypeScript project type-checks and builds against this
 * kvcascade (its kvcascade/extension and kvcascade/testing exports, from dist/: run tsc first), its
 * own test passes with vitest, the built module runs, and packing it leaves its devDependencies out.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { main as kvctl } from '../../src/cli/kvctl.js';
import { packFolder } from '../../src/extensions/pack-folder.js';
import { testExtension } from '../../src/extensions/testing/index.js';

const tmp = mkdtempSync(join(tmpdir(), 'kvcascade-init-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const repo = resolve('.');

describe('kvctl ext init', () => {
  it('writes a project that type-checks, builds, passes its own test and packs without its devDependencies', async () => {
    const dir = join(tmp, 'my-ext');
    let out = '';
    const code = await kvctl(['ext', 'init', dir], { stdout: { write: (s: string) => (out += s) }, stderr: { write: () => {} }, env: {} });
    expect(code).toBe(0);
    expect(out).toMatch(/npm install && npm test && npm run load/);
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name: string; devDependencies: Record<string, string> };
    expect(pkg.name).toBe('my-ext');
    expect(pkg.devDependencies.kvcascade).toBe(`file:${repo}`);
    // What `npm install` would link, offline: this kvcascade and the tools of its own node_modules.
    mkdirSync(join(dir, 'node_modules', '@types'), { recursive: true });
    symlinkSync(repo, join(dir, 'node_modules', 'kvcascade'));
    for (const m of ['typescript', 'vitest']) symlinkSync(join(repo, 'node_modules', m), join(dir, 'node_modules', m));
    symlinkSync(join(repo, 'node_modules', '@types', 'node'), join(dir, 'node_modules', '@types', 'node'));
    const tsc = join(repo, 'node_modules', 'typescript', 'bin', 'tsc');
    execFileSync(process.execPath, [tsc, '-p', join(dir, 'tsconfig.json')], { stdio: 'pipe' }); // src and test type-check
    execFileSync(process.execPath, [tsc, '-p', join(dir, 'tsconfig.build.json')], { stdio: 'pipe' });
    expect(existsSync(join(dir, 'dist', 'index.js'))).toBe(true);
    // Its own test, as `npm test` runs it.
    const vitest = execFileSync(process.execPath, [join(repo, 'node_modules', 'vitest', 'vitest.mjs'), 'run'], { cwd: dir, stdio: 'pipe', encoding: 'utf8', timeout: 120_000 });
    expect(vitest).toMatch(/1 passed/);
    // The built module runs.
    const t = await testExtension(await import(join(dir, 'dist', 'index.js')));
    await t.put('/in/k', 'v');
    await t.settled();
    expect(t.get('/counts/k')).toBe('1');
    await t.stop();
    // Packed for loading: dist and package.json only, no devDependency.
    const tgz = await packFolder(dir);
    const listing = gunzipSync(Buffer.from(tgz)).toString('latin1');
    expect(listing).toContain('dist/index.js');
    expect(listing).not.toContain('node_modules/');
    expect(listing).not.toContain('src/index.ts');
  }, 180_000);

  it('refuses a folder that is not empty', async () => {
    let err = '';
    const code = await kvctl(['ext', 'init', join(repo, 'extensions')], { stdout: { write: () => {} }, stderr: { write: (s: string) => (err += s) }, env: {} });
    expect(code).not.toBe(0);
    expect(err).toMatch(/not empty/);
  });
});
