/**
 * The gRPC Auth service (proto/kvcascade/v1/auth.proto) over a node's {@link AccessControl}:
 * logging in on any node, and the users, roles, permissions and on/off switch changed on the
 * metadata leader by root. Also the helpers the other services use to read a call's credentials.
 */
import * as grpc from '@grpc/grpc-js';
import { AccessControl, AuthError, NotMetaLeaderError, type Principal } from '../auth/access-control.js';
import { parsePermissionType, type PermissionType } from '../auth/permissions.js';
import { authServiceDefinition, META_LEADER_METADATA } from '../wire/auth-proto.js';
import { AUTHORIZATION_METADATA } from '../wire/auth.js';
import { metaString } from '../wire/metadata.js';

/** The parts of a server call credentials are read from. */
export type CredentialCall = { readonly metadata: grpc.Metadata; getAuthContext?(): { sslPeerCertificate?: { subject?: { CN?: string | string[] } } } | null };

/** The `authorization` metadata of a call, if any. */
export function authorizationOf(call: CredentialCall): string | undefined {
  return metaString(call.metadata, AUTHORIZATION_METADATA) || undefined;
}

/** The common name of the client certificate of a call (mutual TLS), if any. */
export function certNameOf(call: CredentialCall): string | undefined {
  const cn = call.getAuthContext?.()?.sslPeerCertificate?.subject?.CN;
  const name = Array.isArray(cn) ? cn[0] : cn;
  return typeof name === 'string' && name !== '' ? name : undefined;
}

/** The gRPC error of an auth failure. */
export function authErrorToStatus(e: AuthError, md?: Record<string, string>): grpc.ServiceError {
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(md ?? {})) metadata.set(k, v);
  const code = grpc.status[e.code];
  return Object.assign(new Error(e.message), { code, details: e.message, metadata }) as grpc.ServiceError;
}

/** Options of {@link addAuthService}. */
export interface AuthServiceOptions {
  /** Client address of the metadata group's leader, when known (redirects of changes). */
  readonly metadataLeaderAddress: () => string | undefined;
  /** Deadline of a change when the caller sets none (default 30 s). */
  readonly defaultDeadlineMs?: number;
  readonly log?: { error(obj: object, msg: string): void };
}

type Req = Record<string, unknown>;
const str = (v: unknown): string => (typeof v === 'string' ? v : '');

