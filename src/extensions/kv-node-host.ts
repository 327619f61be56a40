/**
 * The ExtensionHost of a real node: a thin adapter over KvNode. Leadership changes come from the
 * node's ready loop (KvNode.onLeadershipChanged); reads go to the replica hosted here, resolved
 * at each call (a replica dropped and recreated is followed); proposals go through
 * KvNode.execute with system origin; event subscriptions are the replica's watches (each event
 * carries the hop count the state machine recorded with it).
 */
import { META_GROUP, type KvNode } from '../node/kv-node.js';
import { sleep } from '../node/scheduler.js';
import type { ExtensionHost, HostEvent, HostShard } from './host.js';

/** How long a follower waits, at most, to apply what it knows committed before reporting its revision. */
const FOLLOWER_CATCH_UP_MS = 2000;
/** How often a follower's applied index is looked at while it catches up. */
const CATCH_UP_POLL_MS = 5;
/** The shortest deadline given to the linearizable read behind a leader's current revision. */
const MIN_LEADER_READ_MS = 1000;

/** The ExtensionHost of `node`. */
export function kvNodeHost(node: KvNode): ExtensionHost {
  const shards = new Map<number, HostShard>();
  const shard = (group: number): HostShard | undefined => {
    if (!node.replica(group)) return undefined;
    let s = shards.get(group);
    if (!s) {
      s = replicaShard(node, group);
      shards.set(group, s);
    }
    return s;
  };
  return {
    nodeId: node.id,
    shardMap: () => node.shardMap(),
    onShardMapChanged: (fn) => node.onMapChanged(fn),
    ledShards: () => new Map([...node.ledGroups()].filter(([g]) => g !== META_GROUP)),
    onLeadershipChanged: (fn) =>
      node.onLeadershipChanged((c) => {
        if (c.group !== META_GROUP) fn(c);
      }),
    shard,
    meta: () => {
      const m = shard(META_GROUP);
      if (!m) throw new Error('metadata group not hosted here');
      return m;
    },
    clock: node.scheduler,
  };
}

/** The HostShard of `group` on `node` (its replica looked up at each call). */
function replicaShard(node: KvNode, group: number): HostShard {
  const clock = node.scheduler;
  const replica = () => {
    const r = node.replica(group);
    if (!r) throw new Error(`group ${group} is no longer hosted on node ${node.id}`);
    return r;
  };
  return {
    group,
    isLeader: () => node.replica(group)?.isLeader ?? false,
    holdsLease: () => node.holdsLease(group),
    get: (key) => {
      const got = node.replica(group)?.readValue(key);
      return got ? { value: got.value, version: got.version } : undefined;
    },
    getAt: (key, revision) => {
      const got = replica().readValue(key, { atRevision: revision });
      return got ? { value: got.value, version: got.version } : undefined;
    },
    list: (prefix, o) => {
      const r = node.replica(group);
      if (!r) return { items: [] };
      const page = r.list(prefix, { limit: o.limit, keysOnly: o.keysOnly ?? false, ...(o.after !== undefined ? { after: o.after } : {}) });
      return { items: page.items, ...(page.nextAfter !== undefined ? { nextAfter: page.nextAfter } : {}) };
    },
    revision: () => replica().revision,
    currentRevision: async (untilMs) => {
      const r = replica();
      try {
        // A ReadIndex round (through the leader on a follower) makes the revision no older than
        // any write acknowledged so far.
        const caught = await node.caughtUp({ deadlineMs: Math.max(clock.now() + MIN_LEADER_READ_MS, untilMs) }, group);
        return caught.revision;
      } catch {
        // no leader answered in time: fall back to what this replica knows is committed
      }
      // A follower may lag a little behind: wait briefly for it to apply what it knows committed.
      const target = r.commitIndex;
      const catchUp = Math.min(untilMs, clock.now() + FOLLOWER_CATCH_UP_MS);
      while (r.appliedIndex < target && clock.now() < catchUp) await sleep(clock, CATCH_UP_POLL_MS);
      return r.revision;
    },
    barrier: async (deadlineMs) => {
      await node.readable('linearizable', { deadlineMs }, group);
    },
    subscribe: (prefix, fromRevision, sink, progressIntervalMs) => {
      const r = replica();
      return r.watch(
        { prefix, fromRevision, progressIntervalMs },
        {
          events: (events, upTo) => sink.events(events.map((e): HostEvent => ({ ...e, hops: e.hops ?? 0 })), upTo),
          progress: (revision) => sink.progress(revision),
          canceled: (reason, compactRevision) => sink.canceled(reason, compactRevision),
          ...(sink.writable ? { writable: () => sink.writable!() } : {}),
          ...(sink.onDrain ? { onDrain: (cb: () => void) => sink.onDrain!(cb) } : {}),
        },
      );
    },
    // Looked up at call time (tests wrap node.execute to hold writes).
    propose: async (cmd, deadlineMs, session) => node.execute(group, cmd, { deadlineMs, ...(session ? { session } : {}) }, 'system'),
  };
}
