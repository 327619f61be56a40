/**
 * The gRPC Lease service (proto/kvcascade/v1/lease.proto) over a node's {@link LeaseManager}:
 * grants, revokes, the keep-alive stream and lookups on the metadata leader, puts with a lease on
 * the key's shard leader (other nodes redirect), and the access rules of docs/leases.md.
 */
import * as grpc from '@grpc/grpc-js';
import { AuthError, type AccessControl, type Principal } from '../auth/access-control.js';
import { classify } from '../coordinator/op-status.js';
import { kvMetadata } from '../wire/metadata.js';
import { LeaseError } from '../lease/records.js';
import type { LeaseManager } from '../lease/manager.js';
import { isReservedKey } from '../sharding/index.js';
import { ValidationError, validateKey } from '../statemachine/index.js';
import { META_LEADER_METADATA } from '../wire/auth-proto.js';
import { leaseServiceDefinition, SHARD_LEADER_METADATA } from '../wire/lease-proto.js';
import { checkSession } from '../wire/request-validation.js';
import { authorizationOf, certNameOf, type CredentialCall } from './auth-service.js';

/** Options of {@link addLeaseService}. */
export interface LeaseServiceOptions {
  /** Client address of the metadata group's leader, when known. */
  readonly metadataLeaderAddress: () => string | undefined;
  /** Client address of the leader of `key`'s shard, when known. */
  readonly shardLeaderAddress: (key: string) => string | undefined;
  /** Access control (absent: every call allowed). */
  readonly access?: AccessControl;
  /** Deadline of a write when the caller sets none (default 10 s). */
  readonly defaultDeadlineMs?: number;
  readonly log?: { error(obj: object, msg: string): void };
}

/** The running service (ends its keep-alive streams on close). */
export interface LeaseServiceHandle {
  close(): void;
}

type Req = Record<string, unknown>;

/** Longest wait of a revoke for the lease's keys to be deleted in the shards hosted on the answering node (ms). */
const REVOKE_WAIT_MS = 3_000;

function status(code: grpc.status, message: string, md: Record<string, string> = {}): grpc.ServiceError {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(md)) metadata.set(k, v);
  return Object.assign(new Error(message), { code, details: message, metadata }) as grpc.ServiceError;
}

/**
 * The gRPC error a failed lease call answers: lease, access and validation errors by their own
 * codes; store errors classified as the KV service does (one table: coordinator/op-status.ts),
 * where an UNAVAILABLE answer (not leader, proposal lost, between leaders) carries `redirect()`
 * (the leader to retry at, and retry-safe); anything else INTERNAL, logged.
 */
export function leaseCallError(e: unknown, redirect: () => Record<string, string>, log?: LeaseServiceOptions['log']): grpc.ServiceError {
  if (e instanceof LeaseError) return status(grpc.status[e.code], e.message, e.code === 'UNAVAILABLE' ? redirect() : {});
  if (e instanceof AuthError) return status(grpc.status[e.code], e.message);
  if (e instanceof ValidationError) {
    return status(e.message.includes('PERMISSION_DENIED') ? grpc.status.PERMISSION_DENIED : grpc.status.INVALID_ARGUMENT, e.message);
  }
  const known = classify(e);
  if (known?.code === grpc.status.UNAVAILABLE) return status(grpc.status.UNAVAILABLE, known.message, redirect());
  if (known) return Object.assign(known.toServiceError(known.fields), { code: known.code, details: known.message, metadata: kvMetadata(known.fields) });
  log?.error({ err: String(e) }, 'lease call failed');
  return status(grpc.status.INTERNAL, (e as Error)?.message ?? String(e));
}

