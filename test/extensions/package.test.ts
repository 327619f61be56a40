/**
 * Extension packages: unpacking refuses links, absolute and `..` paths, devices and FIFOs (each
 * named in the error, nothing written anywhere); packing a folder follows npm pack (files,
 * .npmignore) plus the production dependencies, packs file: links as copies, and refuses missing
 * dependencies, links among its own files and packages over the size limit with clear errors.
 */
import { existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar';
import { afterAll, describe, expect, it } from 'vitest';
import { PackageError, unpackPackage, UnsafePackageEntryError } from '../../src/extensions/package.js';
import { packFolder } from '../../src/extensions/pack-folder.js';

const tmp = mkdtempSync(join(tmpdir(), 'kvcascade-pkg-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
let seq = 0;
/** A fresh empty folder under the test's temporary folder. */
const fresh = (what: string): string => {
  const d = join(tmp, `${what}-${++seq}`);
  mkdirSync(d, { recursive: true });
  return d;
};

interface RawEntry {
  readonly path: string;
  readonly type?: 'File' | 'Directory' | 'SymbolicLink' | 'Link' | 'CharacterDevice' | 'BlockDevice' | 'FIFO';
  readonly linkpath?: string;
  readonly body?: string;
}

/** A gzipped tar written header by header: whatever the entries say, unchecked. */
function tgzOf(entries: readonly RawEntry[]): Uint8Array {
  const blocks: Buffer[] = [];
  for (const e of entries) {
    const body = Buffer.from(e.body ?? '');
    const header = new tar.Header({
      path: e.path,
      type: e.type ?? 'File',
      ...(e.linkpath !== undefined ? { linkpath: e.linkpath } : {}),
      size: body.length,
      mode: e.type === 'Directory' ? 0o755 : 0o644,
      uid: 0,
      gid: 0,
      mtime: new Date(0),
    });
    const block = Buffer.alloc(512);
    header.encode(block, 0);
    blocks.push(block);
    if (body.length > 0) blocks.push(body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return new Uint8Array(gzipSync(Buffer.concat(blocks)));
}

const PKG: RawEntry = { path: 'package.json', body: JSON.stringify({ name: 'evil', version: '1.0.0', main: 'index.js' }) };
const INDEX: RawEntry = { path: 'index.js', body: 'export function initialize() {}\n' };

/** Everything under `dir`, recursively (relative paths). */
function tree(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort();
}

describe('unpacking refuses unsafe entries', () => {
  const cases: { what: string; entry: RawEntry; message: RegExp; outside?: string }[] = [
    { what: 'a symbolic link to /etc/passwd', entry: { path: 'passwd', type: 'SymbolicLink', linkpath: '/etc/passwd' }, message: /"passwd".*symbolic link to "\/etc\/passwd", outside the package/ },
    { what: 'a symbolic link up and out', entry: { path: 'lib/up', type: 'SymbolicLink', linkpath: '../../../x' }, message: /"lib\/up".*symbolic link.*outside the package/ },
    { what: 'a hard link to ../x', entry: { path: 'hard', type: 'Link', linkpath: '../x' }, message: /"hard".*(hard link|'\.\.')/ },
    { what: 'a hard link to an absolute path', entry: { path: 'hard', type: 'Link', linkpath: '/etc/passwd' }, message: /"hard".*hard link to "\/etc\/passwd", outside the package/ },
    { what: 'a ../evil path', entry: { path: '../evil', body: 'pwned' }, message: /"\.\.\/evil".*'\.\.'/, outside: 'evil' },
    { what: 'a path with .. in the middle', entry: { path: 'lib/../../evil2', body: 'pwned' }, message: /"lib\/\.\.\/\.\.\/evil2".*'\.\.'/, outside: 'evil2' },
    { what: 'an absolute path', entry: { path: '/tmp/kvcascade-evil-abs', body: 'pwned' }, message: /"\/tmp\/kvcascade-evil-abs".*absolute/ },
    { what: 'a character device', entry: { path: 'null', type: 'CharacterDevice' }, message: /"null".*character device/ },
    { what: 'a block device', entry: { path: 'disk', type: 'BlockDevice' }, message: /"disk".*block device/ },
    { what: 'a FIFO', entry: { path: 'pipe', type: 'FIFO' }, message: /"pipe".*FIFO/ },
  ];
  for (const c of cases) {
    it(`refuses ${c.what}, naming it, and writes nothing`, async () => {
      const parent = fresh('unpack');
      const dest = join(parent, 'dest');
      // The unsafe entry sits between ordinary ones: nothing before it may have been written either.
      const err = await unpackPackage(tgzOf([PKG, c.entry, INDEX]), dest).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UnsafePackageEntryError);
      expect(err).toBeInstanceOf(PackageError);
      expect((err as Error).message).toMatch(c.message);
      expect((err as UnsafePackageEntryError).entry).toBe(c.entry.path);
      expect(tree(parent)).toEqual([]);
      if (c.outside) expect(existsSync(join(parent, c.outside))).toBe(false);
      expect(existsSync('/tmp/kvcascade-evil-abs')).toBe(false);
    });
  }

  it('refuses links pointing inside the package too (no links at all)', async () => {
    const dest = join(fresh('unpack'), 'dest');
    const sym = await unpackPackage(tgzOf([PKG, INDEX, { path: 'main.js', type: 'SymbolicLink', linkpath: 'index.js' }]), dest).catch((e: unknown) => e);
    expect((sym as Error).message).toMatch(/"main\.js".*symbolic link to "index\.js"; extension packages may not contain links/);
    expect((sym as Error).message).not.toMatch(/outside/);
    const hard = await unpackPackage(tgzOf([PKG, INDEX, { path: 'copy.js', type: 'Link', linkpath: 'index.js' }]), dest).catch((e: unknown) => e);
    expect((hard as Error).message).toMatch(/"copy\.js".*hard link to "index\.js"/);
    expect(existsSync(dest)).toBe(false);
  });

  it('refuses a link in an npm-packed tarball (package/ prefix) as well', async () => {
    const dest = join(fresh('unpack'), 'dest');
    const tgz = tgzOf([{ ...PKG, path: 'package/package.json' }, { path: 'package/x', type: 'SymbolicLink', linkpath: '../../etc/passwd' }]);
    await expect(unpackPackage(tgz, dest)).rejects.toThrow(/"package\/x".*symbolic link.*outside the package/);
    expect(existsSync(dest)).toBe(false);
  });

  it('a failed unpack removes what the destination held before', async () => {
    const dest = fresh('unpack');
    writeFileSync(join(dest, 'old.js'), 'old');
    await expect(unpackPackage(tgzOf([PKG, { path: '../evil', body: 'x' }]), dest)).rejects.toThrow(UnsafePackageEntryError);
    // Checked before anything is touched: an unsafe upload changes nothing on disk.
    expect(readFileSync(join(dest, 'old.js'), 'utf8')).toBe('old');
  });

  it('an extraction failing midway (a file where a folder must go) removes everything it wrote, with tar\'s reason', async () => {
    const parent = fresh('unpack');
    const dest = join(parent, 'dest');
    const many: RawEntry[] = Array.from({ length: 1500 }, (_, i) => ({ path: `node_modules/dep/f${i}.js`, body: 'x'.repeat(2000) }));
    const tgz = tgzOf([PKG, ...many, { path: 'clash', body: 'a file' }, { path: 'clash/inner.js', body: 'under a file' }, ...many.map((e) => ({ ...e, path: `node_modules/dep2/${e.path.slice(17)}` }))]);
    const err = await unpackPackage(tgz, dest).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PackageError);
    expect((err as Error).message).toMatch(/^cannot unpack: /);
    expect((err as Error).message).not.toMatch(/ENOTEMPTY/);
    expect(tree(parent)).toEqual([]);
  });

  it('unpacks plain files and folders, and an npm-packed tarball without its prefix', async () => {
    const dest = join(fresh('unpack'), 'dest');
    const info = await unpackPackage(tgzOf([{ path: 'lib/', type: 'Directory' }, PKG, INDEX, { path: 'lib/a.js', body: 'a' }]), dest);
    expect(info).toMatchObject({ name: 'evil', version: '1.0.0' });
    expect(tree(dest)).toEqual(['index.js', 'lib', 'lib/a.js', 'package.json']);
    const npm = join(fresh('unpack'), 'dest');
    await unpackPackage(tgzOf([{ ...PKG, path: 'package/package.json' }, { ...INDEX, path: 'package/index.js' }]), npm);
    expect(tree(npm)).toEqual(['index.js', 'package.json']);
  });
});

describe('packing a folder (npm pack semantics, production dependencies, links resolved)', () => {
  const writePkg = (dir: string, extra: Record<string, unknown> = {}) => {
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'packed', version: '1.0.0', type: 'module', main: 'index.js', ...extra }));
    writeFileSync(join(dir, 'index.js'), 'export function initialize() {}\n');
  };
  const dep = (dir: string, name: string, pkg: Record<string, unknown> = {}) => {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name, version: '1.0.0', ...pkg }));
    writeFileSync(join(dir, 'index.js'), `module.exports = ${JSON.stringify(name)};\n`);
  };
  const unpacked = async (tgz: Uint8Array) => {
    const dest = join(fresh('unpack'), 'dest');
    await unpackPackage(tgz, dest);
    return { dest, files: tree(dest).filter((f) => /\.(js|json)$/.test(f)) };
  };

  it('packs a file: dependency (a link) as a copy of its target, with its own dependencies: the result unpacks', async () => {
    const dir = fresh('pack');
    writePkg(dir, { dependencies: { lib: 'file:../lib' } });
    const lib = fresh('lib');
    dep(lib, 'lib', { dependencies: { inner: '1.0.0' } });
    dep(join(lib, 'node_modules', 'inner'), 'inner');
    mkdirSync(join(dir, 'node_modules'));
    symlinkSync(lib, join(dir, 'node_modules', 'lib'));
    const { files } = await unpacked(await packFolder(dir));
    expect(files).toEqual(['index.js', 'node_modules/lib/index.js', 'node_modules/lib/node_modules/inner/index.js', 'node_modules/lib/node_modules/inner/package.json', 'node_modules/lib/package.json', 'package.json']);
  });

  it('packs production dependencies only (not devDependencies, extraneous packages or node_modules/.bin), hard links as files', async () => {
    const dir = fresh('pack');
    writePkg(dir, { dependencies: { tool: '1.0.0', '@scope/x': '1.0.0' }, optionalDependencies: { absent: '1.0.0' }, devDependencies: { typescript: '5' } });
    dep(join(dir, 'node_modules', 'tool'), 'tool', { dependencies: { hoisted: '1.0.0' } });
    dep(join(dir, 'node_modules', 'hoisted'), 'hoisted');
    dep(join(dir, 'node_modules', '@scope', 'x'), '@scope/x');
    dep(join(dir, 'node_modules', 'typescript'), 'typescript');
    dep(join(dir, 'node_modules', 'extraneous'), 'extraneous');
    mkdirSync(join(dir, 'node_modules', '.bin'), { recursive: true });
    symlinkSync('../tool/index.js', join(dir, 'node_modules', '.bin', 'tool'));
    linkSync(join(dir, 'index.js'), join(dir, 'same.js'));
    writeFileSync(join(dir, 'package-lock.json'), '{}');
    writeFileSync(join(dir, '.npmrc'), 'secret=1');
    const { dest, files } = await unpacked(await packFolder(dir));
    expect(files).toEqual([
      'index.js',
      'node_modules/@scope/x/index.js',
      'node_modules/@scope/x/package.json',
      'node_modules/hoisted/index.js',
      'node_modules/hoisted/package.json',
      'node_modules/tool/index.js',
      'node_modules/tool/package.json',
      'package.json',
      'same.js',
    ]);
    expect(existsSync(join(dest, '.npmrc'))).toBe(false);
    expect(readFileSync(join(dest, 'same.js'), 'utf8')).toBe(readFileSync(join(dir, 'index.js'), 'utf8'));
  });

  it('honours the "files" list and .npmignore as npm pack does', async () => {
    const dir = fresh('pack');
    writePkg(dir, { main: 'dist/index.js', files: ['dist'] });
    mkdirSync(join(dir, 'dist'));
    mkdirSync(join(dir, 'src'));
    writeFileSync(join(dir, 'dist', 'index.js'), 'export function initialize() {}\n');
    writeFileSync(join(dir, 'dist', 'index.test.js'), '// test');
    writeFileSync(join(dir, 'src', 'index.ts'), '// source');
    writeFileSync(join(dir, 'dist', '.npmignore'), '*.test.js\n');
    expect((await unpacked(await packFolder(dir))).files).toEqual(['dist/index.js', 'package.json']);
    const ig = fresh('pack');
    writePkg(ig);
    writeFileSync(join(ig, '.npmignore'), 'secret.js\n');
    writeFileSync(join(ig, 'secret.js'), '// left out');
    expect((await unpacked(await packFolder(ig))).files).toEqual(['index.js', 'package.json']);
  });

  it('refuses a dependency that is not installed, saying to run npm install', async () => {
    const dir = fresh('pack');
    writePkg(dir, { dependencies: { 'left-pad': '1.0.0' } });
    const err = await packFolder(dir).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PackageError);
    expect((err as Error).message).toMatch(/dependencies not installed: left-pad\. Run `npm install`/);
  });

  it('refuses a package over the size limit, naming its largest parts', async () => {
    const dir = fresh('pack');
    writePkg(dir, { dependencies: { big: '1.0.0' } });
    dep(join(dir, 'node_modules', 'big'), 'big');
    writeFileSync(join(dir, 'node_modules', 'big', 'blob.bin'), Buffer.from(Array.from({ length: 20_000 }, () => Math.floor(Math.random() * 256))));
    const err = await packFolder(dir, { maxBytes: 4096 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PackageError);
    expect((err as Error).message).toMatch(/packs to .* MiB, more than the 0\.0 MiB an extension package may be\. Largest parts \(unpacked\): node_modules\/big /);
    expect((err as Error).message).toMatch(/devDependencies/);
  });

  it('refuses a symbolic link among its own files, naming it', async () => {
    const dir = fresh('pack');
    writePkg(dir);
    symlinkSync('/etc/hostname', join(dir, 'host'));
    const err = await packFolder(dir).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/contains a symbolic link: host -> \/etc\/hostname/);
  });
});
