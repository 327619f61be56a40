/**
 * The client side of access control: {@link AuthClient} logs in and administers users, roles and
 * permissions (kvcascade.v1.Auth), and {@link LoginCredentials} keeps a KvClient's token fresh
 * (logging in before the first call and again before the token expires).
 */
import * as grpc from '@grpc/grpc-js';
import { AuthStubClient, META_LEADER_METADATA } from '../wire/auth-proto.js';
import { AUTHORIZATION_METADATA, bearer } from '../wire/auth.js';
import { KvError, serviceCallError } from './errors.js';
import type { KvClientTlsOptions } from './transport.js';

/** A permission as the client shows it: `type` on every key starting with `prefix`. */
export interface PermissionInfo {
  readonly prefix: string;
  readonly type: 'read' | 'write' | 'readwrite';
}

/** A user as listed. */
export interface UserInfo {
  readonly name: string;
  readonly roles: readonly string[];
  /** False: it authenticates only by a client certificate whose common name is its name. */
  readonly hasPassword: boolean;
}

/** A role as listed. */
export interface RoleInfo {
  readonly name: string;
  readonly permissions: readonly PermissionInfo[];
}

/** How an {@link AuthClient} authenticates its calls. */
export interface AuthClientOptions {
  readonly endpoints: readonly string[];
  /** The admin token (root). */
  readonly token?: string;
  /** A user and password: the client logs in first (and again when the token is about to expire). */
  readonly user?: string;
  readonly password?: string;
  readonly tls?: KvClientTlsOptions;
  /** Deadline of each call in ms (default 30 s). */
  readonly deadlineMs?: number;
}

type Stub = grpc.Client & Record<string, (...args: unknown[]) => unknown>;


/** The channel credentials of `tls` (plaintext without). */
export function channelCredentials(tls: KvClientTlsOptions | undefined): grpc.ChannelCredentials {
  return tls ? grpc.credentials.createSsl(tls.rootCert ?? null, tls.privateKey ?? null, tls.certChain ?? null) : grpc.credentials.createInsecure();
}

/** Logs in with a user and password on the first endpoint that answers; KvError UNAUTHENTICATED on a wrong name or password. */
export async function login(
  endpoints: readonly string[],
  user: string,
  password: string,
  o: { tls?: KvClientTlsOptions | undefined; deadlineAt?: number } = {},
): Promise<{ token: string; expiresAtMs: number }> {
  const c = new AuthClient({ endpoints, ...(o.tls ? { tls: o.tls } : {}), ...(o.deadlineAt ? { deadlineMs: Math.max(1, o.deadlineAt - Date.now()) } : {}) });
  try {
    return await c.authenticate(user, password);
  } finally {
    c.close();
  }
}

/**
 * A user's credentials for a KvClient: a token from logging in, renewed before it expires (when
 * less than a quarter of its life, at most a minute, is left) and after the servers refuse it.
 */
export class LoginCredentials {
  private token: string | undefined;
  private renewAtMs = 0;
  private pending: Promise<void> | undefined;

  constructor(private readonly doLogin: (deadlineAt: number) => Promise<{ token: string; expiresAtMs: number }>) {}

  /** The `authorization` value to send now (undefined before the first login). */
  header(): string | undefined {
    return this.token !== undefined ? bearer(this.token) : undefined;
  }

  /** Resolves once a fresh token is at hand (undefined: one already is). */
  ensure(deadlineAt: number): Promise<void> | undefined {
    if (this.token !== undefined && Date.now() < this.renewAtMs) return undefined;
    this.pending ??= this.doLogin(deadlineAt)
      .then((t) => {
        const now = Date.now();
        this.token = t.token;
        this.renewAtMs = now + Math.max(0, Math.min((t.expiresAtMs - now) * 0.75, t.expiresAtMs - now - 60_000));
      })
      .finally(() => {
        this.pending = undefined;
      });
    return this.pending;
  }

  /** Forgets the token (the servers refused it): the next call logs in again. */
  invalidate(): void {
    this.token = undefined;
    this.renewAtMs = 0;
  }
}

/** Client of the Auth service: logging in, and the root-only changes (sent to the metadata leader). */
export class AuthClient {
  private readonly stubs = new Map<string, Stub>();
  private readonly creds: grpc.ChannelCredentials;
  private readonly login: LoginCredentials | undefined;

  constructor(private readonly opts: AuthClientOptions) {
    if (opts.endpoints.length === 0) throw new Error('AuthClient: no endpoints');
    this.creds = channelCredentials(opts.tls);
    if (opts.user !== undefined && opts.token === undefined) {
      const user = opts.user;
      const password = opts.password ?? '';
      this.login = new LoginCredentials(() => this.authenticate(user, password));
    }
  }

  private stub(address: string): Stub {
    let s = this.stubs.get(address);
    if (!s) {
      s = new AuthStubClient(address, this.creds) as unknown as Stub;
      this.stubs.set(address, s);
    }
    return s;
  }

