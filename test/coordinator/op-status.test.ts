/** How store errors become statuses: which failures a client may retry without a session (nothing was applied). */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { classify } from '../../src/coordinator/op-status.js';
import { NotLeaderError, UnavailableError } from '../../src/node/backend.js';
import { ProposalLostError } from '../../src/node/waiters.js';

describe('classify', () => {
  it('a proposal whose slot another leader took is UNAVAILABLE and retry-safe (it can never apply)', () => {
    const s = classify(new ProposalLostError())!;
    expect(s.code).toBe(grpc.status.UNAVAILABLE);
    expect(s.fields.retrySafe).toBe(true);
    expect(s.fields.reason).toBe('PROPOSAL_LOST');
  });

  it('a plain UNAVAILABLE is not retry-safe (the write may have applied)', () => {
    const s = classify(new UnavailableError('node is shutting down'))!;
    expect(s.code).toBe(grpc.status.UNAVAILABLE);
    expect(s.fields.retrySafe).toBeUndefined();
  });

  it('NOT_LEADER is retry-safe and names the leader', () => {
    const s = classify(new NotLeaderError(2, '127.0.0.1:5002', 7))!;
    expect(s.fields).toMatchObject({ retrySafe: true, leader: '127.0.0.1:5002', shard: 7, reason: 'NOT_LEADER' });
  });
});
