/**
 * The client API's gate for a node removed from the cluster: a gRPC server interceptor that, once
 * the node learned it was removed, answers every call (except the health service, which reports
 * NOT_SERVING) with UNAVAILABLE, `kv-reason: NODE_REMOVED` and `kv-retry-safe: 1` (the call never
 * ran here), and ends the calls still open then (watches, pipelines, lease keep-alives) the same way.
 */
import * as grpc from '@grpc/grpc-js';
import { kvMetadata } from '../wire/metadata.js';

/** The `kv-reason` of a call refused by a node removed from the cluster. */
export const NODE_REMOVED_REASON = 'NODE_REMOVED';

/** Calls of these services pass the gate (the health service answers NOT_SERVING by itself). */
const PASSING_PREFIXES = ['/grpc.health.v1.Health/'] as const;

/** Refuses every client call once {@link RemovalGate.close} was called; install {@link RemovalGate.interceptor} on the server. */
export class RemovalGate {
  private message: string | undefined;
  /** Calls let through and not finished yet (ended with the refusal when the gate closes). */
  private readonly open = new Set<grpc.ServerInterceptingCall>();

  /** The interceptor to pass in the server's `interceptors` option. */
  readonly interceptor: grpc.ServerInterceptor = (method, call) => {
    if (PASSING_PREFIXES.some((p) => method.path.startsWith(p))) return new grpc.ServerInterceptingCall(call);
    // The first status (the handler's, or the gate's refusal) ends the call; anything after it is dropped.
    let ended = false;
    const end = (): void => {
      ended = true;
      this.open.delete(intercepting);
    };
    const intercepting: grpc.ServerInterceptingCall = new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (metadata, nextMd) => {
            if (this.message !== undefined) {
              intercepting.sendStatus(this.status());
              return;
            }
            this.open.add(intercepting);
            nextMd(metadata);
          },
          onCancel: end,
        });
      },
      sendMessage: (message, nextMessage) => {
        if (!ended) nextMessage(message);
      },
      sendStatus: (status, nextStatus) => {
        if (ended) return;
        end();
        nextStatus(status);
      },
    });
    return intercepting;
  };

  /** Whether the gate is closed (the node was removed). */
  get closed(): boolean {
    return this.message !== undefined;
  }

  /** Refuses every call from now on with `message`, and ends the calls still open with it. */
  close(message: string): void {
    if (this.message !== undefined) return;
    this.message = message;
    const open = [...this.open];
    this.open.clear();
    for (const c of open) c.sendStatus(this.status());
  }

  private status(): Parameters<grpc.ServerInterceptingCall['sendStatus']>[0] {
    return {
      code: grpc.status.UNAVAILABLE,
      details: this.message ?? 'node removed from the cluster',
      metadata: kvMetadata({ reason: NODE_REMOVED_REASON, retrySafe: true }),
    };
  }
}
