/**
 * Unit-testing an extension without a cluster (`kvcascade/testing`): the extension module runs
 * in the test's own process, against one in-memory shard (the real versioned state machine and
 * its client sessions), with the real delivery (per-key order, retries, dead letters, the hop
 * limit, event fields, effectively-once writes). A test puts keys, waits for the lambdas to
 * settle, and reads what they wrote; `redeliver` delivers every event again, as a leader change
 * may, to check that a lambda's effects happen once.
 */
import type { ExtensionEvent, ExtensionModule } from '../api.js';
import { DEFAULT_MAX_HOPS } from '../api.js';
import { cursorKey } from '../attempt-record.js';
import { DLQ_PREFIX, WatchDispatcher, type DispatchHost } from '../dispatcher.js';
import { hostServices } from '../host-services.js';
import { kvCallDeadline } from '../sandbox/call-deadline.js';
import { Guest } from '../sandbox/guest.js';
import type { RegisteredWatch } from '../sandbox/types.js';
import type { LambdaKv } from '../store-access.js';
import type { Command, CommandResult, WriteSession } from '../../statemachine/index.js';
import type { Logger } from '../../log.js';
import { MemoryExtensionHost, type MemoryShard } from './memory-host.js';

/** Options of {@link testExtension}. */
export interface TestExtensionOptions {
  /** The extension's name (`ctx.name`; default `test-extension`). */
  readonly name?: string;
  /** `ctx.config` (default `{}`). */
  readonly config?: Record<string, unknown>;
  /** The hop limit (default 8, as on a node). */
  readonly maxHops?: number;
}

/** A line the extension logged through `ctx.log`. */
export interface TestLogLine {
  /** The `ctx.log` method called. */
  readonly level: 'debug' | 'info' | 'warn' | 'error';
  /** The message. */
  readonly msg: string;
  /** The structured fields passed with it (`{}` when none). */
  readonly fields: Record<string, unknown>;
}

/** A dead-lettered event, as the node writes it under `/_dlq/<extension>/`. */
export interface TestDeadLetter {
  /** Its key: `/_dlq/<extension>/<revision, 12 digits><event key>`. */
  readonly key: string;
  /** Why: the failure kind (`threw`, `timeout`, `hop-limit`, `poison`...). */
  readonly kind: string;
  /** The last failure's message. */
  readonly error: string;
  /** Attempts made. */
  readonly attempts: number;
  /** The event that failed. */
  readonly event: { readonly type: string; readonly key: string; readonly version: number };
}

/** A running extension under test, with its in-memory store. */
export interface ExtensionTest {
  /** Writes `key` as a client would (fires the watches); resolves with the new version. */
  put(key: string, value: string | Uint8Array): Promise<number>;
  /** Deletes `key` as a client would; resolves whether it existed. */
  delete(key: string): Promise<boolean>;
  /** Fires the watches of `key` with `value` without storing it. */
  trigger(key: string, value: string | Uint8Array): Promise<void>;
  /** The value of `key` as text (undefined when absent). */
  get(key: string): string | undefined;
  /** The value and version of `key` (undefined when absent). */
  getEntry(key: string): { value: Uint8Array; version: number } | undefined;
  /** The keys under `prefix` with their values as text, in key order. */
  list(prefix: string): { key: string; value: string; version: number }[];
  /** Resolves once every change so far (and every change the lambdas made meanwhile) was handled; rejects after `timeoutMs` (default 10 s). */
  settled(timeoutMs?: number): Promise<void>;
  /**
   * Delivers every event from `fromRevision` on again (default: every event since the
   * extension was loaded), as a new leader may after a failure, then settles: checks that a
   * lambda's effects happen once.
   */
  redeliver(fromRevision?: number): Promise<void>;
  /** The events the extension dead-lettered (retries exhausted, hop limit...). */
  deadLetters(): TestDeadLetter[];
  /** What the extension logged. */
  readonly logs: readonly TestLogLine[];
  /** Lambda invocations so far (retries and redeliveries included). */
  invocations(): number;
  /** The shard's current revision. */
  revision(): number;
  /** Stops delivery and runs the extension's `shutdown()`. */
  stop(): Promise<void>;
}

/** How often a test dispatcher hears that nothing new happened (ms): settles promptly. */
const TEST_PROGRESS_MS = 10;
/** How often `settled` looks (ms). */
const SETTLE_POLL_MS = 5;
const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * Loads extension module `mod` (what `import * as ext from './index.js'` gives, or an object with
 * `initialize`) into an in-memory shard and starts delivering its watches. Example (vitest):
 *
 * ```ts
 * const t = await testExtension(ext, { config: { thresholdPct: 1 } });
 * await t.put('/stocks/ACME', '100');
 * await t.put('/stocks/ACME', '97');
 * await t.settled();
 * expect(t.list('/alerts/ACME/')).toHaveLength(1);
 * await t.stop();
 * ```
 */
