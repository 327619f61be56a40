/**
 * The store as extension lambdas see it: each call runs on this node when it leads the key's
 * shard (no network hop), and otherwise goes over gRPC to the node the local routing points at,
 * carrying the lambda chain's hop count in `kv-hops` metadata so the hop limit holds across nodes.
 * Writes carry the store's client session (one random id per store, i.e. per node process, and a
 * seq per logical write), so a write whose attempt failed with an unknown outcome (a dropped
 * connection, an unavailable leader, a lost leadership) is retried within its deadline under the
 * same seq: the shard applies it at most once and answers the retry with the first result.
 */
import * as grpc from '@grpc/grpc-js';
import { NotLeaderError, OverloadedError, UnavailableError, type CallOptions, type KvBackend } from '../node/backend.js';
import type { LambdaKv } from '../extensions/store-access.js';
import { WriteSessionSource } from '../extensions/write-session.js';
import type { WriteSession } from '../statemachine/index.js';
import { META_FORWARDED, META_HOPS } from '../wire/metadata.js';
import { KvStubClient, type KvStub } from '../wire/proto.js';
import { encodePageToken } from '../wire/request-validation.js';

/** Most attempts of one lambda write (the first one included), within its deadline. */
export const LAMBDA_WRITE_MAX_ATTEMPTS = 8;

/** Pause before the first retry of a lambda write; doubled per retry up to {@link LAMBDA_WRITE_BACKOFF_MAX_MS}. */
export const LAMBDA_WRITE_BACKOFF_MS = 25;

/** Longest pause between two attempts of a lambda write. */
export const LAMBDA_WRITE_BACKOFF_MAX_MS = 400;

/** gRPC statuses after which a write with a session is retried: it was not applied, or its outcome is unknown. */
const RETRIED_STATUSES: ReadonlySet<number> = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.UNKNOWN,
  grpc.status.INTERNAL,
  grpc.status.CANCELLED,
  grpc.status.ABORTED,
  grpc.status.RESOURCE_EXHAUSTED,
]);

/** Whether a failed attempt of a write with a session may be retried (not applied, or outcome unknown; never a definite refusal). */
export function isRetriableWriteFailure(e: unknown): boolean {
  if (e instanceof NotLeaderError || e instanceof UnavailableError || e instanceof OverloadedError) return true;
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'number' && RETRIED_STATUSES.has(code); // a gRPC status (the store's own errors have string codes)
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));


function call<Req, Res>(stub: KvStub, method: 'put' | 'get' | 'delete' | 'trigger' | 'list', req: Req, md: grpc.Metadata, deadlineMs: number): Promise<Res> {
  return new Promise((resolve, reject) => {
    const fn = stub[method] as unknown as (r: Req, m: grpc.Metadata, o: Partial<grpc.CallOptions>, cb: (e: grpc.ServiceError | null, r?: Res) => void) => void;
    fn.call(stub, req, md, { deadline: new Date(deadlineMs) }, (err, res) => (err ? reject(err) : resolve(res!)));
  });
}

/** Options of {@link routedLambdaKv}. */
export interface RoutedLambdaKvOptions {
  /** This node's client address (lists spanning shards are merged by its own service). */
  readonly selfAddress: string;
  readonly credentials?: grpc.ChannelCredentials;
  /** The session the writes carry (default: a new random one, i.e. one per store and process). */
  readonly sessions?: WriteSessionSource;
}

