/**
 * The standard gRPC health service (grpc.health.v1.Health, from the maintained
 * `grpc-health-check` package) on the client port: SERVING once the node has joined the cluster
 * and caught up, NOT_SERVING before that and while it shuts down. Load balancers and Kubernetes
 * readiness probes (`grpc_health_probe`, kubelet's gRPC probe) read it.
 */
import type * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';

/** The services whose health is reported: the empty name (the whole server) and the KV API. */
export const HEALTH_SERVICES = ['', 'kvcascade.v1.KV'] as const;

/** How often readiness is re-evaluated (ms). */
export const HEALTH_CHECK_INTERVAL_MS = 500;

/** Whether the node may take traffic, and if not, why (logged when it changes). */
export interface Readiness {
  readonly ready: boolean;
  readonly reason?: string;
}

/** A running health service. */
export interface HealthHandle {
  /** Reports NOT_SERVING from now on (call first when shutting down) and stops re-evaluating. */
  close(): void;
}

/** Registers the health service on `server`, re-evaluating `readiness` every interval. */
export function addHealthService(
  server: grpc.Server,
  readiness: () => Readiness,
  log?: { info(obj: object, msg: string): void },
  intervalMs = HEALTH_CHECK_INTERVAL_MS,
): HealthHandle {
  const health = new HealthImplementation(Object.fromEntries(HEALTH_SERVICES.map((s) => [s, 'NOT_SERVING'])));
  health.addToServer(server);
  let last: boolean | undefined;
  const evaluate = (): void => {
    const r = readiness();
    if (r.ready === last) return;
    last = r.ready;
    for (const s of HEALTH_SERVICES) health.setStatus(s, r.ready ? 'SERVING' : 'NOT_SERVING');
    log?.info({ ready: r.ready, ...(r.reason ? { reason: r.reason } : {}) }, r.ready ? 'health: SERVING' : 'health: NOT_SERVING');
  };
  evaluate();
  const timer = setInterval(evaluate, intervalMs);
  timer.unref();
  return {
    close: () => {
      clearInterval(timer);
      last = false;
      for (const s of HEALTH_SERVICES) health.setStatus(s, 'NOT_SERVING');
    },
  };
}