export async function testExtension(mod: ExtensionModule | Record<string, unknown>, o: TestExtensionOptions = {}): Promise<ExtensionTest> {
  const name = o.name ?? 'test-extension';
  const maxHops = o.maxHops ?? DEFAULT_MAX_HOPS;
  const host = new MemoryExtensionHost(1, 1);
  const group = host.shardMap().shards[0]!.group;
  host.lead(group, 1);
  const shard = host.shard(group)!;
  const logs: TestLogLine[] = [];
  const services = hostServices(name, { kv: memoryLambdaKv(shard), maxHops, log: collectingLogger(logs), metric: () => {} });
  /** Deadlines of the invocations running, by id: their store calls end before them, as under a runner. */
  const running = new Map<number, { deadlineMs: number; timeoutMs: number }>();
  let nextInvocation = 1;
  const guest = new Guest(name, structuredClone(o.config ?? {}), {
    ...services,
    kv: (op, args, hops, effect, invocation) => {
      const r = invocation !== undefined ? running.get(invocation) : undefined;
      return services.kv(op, args, hops, effect, r ? kvCallDeadline(r.deadlineMs, r.timeoutMs) : undefined);
    },
  });
  const watches: RegisteredWatch[] = await guest.load({ describe: name, load: async () => mod });
  const start = shard.revision();
  let dispatchers: WatchDispatcher[] = [];
  let invocations = 0;
  const invoke = (watchId: number, ev: ExtensionEvent, timeoutMs: number): Promise<void> => {
    invocations++;
    const id = nextInvocation++;
    running.set(id, { deadlineMs: Date.now() + timeoutMs, timeoutMs });
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(Object.assign(new Error(`lambda timed out after ${timeoutMs} ms`), { kind: 'timeout' })), timeoutMs);
      guest.invoke(watchId, ev, id).then(
        () => {
          clearTimeout(timer);
          resolve();
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    }).finally(() => running.delete(id));
  };
  const dispatchHost: DispatchHost = {
    subscribe: (prefix, fromRevision, sink) => shard.subscribe(prefix, fromRevision, sink, TEST_PROGRESS_MS),
    put: async (key, value) => {
      const r = await shard.propose({ type: 'put', key, value }, Date.now() + 5000);
      if (r.type === 'rejected') throw r.error;
    },
    write: async (writes) => {
      const r = await shard.propose(
        { type: 'txn', compares: [], writes: writes.map((w) => (w.value ? { type: 'put' as const, key: w.key, value: w.value } : { type: 'delete' as const, key: w.key })) },
        Date.now() + 5000,
      );
      if (r.type === 'rejected') throw r.error;
    },
    previous: (key, revision) => {
      if (revision < 1) return { version: 0 };
      try {
        const e = shard.getAt(key, revision);
        return e ? { version: e.version, value: e.value } : { version: 0 };
      } catch {
        return undefined;
      }
    },
    shard: group,
    maxHops,
  };
  const startDelivery = (from: number) => {
    dispatchers = watches.map((w) => {
      const d = new WatchDispatcher(name, { id: w.id, prefix: w.prefix, options: w.options }, invoke, dispatchHost);
      d.start(from);
      return d;
    });
  };
  startDelivery(start);
  // Progress reports (nothing new under a prefix) move the cursors past other keys' revisions.
  const ticker = setInterval(() => shard.tick(), TEST_PROGRESS_MS);
  ticker.unref?.();
  const client = (cmd: Command): CommandResult => {
    const r = shard.apply(cmd, 'client', 0);
    if (r.type === 'rejected') throw r.error;
    return r;
  };
  const settled = async (timeoutMs = 10_000): Promise<void> => {
    const until = Date.now() + timeoutMs;
    for (let quiet = 0; quiet < 3; ) {
      const rev = shard.revision();
      const done = dispatchers.every((d) => d.stats.backlog === 0 && d.stats.cursor >= rev);
      quiet = done ? quiet + 1 : 0;
      if (Date.now() > until) {
        throw new Error(`the extension's lambdas did not settle within ${timeoutMs} ms (backlog ${dispatchers.map((d) => d.stats.backlog).join(', ')}; see deadLetters() and logs)`);
      }
      await new Promise((r) => setTimeout(r, SETTLE_POLL_MS));
    }
  };
  return {
    put: async (key, value) => {
      const r = client({ type: 'put', key, value: typeof value === 'string' ? enc.encode(value) : value });
      return r.type === 'put' ? r.version : 0;
    },
    delete: async (key) => {
      const r = client({ type: 'delete', key });
      return r.type === 'delete' && r.deleted;
    },
    trigger: async (key, value) => {
      client({ type: 'triggerPut', key, value: typeof value === 'string' ? enc.encode(value) : value });
    },
    get: (key) => {
      const e = shard.get(key);
      return e ? dec.decode(e.value) : undefined;
    },
    getEntry: (key) => shard.get(key),
    list: (prefix) => shard.sm.list(prefix, { limit: 10_000 }).items.map((i) => ({ key: i.key, value: dec.decode(i.value), version: i.version })),
    settled,
    redeliver: async (fromRevision = start + 1) => {
      await settled();
      for (const d of dispatchers) await d.stop(false);
      // A new leader that read no cursor beyond `fromRevision - 1` (its replicated cursors are ignored).
      for (const w of watches) await shard.propose({ type: 'delete', key: cursorKey(name, w) }, Date.now() + 5000);
      startDelivery(Math.max(0, fromRevision - 1));
      await settled();
    },
    deadLetters: () =>
      shard.sm.list(`${DLQ_PREFIX}${name}/`, { limit: 10_000 }).items.map((i) => {
        const body = JSON.parse(dec.decode(i.value)) as Omit<TestDeadLetter, 'key'>;
        return { key: i.key, kind: body.kind, error: body.error, attempts: body.attempts, event: body.event };
      }),
    logs,
    invocations: () => invocations,
    revision: () => shard.revision(),
    stop: async () => {
      clearInterval(ticker);
      for (const d of dispatchers) await d.stop(false);
      await guest.shutdown();
    },
  };
}

