/**
 * In-process clusters (loopback transport, in-memory engines) whose nodes each run an
 * ExtensionManager (over the KvNode adapter of its ExtensionHost seam), for extension tests: one
 * data shard by default (the managers then use their node's local LambdaKv and revisions), or several (the managers get a LambdaKv and ShardRevisions routed to
 * each shard's leader among the in-process nodes, as the server layer gives them in kvd).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExtensionManager, type ExtensionManagerOptions } from '../../src/extensions/manager.js';
import { kvNodeHost } from '../../src/extensions/kv-node-host.js';
import { localLambdaKv, type LocalStore } from '../../src/extensions/local-lambda-kv.js';
import { packFolder } from '../../src/extensions/pack-folder.js';
import type { LambdaKv, ShardRevisions } from '../../src/extensions/store-access.js';
import { pino } from 'pino';
import { silentLogger, type Logger } from '../../src/log.js';
import { NotLeaderError, UnavailableError } from '../../src/node/backend.js';
import { ClusterAdmin, type ClusterProbe } from '../../src/node/cluster-admin.js';
import { KvNode, META_GROUP } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { shardOf, shardsForPrefix } from '../../src/sharding/index.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import type { KvStateMachineOptions } from '../../src/statemachine/index.js';

/** How a harness cluster is built. */
export interface ExtClusterOptions {
  /** Shards of the default pool (default 1). */
  readonly shards?: number;
  /** Give the managers LambdaKv and ShardRevisions routed across the nodes (default: when shards > 1). */
  readonly routed?: boolean;
  /** More options for the manager of node `id` (its metrics registry, fault limits...). */
  readonly manager?: (id: number) => Partial<ExtensionManagerOptions>;
  /** State machine options of every replica (a short history window, for tests of compaction). */
  readonly stateMachine?: KvStateMachineOptions;
  /** Keep the nodes' and managers' info-level log lines in memory (`ExtCluster.logLines`), for failure diagnostics. */
  readonly captureLogs?: boolean;
}

/** How many captured log lines an {@link ExtCluster} keeps (the newest). */
const CAPTURED_LINES = 20_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A small cluster with extension managers. */
export class ExtCluster {
  readonly nodes: KvNode[] = [];
  readonly managers: ExtensionManager[] = [];
  readonly hub = new LoopbackHub();
  private readonly dir = mkdtempSync(join(tmpdir(), 'kvcascade-ext-'));
  private readonly admins: ClusterAdmin[] = [];
  /** With `captureLogs`: the newest log lines of the nodes and managers (JSON, oldest first). */
  readonly logLines: string[] = [];

  /** A logger for `who`: capturing into {@link logLines} when asked, silent otherwise. */
  private logger(capture: boolean, who: string): Logger {
    if (!capture) return silentLogger();
    return pino({ level: 'info', base: { who } }, {
      write: (line: string) => {
        this.logLines.push(line.trimEnd());
        if (this.logLines.length > CAPTURED_LINES) this.logLines.splice(0, this.logLines.length - CAPTURED_LINES);
      },
    });
  }

  static async start(n = 3, opts: ExtClusterOptions = {}): Promise<ExtCluster> {
    const c = new ExtCluster();
    const shards = opts.shards ?? 1;
    const routed = opts.routed ?? shards > 1;
    const members = new Map(Array.from({ length: n }, (_, i) => [i + 1, `127.0.0.1:${17000 + i + 1}`] as [number, string]));
    for (let id = 1; id <= n; id++) {
      // 10 ms ticks, elections after 400-800 ms: quick, yet a test machine busy spawning extension
      // processes (CI runs test files in parallel on 2 cores) does not change leaders by accident;
      // tests that want a leader change make one (hub.blocked).
      const node = await KvNode.open({ id, members, tickMs: 10, electionTicks: 40, log: c.logger(opts.captureLogs ?? false, `node${id}`), onFatal: () => {}, defaultPool: { shards }, ...(opts.stateMachine ? { stateMachine: opts.stateMachine } : {}) }, new MemoryEngine(), c.hub.transport(id));
      node.start();
      c.nodes.push(node);
    }
    for (const node of c.nodes) {
      const m = new ExtensionManager(kvNodeHost(node), {
        dataDir: c.dataDir(node),
        log: c.logger(opts.captureLogs ?? false, `manager${node.id}`),
        workerHeapMb: 64,
        ...(routed ? { lambdaKv: c.routedKv(node), shardRevisions: c.revisions(node) } : { lambdaKv: localLambdaKv(node) }),
        ...(opts.manager?.(node.id) ?? {}),
      });
      m.start();
      c.managers.push(m);
    }
    await c.ready();
    return c;
  }

