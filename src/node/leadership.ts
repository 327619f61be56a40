/**
 * Who leads each group hosted on a node, as the ready loop sees it after each round: logs and
 * reports leader changes (any node), and pushes this node's own gains and losses of leadership to
 * listeners (the extension host subscribes instead of polling).
 */
import type { Logger } from '../log.js';
import type { LeadershipChange, NodeObserver } from './node-options.js';
import type { ShardReplica } from './replica.js';

/** Tracks leaders per group and tells listeners when this node gains or loses a group's leadership. */
export class LeadershipTracker {
  /** The last `leader@term` logged per group. */
  private readonly lastLeader = new Map<number, string>();
  /** The groups a replica here leads, with the term it leads in (as the ready loop last saw them). */
  private readonly led = new Map<number, number>();
  private readonly listeners = new Set<(change: LeadershipChange) => void>();

  constructor(
    private readonly log: Logger,
    private readonly observer: () => NodeObserver,
  ) {}

  /** Logs and reports a change of `r`'s group leader (called when a Ready carried a soft state). */
  noteLeader(r: ShardReplica): void {
    const s = r.status();
    const key = `${s.leader}@${s.term}`;
    if (this.lastLeader.get(r.group) === key) return;
    this.lastLeader.set(r.group, key);
    this.log.info({ group: r.group, leader: s.leader, term: s.term, role: s.role }, 'leader changed');
    this.observer().leaderChanged?.(r.group, s.leader, s.term);
  }

  /**
   * Records who leads `group` here after a ready round (`term` undefined: not this node) and tells
   * the leadership listeners of a change: a loss (of the term led before) and then a gain (of the
   * new term), so a new term led here again reads as lost then gained. The listeners run in a
   * microtask, outside the ready loop.
   */
  noteLeadership(group: number, term: number | undefined): void {
    const was = this.led.get(group);
    if (was === term) return;
    const changes: LeadershipChange[] = [];
    if (was !== undefined) changes.push({ group, term: was, leader: false });
    if (term !== undefined) changes.push({ group, term, leader: true });
    if (term === undefined) this.led.delete(group);
    else this.led.set(group, term);
    if (this.listeners.size === 0) return;
    queueMicrotask(() => {
      for (const c of changes) {
        for (const fn of this.listeners) {
          try {
            fn(c);
          } catch (e) {
            this.log.error({ group: c.group, err: String(e) }, 'a leadership listener threw');
          }
        }
      }
    });
  }

  /** Forgets a dropped group: its leader is no longer tracked, and a leadership held here is reported lost. */
  forget(group: number): void {
    this.lastLeader.delete(group);
    this.noteLeadership(group, undefined);
  }

  /** Calls `fn` on each gain or loss of leadership here; returns an unsubscribe function. */
  onChange(fn: (change: LeadershipChange) => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  /** The groups a replica here leads (group → term), as of the last ready round. */
  ledGroups(): ReadonlyMap<number, number> {
    return new Map(this.led);
  }
}
