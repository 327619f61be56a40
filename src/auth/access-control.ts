/**
 * The access control of one node: reads the replicated auth state from the local replica of the
 * metadata group (rebuilt only when that group's revision moved), authenticates requests (admin
 * token = root, signed token, or the client certificate's common name), authorizes each key or
 * prefix, logs users in (scrypt, failures rate-limited per user and per client address) and makes
 * the auth changes (on the metadata leader, as conditional system txns).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { CommandResult, TxnCommand, TxnWrite } from '../statemachine/types.js';
import { prefixInReserved } from '../sharding/index.js';
import {
  ROOT_ROLE,
  addPermission,
  anyPermitsKey,
  anyPermitsPrefix,
  invalidName,
  removePermission,
  type Access,
  type Permission,
  type PermissionType,
  type Role,
  type User,
} from './permissions.js';
import { hashPassword, verifyPassword, MAX_PASSWORD_LENGTH } from './password.js';
import { FailureLimiter, type FailureLimiterOptions } from './rate-limit.js';
import { AUTH_ENABLED_KEY, AUTH_PREFIX, AUTH_SECRET_KEY, AuthState, encodeRecord, extRoleKey, roleKey, userKey, type StoredItem } from './state.js';
import { TOKEN_PREFIX, signToken, verifyToken, type TokenSubject } from './token.js';

/** The gRPC status names auth failures map to. */
export type AuthErrorCode =
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'RESOURCE_EXHAUSTED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'INVALID_ARGUMENT'
  | 'FAILED_PRECONDITION'
  | 'UNAVAILABLE'
  | 'ABORTED';

/** An auth failure: `code` names the gRPC status to answer with; the message says what to do. */
export class AuthError extends Error {
  constructor(
    readonly code: AuthErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'AuthError';
  }
}

/** An auth change asked of a node that does not lead the metadata group (UNAVAILABLE: send it to the leader). */
export class NotMetaLeaderError extends AuthError {
  constructor() {
    super('UNAVAILABLE', 'this node does not lead the metadata group');
    this.name = 'NotMetaLeaderError';
  }
}

/** Who a request acts as (auth enabled). */
export interface Principal {
  /** A user name, `role:<name>` (an extension's lambdas) or `root` (the admin token). */
  readonly name: string;
  /** Holds the root role: every key, the admin APIs, dead letters. */
  readonly root: boolean;
  /** The permissions of its roles (unused when `root`). */
  readonly permissions: readonly Permission[];
  /** The `authorization` metadata value that carries this principal when the request is forwarded to another node. */
  readonly authorization: string;
}

/** What the access control needs of the metadata group's local replica (an extensions HostShard fits). */
export interface AuthMetaStore {
  /** The highest revision applied here. */
  revision(): number;
  /** A page of keys under `prefix` as applied here. */
  list(prefix: string, o: { readonly limit: number; readonly after?: string }): { readonly items: readonly StoredItem[]; readonly nextAfter?: string };
  /** Whether this node leads the metadata group. */
  isLeader(): boolean;
  /** Resolves once local reads reflect every acknowledged write (leader only). */
  barrier(deadlineMs: number): Promise<void>;
  /** The group's current revision, waiting (up to `untilMs`) for this replica to apply what it knows committed. */
  currentRevision(untilMs: number): Promise<number>;
  /** Proposes a system txn (leader only). */
  propose(cmd: TxnCommand, deadlineMs: number): Promise<CommandResult>;
}

/** Options of {@link AccessControl}. */
export interface AccessControlOptions {
  /** The metadata group's replica here; throws (or returns undefined) while this node hosts none. */
  readonly meta: () => AuthMetaStore | undefined;
  /** The node's admin token: root's credential. */
  readonly adminToken?: string | undefined;
  /** Lifetime of a login token (ms, default 10 minutes). */
  readonly tokenTtlMs?: number;
  /** Lock-out of failed logins (per user and per client address). */
  readonly limiter?: FailureLimiterOptions;
  /** scrypt parameters of new password hashes (tests lower them). */
  readonly scrypt?: { N: number; r: number; p: number };
}

