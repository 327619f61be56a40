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
import type { Scheduler, TimerHandle } from '../../src/node/scheduler.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';

/** A virtual clock: timers fire only inside `advance`, in time order; `setImmediate` is a 0 ms timer. */
class ManualScheduler implements Scheduler {
  private t = 1_000_000;
  private seq = 0;
  private readonly timers = new Map<number, { at: number; fn: () => void; every?: number }>();

  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return { cancel: () => void this.timers.delete(id) };
  }
  setInterval(fn: () => void, ms: number): TimerHandle {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + ms, fn, every: ms });
    return { cancel: () => void this.timers.delete(id) };
  }
  setImmediate(fn: () => void): TimerHandle {
    return this.setTimeout(fn, 0);
  }

  /** Moves time forward by `ms`, firing due timers in order and letting real I/O (the memory engine) settle between them. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await realTurns(3);
      let next: [number, { at: number; fn: () => void; every?: number }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at || (e[1].at === next[1].at && e[0] < next[0]))) next = e;
      if (!next) break;
      const [id, timer] = next;
      this.t = Math.max(this.t, timer.at);
      if (timer.every !== undefined) timer.at += timer.every;
      else this.timers.delete(id);
      timer.fn();
    }
    this.t = end;
  }
}

const realTurns = async (n: number): Promise<void> => {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
};

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
