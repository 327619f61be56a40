/**
 * Leader changes under slow fsyncs (issue 17, "Stable under growth"; docs/memory.md): three
 * in-process KvNodes on the loopback transport, over in-memory engines whose synced batches take
 * `--fsync-ms`, and now and then (`--stall-rate` of them, drawn from a seeded sequence) stall for
 * `--stall-ms` — longer than an election timeout, as the 0.5-2.7 s fsyncs seen at 100-200 k keys.
 * Puts of 1 KiB values run against the data leader for `--seconds`; the bench counts elections
 * (term changes) in both groups. It runs twice back to back: `after` as built, and `before` with
 * the driver's liveness path turned off (ShardReplica.takeLivenessMessages answering nothing, so
 * heartbeats and their responses wait for the round's fsync, as before that change), each arm
 * in a process of its own. Same seed, same stall schedule per engine.
 *
 *   node dist/bench/slow-fsync-elections.js [--seconds 30] [--fsync-ms 5] [--stall-ms 2500] [--stall-rate 0.01] [--seed 1] [--arms after,before]
 */
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { DATA_GROUP, KvNode, META_GROUP } from '../src/node/kv-node.js';
import { ShardReplica } from '../src/node/replica.js';
import { LoopbackHub } from '../src/node/transport.js';
import { MemoryEngine, type EngineBatchOptions, type EngineOp } from '../src/storage/kv-engine.js';
import { silentLogger } from '../src/log.js';
import { SeededRandom } from '../src/raft/rand.js';
import { flagInt } from './util.js';

/** A seeded generator of floats in [0, 1) (the stall schedule is the same in both arms). */
function rng(seed: number): () => number {
  const r = new SeededRandom(seed);
  return () => r.nextFloat();
}

/** An in-memory engine whose synced batches take `fsyncMs`, or `stallMs` with probability `stallRate`. */
class SlowSyncEngine extends MemoryEngine {
  stalls = 0;
  constructor(
    private readonly fsyncMs: number,
    private readonly stallMs: number,
    private readonly stallRate: number,
    private readonly next: () => number,
  ) {
    super();
  }

  override async batch(ops: readonly EngineOp[], options: EngineBatchOptions): Promise<void> {
    if (options.sync) {
      const stall = this.next() < this.stallRate;
      if (stall) this.stalls++;
      await new Promise((r) => setTimeout(r, stall ? this.stallMs : this.fsyncMs));
    }
    return super.batch(ops, options);
  }
}

interface ArmResult {
  readonly arm: string;
  readonly seconds: number;
  readonly puts: number;
  readonly putErrors: number;
  readonly stalls: number;
  /** Term changes after the start, per group (each one an election or a transfer). */
  readonly termChanges: Record<string, number>;
  /** The leaders seen in each group over the window, in order (sampled every 50 ms). */
  readonly leaderIds: Record<string, number[]>;
  /** The most frequent put failures (count × name: message). */
  readonly errors: readonly string[];
}

