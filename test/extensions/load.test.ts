/**
 * Loading extensions on an in-process 3-node cluster: a refused package leaves nothing staged
 * or registered; loads of one name never mix their chunks, whether they run on one node (one at
 * a time) or in two loaders (the generation is claimed first: a load while another loader's is
 * in progress fails with LoadConflictError, a load whose claim was taken over does not commit).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { kvNodeHost } from '../../src/extensions/kv-node-host.js';
import { localLambdaKv } from '../../src/extensions/local-lambda-kv.js';
import { ExtensionManager, LoadConflictError } from '../../src/extensions/manager.js';
import { PackageError, UnsafePackageEntryError } from '../../src/extensions/package.js';
import { packFolder } from '../../src/extensions/pack-folder.js';
import { chunkGeneration, chunkKey, claimKey, decodeClaim, decodeRecord, encodeClaim, metaKey, packagePrefix } from '../../src/extensions/registry.js';
import { silentLogger } from '../../src/log.js';
import { META_GROUP, type KvNode } from '../../src/node/kv-node.js';
import { ExtCluster } from './cluster-harness.js';

let c: ExtCluster;
const tmp = mkdtempSync(join(tmpdir(), 'kvcascade-load-'));
let seq = 0;

beforeAll(async () => {
  c = await ExtCluster.start();
});

afterAll(async () => {
  await c?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

/** A packed extension `name` without watches; `tag` makes its bytes differ; `blobKb` of random bytes make it span several chunks. */
async function pkg(name: string, tag: string, blobKb = 0): Promise<Uint8Array> {
  const dir = join(tmp, `${name}-${tag}-${++seq}`);
  mkdirSync(dir);
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name, version: '1.0.0', type: 'module', main: 'index.js' }));
  writeFileSync(join(dir, 'index.js'), `export const tag = ${JSON.stringify(tag)};\nexport function initialize() {}\n`);
  if (blobKb > 0) writeFileSync(join(dir, 'blob.bin'), randomBytes(blobKb * 1024));
  return packFolder(dir);
}

/** What the metadata group (read on `node`) holds for `name`: the record, its reassembled package, and the generations that have chunks. */
function registered(node: KvNode, name: string) {
  const sm = node.replica(META_GROUP)!.internalsForTests().sm;
  const got = sm.get(metaKey(name));
  const record = got ? decodeRecord(got.value) : undefined;
  const bytes = record ? Buffer.concat(Array.from({ length: record.chunks }, (_, i) => sm.get(chunkKey(name, record.generation, i))?.value ?? new Uint8Array())) : undefined;
  const generations = [...new Set(sm.list(packagePrefix(name), { keysOnly: true, limit: 10_000 }).items.map((i) => chunkGeneration(i.key)))];
  return { record, bytes, generations };
}

/** The staging folders left on every node. */
function staged(): string[] {
  return c.nodes.flatMap((n) => {
    const dir = join(c.dataDir(n), 'extensions', '.staging');
    return existsSync(dir) ? readdirSync(dir).map((f) => `${n.id}:${f}`) : [];
  });
}

/**
 * Holds `node`'s writes of package chunks of `name` until `release` is called (`reached`
 * resolves once the first one is held). `restore` puts execute back.
 */
function holdChunkWrites(node: KvNode, name: string) {
  const original = node.execute;
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let reached!: () => void;
  const held = new Promise<void>((r) => (reached = r));
  node.execute = async function (this: KvNode, ...args: Parameters<KvNode['execute']>) {
    const cmd = args[1];
    if (cmd.type === 'put' && cmd.key.startsWith(packagePrefix(name))) {
      reached();
      await gate;
    }
    return original.apply(this, args);
  } as KvNode['execute'];
  return { held, release, restore: () => (node.execute = original) };
}

/** A second manager on `node` (another loader, as a previous process of the node would be), with its own data directory; stopped by the caller. */
function secondManager(node: KvNode): ExtensionManager {
  const m = new ExtensionManager(kvNodeHost(node), { dataDir: join(tmp, `second-${++seq}`), log: silentLogger(), workerHeapMb: 64, lambdaKv: localLambdaKv(node) });
  m.start();
  return m;
}

/** A gzipped tar of a package.json and a symbolic link to /etc/passwd. */
function withSymlink(): Uint8Array {
  const blocks: Buffer[] = [];
  const add = (path: string, type: 'File' | 'SymbolicLink', body = '', linkpath?: string) => {
    const block = Buffer.alloc(512);
    new tar.Header({ path, type, size: body.length, mode: 0o644, mtime: new Date(0), ...(linkpath ? { linkpath } : {}) }).encode(block, 0);
    blocks.push(block);
    if (body) blocks.push(Buffer.from(body), Buffer.alloc((512 - (body.length % 512)) % 512));
  };
  add('package.json', 'File', JSON.stringify({ name: 'sneaky', version: '1.0.0' }));
  add('index.js', 'SymbolicLink', '', '/etc/passwd');
  blocks.push(Buffer.alloc(1024));
  return new Uint8Array(gzipSync(Buffer.concat(blocks)));
}

