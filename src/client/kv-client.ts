/** The kvcascade client: key-value calls with leader discovery, failover and safe retries, self-resuming watches and pipelining. */
import * as grpc from '@grpc/grpc-js';
import type {
  DeleteRequestMsg,
  DeleteResponseMsg,
  GetRequestMsg,
  GetResponseMsg,
  ListRequestMsg,
  ListResponseMsg,
  PutRequestMsg,
  PutResponseMsg,
  StatusResponseMsg,
  TriggerRequestMsg,
  TriggerResponseMsg,
} from '../server/proto.js';
import { KvError } from './errors.js';
import { KvPipeline } from './pipeline.js';
import { NOOP_LOGGER, Transport, type KvClientLogger, type KvClientTlsOptions } from './transport.js';
import {
  deleteResult,
  getResult,
  listResult,
  localKey,
  localPrefix,
  localUint,
  localValue,
  nodeStatus,
  putResult,
  triggerResult,
  type KvDeleteOptions,
  type KvDeleteResult,
  type KvGetOptions,
  type KvGetResult,
  type KvItem,
  type KvListOptions,
  type KvListResult,
  type KvNodeStatus,
  type KvPutOptions,
  type KvPutResult,
  type KvTriggerOptions,
  type KvTriggerResult,
  type KvWatchOptions,
} from './types.js';
import { KvWatch } from './watch.js';

/** Default timeout of a call, retries included. */
export const DEFAULT_CLIENT_DEADLINE_MS = 10_000;

/** Options of {@link KvClient}. */
export interface KvClientOptions {
  /** Node addresses (host:port); calls go to the leader once known, else to these in turn. */
  readonly endpoints: readonly string[];
  /** Timeout of a call, retries included, when the call gives none (default 10 000 ms). */
  readonly defaultDeadlineMs?: number;
  /** TLS (default: plaintext). */
  readonly tls?: KvClientTlsOptions;
  /** Most retries of one call (default: unlimited, bounded by the deadline). */
  readonly maxRetries?: number;
  /** Where retries and watch resumptions are logged (default: nowhere). */
  readonly log?: KvClientLogger;
  /** First retry backoff in ms (default 25; doubles per retry, with jitter). */
  readonly initialBackoffMs?: number;
  /** Largest retry backoff in ms (default 1000). */
  readonly maxBackoffMs?: number;
  /** Extra grpc-js channel options. */
  readonly channelOptions?: grpc.ChannelOptions;
}

/**
 * A kvcascade client. Learns the leader from `kv-leader` response metadata and sends calls there;
 * on UNAVAILABLE or connection failure it moves to the next endpoint with exponential backoff
 * until the call's deadline. Reads are always retried; writes only when the server marked the
 * failure `kv-retry-safe` or the call never reached a server. Errors are {@link KvError}s.
 */
export class KvClient {
  private readonly transport: Transport;
  private readonly defaultDeadlineMs: number;

  /** Creates a client; connections are made lazily. */
  constructor(opts: KvClientOptions) {
    this.defaultDeadlineMs = opts.defaultDeadlineMs ?? DEFAULT_CLIENT_DEADLINE_MS;
    this.transport = new Transport({
      endpoints: opts.endpoints,
      tls: opts.tls,
      maxRetries: opts.maxRetries ?? Number.POSITIVE_INFINITY,
      log: opts.log ?? NOOP_LOGGER,
      initialBackoffMs: opts.initialBackoffMs ?? 25,
      maxBackoffMs: opts.maxBackoffMs ?? 1000,
      channelOptions: opts.channelOptions,
    });
  }

  /** The leader address learned from the servers, if any. */
  get leader(): string | undefined {
    return this.transport.leader;
  }

  private deadline(ms: number | undefined): number {
    const d = ms ?? this.defaultDeadlineMs;
    if (!(d > 0)) throw new KvError(grpc.status.INVALID_ARGUMENT, `deadlineMs must be positive, got ${d}`, { retrySafe: true });
    return Date.now() + d;
  }

  /** Writes `value` (a string is stored as UTF-8) under `key`; with `expectedVersion`, only if the key's version equals it (0 = absent). */
  async put(key: string, value: Uint8Array | string, opts: KvPutOptions = {}): Promise<KvPutResult> {
    this.transport.checkOpen();
    const ev = localUint(opts.expectedVersion, 'expectedVersion');
    const req: PutRequestMsg = {
      key: localKey(key),
      value: localValue(value),
      returnCurrentValue: opts.returnCurrentValue === true,
      ...(ev !== undefined ? { expectedVersion: ev } : {}),
    };
    const res = await this.transport.unary<PutRequestMsg, PutResponseMsg>('kv', 'put', req, 'write', this.deadline(opts.deadlineMs));
    return putResult(res);
  }