  private unary<T>(address: string, method: string, req: unknown, authenticated: boolean): Promise<T> {
    const md = new grpc.Metadata();
    if (authenticated) {
      const h = this.opts.token !== undefined ? bearer(this.opts.token) : this.login?.header();
      if (h) md.set(AUTHORIZATION_METADATA, h);
    }
    return new Promise((resolve, reject) => {
      (this.stub(address)[method] as (r: unknown, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: T) => void) => void)(
        req,
        md,
        { deadline: new Date(Date.now() + (this.opts.deadlineMs ?? 30_000)) },
        (e, r) => (e ? reject(serviceCallError(e, address, [META_LEADER_METADATA])) : resolve(r as T)),
      );
    });
  }

  /** Calls `method` on each endpoint in turn until one answers (or refuses for good), following metadata-leader redirects for changes. */
  private async call<T>(method: string, req: unknown, authenticated = true): Promise<T> {
    if (authenticated && this.login) await this.login.ensure(Date.now() + (this.opts.deadlineMs ?? 30_000));
    const eps = this.opts.endpoints;
    let next = 0;
    let target = eps[0]!;
    const attempts = Math.max(6, 2 * eps.length);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.unary<T>(target, method, req, authenticated);
      } catch (e) {
        const retry = e instanceof KvError && e.code === 'UNAVAILABLE' && e.retrySafe && attempt < attempts;
        if (!retry) throw e;
        const to = e.leader && e.leader !== target ? e.leader : eps[++next % eps.length]!;
        if (!e.leader || e.leader === target) await new Promise((r) => setTimeout(r, Math.min(1_000, 100 * attempt)));
        target = to;
      }
    }
  }

  /** Exchanges a user name and password for a token. */
  async authenticate(user: string, password: string): Promise<{ token: string; expiresAtMs: number }> {
    const r = await this.call<{ token?: string; expiresAtMs?: number | string }>('authenticate', { name: user, password }, false);
    return { token: r.token ?? '', expiresAtMs: Number(r.expiresAtMs ?? 0) };
  }

  /** Whether access control is on, and who this client is authenticated as. */
  async status(): Promise<{ enabled: boolean; principal: string; root: boolean }> {
    const r = await this.call<{ enabled?: boolean; principal?: string; root?: boolean }>('authStatus', {});
    return { enabled: r.enabled === true, principal: r.principal ?? '', root: r.root === true };
  }

  /** Turns access control on (refused while no user holds the root role and the nodes have no admin token). */
  async enable(): Promise<void> {
    await this.call('authEnable', {});
  }

  /** Turns access control off. */
  async disable(): Promise<void> {
    await this.call('authDisable', {});
  }

  /** Adds a user (no password: it authenticates by client certificate only). */
  async addUser(name: string, password?: string): Promise<void> {
    await this.call('userAdd', { name, password: password ?? '' });
  }

  async deleteUser(name: string): Promise<void> {
    await this.call('userDelete', { name });
  }

  async grantRole(user: string, role: string): Promise<void> {
    await this.call('userGrantRole', { user, role });
  }

  async revokeRole(user: string, role: string): Promise<void> {
    await this.call('userRevokeRole', { user, role });
  }

  async users(): Promise<UserInfo[]> {
    const r = await this.call<{ users?: { name?: string; roles?: string[]; hasPassword?: boolean }[] }>('userList', {});
    return (r.users ?? []).map((u) => ({ name: u.name ?? '', roles: u.roles ?? [], hasPassword: u.hasPassword === true }));
  }

  async addRole(name: string): Promise<void> {
    await this.call('roleAdd', { name });
  }

  async deleteRole(name: string): Promise<void> {
    await this.call('roleDelete', { name });
  }

  /** Grants `type` on every key starting with `prefix` to `role`. */
  async grantPermission(role: string, prefix: string, type: 'read' | 'write' | 'readwrite'): Promise<void> {
    await this.call('roleGrantPermission', { role, permission: { prefix, type } });
  }

  /** Revokes `type` (default: all) on exactly `prefix` from `role`. */
  async revokePermission(role: string, prefix: string, type?: 'read' | 'write' | 'readwrite'): Promise<void> {
    await this.call('roleRevokePermission', { role, permission: { prefix, type: type ?? '' } });
  }

  async roles(): Promise<RoleInfo[]> {
    const r = await this.call<{ roles?: { name?: string; permissions?: { prefix?: string; type?: string }[] }[] }>('roleList', {});
    return (r.roles ?? []).map((x) => ({
      name: x.name ?? '',
      permissions: (x.permissions ?? []).map((p) => ({ prefix: p.prefix ?? '', type: (p.type ?? 'read') as PermissionInfo['type'] })),
    }));
  }

  close(): void {
    for (const s of this.stubs.values()) s.close();
    this.stubs.clear();
  }
}
