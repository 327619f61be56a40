/** The outcome classes of a coordinated call: every failure becomes an {@link OpStatus} (a gRPC status with kvcascade metadata fields), classified by the error's type. */
import * as grpc from '@grpc/grpc-js';
import { ShardingError } from '../sharding/index.js';
import { CompactedRevisionError, ValidationError } from '../statemachine/index.js';
import {
  CrossShardError,
  DeadlineError,
  NotLeaderError,
  OverloadedError,
  NodeRemovedError,
  UnavailableError,
  WrongShardError,
} from '../node/backend.js';
import { MemoryBudgetError } from '../node/memory-budget.js';
import { ProposalLostError } from '../node/waiters.js';
import { kvMetadata, type KvMetadataFields } from '../wire/metadata.js';
import { AuthError } from '../auth/access-control.js';

/** A status to send, with the kvcascade metadata fields; `cause` is the store error it classifies, if any. */
export class OpStatus extends Error {
  constructor(
    readonly code: grpc.status,
    message: string,
    readonly fields: KvMetadataFields = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'OpStatus';
  }

  /** This status with `shard` set when it names none. */
  inShard(group: number | undefined): OpStatus {
    if (group === undefined || this.fields.shard !== undefined) return this;
    return new OpStatus(this.code, this.message, { ...this.fields, shard: group }, { cause: this.cause });
  }

  /** The gRPC error to send, with `fields` as metadata. */
  toServiceError(fields: KvMetadataFields): grpc.ServerErrorResponse {
    const metadata = kvMetadata(fields);
    return Object.assign(new Error(this.message), { code: this.code, details: this.message, metadata });
  }
}

/** INVALID_ARGUMENT, retry-safe (nothing was applied). */
export function invalid(message: string): OpStatus {
  return new OpStatus(grpc.status.INVALID_ARGUMENT, message, { retrySafe: true });
}

/** The status of a known store error (kept as `cause`), or undefined for an unknown one (an internal error). */
export function classify(e: unknown): OpStatus | undefined {
  if (e instanceof OpStatus) return e;
  // Not authenticated, or not allowed: nothing was applied.
  if (e instanceof AuthError) return new OpStatus(grpc.status[e.code], e.message, { retrySafe: true }, { cause: e });
  const s = (code: grpc.status, message: string, fields: KvMetadataFields = {}): OpStatus => new OpStatus(code, message, fields, { cause: e });
  // The reserved keyspace (refused here, or by the shard for a client-origin command): nothing was applied.
  if (e instanceof ValidationError && e.code === 'RESERVED') return s(grpc.status.PERMISSION_DENIED, e.message, { retrySafe: true });
  // A write session's seq the shard no longer remembers: an earlier attempt may have applied.
  if (e instanceof ValidationError && e.code === 'SESSION_EXPIRED') return s(grpc.status.FAILED_PRECONDITION, e.message);
  if (e instanceof ValidationError) return s(grpc.status.INVALID_ARGUMENT, e.message, { retrySafe: true });
  if (e instanceof CrossShardError) {
    const message = e.message.includes('CROSS_SHARD') ? e.message : `CROSS_SHARD: ${e.message}`;
    return s(grpc.status.INVALID_ARGUMENT, message, { reason: 'CROSS_SHARD' });
  }
  if (e instanceof CompactedRevisionError) {
    return s(grpc.status.OUT_OF_RANGE, e.message, { compactRevision: e.oldestRevision, retrySafe: true });
  }
  if (e instanceof NotLeaderError) {
    return s(grpc.status.UNAVAILABLE, e.message, { retrySafe: true, leader: e.leaderAddress, shard: e.group, reason: 'NOT_LEADER' });
  }
  // A stale map (ours or the sender's): nothing was applied; the client refetches the map (kv-map-epoch) and retries.
  if (e instanceof NodeRemovedError) return s(grpc.status.UNAVAILABLE, e.message, { retrySafe: e.retrySafe, reason: e.reason });
  if (e instanceof WrongShardError) return s(grpc.status.UNAVAILABLE, e.message, { retrySafe: true, reason: 'WRONG_SHARD' });
  // Another leader's entry took the proposal's log slot: it can never apply, so a retry is safe.
  if (e instanceof ProposalLostError) return s(grpc.status.UNAVAILABLE, e.message, { retrySafe: true, reason: 'PROPOSAL_LOST' });
  if (e instanceof UnavailableError) return s(grpc.status.UNAVAILABLE, e.message);
  // The map cannot route the request (e.g. not initialised yet): nothing was applied.
  if (e instanceof ShardingError) return s(grpc.status.UNAVAILABLE, e.message, { retrySafe: true, reason: e.code });
  if (e instanceof DeadlineError) return s(grpc.status.DEADLINE_EXCEEDED, e.message);
  if (e instanceof OverloadedError) return s(grpc.status.RESOURCE_EXHAUSTED, e.message, { retrySafe: true, reason: 'OVERLOADED' });
  // The node's memory budget is spent: nothing was applied, but a retry soon would fail the same
  // way, so it is not marked retry-safe (the client fails at once with the reason).
  if (e instanceof MemoryBudgetError) return s(grpc.status.RESOURCE_EXHAUSTED, e.message, { reason: 'MEMORY_BUDGET' });
  return undefined;
}

/** The logger subset the coordinator uses (a pino logger fits). */
export interface CoordinatorLogger {
  error(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  debug(obj: object, msg: string): void;
}

/** Maps any failure to its status; an unknown error becomes INTERNAL (logged, op `what`; kept as `cause`). */
export function toStatus(e: unknown, what: string, log: CoordinatorLogger): OpStatus {
  const s = classify(e);
  if (s) return s;
  log.error({ err: e, op: what }, 'internal error in kv service');
  return new OpStatus(grpc.status.INTERNAL, 'internal server error', {}, { cause: e });
}
