/**
 * The store as extension lambdas see it: a thin adapter over the node's {@link Coordinator}, so a
 * lambda's reads, writes and lists are routed like a client's (served by this node when it leads
 * the key's shard, forwarded to the leader otherwise, lists merged across shards) without ever
 * calling this node over gRPC. Writes carry the lambda chain's hop count (`kv-hops` when
 * forwarded) and the store's client session (one random id per store, i.e. per node process, and
 * a seq per logical write), so a write whose attempt failed with an unknown outcome (a dropped
 * connection, an unavailable leader, a lost leadership) is retried within its deadline under the
 * same seq: the shard applies it at most once and answers the retry with the first result.
 */
import * as grpc from '@grpc/grpc-js';
import { NotLeaderError, OverloadedError, UnavailableError, type KvBackend } from '../node/backend.js';
import type { EffectKey, LambdaKv } from '../extensions/store-access.js';
import { WriteSessionSource } from '../extensions/write-session.js';
import type { WriteSession } from '../statemachine/index.js';
import { Coordinator, type RouteContext } from '../coordinator/coordinator.js';
import { OpStatus } from '../coordinator/op-status.js';
import { encodePageToken } from '../wire/request-validation.js';
import type { Principal } from '../auth/access-control.js';

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

/**
 * Whether a failed attempt of a write with a session may be retried (not applied, or outcome
 * unknown; never a definite refusal). A coordinator status is judged by the store error it
 * classifies when it has one, else (a forwarded call's status) by its code.
 */
export function isRetriableWriteFailure(e: unknown): boolean {
  if (e instanceof OpStatus) return e.cause !== undefined ? isRetriableWriteFailure(e.cause) : RETRIED_STATUSES.has(e.code);
  if (e instanceof NotLeaderError || e instanceof UnavailableError || e instanceof OverloadedError) return true;
  const code = (e as { code?: unknown } | null)?.code;
  return typeof code === 'number' && RETRIED_STATUSES.has(code); // a gRPC status (the store's own errors have string codes)
}