/** Default lifetime of a login token. */
export const DEFAULT_TOKEN_TTL_MS = 10 * 60_000;
/** Lifetime of the tokens a node mints to forward a certificate's user, a lambda's role or root. */
const FORWARD_TOKEN_TTL_MS = 5 * 60_000;
/** An address may fail this many times more than one user before it is locked out. */
const PEER_FAILURE_FACTOR = 4;
/** Keys of the auth state read per listing page. */
const PAGE = 10_000;
/** Tokens whose verification is cached (per state revision). */
const TOKEN_CACHE_MAX = 10_000;

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** A page of the metadata group's auth keys, or every page. */
function readState(meta: AuthMetaStore): AuthState {
  const revision = meta.revision();
  const items: StoredItem[] = [];
  let after: string | undefined;
  for (;;) {
    const page = meta.list(AUTH_PREFIX, { limit: PAGE, ...(after !== undefined ? { after } : {}) });
    items.push(...page.items);
    if (page.nextAfter === undefined || page.items.length === 0) break;
    after = page.nextAfter;
  }
  return AuthState.fromItems(revision, items);
}

/** Throws PERMISSION_DENIED unless `p` (undefined: access control off) may `access` key `key`. */
export function authorizeKey(p: Principal | undefined, access: Access, key: string): void {
  if (!p || p.root || anyPermitsKey(p.permissions, key, access)) return;
  throw new AuthError('PERMISSION_DENIED', `${p.name} may not ${access} key ${JSON.stringify(key)}: no role of it grants ${access} on a prefix of it`);
}

/** Throws PERMISSION_DENIED unless `p` may `access` every key under `prefix` (a List or Watch). */
export function authorizePrefix(p: Principal | undefined, access: Access, prefix: string): void {
  if (!p || p.root || anyPermitsPrefix(p.permissions, prefix, access)) return;
  throw new AuthError(
    'PERMISSION_DENIED',
    `${p.name} may not ${access} prefix ${JSON.stringify(prefix)}: listing or watching needs ${access} on the whole prefix (a permission on a prefix of it)`,
  );
}

/** Enforcement and administration of access control on one node; see the file's top. */
export class AccessControl {
  private cached: AuthState | undefined;
  private readonly adminDigest: Buffer | undefined;
  private readonly tokenTtlMs: number;
  private readonly userFailures: FailureLimiter;
  private readonly peerFailures: FailureLimiter;
  /** Verified tokens → principal, valid for `cacheRevision`. */
  private readonly tokenCache = new Map<string, { readonly principal: Principal; readonly untilMs: number }>();
  private cacheRevision = -1;
  /** Minted forwarding tokens by subject key. */
  private readonly minted = new Map<string, { token: string; renewAtMs: number }>();

  constructor(private readonly opts: AccessControlOptions) {
    this.adminDigest = opts.adminToken ? digest(opts.adminToken) : undefined;
    this.tokenTtlMs = opts.tokenTtlMs ?? DEFAULT_TOKEN_TTL_MS;
    this.userFailures = new FailureLimiter(opts.limiter);
    // An address may be shared by many users (NAT): it is locked out only after more failures.
    this.peerFailures = new FailureLimiter({ ...opts.limiter, maxFailures: PEER_FAILURE_FACTOR * (opts.limiter?.maxFailures ?? 5) });
  }

  private metaStore(): AuthMetaStore | undefined {
    try {
      return this.opts.meta();
    } catch {
      return undefined;
    }
  }

  /** The auth state as this node's metadata replica has applied it (re-read only when that group's revision moved). */
  state(): AuthState {
    const meta = this.metaStore();
    if (!meta) throw new AuthError('UNAVAILABLE', 'this node has no replica of the metadata group yet, so it cannot check access; try another node');
    const rev = meta.revision();
    if (this.cached?.revision !== rev) this.cached = readState(meta);
    return this.cached;
  }

  /** Resolves once this node's replica applied what it knows committed (at most until `untilMs`): reads after a change see it. */
  async caughtUp(untilMs: number): Promise<void> {
    await this.metaStore()?.currentRevision(untilMs).catch(() => undefined);
  }

  /** Whether access control is on (false while the state is unknown here). */
  get enabled(): boolean {
    try {
      return this.state().enabled;
    } catch {
      return false;
    }
  }

