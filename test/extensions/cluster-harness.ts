/** Three in-process nodes (loopback transport, in-memory engines) each running an ExtensionManager, for extension tests. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExtensionManager } from '../../src/extensions/manager.js';
import { packFolder } from '../../src/extensions/package.js';
import { silentLogger } from '../../src/log.js';
import { DATA_GROUP, KvNode, META_GROUP } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';

/** A small cluster with extension managers. */
export class ExtCluster {
  readonly nodes: KvNode[] = [];
  readonly managers: ExtensionManager[] = [];
  readonly hub = new LoopbackHub();
  private readonly dir = mkdtempSync(join(tmpdir(), 'kvcascade-ext-'));

  static async start(n = 3): Promise<ExtCluster> {
    const c = new ExtCluster();
    const members = new Map(Array.from({ length: n }, (_, i) => [i + 1, `node-${i + 1}`] as [number, string]));
    for (let id = 1; id <= n; id++) {
      const node = await KvNode.open({ id, members, tickMs: 10, log: silentLogger(), onFatal: () => {} }, new MemoryEngine(), c.hub.transport(id));
      node.start();
      const m = new ExtensionManager(node, { dataDir: join(c.dir, `node-${id}`), log: silentLogger(), workerHeapMb: 64 });
      m.start();
      c.nodes.push(node);
      c.managers.push(m);
    }
    await c.leader(DATA_GROUP);
    await c.leader(META_GROUP);
    return c;
  }

  /** The node leading `group` (waits for one). */
  async leader(group: number, except: readonly KvNode[] = []): Promise<KvNode> {
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const l = this.nodes.find((n) => !except.includes(n) && n.replica(group)?.isLeader);
      if (l) return l;
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error(`no leader for group ${group}`);
  }

  /** The manager of the metadata leader. */
  async metaManager(): Promise<ExtensionManager> {
    const l = await this.leader(META_GROUP);
    return this.managers[this.nodes.indexOf(l)]!;
  }

  /** Packs and loads an extension folder cluster-wide. */
  async load(folder: string, opts: { name?: string; config?: Record<string, unknown> } = {}) {
    const tgz = await packFolder(folder);
    return (await this.metaManager()).load(tgz, opts);
  }

  /** Puts through the data leader. */
  async put(key: string, value: string): Promise<number> {
    const l = await this.leader(DATA_GROUP);
    const r = await l.put({ key, value: new TextEncoder().encode(value) }, { deadlineMs: Date.now() + 5000 });
    return r.version;
  }

  /** Reads (linearizable) through the data leader. */
  async get(key: string): Promise<string | undefined> {
    const l = await this.leader(DATA_GROUP);
    const g = await l.get({ key, consistency: 'linearizable' }, { deadlineMs: Date.now() + 5000 });
    return g.found ? new TextDecoder().decode(g.value) : undefined;
  }

  /** Lists keys under a prefix through the data leader. */
  async list(prefix: string): Promise<{ key: string; value: string }[]> {
    const l = await this.leader(DATA_GROUP);
    const page = await l.list({ prefix, keysOnly: false, consistency: 'linearizable', limit: 10_000 }, { deadlineMs: Date.now() + 5000 });
    return page.items.map((i) => ({ key: i.key, value: new TextDecoder().decode(i.value) }));
  }

  /** Polls until `check` returns a value (not undefined) or the deadline passes. */
  async until<T>(check: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await check();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error('condition not met in time');
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async stop(): Promise<void> {
    for (const m of this.managers) await m.stop();
    for (const n of this.nodes) await n.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
