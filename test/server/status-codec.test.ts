/** The Cluster.Status codec: what the service encodes, the probe and the client decode to the same status. */
import { describe, expect, it } from 'vitest';
import type { NodeStatusInfo } from '../../src/node/backend.js';
import { statusFromMsg, statusToMsg } from '../../src/wire/status-codec.js';

const status: NodeStatusInfo = {
  nodeId: 2,
  version: '0.1.0',
  mapEpoch: 7,
  members: [{ id: 1, address: '127.0.0.1:7001' }, { id: 2, address: '127.0.0.1:7002' }],
  groups: [
    { group: 0, leader: 1, term: 3, role: 'Follower', commitIndex: 9, appliedIndex: 9, firstIndex: 1, lastIndex: 9, voters: [1, 2], learners: [], revision: 4, shardIndex: 0, descriptorEpoch: 0, matched: new Map(), keys: 5 },
    { group: 5, leader: 2, term: 1, role: 'Leader', commitIndex: 4, appliedIndex: 4, firstIndex: 1, lastIndex: 4, voters: [1, 2], learners: [3], revision: 2, pool: '/cameras', shardIndex: 3, descriptorEpoch: 7, matched: new Map([[1, 4], [2, 4], [3, 1]]), keys: 1 },
  ],
};

describe('status codec', () => {
  it('decodes what it encodes', () => {
    expect(statusFromMsg(statusToMsg(status))).toEqual(status);
  });

  it('fills defaults for a message from an older server', () => {
    const s = statusFromMsg({ nodeId: 1, groups: [{ group: 1 }] });
    expect(s.mapEpoch).toBe(0);
    expect(s.groups[0]).toMatchObject({ group: 1, descriptorEpoch: 0, keys: 0 });
    expect('pool' in s.groups[0]!).toBe(false);
    expect(s.groups[0]!.matched.size).toBe(0);
  });
});
