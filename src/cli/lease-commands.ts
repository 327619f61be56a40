/** `kvctl lease grant | keepalive | revoke | ttl | ls`: leases from the command line (docs/leases.md); `kvctl put --lease` is in kvctl.ts. */
import type { Command } from 'commander';
import { LeaseClient } from '../client/index.js';
import { positive, tlsOf, type CommandContext } from './args.js';

/** What the lease commands need from kvctl's main, besides the shared context. */
export interface LeaseCommandContext extends Omit<CommandContext, 'adminToken'> {
  /** Who kvctl authenticates as (a user and password, or a token); empty with access control off. */
  credentials(): { user?: string; password?: string; token?: string };
  /** Resolves when kvctl is told to stop (Ctrl-C) — `keepalive` runs until then. */
  interrupted(): Promise<void>;
}

/** Adds the `lease` command group to kvctl. */
export function registerLeaseCommands(program: Command, ctx: LeaseCommandContext): void {
  const client = (): LeaseClient => new LeaseClient({ endpoints: ctx.endpoints(), ...tlsOf(ctx), ...ctx.credentials(), deadlineMs: ctx.timeoutMs() });
  const withClient = async (fn: (c: LeaseClient) => Promise<void>): Promise<void> => {
    const c = client();
    try {
      await fn(c);
    } finally {
      c.close();
    }
  };
  const leaseId = positive('lease id');
  const lease = program.command('lease').description('leases: keys that vanish when their owner stops renewing (see docs/leases.md)');
  lease
    .command('grant')
    .description('grant a lease of <ttl> seconds; prints its id (attach keys with `kvctl put --lease <id>`)')
    .argument('<ttl>', 'seconds', positive('ttl'))
    .action((ttl: number) =>
      withClient(async (c) => {
        const id = await c.grant(ttl);
        if (ctx.json()) ctx.print({ id, ttl });
        else ctx.out.write(`lease ${id} granted with TTL ${ttl}s\n`);
      }),
    );
  lease
    .command('revoke')
    .description('end a lease now: its keys are deleted')
    .argument('<id>', 'lease id', leaseId)
    .action((id: number) =>
      withClient(async (c) => {
        await c.revoke(id);
        if (ctx.json()) ctx.print({ id, revoked: true });
        else ctx.out.write(`lease ${id} revoked\n`);
      }),
    );
  lease
    .command('ttl')
    .description("a lease's remaining and granted TTL")
    .argument('<id>', 'lease id', leaseId)
    .option('--keys', 'also list the keys attached to it')
    .action((id: number, o: { keys?: boolean }) =>
      withClient(async (c) => {
        const t = await c.timeToLive(id, { keys: o.keys === true });
        if (ctx.json()) ctx.print(t);
        else {
          ctx.out.write(`lease ${id} granted with TTL ${t.grantedTtl}s, remaining ${t.ttl}s${t.owner ? `, owner ${t.owner}` : ''}\n`);
          if (t.keys) ctx.out.write(t.keys.length > 0 ? `keys: ${t.keys.join(', ')}\n` : 'keys: none\n');
        }
      }),
    );
  lease
    .command('ls')
    .description('live leases (yours; all of them as root or with access control off)')
    .action(() =>
      withClient(async (c) => {
        const ls = await c.leases();
        if (ctx.json()) ctx.print({ leases: ls });
        else ctx.out.write(ctx.formatTable(['ID', 'TTL', 'GRANTED_TTL', 'OWNER'], ls.map((l) => [String(l.id), String(l.ttl), String(l.grantedTtl), l.owner || '-'])));
      }),
    );
  lease
    .command('keepalive')
    .description('keep a lease alive until Ctrl-C (or --once: one keep-alive); prints each renewal')
    .argument('<id>', 'lease id', leaseId)
    .option('--once', 'send one keep-alive and exit')
    .action((id: number, o: { once?: boolean }) =>
      withClient(async (c) => {
        const t = await c.timeToLive(id);
        const lost = new Promise<string>((resolve) => c.on('lost', (_id, reason, detail) => resolve(`${reason}: ${detail}`)));
        c.keepAlive(id, t.grantedTtl);
        if (o.once) {
          const t2 = await c.timeToLive(id);
          if (ctx.json()) ctx.print({ id, ttl: t2.ttl });
          else ctx.out.write(`lease ${id} kept alive with TTL ${t2.ttl}s\n`);
          return;
        }
        if (!ctx.json()) ctx.out.write(`keeping lease ${id} alive (TTL ${t.grantedTtl}s) until Ctrl-C\n`);
        const outcome = await Promise.race([lost, ctx.interrupted().then(() => undefined)]);
        if (outcome !== undefined) {
          ctx.fail(1);
          throw Object.assign(new Error(`lease ${id} lost (${outcome})`), { code: 'NOT_FOUND' });
        }
      }),
    );
}