  /** Whether `header` (an `authorization` value) carries this node's admin token. */
  isAdminToken(header: string | undefined): boolean {
    if (!this.adminDigest || !header?.startsWith('Bearer ')) return false;
    return timingSafeEqual(digest(header.slice(7)), this.adminDigest);
  }

  private principalOf(state: AuthState, subject: TokenSubject, authorization: string): Principal {
    if (subject.kind === 'root') return { name: 'root', root: true, permissions: [], authorization };
    if (subject.kind === 'role') {
      if (!state.hasRole(subject.name)) throw new AuthError('UNAUTHENTICATED', `role ${JSON.stringify(subject.name)} no longer exists`);
      const g = state.grantsOf([subject.name]);
      return { name: `role:${subject.name}`, root: g.root, permissions: g.permissions, authorization };
    }
    const u = state.users.get(subject.name);
    if (!u) throw new AuthError('UNAUTHENTICATED', `user ${JSON.stringify(subject.name)} does not exist (deleted?): log in again`);
    const g = state.grantsOf(u.roles);
    return { name: u.name, root: g.root, permissions: g.permissions, authorization };
  }

  /** A token this node signs for `subject` (cached, renewed well before it expires). */
  private mint(state: AuthState, subject: TokenSubject): string {
    const key = subject.kind === 'root' ? 'root' : `${subject.kind}:${subject.name}`;
    const now = Date.now();
    const m = this.minted.get(key);
    if (m && m.renewAtMs > now) return m.token;
    if (!state.secret) throw new AuthError('UNAVAILABLE', 'the cluster has no token secret yet');
    const token = signToken(state.secret, { subject, expiresAtMs: now + FORWARD_TOKEN_TTL_MS });
    this.minted.set(key, { token, renewAtMs: now + FORWARD_TOKEN_TTL_MS / 2 });
    return token;
  }

  /**
   * Who a request is: undefined when access control is off (everything allowed, as before);
   * else the principal of its `authorization` header (the admin token is root; a `kvc1.` token
   * is verified with the cluster secret) or, without one, of its client certificate's common
   * name (`certName`) when a user has that name. Throws AuthError UNAUTHENTICATED otherwise.
   */
  authenticate(header: string | undefined, certName: string | undefined): Principal | undefined {
    const state = this.state();
    if (!state.enabled) return undefined;
    if (state.revision !== this.cacheRevision) {
      this.tokenCache.clear();
      this.cacheRevision = state.revision;
    }
    if (header !== undefined && header !== '') {
      const hit = this.tokenCache.get(header);
      // A cached principal holds until its token (or the token it forwards with) expires.
      if (hit && hit.untilMs > Date.now()) return hit.principal;
      const { principal, untilMs } = this.fromHeader(state, header);
      if (this.tokenCache.size >= TOKEN_CACHE_MAX) this.tokenCache.clear();
      this.tokenCache.set(header, { principal, untilMs });
      return principal;
    }
    if (certName !== undefined && state.users.has(certName)) {
      const subject: TokenSubject = { kind: 'user', name: certName };
      return this.principalOf(state, subject, `Bearer ${this.mint(state, subject)}`);
    }
    throw new AuthError(
      'UNAUTHENTICATED',
      'authentication required (access control is enabled): log in with a user and password (kvctl --user, $KVCASCADE_USER/$KVCASCADE_PASSWORD), send a token, or use a client certificate whose common name is a user',
    );
  }

  /** The principal of an `authorization` value, and until when it may be reused without checking the token again. */
  private fromHeader(state: AuthState, header: string): { principal: Principal; untilMs: number } {
    if (!header.startsWith('Bearer ')) throw new AuthError('UNAUTHENTICATED', 'malformed authorization metadata: expected "Bearer <token>"');
    if (this.isAdminToken(header)) {
      // Reused only while the token it forwards with is fresh.
      const authorization = `Bearer ${this.mint(state, { kind: 'root' })}`;
      return { principal: { name: 'root', root: true, permissions: [], authorization }, untilMs: this.minted.get('root')!.renewAtMs };
    }
    const token = header.slice(7);
    if (!token.startsWith(TOKEN_PREFIX)) throw new AuthError('UNAUTHENTICATED', 'unknown token (neither a login token nor the admin token)');
    if (!state.secret) throw new AuthError('UNAUTHENTICATED', 'invalid token: the cluster has no token secret');
    const v = verifyToken(state.secret, token);
    if (v === 'expired') throw new AuthError('UNAUTHENTICATED', 'token expired: log in again');
    if (typeof v === 'string') throw new AuthError('UNAUTHENTICATED', 'invalid token (not signed by this cluster)');
    return { principal: this.principalOf(state, v.subject, header), untilMs: v.expiresAtMs };
  }

