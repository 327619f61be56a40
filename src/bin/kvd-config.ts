/** Configuration of a kvd process: flags and an optional JSON file, validated into `KvdConfig`. */
import { Command, InvalidArgumentError } from 'commander';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { KVCASCADE_VERSION } from '../node/kv-node.js';

/** The node's configuration after merging the config file and flags. */
export interface KvdConfig {
  id: number;
  listen: string;
  peers: Map<number, string>;
  dataDir: string;
  metricsPort: number;
  tickMs: number;
  electionTicks: number;
  snapshotEveryEntries: number;
  retentionMs: number;
  /** Shards of the default pool of a brand-new cluster (only read when the cluster is created). */
  defaultShards: number;
  /** Join the existing cluster at this address (host:port of any member) instead of creating one. */
  join?: string;
  /** Extensions this node makes sure are loaded (registered cluster-wide) at start. */
  extensions: ConfiguredExtension[];
  /** Token required for admin operations (extension load/unload); unset = admin disabled. */
  adminToken?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
}

/** An extension listed in the node's configuration. */
export interface ConfiguredExtension {
  /** Folder (with package.json) or .tgz. */
  path: string;
  name?: string;
  config?: Record<string, unknown>;
}

function parsePeers(s: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const part of s.split(',').map((p) => p.trim()).filter(Boolean)) {
    const m = /^(\d+)=(.+:\d+)$/.exec(part);
    if (!m) throw new InvalidArgumentError(`peer "${part}" is not id=host:port`);
    out.set(Number(m[1]), m[2]!);
  }
  return out;
}

function int(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a non-negative integer`);
    return n;
  };
}

/** Parses argv into a config (exits with a one-line error on bad input). */
export function parseConfig(argv: string[]): KvdConfig {
  const program = new Command('kvd')
    .description('kvcascade node: serves the KV API and replicates with its peers')
    .version(KVCASCADE_VERSION)
    .option('--config <file>', 'JSON config file (flags override it)')
    .option('--id <n>', 'this node id (positive integer)', int('--id'))
    .option('--listen <host:port>', 'address for clients and peers')
    .option('--peers <list>', 'initial members: 1=host:port,2=host:port,... (including this node)')
    .option('--data-dir <dir>', 'where the node keeps its data')
    .option('--metrics-port <port>', 'port of the /metrics HTTP endpoint on 127.0.0.1 (0 = ephemeral)', int('--metrics-port'))
    .option('--tick-ms <ms>', 'Raft tick length', int('--tick-ms'))
    .option('--election-ticks <n>', 'ticks before a follower campaigns', int('--election-ticks'))
    .option('--snapshot-every <entries>', 'take a snapshot after this many applied entries', int('--snapshot-every'))
    .option('--default-shards <n>', 'shards of the default pool when this node creates a new cluster (default 1)', int('--default-shards'))
    .option('--join <host:port>', 'join the existing cluster at this member address (add the node first: kvctl member add <id> <addr>)')
    .option('--retention-ms <ms>', 'keep old versions this long (0 = bounded only by history limits)', int('--retention-ms'))
    .option('--extension <path>', 'load this extension folder or .tgz at start (repeatable; the config file takes {path, name, config} objects)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--admin-token <token>', 'token required for admin operations such as loading extensions (or env KVCASCADE_ADMIN_TOKEN)')
    .option('--admin-token-file <file>', 'read the admin token from a file')
    .option('--tls-cert <file>', 'PEM certificate for client and peer TLS')
    .option('--tls-key <file>', 'PEM private key for client and peer TLS')
    .option('--tls-ca <file>', 'PEM CA bundle to verify peers (and client certificates)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  program.parse(argv, { from: 'user' });
  const o = program.opts<Record<string, unknown>>();
  let file: Record<string, unknown> = {};
  if (typeof o.config === 'string') file = JSON.parse(readFileSync(o.config, 'utf8')) as Record<string, unknown>;
  const pick = <T>(k: string, fallback: T): T => (o[k] ?? file[k] ?? fallback) as T;
  const peersRaw = pick<string | Record<string, string> | undefined>('peers', undefined);
  const peers =
    typeof peersRaw === 'string'
      ? parsePeers(peersRaw)
      : new Map(Object.entries(peersRaw ?? {}).map(([k, v]) => [Number(k), String(v)] as [number, string]));
  const id = Number(pick('id', 0));
  const listen = pick<string | undefined>('listen', undefined) ?? peers.get(id);
  const join = pick<string | undefined>('join', undefined);
  if (!id) throw new Error('--id is required');
  if (!listen) throw new Error('--listen is required (or list this node in --peers)');
  if (join !== undefined) {
    if (peers.size > 0) throw new Error('give either --join (to join a cluster) or --peers (to create one), not both');
    if (!/^.+:\d+$/.test(join)) throw new Error(`--join "${join}" is not host:port`);
  } else {
    if (peers.size === 0) peers.set(id, listen);
    if (!peers.has(id)) throw new Error(`node ${id} must be listed in --peers`);
  }
  const defaultShards = Number(pick('defaultShards', 1));
  if (!Number.isSafeInteger(defaultShards) || defaultShards < 1 || defaultShards > 64) throw new Error('--default-shards must be an integer from 1 to 64');
  const cfg: KvdConfig = {
    id,
    listen,
    peers,
    dataDir: resolve(pick('dataDir', `./data/node-${id}`)),
    metricsPort: Number(pick('metricsPort', 0)),
    tickMs: Number(pick('tickMs', 100)),
    electionTicks: Number(pick('electionTicks', 10)),
    snapshotEveryEntries: Number(pick('snapshotEvery', 20000)),
    retentionMs: Number(pick('retentionMs', 3_600_000)),
    defaultShards,
    ...(join !== undefined ? { join } : {}),
    extensions: parseExtensions(o.extension, file.extensions),
  };
  const tokenFile = pick<string | undefined>('adminTokenFile', undefined);
  const token = pick<string | undefined>('adminToken', undefined) ?? (tokenFile ? readFileSync(tokenFile, 'utf8').trim() : undefined) ?? process.env.KVCASCADE_ADMIN_TOKEN;
  if (token !== undefined) {
    if (token.length < 16) throw new Error('the admin token must be at least 16 characters');
    cfg.adminToken = token;
  }
  for (const k of ['tlsCert', 'tlsKey', 'tlsCa'] as const) {
    const v = pick<string | undefined>(k, undefined);
    if (v) cfg[k] = v;
  }
  return cfg;
}


function parseExtensions(flags: unknown, fromFile: unknown): ConfiguredExtension[] {
  const out: ConfiguredExtension[] = [];
  for (const f of (flags as string[] | undefined) ?? []) out.push({ path: resolve(f) });
  if (fromFile !== undefined) {
    if (!Array.isArray(fromFile)) throw new Error('"extensions" in the config file must be a list');
    for (const e of fromFile as unknown[]) {
      if (typeof e === 'string') out.push({ path: resolve(e) });
      else if (e && typeof e === 'object' && typeof (e as { path?: unknown }).path === 'string') {
        const x = e as { path: string; name?: unknown; config?: unknown };
        out.push({
          path: resolve(x.path),
          ...(typeof x.name === 'string' ? { name: x.name } : {}),
          ...(x.config && typeof x.config === 'object' ? { config: x.config as Record<string, unknown> } : {}),
        });
      } else throw new Error('each entry of "extensions" needs a "path"');
    }
  }
  return out;
}
