/** In-process three-node clusters for node tests: nodes opened on a loopback hub and stopped after each test, and waits for a group's leader and for its replicas to converge. */
import { afterEach } from 'vitest';
import { DATA_GROUP, KvNode, type NodeOptions } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine, type MemoryEngineOptions } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The nodes a test opened through {@link nodeTrio}. */
export interface NodeTrio {
  /** Opens node `id` on `engine`, its peers reached through `hub`. */
  open(id: number, engine: MemoryEngine, hub: LoopbackHub, extra: Partial<NodeOptions>): Promise<KvNode>;
  /** Stops tracking `node` (the test stopped it itself). */
  forget(node: KvNode): void;
  /** Stops every node opened and not forgotten (also done after each test). */
  stopAll(): Promise<void>;
  /**
   * Opens and starts nodes 1..3 on fresh MemoryEngines (`engine` options) and a new hub, waits
   * for the data group's leader `l`, writes one key through it and waits for the replicas to
   * converge. `f` is a follower, `fi` its position in `nodes`.
   */
  settled(extra: Partial<NodeOptions>, engine?: MemoryEngineOptions): Promise<SettledTrio>;
}

/** A started three-node cluster with one write applied everywhere (see {@link NodeTrio.settled}). */
export interface SettledTrio {
  readonly hub: LoopbackHub;
  readonly engines: MemoryEngine[];
  readonly nodes: KvNode[];
  readonly l: KvNode;
  readonly f: KvNode;
  readonly fi: number;
}

/**
 * Opens nodes 1..3 of a cluster whose members are `127.0.0.1:<basePort + id>` (addresses only: the
 * loopback hub carries the traffic) with 5 ms ticks, and stops every node it opened after each test.
 */
export function nodeTrio(basePort: number): NodeTrio {
  let open: KvNode[] = [];
  const trio: NodeTrio = {
    open: async (id, engine, hub, extra) => {
      const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${basePort + i}`] as [number, string]));
      const node = await KvNode.open({ id, members, tickMs: 5, log: silentLogger(), onFatal: () => {}, ...extra }, engine, hub.transport(id));
      open.push(node);
      return node;
    },
    forget: (node) => {
      open = open.filter((n) => n !== node);
    },
    stopAll: async () => {
      for (const n of open) await n.stop().catch(() => {});
      open = [];
    },
    settled: async (extra, engineOpts) => {
      const hub = new LoopbackHub();
      const engines = [1, 2, 3].map(() => new MemoryEngine(engineOpts));
      const nodes = await Promise.all(engines.map((e, i) => trio.open(i + 1, e, hub, extra)));
      for (const n of nodes) n.start();
      // Where the map wants it: a first leader elected elsewhere hands leadership over after 2 s
      // (the shard reconciler), which would move it in the middle of a test that just began.
      const l = await preferredLeaderOf(nodes);
      const f = nodes.find((n) => n !== l)!;
      await l.put({ key: '/k/first', value: new TextEncoder().encode('1') }, { deadlineMs: Date.now() + 5000 });
      await converged(nodes);
      return { hub, engines, nodes, l, f, fi: nodes.indexOf(f) };
    },
  };
  afterEach(() => trio.stopAll());
  return trio;
}

/**
 * The node that leads `group` (the data group by default) once it is the leader the cluster map
 * prefers for it (or any leader, when the map prefers none): the shard reconciler hands
 * leadership to the preferred node after a first leader elected elsewhere has led for
 * MIN_LEADERSHIP_BEFORE_TRANSFER_MS, so a test that starts from another leader loses it midway
 * when it runs longer than that (as under load).
 */
export async function preferredLeaderOf(nodes: readonly KvNode[], group = DATA_GROUP): Promise<KvNode> {
  for (;;) {
    const l = await leaderOf(nodes, group);
    const preferred = l.shardMap().shards.find((s) => s.group === group)?.preferredLeader ?? 0;
    if (preferred === 0 || l.id === preferred) return l;
    await sleep(5);
  }
}

/** The node that leads `group` (the data group by default), once one does. */
export async function leaderOf(nodes: readonly KvNode[], group = DATA_GROUP): Promise<KvNode> {
  for (;;) {
    const l = nodes.find((n) => n.replica(group)?.isLeader);
    if (l) return l;
    await sleep(5);
  }
}

/**
 * Resolves once, in each of `groups` (the data group by default), every replica has applied the
 * same commit index and none is installing a snapshot; throws after `timeoutMs`.
 */
export async function converged(nodes: readonly KvNode[], opts: { groups?: readonly number[]; timeoutMs?: number } = {}): Promise<void> {
  const until = Date.now() + (opts.timeoutMs ?? 20_000);
  for (;;) {
    const done = (opts.groups ?? [DATA_GROUP]).every((g) => {
      const rs = nodes.map((n) => n.replica(g)!);
      const commit = rs[0]!.status().commit;
      return rs.every((r) => r.appliedIndex === commit && r.status().commit === commit && !r.installing && !r.installingStreamed);
    });
    if (done) return;
    if (Date.now() > until) throw new Error('replicas did not converge');
    await sleep(10);
  }
}

/**
 * A mixed write load on the data group's leader `l`, then a compaction keeping the last 30
 * revisions: 4 writers of `rounds` writes over 9 keys each (puts of `valueBytes`-byte values,
 * every 11th a delete, every 13th a trigger); odd writers use client sessions named
 * `<sessionPrefix>-<tag>-writer-<w>`, so snapshots carry session tables too.
 */
export async function mixedWorkload(l: KvNode, rounds: number, tag: string, valueBytes: number, sessionPrefix: string): Promise<void> {
  const enc = (s: string) => new TextEncoder().encode(s);
  const deadline = () => ({ deadlineMs: Date.now() + 5000 });
  await Promise.all(
    Array.from({ length: 4 }, async (_, w) => {
      const session = w % 2 === 1 ? `${sessionPrefix}-${tag}-writer-${w}` : undefined;
      for (let i = 0; i < rounds; i++) {
        const key = `/k/${w}/${i % 9}`;
        const o = { ...deadline(), ...(session ? { session: { id: session, seq: i + 1, ackedBelow: i } } : {}) };
        if (i % 11 === 10) await l.delete({ key }, o);
        else if (i % 13 === 12) await l.trigger({ key, value: enc(`t${i}`) }, o);
        else await l.put({ key, value: enc(`${tag}:${w}:${i}:${'v'.repeat(valueBytes)}`) }, o);
      }
    }),
  );
  const r = l.replica(DATA_GROUP)!;
  await l.execute(DATA_GROUP, { type: 'compact', revision: Math.max(0, r.revision - 30) }, deadline(), 'system');
}