/** Registers kvcascade.v1.Auth on `server`. */
export function addAuthService(server: grpc.Server, access: AccessControl, opts: AuthServiceOptions): void {
  const defaultDeadlineMs = opts.defaultDeadlineMs ?? 30_000;
  const fail = (e: unknown): grpc.ServiceError => {
    if (e instanceof AuthError) {
      if (e instanceof NotMetaLeaderError) {
        const leader = opts.metadataLeaderAddress();
        return authErrorToStatus(
          new AuthError('UNAVAILABLE', leader ? `this node does not lead the metadata group; send auth changes to ${leader}` : 'no metadata leader elected yet'),
          leader ? { [META_LEADER_METADATA]: leader, 'kv-retry-safe': '1' } : { 'kv-retry-safe': '1' },
        );
      }
      return authErrorToStatus(e);
    }
    const err = e as Error;
    if (err?.name === 'DeadlineError') return authErrorToStatus(new AuthError('UNAVAILABLE', 'the change was not confirmed before the deadline; check with kvctl user ls / role ls before retrying'));
    if (err?.name === 'NotLeaderError') return fail(new NotMetaLeaderError());
    opts.log?.error({ err: String(e) }, 'auth call failed');
    return Object.assign(new Error(err?.message ?? String(e)), { code: grpc.status.INTERNAL, details: err?.message ?? String(e), metadata: new grpc.Metadata() }) as grpc.ServiceError;
  };
  const deadlineOf = (call: grpc.ServerUnaryCall<Req, unknown>): number => {
    const d = call.getDeadline();
    const ms = d instanceof Date ? d.getTime() : d;
    return Number.isFinite(ms) ? ms : Date.now() + defaultDeadlineMs;
  };
  /** A change: root only, on the metadata leader. */
  const change =
    (run: (req: Req, deadlineMs: number) => Promise<void>) =>
    (call: grpc.ServerUnaryCall<Req, unknown>, cb: grpc.sendUnaryData<unknown>): void => {
      void (async () => {
        try {
          access.requireRoot(authorizationOf(call), certNameOf(call));
          await run(call.request ?? {}, deadlineOf(call));
          cb(null, {});
        } catch (e) {
          cb(fail(e));
        }
      })();
    };
  /** A listing: root only, any node (its local state). */
  const read =
    (run: () => unknown) =>
    async (call: grpc.ServerUnaryCall<Req, unknown>, cb: grpc.sendUnaryData<unknown>): Promise<void> => {
      await access.caughtUp(Date.now() + 2000);
      try {
        access.requireRoot(authorizationOf(call), certNameOf(call));
        cb(null, run());
      } catch (e) {
        cb(fail(e));
      }
    };
  const permType = (v: unknown, optional: boolean): PermissionType | undefined => {
    const s = str(v);
    if (s === '' && optional) return undefined;
    const t = parsePermissionType(s);
    if (!t) throw new AuthError('INVALID_ARGUMENT', `permission type must be read, write or readwrite, got ${JSON.stringify(s)}`);
    return t;
  };
  const permOf = (r: Req): { prefix: string; type: unknown } => {
    const p = (r.permission ?? {}) as Req;
    return { prefix: str(p.prefix), type: p.type };
  };

  server.addService(authServiceDefinition, {
    authenticate: (call: grpc.ServerUnaryCall<Req, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const peer = call.getPeer().replace(/:\d+$/, '');
      access.login(str(call.request?.name), str(call.request?.password), peer).then(
        (t) => cb(null, { token: t.token, expiresAtMs: t.expiresAtMs }),
        (e: unknown) => cb(fail(e)),
      );
    },
    authStatus: async (call: grpc.ServerUnaryCall<Req, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      await access.caughtUp(Date.now() + 2000);
      try {
        const enabled = access.state().enabled;
        let p: Principal | undefined;
        // Anonymous callers may ask too (the answer then names no principal).
        const header = authorizationOf(call);
        const cert = certNameOf(call);
        if (enabled && (header !== undefined || (cert !== undefined && access.state().users.has(cert)))) p = access.authenticate(header, cert);
        cb(null, { enabled, principal: p?.name ?? '', root: p?.root ?? false });
      } catch (e) {
        cb(fail(e));
      }
    },
    authEnable: change((_r, d) => access.setEnabled(true, d)),
    authDisable: change((_r, d) => access.setEnabled(false, d)),
    userAdd: change((r, d) => access.addUser(str(r.name), str(r.password), d)),
    userDelete: change((r, d) => access.deleteUser(str(r.name), d)),
    userGrantRole: change((r, d) => access.userRole(str(r.user), str(r.role), true, d)),
    userRevokeRole: change((r, d) => access.userRole(str(r.user), str(r.role), false, d)),
    userList: read(() => ({
      users: [...access.state().users.values()].sort((a, b) => (a.name < b.name ? -1 : 1)).map((u) => ({ name: u.name, roles: [...u.roles], hasPassword: u.passwordHash !== undefined })),
    })),
    roleAdd: change((r, d) => access.addRole(str(r.name), d)),
    roleDelete: change((r, d) => access.deleteRole(str(r.name), d)),
    roleGrantPermission: change((r, d) => {
      const p = permOf(r);
      return access.grantPermission(str(r.role), p.prefix, permType(p.type, false)!, d);
    }),
    roleRevokePermission: change((r, d) => {
      const p = permOf(r);
      return access.revokePermission(str(r.role), p.prefix, permType(p.type, true), d);
    }),
    roleList: read(() => ({
      roles: [{ name: 'root', permissions: [{ prefix: '', type: 'readwrite' }] }, ...[...access.state().roles.values()].sort((a, b) => (a.name < b.name ? -1 : 1))].map((r) => ({
        name: r.name,
        permissions: r.permissions.map((p) => ({ prefix: p.prefix, type: p.type })),
      })),
    })),
  });
}
