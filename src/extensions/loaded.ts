/**
 * An extension as loaded on this node, shared by the manager's parts: its registry record, its
 * state and runner, and its dispatchers (one per watch and shard led here).
 */
import type { DispatchStats, WatchDispatcher } from './dispatcher.js';
import type { ExtensionRecord } from './registry.js';
import type { ExtensionRunner } from './sandbox/runner.js';

/** Where an extension stands on this node (`paused` and `half-open` come from its circuit breaker). */
export type ExtensionState = 'loading' | 'running' | 'paused' | 'half-open' | 'failed' | 'unloaded';

/** One running dispatcher: one watch of one extension in one shard led here. */
export interface Delivery {
  readonly group: number;
  readonly dispatcher: WatchDispatcher;
}

/** An extension known on this node. */
export interface Loaded {
  record: ExtensionRecord;
  state: ExtensionState;
  error?: string;
  runner?: ExtensionRunner;
  /** Its dispatchers here, by `<group>/<watch id>`. */
  readonly deliveries: Map<string, Delivery>;
  /** Being replaced or stopped: no dispatcher may start for it any more. */
  stopping?: boolean;
}

/** `l`'s dispatchers of watch `watchId`, by shard. */
export function watchDeliveries(l: Loaded, watchId: number): Delivery[] {
  return [...l.deliveries.values()].filter((d) => d.dispatcher.watch.id === watchId).sort((a, b) => a.group - b.group);
}

/** Counters summed over shards; `cursor` the lowest, `lastLatencyMs` the highest. Undefined for none. */
export function sumStats(all: readonly DispatchStats[]): DispatchStats | undefined {
  if (all.length === 0) return undefined;
  if (all.length === 1) return { ...all[0]! };
  const out: DispatchStats = { invocations: 0, errors: 0, retries: 0, deadLettered: 0, delivered: 0, backlog: 0, cursor: Number.MAX_SAFE_INTEGER, lastLatencyMs: 0 };
  for (const s of all) {
    out.invocations += s.invocations;
    out.errors += s.errors;
    out.retries += s.retries;
    out.deadLettered += s.deadLettered;
    out.delivered += s.delivered;
    out.backlog += s.backlog;
    out.cursor = Math.min(out.cursor, s.cursor);
    out.lastLatencyMs = Math.max(out.lastLatencyMs, s.lastLatencyMs);
  }
  return out;
}
