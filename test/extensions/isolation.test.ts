/** Choosing where an extension runs at load time (`isolation`, and `inProcess` as its alias) on an in-process 3-node cluster: the record keeps it, and the lambdas run in a child process, a worker thread or the node's thread accordingly. */
import { threadId } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATA_GROUP } from '../../src/node/kv-node.js';
import { ExtCluster } from './cluster-harness.js';

const FIX = 'test/extensions/fixtures';
let c: ExtCluster;

beforeAll(async () => {
  c = await ExtCluster.start();
});

afterAll(async () => {
  await c?.stop();
});

async function whereRuns(name: string): Promise<{ pid: number; threadId: number }> {
  await c.put('/where/k', name);
  return JSON.parse(await c.until(async () => c.get(`/where-out/${name}`)));
}

describe('isolation at load time', () => {
  it("isolation 'process' runs the lambdas in another process", async () => {
    const s = await c.load(`${FIX}/it-where`, { name: 'where-p', isolation: 'process' });
    expect(s.state).toBe('running');
    const w = await whereRuns('where-p');
    expect(w.pid).not.toBe(process.pid);
    const m = await c.metaManager();
    expect(m.records().find((r) => r.name === 'where-p')).toMatchObject({ isolation: 'process' });
  });

  it("isolation 'worker' runs them in a worker thread of the node", async () => {
    await c.load(`${FIX}/it-where`, { name: 'where-w', isolation: 'worker' });
    const w = await whereRuns('where-w');
    expect(w.pid).toBe(process.pid);
    expect(w.threadId).not.toBe(threadId);
  });

  it("inProcess: true is isolation 'in-process' (and recorded both ways, for older nodes)", async () => {
    await c.load(`${FIX}/it-where`, { name: 'where-i', inProcess: true });
    let w = await whereRuns('where-i');
    // A leader change while its event ran moves an in-process extension to a child process until
    // that event completed there (faults.test.ts); then it is back in the node's thread.
    for (let i = 0; i < 3 && w.pid !== process.pid; i++) {
      await c.until(async () => ((await c.managerOf(await c.leader(DATA_GROUP)).statuses()).find((x) => x.name === 'where-i')?.runsIn === 'in-process' ? true : undefined));
      await c.del('/where-out/where-i');
      w = await whereRuns('where-i');
    }
    expect(w).toEqual({ pid: process.pid, threadId });
    await c.load(`${FIX}/it-where`, { name: 'where-i2', isolation: 'in-process' });
    expect((await c.metaManager()).records().find((r) => r.name === 'where-i2')).toMatchObject({ isolation: 'in-process', inProcess: true });
  });

  it('refuses an unknown isolation, or one contradicting inProcess', async () => {
    const m = await c.metaManager();
    const tgz = new Uint8Array(0);
    await expect(m.load(tgz, { isolation: 'vm' as never })).rejects.toThrow(/isolation must be one of/);
    await expect(m.load(tgz, { inProcess: true, isolation: 'process' })).rejects.toThrow(/contradicts/);
  });
});