  /** Waits until every node routes with the initialised map and every data shard has a leader that applied its descriptor. */
  async ready(timeoutMs = 20_000): Promise<void> {
    await this.leader(META_GROUP, [], timeoutMs);
    await this.until(async () => (this.nodes.every((n) => n.shardMap().epoch > 0) ? true : undefined), timeoutMs);
    for (const s of this.nodes[0]!.shardMap().shards) {
      await this.until(async () => ((await this.leader(s.group, [], timeoutMs)).replica(s.group)?.descriptor ? true : undefined), timeoutMs);
    }
  }

  /** The node leading `group` (waits for one); with several claimants, the one of the highest term. */
  async leader(group: number, except: readonly KvNode[] = [], timeoutMs = 10_000): Promise<KvNode> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const l = this.leaderNow(group, except);
      if (l) return l;
      await sleep(10);
    }
    throw new Error(`no leader for group ${group}`);
  }

  private leaderNow(group: number, except: readonly KvNode[] = [], from?: KvNode): KvNode | undefined {
    let best: KvNode | undefined;
    for (const n of this.nodes) {
      if (except.includes(n) || (from && n !== from && this.hub.blocked.has(`${from.id}>${n.id}`))) continue;
      const r = n.replica(group);
      if (!r?.isLeader) continue;
      if (!best || r.term > best.replica(group)!.term) best = n;
    }
    return best;
  }

  /** The group of `key` in the current map. */
  groupOf(key: string): number {
    return shardOf(this.nodes[0]!.shardMap(), key).group;
  }

  /** The groups `prefix` spans in the current map. */
  groupsOf(prefix: string): number[] {
    return shardsForPrefix(this.nodes[0]!.shardMap(), prefix).map((s) => s.group);
  }

  /** The data directory `node`'s manager was given. */
  dataDir(node: KvNode): string {
    return join(this.dir, `node-${node.id}`);
  }

  /** The manager running on `node`. */
  managerOf(node: KvNode): ExtensionManager {
    return this.managers[this.nodes.indexOf(node)]!;
  }

  /** The manager of the metadata leader. */
  async metaManager(): Promise<ExtensionManager> {
    return this.managerOf(await this.leader(META_GROUP));
  }

  /**
   * Packs and loads an extension folder cluster-wide. `load` answers once the metadata leader
   * runs the new generation; when it does, this also waits (a while) for every other node to
   * settle on it, so that the node delivering a shard runs it too.
   */
  async load(folder: string, opts: Parameters<ExtensionManager['load']>[1] = {}) {
    const tgz = await packFolder(folder);
    const status = await (await this.metaManager()).load(tgz, opts);
    if (status.state === 'running') {
      const settled = () =>
        this.managers.every((m) => {
          const s = m.statuses().find((x) => x.name === status.name);
          return s !== undefined && s.generation >= status.generation && s.state !== 'loading';
        });
      await this.until(async () => (settled() ? true : undefined)).catch(() => {});
    }
    return status;
  }

  /** Puts through the leader of the key's shard (again when it was not the leader any more); resolves with the new version. */
  async put(key: string, value: string): Promise<number> {
    return this.retrying(async () => {
      const l = await this.leader(this.groupOf(key));
      const r = await l.put({ key, value: new TextEncoder().encode(value) }, { deadlineMs: Date.now() + 5000 });
      return r.version;
    });
  }

  /** Deletes through the leader of the key's shard. */
  async del(key: string): Promise<void> {
    await this.retrying(async () => {
      const l = await this.leader(this.groupOf(key));
      await l.delete({ key }, { deadlineMs: Date.now() + 5000 });
    });
  }

  /** Reads (linearizable) through the leader of the key's shard. */
  async get(key: string): Promise<string | undefined> {
    return this.retrying(async () => {
      const l = await this.leader(this.groupOf(key));
      const g = await l.get({ key, consistency: 'linearizable' }, { deadlineMs: Date.now() + 5000 });
      return g.found ? new TextDecoder().decode(g.value) : undefined;
    });
  }

  /** Lists keys under a prefix (every shard it spans, merged in key order) through each shard's leader. */
  async list(prefix: string): Promise<{ key: string; value: string }[]> {
    const out: { key: string; value: string }[] = [];
    for (const g of this.groupsOf(prefix)) {
      const page = await this.retrying(async () => {
        const l = await this.leader(g);
        return l.list({ prefix, shard: g, keysOnly: false, consistency: 'linearizable', limit: 10_000 }, { deadlineMs: Date.now() + 5000 });
      });
      out.push(...page.items.map((i) => ({ key: i.key, value: new TextDecoder().decode(i.value) })));
    }
    return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /**
   * Runs `fn` again while it fails with NotLeaderError or UnavailableError (leadership moving
   * between finding the leader and asking it), for up to `timeoutMs`.
   */
  private async retrying<T>(fn: () => Promise<T>, timeoutMs = 10_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await fn();
      } catch (e) {
        if (!(e instanceof NotLeaderError || e instanceof UnavailableError) || Date.now() >= deadline) throw e;
        await sleep(20);
      }
    }
  }

  /** Polls until `check` returns a value (not undefined) or the deadline passes. */
  async until<T>(check: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const v = await check();
      if (v !== undefined) return v;
      if (Date.now() > deadline) throw new Error('condition not met in time');
      await sleep(20);
    }
  }

  /**
   * Creates a pool through a ClusterAdmin on the metadata leader (an in-process probe reads the
   * nodes' statuses and counts keys on the shards' leaders); resolves once it is active.
   */
  async createPool(name: string, shards: number): Promise<void> {
    const probe: ClusterProbe = {
      statuses: async () => Promise.all(this.nodes.map((n) => n.status())),
      countKeys: async (group, prefix, limit) => {
        // From the records, as a node lists user keys (its heap holds reserved keys only: indexDropCold, the default).
        const r = (await this.leader(group)).replica(group)!;
        const page = await r.listFromEngine(prefix, { keysOnly: true, limit: Math.max(1, limit) + 1 });
        const n = page.items.filter((i) => i.key === prefix || i.key.startsWith(`${prefix}/`)).length;
        return Math.min(n, limit);
      },
    };
    const admin = new ClusterAdmin(await this.leader(META_GROUP), probe, silentLogger());
    this.admins.push(admin);
    await admin.createPool({ name, shards }, Date.now() + 30_000);
  }

  /**
   * A store for `self`'s lambdas: each call goes to the node leading the key's shard (itself
   * when it leads it; else the leader of the highest term it can reach), retried on
   * NotLeaderError and unavailability until its deadline, as kvd's routed LambdaKv does.
   */
  private routedKv(self: KvNode): LambdaKv {
    const at = async <T>(group: number, deadlineMs: number, fn: (n: KvNode) => Promise<T>): Promise<T> => {
      for (;;) {
        const n = self.replica(group)?.isLeader ? self : this.leaderNow(group, [], self);
        try {
          if (!n) throw new NotLeaderError(0, undefined, group);
          return await fn(n);
        } catch (e) {
          if (!(e instanceof NotLeaderError || e instanceof UnavailableError) || Date.now() + 20 >= deadlineMs) throw e;
          await sleep(20);
        }
      }
    };
    const byKey = (key: string) => this.groupOf(key);
    const store: LocalStore = {
      get: (req, o) => at(byKey(req.key), o.deadlineMs, (n) => n.get(req, o)),
      put: (req, o) => at(byKey(req.key), o.deadlineMs, (n) => n.put(req, o)),
      delete: (req, o) => at(byKey(req.key), o.deadlineMs, (n) => n.delete(req, o)),
      trigger: (req, o) => at(byKey(req.key), o.deadlineMs, (n) => n.trigger(req, o)),
      txn: (req, o) => at(byKey(req.compares[0]?.key ?? req.writes[0]!.key), o.deadlineMs, (n) => n.txn(req, o)),
      list: (req, o) => at(req.shard ?? this.groupsOf(req.prefix)[0]!, o.deadlineMs, (n) => n.list(req, o)),
      shardsForPrefix: (prefix) => self.shardsForPrefix(prefix),
    };
    return localLambdaKv(store);
  }

  /** Every data shard's revision as its leader (reachable from `self`) reports it. */
  private revisions(self: KvNode): ShardRevisions {
    return async () => {
      const out = new Map<number, number>();
      for (const s of self.shardMap().shards) {
        const l = this.leaderNow(s.group, [], self);
        if (l) out.set(s.group, l.replica(s.group)!.revision);
      }
      return out;
    };
  }

  async stop(): Promise<void> {
    for (const a of this.admins) a.stop();
    for (const m of this.managers) await m.stop();
    for (const n of this.nodes) await n.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
