/** The access-control model (as etcd's RBAC): users hold roles, roles grant read, write or readwrite on key prefixes, and the built-in `root` role grants everything, admin APIs included. Pure. */

/** What a permission allows on the keys under its prefix. */
export type PermissionType = 'read' | 'write' | 'readwrite';

/** The permission types, for validation and help texts. */
export const PERMISSION_TYPES: readonly PermissionType[] = ['read', 'write', 'readwrite'];

/** What an operation needs: reading or writing. */
export type Access = 'read' | 'write';

/** One permission of a role: `type` on every key starting with `prefix` (`''` = every key). */
export interface Permission {
  readonly prefix: string;
  readonly type: PermissionType;
}

/** A role: a name and its permissions. */
export interface Role {
  readonly name: string;
  readonly permissions: readonly Permission[];
}

/** A user: a name, its password hash (absent: it authenticates by client certificate only) and its roles. */
export interface User {
  readonly name: string;
  readonly passwordHash?: string;
  readonly roles: readonly string[];
}

/** The built-in role granting every permission and the admin APIs; it cannot be changed or deleted. */
export const ROOT_ROLE = 'root';

/** Longest user or role name (bytes of UTF-8 as characters: names are ASCII). */
export const MAX_NAME_LENGTH = 128;

/** Longest permission prefix in characters. */
export const MAX_PREFIX_LENGTH = 4096;

/** Whether `type` grants `access`. */
export function grants(type: PermissionType, access: Access): boolean {
  return type === 'readwrite' || type === access;
}

/** Whether permission `p` grants `access` to `key`: exactly the keys starting with its prefix. */
export function permitsKey(p: Permission, key: string, access: Access): boolean {
  return grants(p.type, access) && key.startsWith(p.prefix);
}

/**
 * Whether permission `p` grants `access` to every key starting with `prefix` (a List or Watch of
 * it). Prefix permissions cover a whole prefix only one at a time: the key equal to `prefix`
 * itself is covered only by a permission whose prefix is a prefix of it, and that one then
 * covers every longer key too.
 */
export function permitsPrefix(p: Permission, prefix: string, access: Access): boolean {
  return grants(p.type, access) && prefix.startsWith(p.prefix);
}

/** Whether some of `perms` grants `access` to `key`. */
export function anyPermitsKey(perms: readonly Permission[], key: string, access: Access): boolean {
  for (const p of perms) if (permitsKey(p, key, access)) return true;
  return false;
}

/** Whether some of `perms` grants `access` to the whole `prefix`. */
export function anyPermitsPrefix(perms: readonly Permission[], prefix: string, access: Access): boolean {
  for (const p of perms) if (permitsPrefix(p, prefix, access)) return true;
  return false;
}

/** Why a user or role name is invalid, or undefined: 1-128 characters of [A-Za-z0-9_.@-]. */
export function invalidName(name: unknown, what: 'user' | 'role'): string | undefined {
  if (typeof name !== 'string' || name === '') return `${what} name required`;
  if (name.length > MAX_NAME_LENGTH) return `${what} name longer than ${MAX_NAME_LENGTH} characters`;
  if (!/^[A-Za-z0-9_.@-]+$/.test(name)) return `${what} name ${JSON.stringify(name)} may only hold letters, digits and _ . @ -`;
  return undefined;
}

/** Parses a permission type (case-insensitive), or undefined. */
export function parsePermissionType(s: string): PermissionType | undefined {
  const t = s.toLowerCase();
  return (PERMISSION_TYPES as readonly string[]).includes(t) ? (t as PermissionType) : undefined;
}

/**
 * Adds `type` on `prefix` to `perms`: merged with an existing permission of the same prefix
 * (read + write = readwrite).
 */
export function addPermission(perms: readonly Permission[], prefix: string, type: PermissionType): Permission[] {
  const out: Permission[] = [];
  let merged = false;
  for (const p of perms) {
    if (p.prefix === prefix) {
      merged = true;
      out.push({ prefix, type: p.type === type ? type : 'readwrite' });
    } else out.push(p);
  }
  if (!merged) out.push({ prefix, type });
  return out.sort((a, b) => (a.prefix < b.prefix ? -1 : a.prefix > b.prefix ? 1 : 0));
}

/**
 * Removes `type` (default: all) on exactly `prefix` from `perms`: readwrite minus write leaves
 * read. Returns undefined when the role has no permission on that prefix.
 */
export function removePermission(perms: readonly Permission[], prefix: string, type: PermissionType = 'readwrite'): Permission[] | undefined {
  const i = perms.findIndex((p) => p.prefix === prefix);
  if (i < 0) return undefined;
  const p = perms[i]!;
  const out = [...perms];
  const left: PermissionType | undefined =
    type === 'readwrite' || p.type === type ? undefined : p.type === 'readwrite' ? (type === 'read' ? 'write' : 'read') : p.type;
  if (left === undefined) out.splice(i, 1);
  else out[i] = { prefix, type: left };
  return out;
}