async function runArm(arm: 'after' | 'before', o: { seconds: number; fsyncMs: number; stallMs: number; stallRate: number; seed: number }): Promise<ArmResult> {
  const original = ShardReplica.prototype.takeLivenessMessages;
  if (arm === 'before') ShardReplica.prototype.takeLivenessMessages = () => [];
  const hub = new LoopbackHub();
  const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7500 + i}`] as [number, string]));
  const engines = [1, 2, 3].map((i) => new SlowSyncEngine(o.fsyncMs, o.stallMs, o.stallRate, rng(o.seed * 31 + i)));
  const nodes: KvNode[] = [];
  try {
    for (const id of [1, 2, 3]) {
      const node = await KvNode.open({ id, members, seed: o.seed + id, log: silentLogger(), onFatal: () => {} }, engines[id - 1]!, hub.transport(id));
      nodes.push(node);
    }
    for (const n of nodes) n.start();
    const leaderOf = (g: number): KvNode | undefined => nodes.find((n) => n.replica(g)?.isLeader);
    const settleUntil = Date.now() + 30_000;
    while (!(leaderOf(META_GROUP) && leaderOf(DATA_GROUP)) && Date.now() < settleUntil) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 3_000)); // start-up writes and the balancing transfer
    const term = (g: number): number => Math.max(...nodes.map((n) => n.replica(g)?.status().term ?? 0));
    const terms0 = { meta: term(META_GROUP), data: term(DATA_GROUP) };
    const leaders: Record<string, number[]> = { meta: [leaderOf(META_GROUP)?.id ?? 0], data: [leaderOf(DATA_GROUP)?.id ?? 0] };
    for (const e of engines) e.stalls = 0;
    const end = Date.now() + o.seconds * 1000;
    let puts = 0;
    let putErrors = 0;
    const errorKinds = new Map<string, number>();
    const value = new Uint8Array(1024).fill(7);
    const sampler = setInterval(() => {
      for (const [name, g] of [['meta', META_GROUP], ['data', DATA_GROUP]] as const) {
        const l = leaderOf(g)?.id;
        const seen = leaders[name]!;
        if (l !== undefined && seen[seen.length - 1] !== l) seen.push(l);
      }
    }, 50);
    await Promise.all(
      Array.from({ length: 16 }, async (_, w) => {
        for (let i = 0; Date.now() < end; i++) {
          const l = leaderOf(DATA_GROUP);
          if (!l) {
            await new Promise((r) => setTimeout(r, 20));
            continue;
          }
          try {
            await l.put({ key: `/k/${w}/${i}`, value }, { deadlineMs: Date.now() + 5_000 });
            puts++;
          } catch (e) {
            putErrors++;
            const msg = `${(e as Error).name}: ${(e as Error).message}`;
            errorKinds.set(msg, (errorKinds.get(msg) ?? 0) + 1);
            await new Promise((r) => setTimeout(r, 10));
          }
        }
      }),
    );
    clearInterval(sampler);
    return {
      arm,
      seconds: o.seconds,
      puts,
      putErrors,
      stalls: engines.reduce((n, e) => n + e.stalls, 0),
      termChanges: { meta: term(META_GROUP) - terms0.meta, data: term(DATA_GROUP) - terms0.data },
      leaderIds: leaders,
      errors: [...errorKinds].sort((a, b) => b[1] - a[1]).slice(0, 3).map(([m, n]) => `${n}× ${m}`),
    };
  } finally {
    for (const n of nodes) await n.stop().catch(() => {});
    ShardReplica.prototype.takeLivenessMessages = original;
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '30' },
      'fsync-ms': { type: 'string', default: '5' },
      'stall-ms': { type: 'string', default: '2500' },
      'stall-rate': { type: 'string', default: '0.01' },
      seed: { type: 'string', default: '1' },
      arms: { type: 'string', default: 'after,before' },
    },
  });
  const o = {
    seconds: flagInt('seconds', values.seconds, 1),
    fsyncMs: flagInt('fsync-ms', values['fsync-ms'], 0),
    stallMs: flagInt('stall-ms', values['stall-ms'], 0),
    stallRate: Number(values['stall-rate']),
    seed: flagInt('seed', values.seed, 0),
  };
  if (!(o.stallRate >= 0 && o.stallRate <= 1)) throw new Error(`--stall-rate must be in [0, 1], got ${values['stall-rate']}`);
  const arms = values.arms.split(',').map((a) => a.trim());
  for (const arm of arms) if (arm !== 'after' && arm !== 'before') throw new Error(`unknown arm ${arm} (after, before)`);
  if (arms.length > 1) {
    // One process per arm: nothing of one arm's nodes (timers, patched prototype) can touch the next.
    for (const arm of arms) {
      const args = process.argv.slice(2).filter((a, i, all) => a !== '--arms' && all[i - 1] !== '--arms' && !a.startsWith('--arms='));
      execFileSync(process.execPath, [process.argv[1]!, ...args, '--arms', arm], { stdio: 'inherit' });
    }
    return;
  }
  for (const arm of arms as ('after' | 'before')[]) {
    const r = await runArm(arm, o);
    process.stdout.write(
      `${r.arm.padEnd(6)} ${r.seconds} s: puts ${r.puts} (errors ${r.putErrors}), fsync stalls of ${o.stallMs} ms ${r.stalls}, ` +
        `term changes meta ${r.termChanges['meta']} data ${r.termChanges['data']}, leaders meta ${r.leaderIds['meta']!.join('>')} data ${r.leaderIds['data']!.join('>')}${r.errors.length > 0 ? `; errors: ${r.errors.join('; ')}` : ''}\n`,
    );
  }
}

main().catch((e) => {
  process.stderr.write(`slow-fsync-elections: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
