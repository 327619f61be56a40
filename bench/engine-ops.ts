/** LevelDB operations per write on kvd's nodes, by record kind: scraped from each node's `/metrics` before and after a workload, divided by the revisions the data groups created meanwhile (one per write). */
import type { RunningCluster } from './util.js';

/** One scrape of every node: engine ops by `record op` (op: put, del, clear) and the revisions of the data groups, summed over the nodes. */
export interface EngineOpsSample {
  readonly ops: ReadonlyMap<string, number>;
  /** Sum over nodes of the data groups' (group > 0) revisions. */
  readonly revisions: number;
  /** Nodes that answered. */
  readonly nodes: number;
}

const OPS_LINE = /^kvcascade_engine_ops_total\{record="([^"]+)",op="(put|del|clear)"\} ([0-9.e+]+)$/;
const REVISION_LINE = /^kvcascade_revision\{group="(\d+)"\} ([0-9.e+]+)$/;

/** Scrapes every kvd node of `cluster` (undefined when it is not kvd or exposes no metrics ports). */
export async function sampleEngineOps(cluster: RunningCluster): Promise<EngineOpsSample | undefined> {
  if (cluster.system !== 'kvd' || cluster.metricsPorts === undefined) return undefined;
  const ports = await cluster.metricsPorts();
  const ops = new Map<string, number>();
  let revisions = 0;
  let nodes = 0;
  for (const port of ports) {
    if (port === undefined) continue;
    let text: string;
    try {
      const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5_000) });
      if (!res.ok) continue;
      text = await res.text();
    } catch {
      continue;
    }
    nodes++;
    for (const line of text.split('\n')) {
      const m = OPS_LINE.exec(line);
      if (m) {
        const id = `${m[1]} ${m[2]}`;
        ops.set(id, (ops.get(id) ?? 0) + Number(m[3]));
        continue;
      }
      const r = REVISION_LINE.exec(line);
      if (r && r[1] !== '0') revisions += Number(r[2]);
    }
  }
  return nodes === 0 ? undefined : { ops, revisions, nodes };
}

/**
 * `engine ops/write/node N (s/v put 1.00, ...); cleared by range M (g/l clear M)`: the ops between
 * two samples per revision created and per node (revisions are summed over nodes, so ops /
 * revisions is already per node), the batches' puts and deletes apart from the keys deleted by
 * engine clears (compacted log entries, outside the batches), or a reason when it cannot be told.
 */
export function engineOpsNote(before: EngineOpsSample | undefined, after: EngineOpsSample | undefined): string {
  if (!before || !after || before.nodes !== after.nodes) return 'engine ops/write: not measured (no metrics)';
  const writes = after.revisions - before.revisions;
  if (writes <= 0) return 'engine ops/write: no writes';
  const parts: Array<[string, number]> = [];
  let total = 0;
  let cleared = 0;
  for (const [id, n] of after.ops) {
    const d = n - (before.ops.get(id) ?? 0);
    if (d <= 0) continue;
    parts.push([id, d / writes]);
    if (id.endsWith(' clear')) cleared += d / writes;
    else total += d / writes;
  }
  parts.sort((a, b) => b[1] - a[1]);
  const show = (xs: Array<[string, number]>): string => xs.map(([id, x]) => `${id} ${x.toFixed(2)}`).join(', ');
  const inBatches = parts.filter(([id]) => !id.endsWith(' clear'));
  const clears = parts.filter(([id]) => id.endsWith(' clear'));
  return (
    `engine ops/write/node ${total.toFixed(2)} (${show(inBatches)})` +
    (clears.length > 0 ? `; cleared by range ${cleared.toFixed(2)} (${show(clears)})` : '; cleared by range 0')
  );
}
