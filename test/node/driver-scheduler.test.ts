/**
 * The node's driver runs on the Scheduler it is given: with a virtual one nothing happens until
 * the test moves time (no wall-clock tick timer or ready round sneaks in), deadlines go by the
 * virtual clock, and a run with the same seed elects at the same virtual instant (the replicas'
 * election randomness comes from the seed, not from Date.now).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { KvNode, DATA_GROUP, META_GROUP, withDeadline } from '../../src/node/kv-node.js';
import { DeadlineError } from '../../src/node/backend.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';
import { ManualScheduler } from '../support/manual-scheduler.js';



let nodes: KvNode[] = [];
afterEach(async () => {
  for (const n of nodes) await n.stop();
  nodes = [];
});

async function singleNode(scheduler: ManualScheduler, seed: number): Promise<KvNode> {
  const hub = new LoopbackHub();
  const node = await KvNode.open(
    { id: 1, members: new Map([[1, '127.0.0.1:7001']]), tickMs: 10, scheduler, seed, log: silentLogger(), onFatal: (e) => { throw e; } },
    new MemoryEngine(),
    hub.transport(1),
  );
  nodes.push(node);
  node.start();
  return node;
}

/** Advances in tick steps until the node leads both groups; returns the virtual time that took. */
async function untilLeader(s: ManualScheduler, node: KvNode): Promise<number> {
  const t0 = s.now();
  for (let i = 0; i < 1000; i++) {
    if (node.replica(META_GROUP)?.isLeader && node.replica(DATA_GROUP)?.isLeader) return s.now() - t0;
    await s.advance(10);
  }
  throw new Error('no leader after 10 virtual seconds');
}

describe('the driver on a virtual scheduler', () => {
  it('does nothing while virtual time stands still, then elects, writes and reads as time moves', async () => {
    const s = new ManualScheduler();
    const node = await singleNode(s, 7);
    // Real time passes (far more than the 100-200 ms election timeout of 10 ms ticks), virtual time does not.
    await new Promise((r) => setTimeout(r, 400));
    expect(node.replica(DATA_GROUP)?.isLeader).toBe(false);
    await untilLeader(s, node);
    let done = false;
    const put = node.put({ key: '/v', value: new Uint8Array([1]) }, { deadlineMs: s.now() + 1000 }).finally(() => (done = true));
    for (let i = 0; i < 50 && !done; i++) await s.advance(1);
    expect((await put).succeeded).toBe(true);
  });

  it('elects at the same virtual instant on every run with the same seed', async () => {
    const times: number[] = [];
    for (let run = 0; run < 2; run++) {
      const s = new ManualScheduler();
      const node = await singleNode(s, 42);
      times.push(await untilLeader(s, node));
      await node.stop();
      nodes = [];
    }
    expect(times[1]).toBe(times[0]);
  });

  it('times deadlines by the scheduler clock', async () => {
    const s = new ManualScheduler();
    let err: unknown;
    const p = withDeadline(new Promise<never>(() => {}), s.now() + 100, 'too late', s).catch((e: unknown) => (err = e));
    await s.advance(99);
    expect(err).toBeUndefined();
    await s.advance(1);
    await p;
    expect(err).toBeInstanceOf(DeadlineError);
  });
});
