/**
 * The replicated auth state: where users, roles, the enabled flag, the token secret and the
 * extensions' roles live in the metadata group (reserved keys under `/_sys/auth/`, written only
 * as system commands), their JSON records, and the state a node rebuilds from a listing of them.
 */
import { ROOT_ROLE, type Permission, type Role, type User } from './permissions.js';

/** Key prefix of the auth state in the metadata group (group 0). */
export const AUTH_PREFIX = '/_sys/auth/';
/** `{"enabled":true|false}`: whether requests are authenticated and authorized. */
export const AUTH_ENABLED_KEY = `${AUTH_PREFIX}enabled`;
/** The cluster's token-signing secret (32 random bytes), written with the first auth change. */
export const AUTH_SECRET_KEY = `${AUTH_PREFIX}secret`;
/** `/_sys/auth/user/<name>`: a {@link User} as JSON. */
export const AUTH_USER_PREFIX = `${AUTH_PREFIX}user/`;
/** `/_sys/auth/role/<name>`: a {@link Role} as JSON. */
export const AUTH_ROLE_PREFIX = `${AUTH_PREFIX}role/`;
/** `/_sys/auth/ext/<extension>`: `{"role":"<name>"}`, the role an extension's lambdas act with. */
export const AUTH_EXT_PREFIX = `${AUTH_PREFIX}ext/`;

/** The key of user `name`. */
export const userKey = (name: string): string => `${AUTH_USER_PREFIX}${name}`;
/** The key of role `name`. */
export const roleKey = (name: string): string => `${AUTH_ROLE_PREFIX}${name}`;
/** The key of extension `name`'s role. */
export const extRoleKey = (name: string): string => `${AUTH_EXT_PREFIX}${name}`;

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Encodes a record as stored. */
export function encodeRecord(v: unknown): Uint8Array {
  return enc.encode(JSON.stringify(v));
}

function decodeJson(v: Uint8Array | undefined): Record<string, unknown> | undefined {
  if (!v) return undefined;
  try {
    const o = JSON.parse(dec.decode(v)) as unknown;
    return o !== null && typeof o === 'object' ? (o as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** A user record as stored (malformed fields dropped). */
export function decodeUser(name: string, v: Uint8Array | undefined): User | undefined {
  const o = decodeJson(v);
  if (!o) return undefined;
  const roles = Array.isArray(o.roles) ? o.roles.filter((r): r is string => typeof r === 'string') : [];
  return { name, roles, ...(typeof o.passwordHash === 'string' && o.passwordHash !== '' ? { passwordHash: o.passwordHash } : {}) };
}

/** A role record as stored (malformed permissions dropped). */
export function decodeRole(name: string, v: Uint8Array | undefined): Role | undefined {
  const o = decodeJson(v);
  if (!o) return undefined;
  const permissions: Permission[] = [];
  if (Array.isArray(o.permissions)) {
    for (const p of o.permissions as unknown[]) {
      const q = p as { prefix?: unknown; type?: unknown };
      if (typeof q?.prefix === 'string' && (q.type === 'read' || q.type === 'write' || q.type === 'readwrite')) permissions.push({ prefix: q.prefix, type: q.type });
    }
  }
  return { name, permissions };
}

/** One stored key, as a local listing returns it. */
export interface StoredItem {
  readonly key: string;
  readonly value?: Uint8Array;
  readonly version: number;
}

/** The auth state of the metadata group at one revision. */
export class AuthState {
  /** Key → version of every auth record (for conditional changes). */
  readonly versions = new Map<string, number>();

  private constructor(
    /** The metadata group's revision this state was read at. */
    readonly revision: number,
    readonly enabled: boolean,
    readonly secret: Uint8Array | undefined,
    readonly users: ReadonlyMap<string, User>,
    readonly roles: ReadonlyMap<string, Role>,
    readonly extensionRoles: ReadonlyMap<string, string>,
  ) {}

  /** The empty state: auth disabled, no users, no roles. */
  static empty(revision = 0): AuthState {
    return new AuthState(revision, false, undefined, new Map(), new Map(), new Map());
  }

  /** The state stored in `items` (the keys under {@link AUTH_PREFIX}). */
  static fromItems(revision: number, items: Iterable<StoredItem>): AuthState {
    let enabled = false;
    let secret: Uint8Array | undefined;
    const users = new Map<string, User>();
    const roles = new Map<string, Role>();
    const ext = new Map<string, string>();
    const versions = new Map<string, number>();
    for (const it of items) {
      versions.set(it.key, it.version);
      if (it.key === AUTH_ENABLED_KEY) enabled = decodeJson(it.value)?.enabled === true;
      else if (it.key === AUTH_SECRET_KEY) secret = it.value && it.value.length >= 16 ? it.value : undefined;
      else if (it.key.startsWith(AUTH_USER_PREFIX)) {
        const u = decodeUser(it.key.slice(AUTH_USER_PREFIX.length), it.value);
        if (u) users.set(u.name, u);
      } else if (it.key.startsWith(AUTH_ROLE_PREFIX)) {
        const r = decodeRole(it.key.slice(AUTH_ROLE_PREFIX.length), it.value);
        if (r) roles.set(r.name, r);
      } else if (it.key.startsWith(AUTH_EXT_PREFIX)) {
        const role = decodeJson(it.value)?.role;
        if (typeof role === 'string') ext.set(it.key.slice(AUTH_EXT_PREFIX.length), role);
      }
    }
    const s = new AuthState(revision, enabled, secret, users, roles, ext);
    for (const [k, v] of versions) s.versions.set(k, v);
    return s;
  }

  /** The version of a stored auth key (0 = absent). */
  versionOf(key: string): number {
    return this.versions.get(key) ?? 0;
  }

  /** Whether role `name` exists (`root` always does). */
  hasRole(name: string): boolean {
    return name === ROOT_ROLE || this.roles.has(name);
  }

  /** The permissions of a set of roles, and whether one of them is root. Unknown roles grant nothing. */
  grantsOf(roleNames: readonly string[]): { root: boolean; permissions: Permission[] } {
    const permissions: Permission[] = [];
    let root = false;
    for (const r of roleNames) {
      if (r === ROOT_ROLE) root = true;
      const role = this.roles.get(r);
      if (role) permissions.push(...role.permissions);
    }
    return { root, permissions };
  }

  /** Whether some user holds the root role. */
  hasRootUser(): boolean {
    for (const u of this.users.values()) if (u.roles.includes(ROOT_ROLE)) return true;
    return false;
  }
}
