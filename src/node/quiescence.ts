/**
 * Quiescence of idle groups on a node, and the node-level liveness it rests on. An idle group's
 * leader quiesces it (src/raft: no heartbeats, followers stop their election timers), so a node
 * hosting many idle shards sends nothing for them. What replaces the per-group heartbeats is one
 * keepalive per peer node per tick, sent only when nothing else went to that peer during the
 * tick: a quiesced follower whose leader's node has been silent for an election timeout wakes up
 * (and may campaign), a quiesced leader wakes when any member's node goes silent (so check-quorum
 * can depose it, and a returning member is caught up). A group quiesces only while every member's
 * node is heard from.
 */
import type { Message, NodeId } from '../raft/index.js';
import { MessageType } from '../raft/index.js';
import type { ShardReplica } from './replica.js';

/** Ticks a group must have had nothing in flight before its leader quiesces it. */
export const QUIESCE_IDLE_TICKS = 3;

/**
 * The reserved group id of node keepalives: a heartbeat-shaped message no replica receives
 * (receivers record the sender as live and drop it; no group has this id).
 */
export const LIVENESS_GROUP = 0xffff_ffff;

/** The keepalive context of a draining node: it hands its leaderships away and must not be given any. */
export const DRAINING_CONTEXT = 'draining';

/** The keepalive `from` sends to `to` (saying whether `from` is draining). */
export function keepalive(from: NodeId, to: NodeId, draining = false): Message {
  return { type: MessageType.Heartbeat, group: LIVENESS_GROUP, from, to, term: 1, commit: 0, ...(draining ? { context: DRAINING_CONTEXT } : {}) };
}

/**
 * One tick of the quiescence policy over a node's replicas: wake what must wake, quiesce the idle.
 * `live(peer)` says whether the peer's node was heard from within an election timeout.
 */
export function stepQuiescence(replicas: Iterable<ShardReplica>, self: NodeId, live: (peer: NodeId) => boolean): void {
  for (const r of replicas) {
    if (r.quiesced) {
      if (r.isLeader) {
        if (r.members().some((p) => p !== self && !live(p))) r.wake();
      } else if (r.leader === 0 || !live(r.leader)) {
        r.wake(true);
      }
    } else if (r.isLeader && r.members().every((p) => p === self || live(p))) {
      r.quiesceIfIdle(QUIESCE_IDLE_TICKS);
    }
  }
}

/**
 * Before a quiesced follower steps a (pre-)vote request: if its leader's node has gone silent, it
 * wakes as one whose leader lease has lapsed, so it can grant the vote at once. (Woken by the
 * message alone it would keep the lease it had when it quiesced and ignore the candidate for one
 * more election timeout, delaying the failover of an idle group.) While the leader's node is
 * heard from, the lease holds and a disruptive candidate is ignored as usual.
 */
export function beforeVoteRequest(r: ShardReplica, m: Message, live: (peer: NodeId) => boolean): void {
  if (m.type !== MessageType.PreVote && m.type !== MessageType.Vote) return;
  if (r.quiesced && !r.isLeader && (r.leader === 0 || !live(r.leader))) r.wake(true);
}

