/** `kvctl ext load | ls | unload`: managing extensions from the command line (needs the admin token). */
import { existsSync, readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { AdminClient } from '../client/admin-client.js';
import { readTarball } from '../extensions/package.js';
import { packFolder } from '../extensions/pack-folder.js';
import { tlsOf, type CommandContext } from './args.js';
import { writeExtensionProject } from './ext-init.js';

/** What the extension commands need from kvctl's main. */
export type ExtCommandContext = CommandContext;

/** Where `npm start` keeps the local cluster's admin token. */
export const LOCAL_TOKEN_FILE = '.data/admin-token';

/**
 * The token file of the `npm start` cluster of the checkout this kvctl belongs to (kvctl run from
 * another folder still finds it): `<package root>/.data/admin-token`.
 */
export const PACKAGE_TOKEN_FILE = fileURLToPath(new URL('../../../.data/admin-token', import.meta.url));

/** Where kvctl looks for the admin token when no flag or variable gives it, in order. */
export const DEFAULT_TOKEN_FILES: readonly string[] = [LOCAL_TOKEN_FILE, PACKAGE_TOKEN_FILE];

/**
 * The admin token kvctl uses: flag, then environment, then the local cluster's token file
 * (`./.data/admin-token`, else the one of this checkout's `npm start` cluster).
 */
export function resolveAdminToken(flag: string | undefined, env: Readonly<Record<string, string | undefined>>, files: readonly string[] = DEFAULT_TOKEN_FILES): string | undefined {
  if (flag) return flag;
  if (env.KVCASCADE_ADMIN_TOKEN) return env.KVCASCADE_ADMIN_TOKEN;
  for (const file of files) if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  return undefined;
}

/** Adds the `ext` command group to kvctl. */
export function registerExtCommands(program: Command, ctx: ExtCommandContext): void {
  const ext = program.command('ext').description('load, list and unload extensions (admin token required, except to list)');
  const admin = () => new AdminClient({ endpoints: ctx.endpoints(), ...tlsOf(ctx), token: ctx.adminToken(), deadlineMs: Math.max(ctx.timeoutMs(), 60_000) });

  ext
    .command('load')
    .description('pack a folder (or take a .tgz), upload it and load it on every node; replaces a loaded version')
    .argument('<path>', 'extension folder (with package.json) or .tgz')
    .option('--name <name>', 'registry name (default: from package.json)')
    .option('--config <file>', 'JSON file handed to initialize() as ctx.config')
    .option('--isolation <mode>', 'where lambdas run: process (own process, all memory bounded), worker (worker thread, heap bounded) or in-process (node thread, trusted); default: the node\'s')
    .option('--in-process', 'same as --isolation in-process')
    .option('--max-restarts-per-minute <n>', 'restarts within a minute before the extension pauses (circuit breaker; default: the node\'s, 30)', (v: string) => Number(v))
    .option('--pause-ms <ms>', 'first pause of the circuit breaker (doubled after each failed retry; default: the node\'s, 30000)', (v: string) => Number(v))
    .option('--role <role>', 'access control: the role its lambdas act with (default: root, every key)')
    .option('--wait', 'return once every reachable node has loaded it (running or failed), not only the metadata leader; exit code 1 when a node failed or did not finish within --timeout (at least 60 s)')
    .option('--from <now|revision>', 'where delivery starts: now (skip the backlog) or a revision (every change from it on, in every shard); default: where it left off (its delivery cursors, kept across replacements and unloads without --purge)')
    .action(async (path: string, o: { name?: string; role?: string; config?: string; inProcess?: boolean; isolation?: string; maxRestartsPerMinute?: number; pauseMs?: number; from?: string; wait?: boolean }) => {
      if (o.isolation !== undefined && o.isolation !== 'worker' && o.isolation !== 'process' && o.isolation !== 'in-process') {
        throw new Error(`--isolation must be process, worker or in-process (got ${o.isolation})`);
      }
      if (o.inProcess && o.isolation !== undefined && o.isolation !== 'in-process') throw new Error(`--in-process contradicts --isolation ${o.isolation}`);
      const isolation = o.isolation as 'worker' | 'process' | 'in-process' | undefined;
      const from = parseFrom(o.from);
      const st = await stat(path);
      const tgz = st.isDirectory() ? await packFolder(path) : await readTarball(path);
      const config = o.config ? (JSON.parse(readFileSync(o.config, 'utf8')) as Record<string, unknown>) : {};
      const c = admin();
      try {
        const r = await c.load(tgz, {
          ...(o.name ? { name: o.name } : {}),
          config,
          inProcess: o.inProcess ?? false,
          ...(isolation ? { isolation } : {}),
          ...(o.maxRestartsPerMinute !== undefined ? { maxRestartsPerMinute: o.maxRestartsPerMinute } : {}),
          ...(o.pauseMs !== undefined ? { pauseMs: o.pauseMs } : {}),
          ...(o.role ? { role: o.role } : {}),
          ...(from !== undefined ? { from } : {}),
        });
        // The answer is the metadata leader's; --wait adds every other reachable node's.
        const nodes = o.wait ? await c.waitLoaded(r.status.name, r.status.generation, Date.now() + Math.max(ctx.timeoutMs(), 60_000)) : undefined;
        if (ctx.json()) ctx.print(nodes ? { ...r, nodes } : r);
        else {
          const shown = nodes?.statuses ?? [r.status];
          ctx.out.write(
            ctx.formatTable(
              ['NAME', 'VERSION', 'GENERATION', 'NODE', 'STATE', 'WATCHES'],
              shown.map((s) => [s.name, s.version, String(s.generation), String(s.nodeId), s.state + (s.error && s.state !== 'running' ? `: ${s.error.slice(0, 200)}` : ''), s.watches.map((w) => `${w.prefix} (${w.mode})`).join(', ')]),
            ),
          );
          if (nodes && nodes.unreachable.length > 0) ctx.out.write(`unreachable: ${nodes.unreachable.join(', ')}\n`);
        }
        if (nodes && !nodes.complete) ctx.fail(1);
      } finally {
        c.close();
      }
    });

  ext
    .command('init')
    .description('write a new extension project in TypeScript into <dir>: a typed module, a vitest test on kvcascade/testing, build and load scripts')
    .argument('<dir>', 'a new or empty folder')
    .option('--name <name>', 'package name (default: the folder\'s name)')
    .option('--kvcascade <spec>', 'devDependency spec of kvcascade (default: file: this kvcascade\'s folder)')
    .action((dir: string, o: { name?: string; kvcascade?: string }) => {
      const files = writeExtensionProject(dir, o);
      if (ctx.json()) ctx.print({ dir, files });
      else ctx.out.write(`wrote ${files.join(', ')} into ${dir}\nnext: cd ${dir} && npm install && npm test && npm run load\n`);
    });

  ext
    .command('ls')
    .description('registered extensions: state, lambda statistics, where the lambdas run and (process isolation) CPU seconds and RSS on every node')
    .action(async () => {
      // Listing needs no token; with one, the extensions' configs are shown too.
      const token = ctx.adminTokenIfAny?.();
      const c = new AdminClient({ endpoints: ctx.endpoints(), ...tlsOf(ctx), ...(token ? { token } : {}), deadlineMs: Math.max(ctx.timeoutMs(), 60_000) });
      try {
        const l = await c.list();
        if (ctx.json()) {
          ctx.print(l);
          return;
        }
        if (l.records.length === 0) {
          ctx.out.write('no extensions loaded\n');
          return;
        }
        const rows: string[][] = [];
        for (const rec of l.records) {
          // Loaded without one: the node's default (kvd --extension-isolation; process unless set).
          const isolation = rec.isolation || (rec.inProcess ? 'in-process' : 'default');
          const nodes = l.statuses.filter((s) => s.name === rec.name).sort((a, b) => a.nodeId - b.nodeId);
          for (const s of nodes) {
            const w = s.watches;
            const sum = (f: (x: (typeof w)[number]) => number) => w.reduce((a, x) => a + f(x), 0);
            rows.push([
              rec.name,
              rec.version,
              String(rec.generation),
              isolation,
              String(s.nodeId),
              s.state + (s.error ? `: ${s.error.slice(0, 200)}` : ''),
              s.delivering ? 'yes' : '-',
              w.map((x) => x.prefix).join(','),
              String(sum((x) => x.invocations)),
              String(sum((x) => x.errors)),
              String(sum((x) => x.deadLettered)),
              String(sum((x) => x.backlog)),
              String(s.workerRestarts),
              s.runsIn || '-',
              s.resources ? cpuText(s.resources.cpuSeconds) : '-',
              s.resources ? rssText(s.resources.rssBytes) : '-',
            ]);
          }
          if (nodes.length > 1) {
            // Each node counts what it ran (kept across leader changes): the cluster's totals are their sum.
            const all = (f: (x: (typeof nodes)[number]['watches'][number]) => number) => nodes.reduce((a, s) => a + s.watches.reduce((b, x) => b + f(x), 0), 0);
            const measured = nodes.flatMap((s) => (s.resources ? [s.resources] : []));
            rows.push([
              rec.name,
              rec.version,
              String(rec.generation),
              isolation,
              'all',
              '-',
              '-',
              '-',
              String(all((x) => x.invocations)),
              String(all((x) => x.errors)),
              String(all((x) => x.deadLettered)),
              String(all((x) => x.backlog)),
              String(nodes.reduce((a, s) => a + s.workerRestarts, 0)),
              [...new Set(nodes.map((s) => s.runsIn).filter((x) => x))].join(',') || '-',
              // CPU time and memory add up over the nodes that measure them (process isolation).
              measured.length > 0 ? cpuText(measured.reduce((a, r) => a + r.cpuSeconds, 0)) : '-',
              measured.length > 0 ? rssText(measured.reduce((a, r) => a + r.rssBytes, 0)) : '-',
            ]);
          }
          if (nodes.length === 0) rows.push([rec.name, rec.version, String(rec.generation), isolation, '-', 'no node reported', '-', '-', '-', '-', '-', '-', '-', '-', '-', '-']);
        }
        ctx.out.write(
          ctx.formatTable(['NAME', 'VERSION', 'GEN', 'ISOLATION', 'NODE', 'STATE', 'DELIVERING', 'WATCHES', 'INVOKED', 'ERRORS', 'DLQ', 'BACKLOG', 'RESTARTS', 'RUNS IN', 'CPU S', 'RSS MIB'], rows),
        );
        const cursors: string[][] = [];
        for (const s of [...l.statuses].sort((a, b) => a.name.localeCompare(b.name) || a.nodeId - b.nodeId)) {
          for (const w of s.watches) {
            for (const x of w.shards) cursors.push([s.name, w.prefix, String(x.shard), String(s.nodeId), String(x.cursor), String(x.revision), String(Math.max(0, x.revision - x.cursor)), String(x.backlog)]);
          }
        }
        if (cursors.length > 0) {
          ctx.out.write('\ndelivery (per shard, on the node leading it; LAG = shard revision - cursor):\n');
          ctx.out.write(ctx.formatTable(['NAME', 'WATCH', 'SHARD', 'NODE', 'CURSOR', 'REVISION', 'LAG', 'BACKLOG'], cursors));
        }
        for (const m of l.missingMembers) ctx.out.write(`missing member ${m.id} (${m.address}): did not answer: ${m.error}\n`);
        if (l.unreachable.length > 0) ctx.out.write(`unreachable: ${l.unreachable.join(', ')}\n`);
        if (l.loading > 0) ctx.out.write(`warning: ${l.loading} node entr${l.loading === 1 ? 'y is' : 'ies are'} still loading the registered generation (STATE loading): run kvctl ext ls again\n`);
      } finally {
        c.close();
      }
    });

  ext
    .command('resume')
    .description('resume a paused extension (circuit breaker open after repeated worker failures) at once on every node')
    .argument('<name>')
    .action(async (name: string) => {
      const c = admin();
      try {
        const r = await c.resume(name);
        if (ctx.json()) ctx.print({ name, ...r });
        else if (!r.loaded) ctx.out.write(`kvctl: NOT_FOUND: extension ${name} is not loaded\n`);
        else ctx.out.write(`resumed ${name}${r.wasPaused ? '' : ' (it was not paused on the metadata leader; every node was told)'}\n`);
        if (!r.loaded) ctx.fail(1);
      } finally {
        c.close();
      }
    });

  ext
    .command('unload')
    .description('stop an extension on every node and remove it from the registry; its delivery cursors are kept (a later load resumes from them) unless --purge')
    .argument('<name>')
    .option('--purge', 'also forget its delivery cursors: a later load starts from that load, as a first one')
    .action(async (name: string, o: { purge?: boolean }) => {
      const c = admin();
      try {
        const ok = await c.unload(name, { purge: o.purge === true });
        if (ctx.json()) ctx.print({ name, unloaded: ok });
        else ctx.out.write(ok ? `unloaded ${name}${o.purge ? ' (delivery cursors forgotten)' : ' (delivery cursors kept: loading it again resumes from them; --purge forgets them)'}\n` : `kvctl: NOT_FOUND: extension ${name} is not loaded\n`);
        if (!ok) ctx.fail(1);
      } finally {
        c.close();
      }
    });
}

/** `--from` of `ext load`: undefined (resume), 'now' or a revision; throws on anything else. */
export function parseFrom(v: string | undefined): 'now' | number | undefined {
  if (v === undefined) return undefined;
  if (v === 'now') return 'now';
  if (/^(0|[1-9][0-9]{0,15})$/.test(v)) return Number(v);
  throw new Error(`--from must be now or a revision (a non-negative integer), got ${JSON.stringify(v)}`);
}

/** CPU seconds as `kvctl ext ls` shows them. */
function cpuText(seconds: number): string {
  return seconds.toFixed(2);
}

/** Resident memory in MiB as `kvctl ext ls` shows it. */
function rssText(bytes: number): string {
  return (bytes / (1024 * 1024)).toFixed(1);
}