/** The store of the lambdas under test: the in-memory shard, with their hop counts and idempotency keys. */
function memoryLambdaKv(shard: MemoryShard): LambdaKv {
  const session = (effect: { id: string; seq: number } | undefined): WriteSession | undefined => (effect ? { id: effect.id, seq: effect.seq, ackedBelow: 0 } : undefined);
  const apply = (cmd: Command, hops: number, effect?: { id: string; seq: number }): CommandResult => {
    const r = shard.apply(cmd, 'client', hops, session(effect));
    if (r.type === 'rejected') throw r.error;
    return r;
  };
  return {
    get: async (key, o) => {
      const at = o.atVersion ? { atRevision: o.atVersion } : o.atTimeMs ? { atTimeMs: o.atTimeMs } : undefined;
      const g = shard.sm.get(key, at);
      return g ? { found: true, value: g.value, version: g.version, timestampMs: g.timestampMs } : { found: false, version: 0, timestampMs: 0 };
    },
    put: async (key, value, o, hops, _deadline, effect) => {
      const r = apply({ type: 'put', key, value, ...(o.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {}) }, hops, effect);
      if (r.type !== 'put') throw new Error(`put answered ${r.type}`);
      return { succeeded: r.succeeded, version: r.succeeded ? r.version : 0, currentVersion: r.version };
    },
    delete: async (key, o, hops, _deadline, effect) => {
      const r = apply({ type: 'delete', key, ...(o.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {}) }, hops, effect);
      if (r.type !== 'delete') throw new Error(`delete answered ${r.type}`);
      return { succeeded: r.succeeded, deleted: r.deleted };
    },
    trigger: async (key, value, hops, _deadline, effect) => {
      apply({ type: 'triggerPut', key, value }, hops, effect);
    },
    txn: async (t, hops, _deadline, effect) => {
      const r = apply({ type: 'txn', compares: t.compares, writes: t.writes }, hops, effect);
      if (r.type !== 'txn') throw new Error(`txn answered ${r.type}`);
      return { succeeded: r.succeeded, revision: r.revision, failedCompares: [...r.failedCompares] };
    },
    list: async (prefix, o) => {
      const page = shard.sm.list(prefix, { limit: o.limit ?? 1000, keysOnly: o.keysOnly ?? false, ...(o.after !== undefined ? { after: o.after } : {}) });
      return { items: page.items.map((i) => ({ key: i.key, ...(i.value !== undefined ? { value: i.value } : {}), version: i.version })), ...(page.nextAfter !== undefined ? { nextAfter: page.nextAfter } : {}) };
    },
  };
}

/** A Logger (the part host services use) that keeps every line in `into`. */
function collectingLogger(into: TestLogLine[]): Logger {
  const at = (level: TestLogLine['level']) => (fields: unknown, msg?: string) => {
    into.push({ level, msg: msg ?? '', fields: (fields ?? {}) as Record<string, unknown> });
  };
  const logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error'), child: () => logger };
  return logger as unknown as Logger;
}