/** What a lambda sees of a failure: the store's own error when this node's backend raised it, else the coordinator's status. */
function unwrap(e: unknown): unknown {
  return e instanceof OpStatus && e.cause !== undefined ? e.cause : e;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Options of {@link routedLambdaKv}. */
export interface RoutedLambdaKvOptions {
  /** This node's client address (used, with `credentials`, only when the store builds a coordinator of its own). */
  readonly selfAddress?: string;
  readonly credentials?: grpc.ChannelCredentials;
  /** The session the writes carry (default: a new random one, i.e. one per store and process). */
  readonly sessions?: WriteSessionSource;
  /**
   * Who the lambdas act as when access control is on (an extension's role; see
   * AccessControl.lambdaPrincipal), asked at every call so role changes apply at once. Unset or
   * undefined: no checks.
   */
  readonly principal?: () => Principal | undefined;
}

/**
 * A {@link LambdaKv} over the node's coordinator (or, given a backend, over a coordinator of its
 * own, closed with the store). `close` does not close a coordinator it was given.
 */
export function routedLambdaKv(over: Coordinator | KvBackend, opts: RoutedLambdaKvOptions = {}): LambdaKv & { close(): void } {
  const owned = !(over instanceof Coordinator);
  const coord =
    over instanceof Coordinator
      ? over
      : new Coordinator(over, {
          ...(opts.selfAddress !== undefined ? { selfAddress: opts.selfAddress } : {}),
          ...(opts.credentials ? { forwardCredentials: opts.credentials } : {}),
        });
  const ctx = (deadlineMs: number, lambdaHops = 0): RouteContext => {
    const principal = opts.principal?.();
    return { hops: 0, lambdaHops, deadlineMs, admin: false, ...(principal ? { principal, authorization: principal.authorization } : {}) };
  };
  const sessions = opts.sessions ?? new WriteSessionSource();
  /**
   * One logical write under a new seq of the session: attempts routed by the coordinator, retried
   * with backoff while they fail retriably and the deadline allows; every attempt carries the
   * same (id, seq), so the write applies at most once however many attempts reach the shard.
   */
  const write = <T>(deadlineMs: number, attemptOnce: (session: WriteSession) => Promise<T>, effect?: EffectKey): Promise<T> =>
    (effect ? (fn: (s: WriteSession) => Promise<T>) => fn({ id: effect.id, seq: effect.seq, ackedBelow: 0 }) : (fn: (s: WriteSession) => Promise<T>) => sessions.run(fn))(async (session) => {
      for (let attempt = 1, backoff = LAMBDA_WRITE_BACKOFF_MS; ; attempt++, backoff = Math.min(backoff * 2, LAMBDA_WRITE_BACKOFF_MAX_MS)) {
        try {
          return await attemptOnce(session);
        } catch (e) {
          if (!isRetriableWriteFailure(e) || attempt >= LAMBDA_WRITE_MAX_ATTEMPTS || Date.now() + backoff >= deadlineMs) throw unwrap(e);
          await sleep(backoff);
        }
      }
    });
  const read = async <T>(fn: () => Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (e) {
      throw unwrap(e);
    }
  };
  const expected = (o: { expectedVersion?: number }) => (o.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {});
  return {
    get: (key, o, deadlineMs) =>
      read(async () => {
        const req = { key, ...(o.atVersion ? { atVersion: o.atVersion } : {}), ...(o.atTimeMs ? { atTimeMs: o.atTimeMs } : {}) };
        const g = (await coord.run('get', req, ctx(deadlineMs))).response;
        return { found: g.found === true, ...(g.found ? { value: g.value ?? new Uint8Array(0) } : {}), version: g.version ?? 0, timestampMs: g.timestampMs ?? 0 };
      }),
    put: (key, value, o, hops, deadlineMs, effect) =>
      write(
        deadlineMs,
        async (session) => {
          const p = (await coord.run('put', { key, value, ...expected(o), session }, ctx(deadlineMs, hops))).response;
          return { succeeded: p.succeeded === true, version: p.version ?? 0, currentVersion: (p.succeeded ? p.version : p.currentVersion) ?? 0 };
        },
        effect,
      ),
    delete: (key, o, hops, deadlineMs, effect) =>
      write(
        deadlineMs,
        async (session) => {
          const d = (await coord.run('delete', { key, ...expected(o), session }, ctx(deadlineMs, hops))).response;
          return { succeeded: d.succeeded === true, deleted: d.deleted === true };
        },
        effect,
      ),
    trigger: (key, value, hops, deadlineMs, effect) =>
      write(
        deadlineMs,
        async (session) => {
          await coord.run('trigger', { key, value, session }, ctx(deadlineMs, hops));
        },
        effect,
      ),
    txn: (t, hops, deadlineMs, effect) =>
      write(
        deadlineMs,
        async (session) => {
          const req = {
            compares: t.compares.map((c) => ({ key: c.key, version: c.version })),
            writes: t.writes.map((w) => (w.type === 'put' ? { put: { key: w.key, value: w.value } } : { delete: { key: w.key } })),
            session,
          };
          const r = (await coord.run('txn', req, ctx(deadlineMs, hops))).response;
          return { succeeded: r.succeeded === true, revision: r.revision ?? 0, failedCompares: [...(r.failedCompares ?? [])] };
        },
        effect,
      ),
    list: (prefix, o, deadlineMs) =>
      read(async () => {
        const req = { prefix, keysOnly: o.keysOnly ?? false, ...(o.limit ? { limit: o.limit } : {}), ...(o.after !== undefined ? { pageToken: encodePageToken(o.after) } : {}) };
        const res = (await coord.run('list', req, ctx(deadlineMs))).response;
        const items = res.items ?? [];
        const last = items[items.length - 1];
        return {
          items: items.map((i) => ({ key: i.key ?? '', ...(o.keysOnly ? {} : { value: i.value ?? new Uint8Array(0) }), version: i.version ?? 0 })),
          ...(res.nextPageToken && last ? { nextAfter: last.key ?? '' } : {}),
        };
      }),
    close: () => {
      if (owned) coord.close();
    },
  };
}