/** A {@link LambdaKv} over the local backend, forwarding what this node does not lead. */
export function routedLambdaKv(backend: KvBackend, opts: RoutedLambdaKvOptions): LambdaKv & { close(): void } {
  const stubs = new Map<string, KvStub>();
  const stub = (address: string): KvStub => {
    let s = stubs.get(address);
    if (!s) {
      s = new KvStubClient(address, opts.credentials ?? grpc.credentials.createInsecure(), {
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1000,
        'grpc.max_receive_message_length': 64 * 1024 * 1024,
      });
      stubs.set(address, s);
    }
    return s;
  };
  const md = (hops: number): grpc.Metadata => {
    const m = new grpc.Metadata();
    m.set(META_FORWARDED, '1');
    if (hops > 0) m.set(META_HOPS, String(hops));
    return m;
  };
  /** Runs `local`; on NotLeaderError with a target, runs `remote` against it. */
  const routed = async <T>(local: () => Promise<T>, remote: (address: string) => Promise<T>): Promise<T> => {
    try {
      return await local();
    } catch (e) {
      if (e instanceof NotLeaderError && e.leaderAddress && e.leaderAddress !== opts.selfAddress) return remote(e.leaderAddress);
      throw e;
    }
  };
  const sessions = opts.sessions ?? new WriteSessionSource();
  /**
   * One logical write under a new seq of the session: routed attempts (local, else remote),
   * retried with backoff while they fail retriably and the deadline allows; every attempt carries
   * the same (id, seq), so the write applies at most once however many attempts reach the shard.
   */
  const write = <T>(
    deadlineMs: number,
    hops: number,
    local: (o: CallOptions) => Promise<T>,
    remote: (address: string, session: WriteSession) => Promise<T>,
  ): Promise<T> =>
    sessions.run(async (session) => {
      for (let attempt = 1, backoff = LAMBDA_WRITE_BACKOFF_MS; ; attempt++, backoff = Math.min(backoff * 2, LAMBDA_WRITE_BACKOFF_MAX_MS)) {
        try {
          return await routed(() => local({ deadlineMs, hops, session }), (address) => remote(address, session));
        } catch (e) {
          if (!isRetriableWriteFailure(e) || attempt >= LAMBDA_WRITE_MAX_ATTEMPTS || Date.now() + backoff >= deadlineMs) throw e;
          await sleep(backoff);
        }
      }
    });
  return {
    get: (key, o, deadlineMs) =>
      routed(
        () =>
          backend
            .get({ key, consistency: 'linearizable', ...(o.atVersion ? { atVersion: o.atVersion } : {}), ...(o.atTimeMs ? { atTimeMs: o.atTimeMs } : {}) }, { deadlineMs })
            .then((g) => ({ found: g.found, ...(g.value ? { value: g.value } : {}), version: g.version, timestampMs: g.timestampMs })),
        (address) =>
          call<object, { found: boolean; value: Uint8Array; version: number; timestampMs: number }>(
            stub(address),
            'get',
            { key, ...(o.atVersion ? { atVersion: o.atVersion } : {}), ...(o.atTimeMs ? { atTimeMs: o.atTimeMs } : {}) },
            md(0),
            deadlineMs,
          ).then((g) => ({ found: g.found, ...(g.found ? { value: g.value } : {}), version: g.version, timestampMs: g.timestampMs })),
      ),
    put: (key, value, o, hops, deadlineMs) =>
      write(
        deadlineMs,
        hops,
        (co) =>
          backend
            .put({ key, value, ...(o.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {}) }, co)
            .then((p) => ({ succeeded: p.succeeded, version: p.succeeded ? p.version : 0, currentVersion: p.succeeded ? p.version : (p.current?.version ?? p.version) })),
        (address, session) =>
          call<object, { succeeded: boolean; version: number; currentVersion: number }>(
            stub(address),
            'put',
            { key, value, ...(o.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {}), session },
            md(hops),
            deadlineMs,
          ).then((p) => ({ succeeded: p.succeeded, version: p.version, currentVersion: p.succeeded ? p.version : p.currentVersion })),
      ),
    delete: (key, o, hops, deadlineMs) =>
      write(
        deadlineMs,
        hops,
        (co) =>
          backend
            .delete({ key, ...(o.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {}) }, co)
            .then((d) => ({ succeeded: d.succeeded, deleted: d.deleted })),
        (address, session) =>
          call<object, { succeeded: boolean; deleted: boolean }>(
            stub(address),
            'delete',
            { key, ...(o.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {}), session },
            md(hops),
            deadlineMs,
          ).then((d) => ({ succeeded: d.succeeded, deleted: d.deleted })),
      ),
    trigger: (key, value, hops, deadlineMs) =>
      write(
        deadlineMs,
        hops,
        (co) => backend.trigger({ key, value }, co).then(() => undefined),
        (address, session) => call<object, object>(stub(address), 'trigger', { key, value, session }, md(hops), deadlineMs).then(() => undefined),
      ),
    list: async (prefix, o, deadlineMs) => {
      // The local service merges the shards the prefix spans and forwards to their leaders.
      const res = await call<object, { items: { key: string; value: Uint8Array; version: number }[]; nextPageToken: string }>(
        stub(opts.selfAddress),
        'list',
        { prefix, keysOnly: o.keysOnly ?? false, ...(o.limit ? { limit: o.limit } : {}), ...(o.after !== undefined ? { pageToken: encodePageToken(o.after) } : {}) },
        new grpc.Metadata(),
        deadlineMs,
      );
      const last = res.items[res.items.length - 1];
      return {
        items: res.items.map((i) => ({ key: i.key, ...(o.keysOnly ? {} : { value: i.value }), version: i.version })),
        ...(res.nextPageToken && last ? { nextAfter: last.key } : {}),
      };
    },
    close: () => {
      for (const s of stubs.values()) s.close();
    },
  };
}