describe('a refused load', () => {
  it('a package holding a link is refused naming it: nothing registered, nothing staged', async () => {
    const err = await (await c.metaManager()).load(withSymlink(), {}).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnsafePackageEntryError);
    expect((err as PackageError).code).toBe('UNSAFE_ENTRY');
    expect((err as Error).message).toMatch(/"index\.js".*symbolic link to "\/etc\/passwd", outside the package/);
    expect((await c.metaManager()).records().map((r) => r.name)).not.toContain('sneaky');
    expect(staged()).toEqual([]);
  });

  it('a module that fails its test load leaves no staging folder either', async () => {
    await expect((await c.metaManager()).load(await packFolder('test/extensions/fixtures/no-initialize'), {})).rejects.toThrow(/initialize/);
    expect(staged()).toEqual([]);
  });
});

describe('unpacked folders on the nodes', () => {
  it('only the running generation stays unpacked; an unload removes it', async () => {
    const m = await c.metaManager();
    await m.load(await pkg('pruned', 'a'), {});
    const st = await m.load(await pkg('pruned', 'b'), {});
    const unpacked = () => c.nodes.flatMap((n) => {
      const dir = join(c.dataDir(n), 'extensions', 'pruned');
      return existsSync(dir) ? readdirSync(dir).map((g) => `${n.id}:${g}`) : [];
    });
    expect(await c.until(async () => (unpacked().length === 3 ? unpacked().sort() : undefined))).toEqual([1, 2, 3].map((n) => `${n}:${st.generation}`));
    expect(await m.unload('pruned', { purge: true })).toBe(true);
    expect(await c.until(async () => (unpacked().length === 0 ? true : undefined))).toBe(true);
  });
});