  /** Throws PERMISSION_DENIED unless `p` (undefined: access control off) may `access` key `key` (see {@link authorizeKey}). */
  authorize(p: Principal | undefined, access: Access, key: string): void {
    authorizeKey(p, access, key);
  }

  /**
   * Whether a caller may use the admin APIs: with access control off, only with the admin token
   * (as before); on, as root (the admin token, or a user holding the root role). Throws AuthError.
   */
  requireRoot(header: string | undefined, certName: string | undefined): void {
    let enabled = false;
    try {
      enabled = this.state().enabled;
    } catch {
      // unknown state: the admin token still works
    }
    if (!enabled) {
      if (this.isAdminToken(header)) return;
      if (!this.adminDigest) throw new AuthError('PERMISSION_DENIED', 'admin operations are disabled on this node: start kvd with --admin-token (or enable access control and use a root user)');
      if (!header) throw new AuthError('UNAUTHENTICATED', 'admin token required (metadata "authorization: Bearer <token>"; kvctl --admin-token)');
      throw new AuthError('PERMISSION_DENIED', 'wrong admin token');
    }
    const p = this.authenticate(header, certName);
    if (!p?.root) throw new AuthError('PERMISSION_DENIED', `${p?.name ?? 'caller'} is not root: the admin APIs need the root role or the admin token`);
  }

  /** The principal an extension's lambdas act as: the role named when it was loaded, else root (undefined when access control is off). */
  lambdaPrincipal(extension: string): Principal | undefined {
    const state = this.state();
    if (!state.enabled) return undefined;
    const role = state.extensionRoles.get(extension);
    const subject: TokenSubject = role === undefined || role === ROOT_ROLE ? { kind: 'root' } : { kind: 'role', name: role };
    if (subject.kind === 'role' && !state.hasRole(subject.name)) {
      // The role was deleted: the lambdas may do nothing.
      return { name: `role:${subject.name}`, root: false, permissions: [], authorization: '' };
    }
    return this.principalOf(state, subject, `Bearer ${this.mint(state, subject)}`);
  }

  /**
   * Logs user `name` in with `password` from client address `peer`: a token valid for the
   * token lifetime. Wrong names and passwords fail alike (UNAUTHENTICATED); after repeated
   * failures the user and the address are locked out for a while (RESOURCE_EXHAUSTED).
   */
  async login(name: string, password: string, peer: string): Promise<{ token: string; expiresAtMs: number }> {
    const locked = Math.max(this.userFailures.lockedFor(`u:${name}`), this.peerFailures.lockedFor(`p:${peer}`));
    if (locked > 0) {
      throw new AuthError('RESOURCE_EXHAUSTED', `too many failed logins for ${JSON.stringify(name)} or from this address: try again in ${Math.ceil(locked / 1000)} s`);
    }
    // A user added a moment ago on the leader: let this replica apply what it knows committed.
    await this.caughtUp(Date.now() + 2000);
    const state = this.state();
    const user = state.users.get(name);
    const ok = user?.passwordHash !== undefined && password.length <= MAX_PASSWORD_LENGTH ? await verifyPassword(password, user.passwordHash) : false;
    if (!ok || !user) {
      if (!user) await hashPassword(password.slice(0, MAX_PASSWORD_LENGTH), this.opts.scrypt).catch(() => undefined); // the same time as a wrong password
      this.userFailures.failed(`u:${name}`);
      this.peerFailures.failed(`p:${peer}`);
      throw new AuthError('UNAUTHENTICATED', 'wrong user name or password');
    }
    this.userFailures.succeeded(`u:${name}`);
    this.peerFailures.succeeded(`p:${peer}`);
    if (!state.secret) throw new AuthError('UNAVAILABLE', 'the cluster has no token secret yet: retry');
    const expiresAtMs = Date.now() + this.tokenTtlMs;
    return { token: signToken(state.secret, { subject: { kind: 'user', name }, expiresAtMs }), expiresAtMs };
  }

