/** `kvctl auth | user | role`: access control from the command line (turning it on and off, users, roles and their permissions); changes need root (the admin token or a root user). */
import type { Command } from 'commander';
import { AuthClient } from '../client/index.js';
import { tlsOf, type CommandContext } from './args.js';

/** What the auth commands need from kvctl's main, besides the shared context. */
export interface AuthCommandContext extends Omit<CommandContext, 'adminToken'> {
  /** Who kvctl authenticates as: a user and password (--user, $KVCASCADE_USER...), a token, or the admin token; undefined fields when none. */
  credentials(): { user?: string; password?: string; token?: string };
  /** Reads stdin whole (for --new-password-stdin). */
  readStdin(): Promise<string>;
}

const PERMISSION_TYPES = ['read', 'write', 'readwrite'] as const;
type PermType = (typeof PERMISSION_TYPES)[number];

function permType(s: string): PermType {
  const t = s.toLowerCase();
  if (!(PERMISSION_TYPES as readonly string[]).includes(t)) throw Object.assign(new Error(`permission type must be read, write or readwrite (got ${JSON.stringify(s)})`), { code: 'USAGE' });
  return t as PermType;
}

/** Adds the `auth`, `user` and `role` command groups to kvctl. */
export function registerAuthCommands(program: Command, ctx: AuthCommandContext): void {
  const client = (): AuthClient => new AuthClient({ endpoints: ctx.endpoints(), ...tlsOf(ctx), ...ctx.credentials(), deadlineMs: Math.max(ctx.timeoutMs(), 30_000) });
  /** Runs `fn` with a client, closed after; prints `done` (or `{ok:true,...}` with --json). */
  const run = async (fn: (c: AuthClient) => Promise<void>, done: string, doc: Record<string, unknown> = {}): Promise<void> => {
    const c = client();
    try {
      await fn(c);
      if (ctx.json()) ctx.print({ ok: true, ...doc });
      else ctx.out.write(`${done}\n`);
    } finally {
      c.close();
    }
  };

  const auth = program.command('auth').description('access control: turn it on or off, see who you are, log in (see README "Access control")');
  auth
    .command('enable')
    .description('turn access control on: every request must then authenticate (refused until a user holds the root role, unless the nodes have an admin token)')
    .action(() => run((c) => c.enable(), 'access control enabled', { enabled: true }));
  auth
    .command('disable')
    .description('turn access control off: every client may read and write every key again')
    .action(() => run((c) => c.disable(), 'access control disabled', { enabled: false }));
  auth
    .command('status')
    .description('whether access control is on, and who kvctl is authenticated as')
    .action(async () => {
      const c = client();
      try {
        const s = await c.status();
        if (ctx.json()) ctx.print(s);
        else ctx.out.write(ctx.formatTable(['ENABLED', 'AUTHENTICATED_AS', 'ROOT'], [[String(s.enabled), s.principal || '-', String(s.root)]]));
      } finally {
        c.close();
      }
    });
  auth
    .command('login')
    .description('log in with --user/--password (or $KVCASCADE_USER/$KVCASCADE_PASSWORD) and print a token (for $KVCASCADE_TOKEN)')
    .action(async () => {
      const cred = ctx.credentials();
      if (cred.user === undefined) throw Object.assign(new Error('give --user (and --password, or $KVCASCADE_PASSWORD)'), { code: 'USAGE' });
      const c = client();
      try {
        const t = await c.authenticate(cred.user, cred.password ?? '');
        if (ctx.json()) ctx.print(t);
        else ctx.out.write(`${t.token}\n`);
      } finally {
        c.close();
      }
    });

  const user = program.command('user').description('access control: users (root only)');
  user
    .command('add')
    .description('add a user; it authenticates with its password, or (--no-password) only by a client certificate whose common name is its name')
    .argument('<name>')
    .option('--new-password <password>', "the user's password (visible in the process list: prefer --new-password-stdin)")
    .option('--new-password-stdin', "read the user's password from stdin (first line)")
    .option('--no-password', 'no password: client-certificate authentication only')
    .action(async (name: string, o: { newPassword?: string; newPasswordStdin?: boolean; password?: boolean }) => {
      let password = o.newPassword;
      if (o.newPasswordStdin) password = (await ctx.readStdin()).split(/\r?\n/)[0] ?? '';
      if (o.password !== false && (password === undefined || password === '')) {
        throw Object.assign(new Error('give --new-password, --new-password-stdin or --no-password'), { code: 'USAGE' });
      }
      await run((c) => c.addUser(name, o.password === false ? '' : password), `user ${name} added`, { user: name });
    });
  user
    .command('delete')
    .description('delete a user (its tokens stop working at once)')
    .argument('<name>')
    .action((name: string) => run((c) => c.deleteUser(name), `user ${name} deleted`, { user: name }));
  user
    .command('grant-role')
    .description('give a user a role (root: everything, admin APIs included)')
    .argument('<user>')
    .argument('<role>')
    .action((u: string, r: string) => run((c) => c.grantRole(u, r), `role ${r} granted to user ${u}`, { user: u, role: r }));
  user
    .command('revoke-role')
    .description("take a role from a user")
    .argument('<user>')
    .argument('<role>')
    .action((u: string, r: string) => run((c) => c.revokeRole(u, r), `role ${r} revoked from user ${u}`, { user: u, role: r }));
  user
    .command('ls')
    .description('list the users and their roles')
    .action(async () => {
      const c = client();
      try {
        const users = await c.users();
        if (ctx.json()) ctx.print({ users });
        else ctx.out.write(ctx.formatTable(['USER', 'ROLES', 'PASSWORD'], users.map((u) => [u.name, u.roles.join(',') || '-', u.hasPassword ? 'yes' : 'no (certificate only)'])));
      } finally {
        c.close();
      }
    });

  const role = program.command('role').description('access control: roles and their permissions on key prefixes (root only)');
  role
    .command('add')
    .description('add a role (no permissions yet)')
    .argument('<name>')
    .action((name: string) => run((c) => c.addRole(name), `role ${name} added`, { role: name }));
  role
    .command('delete')
    .description('delete a role (and take it from every user)')
    .argument('<name>')
    .action((name: string) => run((c) => c.deleteRole(name), `role ${name} deleted`, { role: name }));
  role
    .command('grant-permission')
    .description('let a role read, write or readwrite every key starting with <prefix> ("" = every key)')
    .argument('<role>')
    .argument('<type>', 'read, write or readwrite')
    .argument('<prefix>')
    .action((r: string, type: string, prefix: string) => {
      const t = permType(type);
      return run((c) => c.grantPermission(r, prefix, t), `granted ${t} on ${JSON.stringify(prefix)} to role ${r}`, { role: r, type: t, prefix });
    });
  role
    .command('revoke-permission')
    .description('take from a role its permission on exactly <prefix> (all of it, or only [type])')
    .argument('<role>')
    .argument('<prefix>')
    .argument('[type]', 'read, write or readwrite (default: all)')
    .action((r: string, prefix: string, type: string | undefined) => {
      const t = type === undefined ? undefined : permType(type);
      return run((c) => c.revokePermission(r, prefix, t), `revoked ${t ?? 'all'} on ${JSON.stringify(prefix)} from role ${r}`, { role: r, prefix, ...(t ? { type: t } : {}) });
    });
  role
    .command('ls')
    .description('list the roles and their permissions')
    .action(async () => {
      const c = client();
      try {
        const roles = await c.roles();
        if (ctx.json()) ctx.print({ roles });
        else {
          const rows: string[][] = [];
          for (const r of roles) {
            if (r.permissions.length === 0) rows.push([r.name, '-', '-']);
            for (const p of r.permissions) rows.push([r.name, p.type, r.name === 'root' ? '(every key, admin APIs)' : JSON.stringify(p.prefix)]);
          }
          ctx.out.write(ctx.formatTable(['ROLE', 'PERMISSION', 'PREFIX'], rows));
        }
      } finally {
        c.close();
      }
    });
}
