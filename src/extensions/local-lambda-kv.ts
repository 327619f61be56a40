/**
 * The fallback {@link LambdaKv} of a node run without the server layer (in-process tests): every
 * call runs on this node, on the key's shard (writes carry the hop count and the store's write
 * session, so a store that retries a call deduplicates it), and so succeeds only where this node
 * leads that shard; a listing spanning shards is merged from each of them.
 */
import type { KvBackend } from '../node/backend.js';
import type { WriteSession } from '../statemachine/index.js';
import type { EffectKey, LambdaKv } from './store-access.js';
import { WriteSessionSource } from './write-session.js';

/** Keys per listed page when the lambda names no limit (the state machine's default). */
const DEFAULT_PAGE = 1000;

/** What {@link localLambdaKv} needs of the node. */
export type LocalStore = Pick<KvBackend, 'get' | 'put' | 'delete' | 'trigger' | 'txn' | 'list' | 'shardsForPrefix'>;

/**
 * A LambdaKv over the local node only (NotLeaderError for shards another node leads). Its writes
 * carry a client session (`sessions`, default a new random one): each write gets its own seq,
 * which `node` may reuse to retry the write safely.
 */
export function localLambdaKv(node: LocalStore, sessions: WriteSessionSource = new WriteSessionSource()): LambdaKv {
  /** A write under its effect's session (kept: ackedBelow 0), else under a new seq of the store's own session. */
  const withSession = <T>(effect: EffectKey | undefined, fn: (session: WriteSession) => Promise<T>): Promise<T> =>
    effect ? fn({ id: effect.id, seq: effect.seq, ackedBelow: 0 }) : sessions.run(fn);
  return {
    get: async (key, o, deadlineMs) => {
      const g = await node.get(
        { key, consistency: 'linearizable', ...(o.atVersion ? { atVersion: o.atVersion } : {}), ...(o.atTimeMs ? { atTimeMs: o.atTimeMs } : {}) },
        { deadlineMs },
      );
      return { found: g.found, ...(g.value ? { value: g.value } : {}), version: g.version, timestampMs: g.timestampMs };
    },
    put: async (key, value, o, hops, deadlineMs, effect) => {
      const p = await withSession(effect, (session) =>
        node.put({ key, value, ...(o.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {}) }, { deadlineMs, hops, session }),
      );
      return { succeeded: p.succeeded, version: p.succeeded ? p.version : 0, currentVersion: p.succeeded ? p.version : (p.current?.version ?? p.version) };
    },
    delete: async (key, o, hops, deadlineMs, effect) => {
      const d = await withSession(effect, (session) =>
        node.delete({ key, ...(o.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {}) }, { deadlineMs, hops, session }),
      );
      return { succeeded: d.succeeded, deleted: d.deleted };
    },
    trigger: async (key, value, hops, deadlineMs, effect) => {
      await withSession(effect, (session) => node.trigger({ key, value }, { deadlineMs, hops, session }));
    },
    txn: async (t, hops, deadlineMs, effect) => {
      const r = await withSession(effect, (session) => node.txn({ compares: t.compares, writes: t.writes }, { deadlineMs, hops, session }));
      return { succeeded: r.succeeded, revision: r.revision, failedCompares: [...r.failedCompares] };
    },
    list: async (prefix, o, deadlineMs) => {
      const limit = o.limit ?? DEFAULT_PAGE;
      const groups = node.shardsForPrefix(prefix);
      const pages = await Promise.all(
        groups.map((shard) =>
          node.list(
            { prefix, shard, limit, keysOnly: o.keysOnly ?? false, consistency: 'linearizable', ...(o.after !== undefined ? { after: o.after } : {}) },
            { deadlineMs },
          ),
        ),
      );
      // Each shard gave its first `limit` keys after `after`; the first `limit` of their union are
      // exactly the first `limit` keys of the prefix (a full page reaches at least as far).
      const all = pages.flatMap((p) => p.items).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      const items = all.slice(0, limit);
      const more = all.length > limit || pages.some((p) => p.nextAfter !== undefined);
      const last = items[items.length - 1];
      return {
        items: items.map((i) => ({ key: i.key, ...(i.value !== undefined ? { value: i.value } : {}), version: i.version })),
        ...(more && last ? { nextAfter: last.key } : {}),
      };
    },
  };
}