describe('concurrent loads of one name', () => {
  it('on one node run one after the other: each its own generation, the later one registered, one consistent package', async () => {
    const m = await c.metaManager();
    const leader = await c.leader(META_GROUP);
    const a = await pkg('same-node', 'a', 1500);
    const b = await pkg('same-node', 'b', 2000);
    const [sa, sb] = await Promise.all([m.load(a, {}), m.load(b, {})]);
    expect([sa.state, sb.state]).toEqual(['running', 'running']);
    expect(Math.abs(sa.generation - sb.generation)).toBe(1);
    const last = sa.generation > sb.generation ? a : b;
    const r = registered(leader, 'same-node');
    expect(r.record!.generation).toBe(Math.max(sa.generation, sb.generation));
    expect(r.bytes!.equals(Buffer.from(last))).toBe(true);
    expect(r.generations).toEqual([r.record!.generation]);
    expect(decodeClaim(leader.replica(META_GROUP)!.readValue(claimKey('same-node'))!.value)).toMatchObject({ generation: r.record!.generation, released: true });
  });

  it('with two loaders on one node (another manager): a load while the other holds the claim fails with LoadConflictError; the first registers its own bytes', async () => {
    const leader = await c.leader(META_GROUP);
    const m1 = c.managerOf(leader);
    const m2 = secondManager(leader);
    const hold = holdChunkWrites(leader, 'two-nodes');
    try {
      const a = await pkg('two-nodes', 'a', 1000);
      const b = await pkg('two-nodes', 'b', 1000);
      const first = m1.load(a, {});
      await hold.held;
      const second = await m2.load(b, {}).catch((e: unknown) => e);
      expect(second).toBeInstanceOf(LoadConflictError);
      expect((second as Error).message).toMatch(/another load of two-nodes is in progress \(generation 1, on node \d\)/);
      // Not registered yet: an unload meanwhile has nothing to unload.
      await expect(m2.unload('two-nodes')).resolves.toBe(false);
      hold.release();
      const st = await first;
      expect(st.state).toBe('running');
      const r = registered(leader, 'two-nodes');
      expect(r.bytes!.equals(Buffer.from(a))).toBe(true);
      expect(r.generations).toEqual([1]);
      // Reloading while a load holds the claim: the unload of the registered generation is refused too.
      const hold2 = holdChunkWrites(leader, 'two-nodes');
      const third = m1.load(b, {});
      await hold2.held;
      await expect(m2.unload('two-nodes')).rejects.toThrow(LoadConflictError);
      hold2.release();
      hold2.restore();
      expect((await third).generation).toBe(2);
      expect(registered(leader, 'two-nodes').bytes!.equals(Buffer.from(b))).toBe(true);
      expect(await m2.unload('two-nodes')).toBe(true);
      expect(registered(leader, 'two-nodes')).toMatchObject({ record: undefined, generations: [] });
    } finally {
      hold.release();
      hold.restore();
      await m2.stop();
    }
  });

  it('a load whose claim was taken over does not commit and deletes its chunks; claims of other nodes are taken over at once, of this node\'s previous process once expired', async () => {
    const leader = await c.leader(META_GROUP);
    const m = c.managerOf(leader);
    const v1 = await pkg('taken-over', 'v1');
    expect((await m.load(v1, {})).generation).toBe(1);
    const hold = holdChunkWrites(leader, 'taken-over');
    const putClaim = (claim: { generation: number; node: number; loader: string; expiresAtMs: number }) =>
      leader.execute(META_GROUP, { type: 'put', key: claimKey('taken-over'), value: encodeClaim({ ...claim, released: false }) }, { deadlineMs: Date.now() + 5000 }, 'system');
    try {
      const stale = m.load(await pkg('taken-over', 'v2', 1000), {}).catch((e: unknown) => e);
      await hold.held;
      // Another node's load takes the claim over (as after a change of metadata leader), for generation 3.
      await putClaim({ generation: 3, node: 9, loader: 'elsewhere', expiresAtMs: Date.now() + 60_000 });
      hold.release();
      const err = await stale;
      expect(err).toBeInstanceOf(LoadConflictError);
      expect((err as Error).message).toMatch(/lost its claim on generation 2/);
      let r = registered(leader, 'taken-over');
      expect(r.record!.generation).toBe(1);
      expect(r.bytes!.equals(Buffer.from(v1))).toBe(true);
      expect(r.generations).toEqual([1]);
      // That claim is another node's: this node leads the metadata group, so that load is dead. Taken over at once.
      const v3 = await pkg('taken-over', 'v3');
      expect(await m.load(v3, {})).toMatchObject({ state: 'running', generation: 4 });
      r = registered(leader, 'taken-over');
      expect(r.bytes!.equals(Buffer.from(v3))).toBe(true);
      expect(r.generations).toEqual([4]);
      // A claim of this node's previous process holds until it expires: loads and unloads are refused, naming it ...
      await putClaim({ generation: 5, node: leader.id, loader: 'previous-process', expiresAtMs: Date.now() + 60_000 });
      await expect(m.load(await pkg('taken-over', 'v5'), {})).rejects.toThrow(new RegExp(`another load of taken-over is in progress \\(generation 5, on node ${leader.id}\\)`));
      await expect(m.unload('taken-over')).rejects.toThrow(LoadConflictError);
      // ... and, once expired, is taken over by the next load, with a later generation.
      await putClaim({ generation: 5, node: leader.id, loader: 'previous-process', expiresAtMs: Date.now() - 1 });
      const v6 = await pkg('taken-over', 'v6');
      expect(await m.load(v6, {})).toMatchObject({ state: 'running', generation: 6 });
      r = registered(leader, 'taken-over');
      expect(r.bytes!.equals(Buffer.from(v6))).toBe(true);
      expect(r.generations).toEqual([6]);
    } finally {
      hold.release();
      hold.restore();
    }
  });

  it('two loaders at once, whatever the interleaving: one consistent package, every load either registered or refused clearly', async () => {
    const leader = await c.leader(META_GROUP);
    const m2 = secondManager(leader);
    try {
      for (let round = 0; round < 3; round++) {
        const a = await pkg('racing', `a${round}`, 1600);
        const b = await pkg('racing', `b${round}`, 800);
        const outcomes = await Promise.all([c.managerOf(leader).load(a, {}), m2.load(b, {})].map((p) => p.then((s) => s, (e: unknown) => e)));
        for (const o of outcomes) {
          if (o instanceof Error) expect(o).toBeInstanceOf(LoadConflictError);
          else expect(o).toMatchObject({ state: 'running' });
        }
        expect(outcomes.some((o) => !(o instanceof Error))).toBe(true);
        const r = registered(leader, 'racing');
        const winner = [a, b].find((x) => r.bytes!.equals(Buffer.from(x)));
        expect(winner).toBeDefined();
        expect(r.generations).toEqual([r.record!.generation]);
      }
    } finally {
      await m2.stop();
    }
  });
});

describe('statuses while a load is under way', () => {
  it('every node lists a registered generation that has not loaded there yet as loading, never leaving it out (and running once it has)', async () => {
    // In-process on the node's thread, initialize waits for this gate (the leader's validation
    // run happens in a worker, where the gate is not set, so it passes at once).
    const gate = globalThis as { __kvcascadeLoadGate?: Promise<void> };
    let release!: () => void;
    gate.__kvcascadeLoadGate = new Promise<void>((r) => (release = r));
    const dir = join(tmp, 'gated');
    mkdirSync(dir);
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'gated', version: '1.0.0', type: 'module', main: 'index.js' }));
    writeFileSync(join(dir, 'index.js'), 'export async function initialize() {\n  await globalThis.__kvcascadeLoadGate;\n}\n');
    const loading = (await c.metaManager()).load(await packFolder(dir), { isolation: 'in-process' });
    const of = (m: ExtensionManager) => m.statuses().find((s) => s.name === 'gated');
    try {
      await c.until(async () => (c.managers.every((m) => of(m) !== undefined) ? true : undefined));
      for (const m of c.managers) expect(of(m)).toMatchObject({ state: 'loading', generation: 1, delivering: false, error: expect.stringMatching(/generation 1 has not loaded here yet/) });
    } finally {
      release();
    }
    expect((await loading).state).toBe('running');
    await c.until(async () => (c.managers.every((m) => of(m)?.state === 'running') ? true : undefined));
    expect(await (await c.metaManager()).unload('gated')).toBe(true);
    delete gate.__kvcascadeLoadGate;
  });
});
