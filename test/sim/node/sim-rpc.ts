/**
 * The gRPC edge of the node-level simulator, without gRPC: {@link serveUnary} does for one unary
 * call what the server's handler does (server/kv-service.ts `unary`: a routing context from the
 * metadata, `Coordinator.run`, the response metadata or the status with its kvcascade fields),
 * and {@link simNodeStubs} is a NodeStubs look-alike whose KV stubs carry the coordinator's
 * forwarded calls over the simulated network to the target node's {@link serveUnary}. A call
 * to a node that is down fails at once with UNAVAILABLE "No connection established" (as a
 * refused connection does); a call lost on the way (cut link, lossy network) ends at its
 * deadline with DEADLINE_EXCEEDED, as a hung connection does.
 */
import * as grpc from '@grpc/grpc-js';
import type { Coordinator } from '../../../src/coordinator/coordinator.js';
import type { RequestOf, ResponseOf, UnaryOp } from '../../../src/coordinator/messages.js';
import type { NodeStubs } from '../../../src/coordinator/node-stubs.js';
import type { NodeId } from '../../../src/raft/index.js';
import { forwardHops, kvMetadata, META_HOPS } from '../../../src/wire/metadata.js';
import type { SimNetwork } from './sim-network.js';

/** What a unary call returned: the response and its trailing metadata, or a status error. */
export type UnaryOutcome<R> =
  | { readonly ok: true; readonly response: R; readonly metadata: grpc.Metadata }
  | { readonly ok: false; readonly error: grpc.ServiceError };

/** Serves one unary call on `coord` as the gRPC handler does (see the file's top). Never rejects. */
export async function serveUnary<O extends UnaryOp>(coord: Coordinator, op: O, request: RequestOf<O>, md: grpc.Metadata, deadlineMs: number): Promise<UnaryOutcome<ResponseOf<O>>> {
  const lambdaHops = Number(md.get(META_HOPS)[0] ?? 0) || 0;
  try {
    const out = await coord.run(op, request, { hops: forwardHops(md), lambdaHops, deadlineMs, admin: false });
    return { ok: true, response: out.response, metadata: kvMetadata({ shard: out.group, leader: out.leader, mapEpoch: coord.mapEpoch() }) };
  } catch (e) {
    const s = coord.toStatus(e, op);
    const err = s.toServiceError({ ...s.fields, leader: s.fields.leader ?? coord.leaderHintOf(s.fields.shard), mapEpoch: coord.mapEpoch() });
    return { ok: false, error: err as grpc.ServiceError };
  }
}

/** A status error as grpc-js makes them. */
export function serviceError(code: grpc.status, details: string, metadata = new grpc.Metadata()): grpc.ServiceError {
  return Object.assign(new Error(`${code} ${grpc.status[code]}: ${details}`), { code, details, metadata });
}

/** How the stubs find a node: its id by client address, and its coordinator now (undefined while it is down or opening). */
export interface SimDirectory {
  idOf(address: string): NodeId | undefined;
  coordinatorOf(id: NodeId): Coordinator | undefined;
}

type StubMethod = (req: unknown, md: grpc.Metadata, o: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res?: unknown) => void) => SimCall;

/** The part of a grpc ClientUnaryCall the coordinator uses. */
interface SimCall {
  on(event: 'status', fn: (s: grpc.StatusObject) => void): SimCall;
  cancel(): void;
}

const UNARY_OPS: readonly UnaryOp[] = ['put', 'get', 'delete', 'trigger', 'list', 'txn'];

/** The stub pool of node `from` on the simulated network (cast to NodeStubs: only `kv` is used by the coordinator). */
export function simNodeStubs(net: SimNetwork, from: NodeId, dir: SimDirectory): NodeStubs {
  const kv = (address: string): Record<UnaryOp, StubMethod> => {
    const stub = {} as Record<UnaryOp, StubMethod>;
    for (const op of UNARY_OPS) {
      stub[op] = (req, md, o, cb) => {
        let statusFn: ((s: grpc.StatusObject) => void) | undefined;
        let done = false;
        const finish = (err: grpc.ServiceError | null, res: unknown, trailer: grpc.Metadata): void => {
          if (done) return;
          done = true;
          if (deadline !== undefined) clearTimeout(deadline);
          cb(err, res);
          const status = err ? { code: err.code, details: err.details, metadata: err.metadata } : { code: grpc.status.OK, details: 'OK', metadata: trailer };
          statusFn?.(status);
        };
        // The deadline travels as a timeout (grpc-timeout), so each side reads it on its own clock.
        const d = o.deadline instanceof Date ? o.deadline.getTime() : typeof o.deadline === 'number' ? o.deadline : Infinity;
        const timeoutMs = d - Date.now();
        const to = dir.idOf(address);
        const coord = to !== undefined ? dir.coordinatorOf(to) : undefined;
        let deadline: ReturnType<typeof setTimeout> | undefined;
        // Answer on a later turn (a real call never completes synchronously).
        if (to === undefined || coord === undefined || net.ownerOf(to) === undefined) {
          setTimeout(() => finish(serviceError(grpc.status.UNAVAILABLE, `No connection established to ${address} (simulated: node down)`), undefined, new grpc.Metadata()), net.delay());
        } else {
          if (Number.isFinite(d)) deadline = setTimeout(() => finish(serviceError(grpc.status.DEADLINE_EXCEEDED, 'Deadline exceeded'), undefined, new grpc.Metadata()), Math.max(1, timeoutMs));
          net.request(
            from,
            to,
            () => {
              const c = dir.coordinatorOf(to);
              if (!c) return Promise.resolve<UnaryOutcome<unknown>>({ ok: false, error: serviceError(grpc.status.UNAVAILABLE, 'Stream refused by server (simulated: node starting)') });
              return serveUnary(c, op, req as RequestOf<typeof op>, md, Date.now() + timeoutMs);
            },
            (outcome) => {
              if (!outcome.ok) return; // serveUnary never rejects
              const r = outcome.value;
              if (r.ok) finish(null, r.response, r.metadata);
              else finish(r.error, undefined, r.error.metadata);
            },
          );
        }
        const call: SimCall = {
          on: (_event, fn) => {
            statusFn = fn;
            return call;
          },
          cancel: () => finish(serviceError(grpc.status.CANCELLED, 'Cancelled on client'), undefined, new grpc.Metadata()),
        };
        return call;
      };
    }
    return stub;
  };
  const stubs = { kv, cluster: () => { throw new Error('the simulator has no Cluster service'); }, close: () => {}, isClosed: false };
  return stubs as unknown as NodeStubs;
}
