/** Errors the kvcascade client throws: KvError (a gRPC status code name and message) and CompactedError. */
import * as grpc from '@grpc/grpc-js';
import { META_REASON, META_RETRY_SAFE, neverReachedServer, readKvMetadata } from '../wire/metadata.js';

/** The name of a gRPC status code, e.g. "UNAVAILABLE". */
export type KvErrorCode = keyof typeof grpc.status;

/** Extra facts about a failed call. */
export interface KvErrorInfo {
  /** The request was definitely not executed (a write may be retried safely). */
  readonly retrySafe?: boolean;
  /** The leader address the server reported, if any. */
  readonly leader?: string | undefined;
  /** The endpoint that answered (or failed). */
  readonly endpoint?: string | undefined;
  /** Why the call failed, as the server classified it (`kv-reason`, e.g. WRONG_SHARD, BUSY), if it said. */
  readonly reason?: string | undefined;
}

/** A failed kvcascade call: `code` is the gRPC status code name, `grpcCode` its number. */
export class KvError extends Error {
  /** gRPC status code name, e.g. "UNAVAILABLE", "INVALID_ARGUMENT". */
  readonly code: KvErrorCode;
  /** Numeric gRPC status code. */
  readonly grpcCode: grpc.status;
  /** The request was definitely not executed. */
  readonly retrySafe: boolean;
  /** The leader address the server reported, if any. */
  readonly leader: string | undefined;
  /** The endpoint that answered (or failed), if known. */
  readonly endpoint: string | undefined;
  /** Why the call failed, as the server classified it (`kv-reason`, e.g. WRONG_SHARD, NOT_LEADER, BUSY, MEMORY_BUDGET), if it said. */
  readonly reason: string | undefined;

  constructor(grpcCode: grpc.status, message: string, info: KvErrorInfo = {}) {
    const code = (grpc.status[grpcCode] ?? 'UNKNOWN') as KvErrorCode;
    super(message);
    this.name = 'KvError';
    this.code = code;
    this.grpcCode = grpcCode;
    this.retrySafe = info.retrySafe ?? false;
    this.leader = info.leader;
    this.endpoint = info.endpoint;
    this.reason = info.reason;
  }
}

/** The requested revision (a read's version, or a watch's resume point) has been compacted away. */
export class CompactedError extends KvError {
  /** The oldest revision still available. */
  readonly compactRevision: number;

  constructor(message: string, compactRevision: number, info: KvErrorInfo = {}) {
    super(grpc.status.OUT_OF_RANGE, message, info);
    this.name = 'CompactedError';
    this.compactRevision = compactRevision;
  }
}

/** Converts a grpc-js error (with its trailers) into a KvError or CompactedError. */
export function fromServiceError(err: grpc.ServiceError, endpoint: string | undefined, retrySafe = false): KvError {
  const f = readKvMetadata(err.metadata);
  const info = { retrySafe: retrySafe || f.retrySafe === true, leader: f.leader, endpoint, reason: f.reason };
  const message = readableDetails(err, endpoint);
  if (err.code === grpc.status.OUT_OF_RANGE && f.compactRevision !== undefined) {
    return new CompactedError(message, f.compactRevision, info);
  }
  return new KvError(err.code, message, info);
}

/**
 * grpc-js's own details, made readable for people: its connection messages end with an empty
 * "Resolution note:" and its deadline messages speak of name resolution when no connection was
 * ever made; say instead which endpoint did not answer.
 */
function readableDetails(err: grpc.ServiceError, endpoint: string | undefined): string {
  const raw = (err.details || grpc.status[err.code] || 'unknown error').replace(/\.?\s*Resolution note:\s*$/, '');
  const at = endpoint ? ` at ${endpoint}` : '';
  if (err.code === grpc.status.DEADLINE_EXCEEDED && /waiting for (name resolution|connection|LB pick)/i.test(raw)) {
    return `deadline exceeded before a connection to the node${at} was ready (is it running and reachable?)`;
  }
  const refused = /connect (ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT) ([^\s.]+(?:\.[^\s.]+)*)/.exec(raw);
  if (err.code === grpc.status.UNAVAILABLE && refused) {
    const why = refused[1] === 'ECONNREFUSED' ? 'connection refused' : refused[1]!.toLowerCase();
    return `no connection to the node${at} (${why})`;
  }
  return raw;
}

/**
 * A KvError for a failed call of the admin, auth or lease services: the status, the server's
 * `kv-reason`, retry-safe when the server said so or the call never reached it, and the leader
 * named by the first of `leaderKeys` present (e.g. `kv-meta-leader`).
 */
export function serviceCallError(e: grpc.ServiceError, endpoint: string, leaderKeys: readonly string[]): KvError {
  const leader = leaderKeys.map((k) => e.metadata?.get(k)[0]).find((v) => v !== undefined);
  const reason = e.metadata?.get(META_REASON)[0];
  return new KvError(e.code, e.details || e.message, {
    endpoint,
    retrySafe: e.metadata?.get(META_RETRY_SAFE)[0] === '1' || neverReachedServer(e),
    ...(leader ? { leader: String(leader) } : {}),
    ...(reason ? { reason: String(reason) } : {}),
  });
}