  /** Reads `key` (latest, or as of `atVersion` / `atTimeMs`); `found` tells whether it exists there. */
  async get(key: string, opts: KvGetOptions = {}): Promise<KvGetResult> {
    this.transport.checkOpen();
    if (opts.atVersion !== undefined && opts.atTimeMs !== undefined) {
      throw new KvError(grpc.status.INVALID_ARGUMENT, 'give at most one of atVersion and atTimeMs', { retrySafe: true });
    }
    if (opts.atTimeMs !== undefined && !Number.isSafeInteger(opts.atTimeMs)) {
      throw new KvError(grpc.status.INVALID_ARGUMENT, `atTimeMs must be an integer, got ${opts.atTimeMs}`, { retrySafe: true });
    }
    const req: GetRequestMsg = {
      key: localKey(key),
      consistency: opts.consistency === 'serializable' ? 'SERIALIZABLE' : 'LINEARIZABLE',
      ...(opts.atVersion !== undefined ? { atVersion: localUint(opts.atVersion, 'atVersion')! } : {}),
      ...(opts.atTimeMs !== undefined ? { atTimeMs: opts.atTimeMs } : {}),
    };
    const res = await this.transport.unary<GetRequestMsg, GetResponseMsg>('kv', 'get', req, 'read', this.deadline(opts.deadlineMs));
    return getResult(res);
  }

  /** Deletes `key` (conditionally with `expectedVersion`). */
  async delete(key: string, opts: KvDeleteOptions = {}): Promise<KvDeleteResult> {
    this.transport.checkOpen();
    const ev = localUint(opts.expectedVersion, 'expectedVersion');
    const req: DeleteRequestMsg = { key: localKey(key), ...(ev !== undefined ? { expectedVersion: ev } : {}) };
    const res = await this.transport.unary<DeleteRequestMsg, DeleteResponseMsg>('kv', 'delete', req, 'write', this.deadline(opts.deadlineMs));
    return deleteResult(res);
  }

  /**
   * Trigger put: fires the lambdas and watchers of `key`'s prefix with `value` (a string is sent
   * as UTF-8) without storing it; the key's value and version are unchanged. Retried like a put.
   */
  async trigger(key: string, value: Uint8Array | string, opts: KvTriggerOptions = {}): Promise<KvTriggerResult> {
    this.transport.checkOpen();
    const req: TriggerRequestMsg = { key: localKey(key), value: localValue(value) };
    const res = await this.transport.unary<TriggerRequestMsg, TriggerResponseMsg>('kv', 'trigger', req, 'write', this.deadline(opts.deadlineMs));
    return triggerResult(res);
  }

  /** One page of the keys under `prefix`, in key order. */
  async list(prefix: string, opts: KvListOptions = {}): Promise<KvListResult> {
    this.transport.checkOpen();
    const req: ListRequestMsg = {
      prefix: localPrefix(prefix),
      limit: localUint(opts.limit, 'limit') ?? 0,
      pageToken: opts.pageToken ?? '',
      keysOnly: opts.keysOnly === true,
      consistency: opts.consistency === 'serializable' ? 'SERIALIZABLE' : 'LINEARIZABLE',
    };
    const res = await this.transport.unary<ListRequestMsg, ListResponseMsg>('kv', 'list', req, 'read', this.deadline(opts.deadlineMs));
    return listResult(res);
  }

  /** Every key under `prefix`, fetching pages lazily (each page is a separate read, at its own revision). */
  async *listAll(prefix: string, opts: Omit<KvListOptions, 'pageToken'> = {}): AsyncGenerator<KvItem, void, undefined> {
    let pageToken = '';
    do {
      const page = await this.list(prefix, { ...opts, pageToken });
      yield* page.items;
      pageToken = page.nextPageToken;
    } while (pageToken);
  }

  /**
   * Watches changes under `prefix` from `fromRevision` (default: after the current revision).
   * The returned iterator resumes by itself after failures (see {@link KvWatch}).
   */
  watch(prefix: string, opts: KvWatchOptions = {}): KvWatch {
    this.transport.checkOpen();
    localPrefix(prefix);
    if (opts.fromRevision !== undefined) localUint(opts.fromRevision, 'fromRevision');
    return new KvWatch(
      {
        transport: this.transport,
        currentRevision: async (p) => (await this.list(p, { limit: 1, keysOnly: true })).revision,
      },
      prefix,
      opts,
    );
  }

  /** A pipeline: many ops in flight on one stream. Close it when done. */
  pipeline(): KvPipeline {
    this.transport.checkOpen();
    return new KvPipeline({
      transport: this.transport,
      defaultDeadlineMs: this.defaultDeadlineMs,
      put: (k, v, o) => this.put(k, v, o),
      get: (k, o) => this.get(k, o),
      delete: (k, o) => this.delete(k, o),
      trigger: (k, v, o) => this.trigger(k, v, o),
    });
  }

  /** Status of the node at `endpoint` (exactly that node, one attempt), or of any reachable node. */
  async status(endpoint?: string, opts: { deadlineMs?: number } = {}): Promise<KvNodeStatus> {
    this.transport.checkOpen();
    const res = await this.transport.unary<object, StatusResponseMsg>(
      'cluster',
      'status',
      {},
      'read',
      this.deadline(opts.deadlineMs),
      endpoint,
    );
    return nodeStatus(res);
  }

  /** Closes every connection; running calls, watches and pipelines end with CANCELLED (watches end normally). */
  close(): void {
    this.transport.close();
  }
}
