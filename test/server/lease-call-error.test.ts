/** The lease service answers store errors with the KV service's classification (op-status.ts), keeping its leader redirect on UNAVAILABLE. */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { DeadlineError, NotLeaderError, OverloadedError, UnavailableError } from '../../src/node/backend.js';
import { MemoryBudgetError } from '../../src/node/memory-budget.js';
import { ProposalLostError } from '../../src/node/waiters.js';
import { LeaseError } from '../../src/lease/records.js';
import { leaseCallError } from '../../src/server/lease-service.js';

const redirect = (): Record<string, string> => ({ 'kv-meta-leader': '127.0.0.1:1234', 'kv-retry-safe': '1' });

describe('leaseCallError', () => {
  it('answers a lost proposal, a non-leader and a leaderless group UNAVAILABLE with the redirect', () => {
    for (const e of [new ProposalLostError(), new NotLeaderError(0, undefined), new UnavailableError('no leader elected yet')]) {
      const s = leaseCallError(e, redirect);
      expect(s.code, e.name).toBe(grpc.status.UNAVAILABLE);
      expect(s.metadata?.get('kv-retry-safe')).toEqual(['1']);
      expect(s.metadata?.get('kv-meta-leader')).toEqual(['127.0.0.1:1234']);
    }
  });

  it('answers a spent memory budget and an overload RESOURCE_EXHAUSTED, a deadline DEADLINE_EXCEEDED (not INTERNAL)', () => {
    expect(leaseCallError(new MemoryBudgetError('MEMORY_BUDGET: spent'), redirect).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(leaseCallError(new OverloadedError('too many'), redirect).code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(leaseCallError(new DeadlineError(), redirect).code).toBe(grpc.status.DEADLINE_EXCEEDED);
    const budget = leaseCallError(new MemoryBudgetError('MEMORY_BUDGET: spent'), redirect);
    expect(budget.details).toBe('MEMORY_BUDGET: spent');
    expect(budget.metadata?.get('kv-reason')).toEqual(['MEMORY_BUDGET']);
  });

  it('keeps lease errors by their own code and logs an unknown error as INTERNAL', () => {
    expect(leaseCallError(new LeaseError('NOT_FOUND', 'lease 7 not found'), redirect).code).toBe(grpc.status.NOT_FOUND);
    const logged: object[] = [];
    const s = leaseCallError(new TypeError('boom'), redirect, { error: (o) => logged.push(o) });
    expect(s.code).toBe(grpc.status.INTERNAL);
    expect(logged).toHaveLength(1);
  });
});
