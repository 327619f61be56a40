/**
 * Failures are classified by the `kv-reason` metadata the server sends, not by message text: the
 * coordinator's status mapping sets it from the error's type, it survives the trip through
 * grpc metadata into KvError, and the client's wrong-shard test reads it (falling back to the
 * message only for servers that send no reason).
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { classify } from '../../src/coordinator/op-status.js';
import { MemoryBudgetError } from '../../src/node/memory-budget.js';
import { NotLeaderError, OverloadedError, WrongShardError } from '../../src/node/backend.js';
import { ShardingError } from '../../src/sharding/index.js';
import { fromServiceError } from '../../src/client/errors.js';
import { isWrongShard } from '../../src/client/router.js';
import { META_REASON, kvMetadata } from '../../src/wire/metadata.js';

/** The service error a client would receive for `e`, as the server maps it. */
function overTheWire(e: unknown): grpc.ServiceError {
  const s = classify(e);
  if (!s) throw new Error(`not classified: ${String(e)}`);
  return s.toServiceError(s.fields) as grpc.ServiceError;
}

describe('kv-reason', () => {
  it('is set from the error type and read back into KvError.reason', () => {
    const cases: [unknown, string][] = [
      [new WrongShardError('key "/a" is not owned by shard 2'), 'WRONG_SHARD'],
      [new NotLeaderError(2, '127.0.0.1:1', 3), 'NOT_LEADER'],
      [new OverloadedError('too many proposals'), 'OVERLOADED'],
      [new ShardingError('BUSY', 'the cluster map kept changing concurrently; try again'), 'BUSY'],
    ];
    for (const [err, reason] of cases) {
      const wire = overTheWire(err);
      expect(wire.metadata.get(META_REASON)[0]).toBe(reason);
      expect(fromServiceError(wire, '127.0.0.1:1').reason).toBe(reason);
    }
  });

  it('names a spent memory budget', () => {
    const wire = overTheWire(new MemoryBudgetError('MEMORY_BUDGET: index 10 MiB of 8 MiB'));
    expect(wire.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(wire.metadata.get(META_REASON)[0]).toBe('MEMORY_BUDGET');
  });

  it('wrong shard is recognised by the reason, whatever the message says', () => {
    const md = kvMetadata({ reason: 'WRONG_SHARD', retrySafe: true });
    const e = Object.assign(new Error('x'), { code: grpc.status.UNAVAILABLE, details: 'a message with no known words', metadata: md }) as grpc.ServiceError;
    expect(isWrongShard(e)).toBe(true);
    expect(isWrongShard(fromServiceError(e, undefined))).toBe(true);
    // A reason that is not WRONG_SHARD wins over a message that looks like one.
    const other = Object.assign(new Error('x'), { code: grpc.status.UNAVAILABLE, details: 'the cluster map changed', metadata: kvMetadata({ reason: 'NOT_LEADER' }) }) as grpc.ServiceError;
    expect(isWrongShard(other)).toBe(false);
  });

  it('servers that send no reason: the message decides, as before', () => {
    expect(isWrongShard({ code: grpc.status.UNAVAILABLE, details: 'key "/a" is not owned by shard 2; the cluster map changed' })).toBe(true);
    expect(isWrongShard({ code: grpc.status.UNAVAILABLE, details: 'not the leader' })).toBe(false);
    expect(isWrongShard({ code: grpc.status.INVALID_ARGUMENT, details: 'wrong shard' })).toBe(false);
  });
});
