/**
 * Handing leaderships over before a planned stop (Kubernetes preStop, SIGTERM): every group this
 * node leads is transferred to the most caught-up live voter, retried with another voter when a
 * transfer times out, until none is led here or the deadline passes. Meanwhile the driver refuses
 * leadership and tells peers it is draining (driver.ts, quiescence.ts), so nothing comes back.
 */
import type { NodeId } from '../raft/index.js';
import type { ShardReplica } from './replica.js';

/** What a drain did. */
export interface DrainResult {
  /** Groups led here when the drain started. */
  readonly led: number;
  /** Groups still led here at the deadline (their followers could not take over in time). */
  readonly stillLeading: number[];
}

/** What handing over needs from the node. */
export interface DrainHost {
  readonly id: NodeId;
  /** The replicas hosted here now. */
  replicas(): Iterable<ShardReplica>;
  /** Whether a peer may be given leadership (live, not draining itself). */
  mayLead(peer: NodeId): boolean;
  /** The node's clock (ms). */
  now(): number;
  /** Resolves after `ms` on the node's clock. */
  sleep(ms: number): Promise<void>;
}

/** The voter most caught up with `r`'s log that may lead, if any (leader only). */
export function handoverTarget(r: ShardReplica, self: NodeId, mayLead: (peer: NodeId) => boolean): NodeId | undefined {
  const st = r.status();
  let best: NodeId | undefined;
  let bestMatch = -1;
  for (const v of st.conf.voters) {
    if (v === self || !mayLead(v)) continue;
    const match = st.matched.get(v) ?? 0;
    if (match > bestMatch) {
      best = v;
      bestMatch = match;
    }
  }
  return best;
}

/**
 * Transfers every leadership away, polling every `pollMs`, until none is left or `deadlineMs`.
 * A transfer Raft aborts (after an election timeout) is retried, with the best target then. It
 * gives up early when no group has anyone to hand over to (every other voter down or draining
 * too, as when a whole local cluster stops at once).
 */
export async function drainLeaderships(host: DrainHost, deadlineMs: number, pollMs: number): Promise<DrainResult> {
  const leading = (): ShardReplica[] => [...host.replicas()].filter((r) => r.isLeader);
  const led = leading().length;
  for (;;) {
    const left = leading();
    if (left.length === 0 || host.now() >= deadlineMs) return { led, stillLeading: left.map((r) => r.group) };
    let progress = false;
    for (const r of left) {
      if (r.transferringLeadership) {
        progress = true;
        continue;
      }
      const target = handoverTarget(r, host.id, (p) => host.mayLead(p));
      if (target !== undefined) {
        r.transferLeader(target);
        progress = true;
      }
    }
    if (!progress) return { led, stillLeading: left.map((r) => r.group) };
    await host.sleep(pollMs);
  }
}