  // ---- changes (metadata leader only) ---------------------------------------------------------

  /**
   * Applies one change on the metadata leader: reads the state once every acknowledged write is
   * applied here, lets `plan` compute the writes (throwing AuthError to refuse), and proposes them
   * as one txn conditional on the versions of every key it read, retried when another change won.
   */
  private async change(deadlineMs: number, plan: (s: AuthState) => { writes: TxnWrite[]; reads: string[] }): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const meta = this.metaStore();
      if (!meta?.isLeader()) throw new NotMetaLeaderError();
      await meta.barrier(deadlineMs);
      const state = this.state();
      const { writes, reads } = plan(state);
      if (writes.length === 0) return;
      if (!state.secret) writes.push({ type: 'put', key: AUTH_SECRET_KEY, value: randomBytes(32) });
      const keys = new Set([...reads, ...writes.map((w) => w.key)]);
      const compares = [...keys].map((key) => ({ key, version: state.versionOf(key) }));
      const res = await meta.propose({ type: 'txn', compares, writes }, deadlineMs);
      if (res.type === 'txn' && res.succeeded) return;
      if (res.type === 'rejected') throw new AuthError('INVALID_ARGUMENT', res.error.message);
      if (attempt >= 4) throw new AuthError('ABORTED', 'the auth state kept changing concurrently: retry');
    }
  }

  private static user(s: AuthState, name: string): User {
    const u = s.users.get(name);
    if (!u) throw new AuthError('NOT_FOUND', `no user ${JSON.stringify(name)} (kvctl user ls lists them)`);
    return u;
  }

  private static role(s: AuthState, name: string): Role {
    if (name === ROOT_ROLE) throw new AuthError('INVALID_ARGUMENT', 'the root role is built in: it grants everything and cannot be changed');
    const r = s.roles.get(name);
    if (!r) throw new AuthError('NOT_FOUND', `no role ${JSON.stringify(name)} (kvctl role ls lists them)`);
    return r;
  }

  private static checkName(name: string, what: 'user' | 'role'): void {
    const bad = invalidName(name, what);
    if (bad) throw new AuthError('INVALID_ARGUMENT', bad);
  }

  /** Adds a user; an empty password makes a user that authenticates only by client certificate. */
  async addUser(name: string, password: string, deadlineMs: number): Promise<void> {
    AccessControl.checkName(name, 'user');
    if (password.length > MAX_PASSWORD_LENGTH) throw new AuthError('INVALID_ARGUMENT', `password longer than ${MAX_PASSWORD_LENGTH} characters`);
    const passwordHash = password === '' ? undefined : await hashPassword(password, this.opts.scrypt);
    await this.change(deadlineMs, (s) => {
      if (s.users.has(name)) throw new AuthError('ALREADY_EXISTS', `user ${JSON.stringify(name)} already exists`);
      return { writes: [{ type: 'put', key: userKey(name), value: encodeRecord({ roles: [], ...(passwordHash ? { passwordHash } : {}) }) }], reads: [] };
    });
  }

  /** Deletes a user (its tokens stop working at once). */
  async deleteUser(name: string, deadlineMs: number): Promise<void> {
    await this.change(deadlineMs, (s) => {
      AccessControl.user(s, name);
      return { writes: [{ type: 'delete', key: userKey(name) }], reads: [] };
    });
  }

  /** Grants (`grant` true) or revokes a role of a user. */
  async userRole(name: string, role: string, grant: boolean, deadlineMs: number): Promise<void> {
    await this.change(deadlineMs, (s) => {
      const u = AccessControl.user(s, name);
      if (grant && !s.hasRole(role)) throw new AuthError('NOT_FOUND', `no role ${JSON.stringify(role)} (kvctl role ls lists them)`);
      const has = u.roles.includes(role);
      if (!grant && !has) throw new AuthError('NOT_FOUND', `user ${JSON.stringify(name)} does not hold role ${JSON.stringify(role)}`);
      const roles = grant ? (has ? u.roles : [...u.roles, role].sort()) : u.roles.filter((r) => r !== role);
      return {
        writes: [{ type: 'put', key: userKey(name), value: encodeRecord({ roles, ...(u.passwordHash ? { passwordHash: u.passwordHash } : {}) }) }],
        reads: grant && role !== ROOT_ROLE ? [roleKey(role)] : [],
      };
    });
  }

  /** Adds a role without permissions. */
  async addRole(name: string, deadlineMs: number): Promise<void> {
    AccessControl.checkName(name, 'role');
    await this.change(deadlineMs, (s) => {
      if (s.hasRole(name)) throw new AuthError('ALREADY_EXISTS', `role ${JSON.stringify(name)} already exists`);
      return { writes: [{ type: 'put', key: roleKey(name), value: encodeRecord({ permissions: [] }) }], reads: [] };
    });
  }

  /** Deletes a role, and takes it from every user holding it. */
  async deleteRole(name: string, deadlineMs: number): Promise<void> {
    await this.change(deadlineMs, (s) => {
      AccessControl.role(s, name);
      const writes: TxnWrite[] = [{ type: 'delete', key: roleKey(name) }];
      for (const u of s.users.values()) {
        if (!u.roles.includes(name)) continue;
        writes.push({ type: 'put', key: userKey(u.name), value: encodeRecord({ roles: u.roles.filter((r) => r !== name), ...(u.passwordHash ? { passwordHash: u.passwordHash } : {}) }) });
      }
      return { writes, reads: [] };
    });
  }

  /** Grants `type` on `prefix` to a role (merged with what it has on that prefix). */
  async grantPermission(role: string, prefix: string, type: PermissionType, deadlineMs: number): Promise<void> {
    if (prefixInReserved(prefix)) throw new AuthError('INVALID_ARGUMENT', `${JSON.stringify(prefix)} is inside the reserved keyspace, which no role can be granted`);
    await this.change(deadlineMs, (s) => {
      const r = AccessControl.role(s, role);
      return { writes: [{ type: 'put', key: roleKey(role), value: encodeRecord({ permissions: addPermission(r.permissions, prefix, type) }) }], reads: [] };
    });
  }

  /** Revokes `type` (default all) on exactly `prefix` from a role. */
  async revokePermission(role: string, prefix: string, type: PermissionType | undefined, deadlineMs: number): Promise<void> {
    await this.change(deadlineMs, (s) => {
      const r = AccessControl.role(s, role);
      const permissions = removePermission(r.permissions, prefix, type);
      if (!permissions) throw new AuthError('NOT_FOUND', `role ${JSON.stringify(role)} has no permission on prefix ${JSON.stringify(prefix)}`);
      return { writes: [{ type: 'put', key: roleKey(role), value: encodeRecord({ permissions }) }], reads: [] };
    });
  }

  /**
   * Turns access control on or off. Turning it on is refused while nobody could administer the
   * cluster afterwards: no user holds the root role and this node has no admin token.
   */
  async setEnabled(enabled: boolean, deadlineMs: number): Promise<void> {
    await this.change(deadlineMs, (s) => {
      if (enabled && !s.hasRootUser() && !this.adminDigest) {
        throw new AuthError(
          'FAILED_PRECONDITION',
          'no one could administer the cluster once access control is on: add a user holding the root role first (kvctl user add admin; kvctl user grant-role admin root), or start kvd with --admin-token',
        );
      }
      return { writes: [{ type: 'put', key: AUTH_ENABLED_KEY, value: encodeRecord({ enabled }) }], reads: [] };
    });
  }

  /** Records the role extension `name`'s lambdas act with (undefined: root, the default). */
  async setExtensionRole(name: string, role: string | undefined, deadlineMs: number): Promise<void> {
    await this.change(deadlineMs, (s) => {
      if (role === undefined) return { writes: s.extensionRoles.has(name) ? [{ type: 'delete', key: extRoleKey(name) }] : [], reads: [] };
      if (!s.hasRole(role)) throw new AuthError('NOT_FOUND', `no role ${JSON.stringify(role)} (kvctl role add ${role} first)`);
      return { writes: [{ type: 'put', key: extRoleKey(name), value: encodeRecord({ role }) }], reads: role === ROOT_ROLE ? [] : [roleKey(role)] };
    });
  }
}