/** Registers kvcascade.v1.Lease on `server`. */
export function addLeaseService(server: grpc.Server, leases: LeaseManager, opts: LeaseServiceOptions): LeaseServiceHandle {
  const defaultDeadlineMs = opts.defaultDeadlineMs ?? 10_000;
  const streams = new Set<grpc.ServerDuplexStream<Req, unknown>>();

  const metaRedirect = (): Record<string, string> => {
    const leader = opts.metadataLeaderAddress();
    return leader ? { [META_LEADER_METADATA]: leader, 'kv-retry-safe': '1' } : { 'kv-retry-safe': '1' };
  };
  const fail = (e: unknown, redirect: () => Record<string, string> = metaRedirect): grpc.ServiceError => leaseCallError(e, redirect, opts.log);
  const principalOf = (call: CredentialCall): Principal | undefined => opts.access?.authenticate(authorizationOf(call), certNameOf(call));
  /** Revoke, keep-alive and lookups of a lease: its grantor or root (anyone with access control off). */
  const mayUse = (p: Principal | undefined, owner: string, id: number): void => {
    if (p && !p.root && p.name !== owner) throw new AuthError('PERMISSION_DENIED', `${p.name} may not use lease ${id}: only its grantor (${owner || 'nobody'}) and root may`);
  };
  const deadlineOf = (call: { getDeadline(): grpc.Deadline }): number => {
    const d = call.getDeadline();
    const ms = d instanceof Date ? d.getTime() : d;
    return Number.isFinite(ms) ? ms : Date.now() + defaultDeadlineMs;
  };
  const unary =
    (run: (req: Req, p: Principal | undefined, call: grpc.ServerUnaryCall<Req, unknown>) => Promise<unknown> | unknown, redirect?: (req: Req) => Record<string, string>) =>
    (call: grpc.ServerUnaryCall<Req, unknown>, cb: grpc.sendUnaryData<unknown>): void => {
      void (async () => {
        try {
          const p = principalOf(call);
          cb(null, await run(call.request ?? {}, p, call));
        } catch (e) {
          cb(fail(e, redirect ? () => redirect(call.request ?? {}) : metaRedirect));
        }
      })();
    };
  const id = (v: unknown): number => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 1) throw new LeaseError('INVALID_ARGUMENT', `a lease id is a positive integer, got ${JSON.stringify(v)}`);
    return n;
  };

  server.addService(leaseServiceDefinition, {
    leaseGrant: unary(async (req, p) => {
      const ttl = Number(req['ttl']);
      const leaseId = await leases.grant(ttl, p?.name ?? '');
      return { id: leaseId, ttl };
    }),
    leaseRevoke: unary(async (req, p, call) => {
      const leaseId = id(req['id']);
      mayUse(p, leases.ownerOf(leaseId), leaseId);
      await leases.revoke(leaseId);
      // Answer once the shards hosted here deleted the lease's keys (bounded): a read after the revoke then misses them.
      const until = Math.min(deadlineOf(call), Date.now() + REVOKE_WAIT_MS);
      // The revoke itself is done: a shard that cannot confirm its state in time ends the wait, not the call.
      const attached = (): Promise<number> => leases.attachedKeys(leaseId, until).then((k) => k.length, () => 0);
      while (Date.now() < until && (await attached()) > 0) await new Promise((r) => setTimeout(r, 20));
      return {};
    }),
    leaseTimeToLive: unary(async (req, p, call) => {
      const leaseId = id(req['id']);
      const t = leases.timeToLive(leaseId);
      mayUse(p, t.owner, leaseId);
      const keys = req['keys'] === true ? await leases.attachedKeys(leaseId, Math.min(deadlineOf(call), Date.now() + 2_000)) : [];
      return { id: leaseId, ttl: t.remainingSec, grantedTtl: t.ttlSec, keys, owner: t.owner };
    }),
    leaseLeases: unary((_req, p) => ({
      leases: leases.list(p && !p.root ? p.name : undefined).map((l) => ({ id: l.id, ttl: l.remainingSec, grantedTtl: l.ttlSec, owner: l.owner })),
    })),
    leasePut: unary(
      async (req, p, call) => {
        const key = typeof req['key'] === 'string' ? req['key'] : '';
        validateKey(key);
        if (isReservedKey(key)) throw new LeaseError('PERMISSION_DENIED', `key ${JSON.stringify(key)} is in a reserved keyspace`);
        opts.access?.authorize(p, 'write', key);
        const value = req['value'] instanceof Uint8Array ? req['value'] : new Uint8Array(0);
        const ev = req['expectedVersion'];
        const session = checkSession(req['session']);
        const r = await leases.put(
          { key, value, lease: id(req['lease']), ...(ev !== undefined && ev !== null ? { expectedVersion: Number(ev) } : {}), ...(session ? { session } : {}) },
          deadlineOf(call),
        );
        return r;
      },
      (req): Record<string, string> => {
        const key = typeof req['key'] === 'string' ? req['key'] : '';
        const leader = key ? opts.shardLeaderAddress(key) : undefined;
        return leader ? { [SHARD_LEADER_METADATA]: leader, 'kv-retry-safe': '1' } : { 'kv-retry-safe': '1' };
      },
    ),
    leaseKeepAlive: (call: grpc.ServerDuplexStream<Req, unknown>) => {
      streams.add(call);
      let p: Principal | undefined;
      try {
        p = principalOf(call);
      } catch (e) {
        call.emit('error', fail(e));
        streams.delete(call);
        return;
      }
      const max = leases.limits.maxKeepAlivesPerSec;
      let windowStart = Date.now();
      let inWindow = 0;
      call.on('data', (req: Req) => {
        let leaseId = 0;
        try {
          leaseId = id(req['id']);
          const now = Date.now();
          if (now - windowStart >= 1000) {
            windowStart = now;
            inWindow = 0;
          }
          if (++inWindow > max) {
            call.write({ id: leaseId, ttl: 0, error: 'RESOURCE_EXHAUSTED' });
            return;
          }
          if (p && !p.root) mayUse(p, leases.ownerOf(leaseId), leaseId);
          call.write({ id: leaseId, ttl: leases.keepAlive(leaseId) });
        } catch (e) {
          if (e instanceof LeaseError && e.code === 'NOT_FOUND') {
            call.write({ id: leaseId, ttl: 0 });
          } else if (e instanceof LeaseError && e.code === 'UNAVAILABLE') {
            // Not (or no longer) the metadata leader: end the stream; the client reconnects to the leader.
            call.emit('error', fail(e));
          } else {
            const code = e instanceof LeaseError || e instanceof AuthError ? e.code : 'INVALID_ARGUMENT';
            call.write({ id: leaseId, ttl: 0, error: code });
          }
        }
      });
      const done = (): void => {
        streams.delete(call);
      };
      call.on('end', () => {
        done();
        call.end();
      });
      call.on('error', done);
      call.on('close', done);
    },
  });
  return {
    close: () => {
      for (const s of streams) s.emit('error', status(grpc.status.UNAVAILABLE, 'node is shutting down', { 'kv-retry-safe': '1' }));
      streams.clear();
    },
  };
}
