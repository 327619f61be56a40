/**
 * What an extension's lambdas may call on their node (the sandbox's HostServices): the store
 * (through the LambdaKv, with the reserved keyspace out of reach and the hop limit on writes),
 * logging into the node's log, and the extension's own metrics.
 */
import { createHash } from 'node:crypto';
import type { Logger } from '../log.js';
import { DeadlineError } from '../node/backend.js';
import { realClock, type Clock } from '../node/scheduler.js';
import { isReservedKey, prefixInReserved } from '../sharding/index.js';
import { reservedKeyError, reservedPrefixError } from '../statemachine/index.js';
import type { EffectSession, HostServices, KvOp, LogLevel, MetricOp } from './sandbox/types.js';
import type { LambdaKv, LambdaTxn } from './store-access.js';

/**
 * Deadline of a lambda's store call (ms from the call), or earlier: a call made while handling an
 * event ends before its invocation times out (the runner's `kvCallDeadline`).
 */
export const LAMBDA_CALL_MS = 10_000;

/**
 * A lambda's store call not made: the invocation it belongs to is about to time out (the runner's
 * call deadline has passed). Retryable like any failed call: the event is delivered again.
 */
export class LambdaCallDeadlineError extends DeadlineError {
  constructor(op: string) {
    super(`ctx.kv.${op} not attempted: the invocation making it is about to time out (its store calls had to end by now)`);
    this.name = 'LambdaCallDeadlineError';
  }
}

const enc = new TextEncoder();

/** A write attempted deeper in a lambda chain than the hop limit allows. */
export class HopLimitError extends Error {
  constructor(hops: number, max: number) {
    super(`hop limit exceeded: this write would be hop ${hops} of a lambda chain (limit ${max})`);
    this.name = 'HopLimitError';
  }
}

/** An extension's own metric: counted or observed (see MetricOp). */
export type ExtensionMetricSink = (kind: 'counter' | 'histogram', metricName: string, help: string, op: MetricOp) => void;

/** The services of extension `name`'s lambdas: `kv` the store as lambdas see it, writes refused beyond `maxHops`. */
export function hostServices(
  name: string,
  o: {
    readonly kv: LambdaKv;
    readonly maxHops: number;
    readonly log: Logger;
    readonly metric: ExtensionMetricSink;
    /**
     * Salts the idempotency keys of the lambdas' writes (the record's cursor epoch): a load that
     * replays events on purpose (`from`) makes new effects, while a replacement or a redelivery
     * (same epoch) repeats none.
     */
    readonly effectEpoch?: number;
    /** The clock the lambdas' call deadlines are read on (default: the wall clock). */
    readonly clock?: Clock;
  },
): HostServices {
  const log = o.log.child({ extension: name });
  const salt = (e: EffectSession | undefined): EffectSession | undefined =>
    e && o.effectEpoch ? { id: `fx${createHash('sha256').update(`${e.id}\u0000${o.effectEpoch}`).digest('base64url').slice(0, 40)}`, seq: e.seq } : e;
  return {
    kv: (op: KvOp, args: unknown[], hops: number, effect?: EffectSession, deadlineMs?: number) => {
      const now = (o.clock ?? realClock).now();
      // Within the invocation's own time (the runner's deadline): a call that waits out a leader
      // change ends with the store's error while the lambda can still fail with it (retried).
      if (deadlineMs !== undefined && deadlineMs <= now) return Promise.reject(new LambdaCallDeadlineError(op));
      return kvCall(o.kv, o.maxHops, op, args, hops, salt(effect), Math.min(now + LAMBDA_CALL_MS, deadlineMs ?? Infinity));
    },
    log: (level: LogLevel, msg: string, fields?: Record<string, unknown>) => log[level](fields ?? {}, msg),
    metric: o.metric,
  };
}

/** One store call of a lambda at chain depth `hops`, to finish by `deadlineMs`. */
async function kvCall(kv: LambdaKv, maxHops: number, op: KvOp, args: unknown[], hops: number, effect: EffectSession | undefined, deadlineMs: number): Promise<unknown> {
  // Lambdas are user code, like clients: the reserved keyspace is out of their reach (their
  // writes are client-origin anyway, so the shards would refuse them too).
  const target = args[0];
  if (typeof target === 'string') {
    if (op === 'list' ? prefixInReserved(target) : isReservedKey(target)) {
      throw op === 'list' ? reservedPrefixError(target) : reservedKeyError(target, op === 'get' ? 'read' : 'write');
    }
  }
  const fx = effect && typeof effect.id === 'string' && Number.isSafeInteger(effect.seq) && effect.seq >= 1 ? { id: effect.id, seq: effect.seq } : undefined;
  const bytes = (v: unknown): Uint8Array => (typeof v === 'string' ? enc.encode(v) : (v as Uint8Array));
  const writable = (): void => {
    if (hops > maxHops) throw new HopLimitError(hops, maxHops);
  };
  const expected = (o: { expectedVersion?: number } | undefined) => (o?.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {});
  switch (op) {
    case 'get': {
      const [key, o] = args as [string, { atVersion?: number; atTimeMs?: number } | undefined];
      const g = await kv.get(key, { ...(o?.atVersion ? { atVersion: o.atVersion } : {}), ...(o?.atTimeMs ? { atTimeMs: o.atTimeMs } : {}) }, deadlineMs);
      return { found: g.found, value: g.value, version: g.version, timestamp: g.timestampMs };
    }
    case 'put': {
      const [key, value, o] = args as [string, unknown, { expectedVersion?: number } | undefined];
      writable();
      const p = await kv.put(key, bytes(value), expected(o), hops, deadlineMs, fx);
      return { succeeded: p.succeeded, version: p.version, currentVersion: p.currentVersion };
    }
    case 'trigger': {
      const [key, value] = args as [string, unknown];
      writable();
      await kv.trigger(key, bytes(value), hops, deadlineMs, fx);
      return undefined;
    }
    case 'delete': {
      const [key, o] = args as [string, { expectedVersion?: number } | undefined];
      writable();
      const r = await kv.delete(key, expected(o), hops, deadlineMs, fx);
      return { succeeded: r.succeeded, deleted: r.deleted };
    }
    case 'txn': {
      const [t] = args as [LambdaTxn];
      if (typeof t !== 'object' || t === null || !Array.isArray(t.compares) || !Array.isArray(t.writes)) throw new TypeError('malformed txn');
      for (const k of [...t.compares.map((c) => c.key), ...t.writes.map((w) => w.key)]) if (isReservedKey(k)) throw reservedKeyError(k, 'write');
      if (t.writes.length > 0) writable();
      const r = await kv.txn(t, hops, deadlineMs, fx);
      return { succeeded: r.succeeded, revision: r.revision, failedCompares: r.failedCompares };
    }
    case 'list': {
      const [prefix, o] = args as [string, { limit?: number; after?: string; keysOnly?: boolean } | undefined];
      const page = await kv.list(prefix, { ...(o?.limit ? { limit: o.limit } : {}), ...(o?.after ? { after: o.after } : {}), keysOnly: o?.keysOnly ?? false }, deadlineMs);
      return { items: page.items.map((i) => ({ key: i.key, value: i.value, version: i.version })), nextAfter: page.nextAfter };
    }
  }
}

