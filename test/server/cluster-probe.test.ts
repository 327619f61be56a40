/** GrpcClusterProbe.countKeys: waits out a shard between leaders (retry-safe UNAVAILABLE) until its deadline, and passes other errors through. */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { GrpcClusterProbe } from '../../src/server/cluster-probe.js';
import { OpStatus } from '../../src/coordinator/op-status.js';
import type { Coordinator } from '../../src/coordinator/coordinator.js';
import type { NodeStubs } from '../../src/coordinator/node-stubs.js';

/** A probe whose coordinator answers list calls from `answer` (called with the attempt number). */
function probeWith(answer: (attempt: number) => unknown): { probe: GrpcClusterProbe; calls: () => number } {
  let n = 0;
  const coordinator = {
    run: async () => {
      const r = answer(n++);
      if (r instanceof Error) throw r;
      return { response: r };
    },
  } as unknown as Coordinator;
  const probe = new GrpcClusterProbe({ selfId: 1, selfStatus: async () => { throw new Error('unused'); }, stubs: {} as NodeStubs, coordinator });
  return { probe, calls: () => n };
}

const noLeader = (): OpStatus => new OpStatus(grpc.status.UNAVAILABLE, 'no leader elected yet', { retrySafe: true, shard: 2 });

describe('GrpcClusterProbe.countKeys', () => {
  it('retries while the shard has no leader, then counts the keys under the prefix', async () => {
    const { probe, calls } = probeWith((i) => (i < 3 ? noLeader() : { items: [{ key: '/p' }, { key: '/p/a' }, { key: '/pX' }] }));
    await expect(probe.countKeys(2, '/p', 10, Date.now() + 10_000)).resolves.toBe(2);
    expect(calls()).toBe(4);
  });

  it('gives up with the shard error once the deadline is near', async () => {
    const { probe, calls } = probeWith(() => noLeader());
    const start = Date.now();
    await expect(probe.countKeys(2, '/p', 1, start + 300)).rejects.toThrow(/no leader elected yet/);
    expect(Date.now() - start).toBeLessThan(1_000);
    expect(calls()).toBeGreaterThan(1);
  });

  it('does not retry an error that is not retry-safe', async () => {
    const { probe, calls } = probeWith(() => new OpStatus(grpc.status.UNAVAILABLE, 'leader unreachable', { shard: 2 }));
    await expect(probe.countKeys(2, '/p', 1, Date.now() + 10_000)).rejects.toThrow(/leader unreachable/);
    expect(calls()).toBe(1);
  });
});
