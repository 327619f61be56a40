/**
 * The console's per-node request counters: read from a node's prom-client registry, and served to
 * the other nodes' consoles by the small kvcascade.v1.Console gRPC service
 * (proto/kvcascade/v1/console.proto) on the client API port.
 */
import * as grpc from '@grpc/grpc-js';
import type { Registry } from 'prom-client';
import { loadProtos } from '../wire/proto.js';
import type { NodeStats } from './gather.js';

/** The counter of client requests (labels method, status). */
const REQUESTS = 'kvcascade_requests_total';
/** The histogram of client request latency (label method). */
const LATENCY = 'kvcascade_request_duration_seconds';

const consolePackage = loadProtos(['kvcascade/v1/console.proto']);
/** Service definition of kvcascade.v1.Console. */
export const consoleServiceDefinition = consolePackage['kvcascade.v1.Console'] as grpc.ServiceDefinition;
/** Client constructor of kvcascade.v1.Console. */
export const ConsoleStubClient = (grpc.loadPackageDefinition(consolePackage) as unknown as {
  kvcascade: { v1: { Console: grpc.ServiceClientConstructor } };
}).kvcascade.v1.Console;

/** kvcascade.v1.NodeStatsResponse as decoded (camelCase, uint64 as number). */
interface NodeStatsMsg {
  nodeId?: number;
  requests?: number;
  errors?: number;
  buckets?: { le?: number; count?: number }[];
  rssBytes?: number;
  uptimeSeconds?: number;
}

/** Methods left out of the console's rates: Status calls are mostly the consoles' and tools' own polling. */
const NOT_WORKLOAD = new Set(['status']);

/**
 * The request counters in `registry` (the node's NodeMetrics registry): requests and failures
 * summed over the data methods (put, get, delete, list, txn, trigger, watch; not status), and
 * the latency histogram's buckets summed over the same methods.
 */
export async function nodeStatsFromRegistry(registry: Registry): Promise<NodeStats> {
  let requests = 0;
  let errors = 0;
  const counter = registry.getSingleMetric(REQUESTS);
  if (counter) {
    for (const v of (await counter.get()).values) {
      if (NOT_WORKLOAD.has(String(v.labels.method))) continue;
      requests += v.value;
      if (v.labels.status !== 'OK') errors += v.value;
    }
  }
  const byLe = new Map<number, number>();
  const hist = registry.getSingleMetric(LATENCY);
  if (hist) {
    for (const v of (await hist.get()).values) {
      if ((v as { metricName?: string }).metricName !== `${LATENCY}_bucket` || NOT_WORKLOAD.has(String(v.labels.method))) continue;
      const le = v.labels.le === '+Inf' ? Infinity : Number(v.labels.le);
      if (Number.isNaN(le)) continue;
      byLe.set(le, (byLe.get(le) ?? 0) + v.value);
    }
  }
  const buckets = [...byLe].sort((a, b) => a[0] - b[0]).map(([le, count]) => ({ le, count }));
  return { requests, errors, buckets, rssBytes: process.memoryUsage.rss(), uptimeSeconds: process.uptime() };
}

/** Registers kvcascade.v1.Console on `server`: `stats` answers NodeStats. */
export function addConsoleService(server: grpc.Server, nodeId: number, stats: () => Promise<NodeStats>): void {
  server.addService(consoleServiceDefinition, {
    nodeStats: (_call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<NodeStatsMsg>) => {
      stats().then(
        (s) => cb(null, { nodeId, requests: s.requests, errors: s.errors, buckets: s.buckets.map((b) => ({ le: b.le, count: b.count })), rssBytes: s.rssBytes, uptimeSeconds: s.uptimeSeconds }),
        (e: unknown) => cb({ code: grpc.status.INTERNAL, details: `node stats failed: ${(e as Error)?.message ?? String(e)}` }),
      );
    },
  });
}

/** Decodes a NodeStats response. */
export function nodeStatsFromMsg(m: NodeStatsMsg): NodeStats {
  const n = (v: unknown): number => {
    const x = Number(v ?? 0);
    return Number.isFinite(x) ? x : 0;
  };
  return {
    requests: n(m.requests),
    errors: n(m.errors),
    buckets: (m.buckets ?? []).map((b) => ({ le: b.le === Infinity ? Infinity : n(b.le), count: n(b.count) })),
    rssBytes: n(m.rssBytes),
    uptimeSeconds: n(m.uptimeSeconds),
  };
}
