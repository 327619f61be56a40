/** Reads kvd's `/metrics` counters over a measured window and turns them into per-op figures (peer messages, fsynced rounds, engine writes per put). */

/** The counters read, by the short name used in notes and JSON. */
export const NODE_COUNTERS = {
  msgs: 'kvcascade_peer_messages_sent_total',
  batches: 'kvcascade_peer_batches_sent_total',
  rounds: 'kvcascade_fsync_duration_seconds_count',
  roundEntries: 'kvcascade_fsync_batch_entries_sum',
  overlappedRounds: 'kvcascade_ready_rounds_overlapped_total',
  fsyncSeconds: 'kvcascade_fsync_duration_seconds_sum',
  engineOps: 'kvcascade_engine_ops_total',
  engineBatches: 'kvcascade_engine_batches_total',
  unsyncedBatches: 'kvcascade_engine_unsynced_batches_total',
  engineClears: 'kvcascade_engine_clears_total',
} as const;

/** Label sets left out of a counter's sum: `engineOps` counts the batches' puts and deletes, not the keys deleted by clears. */
const SKIP_LABELS: Partial<Record<NodeCounterName, string>> = { engineOps: 'op="clear"' };

/** A counter's short name. */
export type NodeCounterName = keyof typeof NODE_COUNTERS;

/** Counter totals summed over every node (a counter absent from every node is absent here). */
export type NodeCounters = Partial<Record<NodeCounterName, number>>;

/** Sums, over the Prometheus text `body`, every sample of metric `name` (all label sets but those containing `skip`); undefined when there is none. */
export function sumMetric(body: string, name: string, skip?: string): number | undefined {
  let sum: number | undefined;
  for (const line of body.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue; // another metric with this prefix
    if (skip !== undefined && rest[0] === '{' && rest.includes(skip)) continue;
    const v = Number(rest.slice(rest.lastIndexOf(' ') + 1));
    if (Number.isFinite(v)) sum = (sum ?? 0) + v;
  }
  return sum;
}

/** Scrapes every node's `/metrics` on 127.0.0.1 and sums the counters; undefined when a node did not answer. */
export async function readNodeCounters(ports: readonly (number | undefined)[]): Promise<NodeCounters | undefined> {
  if (ports.length === 0) return undefined;
  const bodies = await Promise.all(ports.map(scrapeMetrics));
  if (bodies.some((b) => b === undefined)) return undefined;
  const out: NodeCounters = {};
  for (const [short, name] of Object.entries(NODE_COUNTERS) as [NodeCounterName, string][]) {
    let total: number | undefined;
    for (const b of bodies) {
      const v = sumMetric(b!, name, SKIP_LABELS[short]);
      if (v !== undefined) total = (total ?? 0) + v;
    }
    if (total !== undefined) out[short] = total;
  }
  return out;
}

/** Per-op deltas between two readings (all nodes), plus entries per fsynced round per node and its mean fsync time; only counters present in both. */
export function perOp(start: NodeCounters, end: NodeCounters, ops: number, nodes: number): Record<string, number> {
  const out: Record<string, number> = {};
  if (ops <= 0) return out;
  for (const k of Object.keys(NODE_COUNTERS) as NodeCounterName[]) {
    const a = start[k];
    const b = end[k];
    if (a !== undefined && b !== undefined && k !== 'roundEntries' && k !== 'fsyncSeconds' && k !== 'overlappedRounds') out[k] = (b - a) / ops;
  }
  const rounds = (end.rounds ?? 0) - (start.rounds ?? 0);
  if (rounds > 0 && start.roundEntries !== undefined && end.roundEntries !== undefined) {
    out.entriesPerRound = (end.roundEntries - start.roundEntries) / rounds;
  }
  if (rounds > 0 && start.overlappedRounds !== undefined && end.overlappedRounds !== undefined) {
    out.overlappedShare = (end.overlappedRounds - start.overlappedRounds) / rounds;
  }
  if (rounds > 0 && start.fsyncSeconds !== undefined && end.fsyncSeconds !== undefined) {
    out.fsyncMsPerRound = (1000 * (end.fsyncSeconds - start.fsyncSeconds)) / rounds;
  }
  if (nodes > 0) out.nodes = nodes;
  return out;
}

/** One note for the table: "per op (3 nodes): msgs 6.1, batches 0.74, rounds 0.31, eng ops 13, eng batches 0.4; 10 entries/round". */
export function perOpNote(p: Record<string, number>): string | undefined {
  const parts: string[] = [];
  const f = (x: number): string => (x >= 10 ? x.toFixed(1) : x.toFixed(2));
  if (p.msgs !== undefined) parts.push(`msgs ${f(p.msgs)}`);
  if (p.batches !== undefined) parts.push(`batches ${f(p.batches)}`);
  if (p.rounds !== undefined) parts.push(`fsync rounds ${f(p.rounds)}`);
  if (p.engineOps !== undefined) parts.push(`engine ops ${f(p.engineOps)}`);
  if (p.engineBatches !== undefined) parts.push(`engine batches ${f(p.engineBatches)}${p.unsyncedBatches !== undefined ? ` (unsynced ${f(p.unsyncedBatches)})` : ''}`);
  if (p.engineClears !== undefined && p.engineClears > 0) parts.push(`engine clears ${p.engineClears.toFixed(4)}`);
  if (parts.length === 0) return undefined;
  let tail = p.entriesPerRound !== undefined ? `; ${p.entriesPerRound.toFixed(1)} entries/fsynced round` : '';
  if (p.fsyncMsPerRound !== undefined) tail += `, ${p.fsyncMsPerRound.toFixed(1)} ms each`;
  if (p.overlappedShare !== undefined && p.overlappedShare > 0) tail += `, ${(100 * p.overlappedShare).toFixed(0)} % overlapped`;
  return `per op, all nodes: ${parts.join(', ')}${tail}`;
}

/** Scrapes http://127.0.0.1:PORT/metrics (undefined on failure or without a port). */
export async function scrapeMetrics(port: number | undefined): Promise<string | undefined> {
  if (port === undefined) return undefined;
  try {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5_000) });
    return res.ok ? await res.text() : undefined;
  } catch {
    return undefined;
  }
}
