#!/usr/bin/env node
/**
 * `npm start`: runs a local 3-node kvcascade cluster on loopback (data under ./.data), waits
 * until it has a leader, prints how to reach it, and stops it cleanly on Ctrl-C.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, createWriteStream, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { KvClient } from '../client/index.js';
import { AdminClient } from '../client/admin-client.js';
import { packageDigest } from '../extensions/package.js';
import { packFolder } from '../extensions/pack-folder.js';
import { DEFAULT_ENDPOINTS } from '../cli/kvctl.js';
import { LOCAL_TOKEN_FILE } from '../cli/ext-commands.js';
import { KVD_NODE_FLAGS } from './runtime-flags.js';
import { kvdAllocatorEnv, type AllocatorChoice } from './allocator.js';

const NODES = 3;
const basePort = Number(process.env.KVCASCADE_BASE_PORT ?? 7000);
const baseMetricsPort = Number(process.env.KVCASCADE_BASE_METRICS_PORT ?? 9100);
const dataRoot = resolve(process.env.KVCASCADE_DATA ?? '.data');
const kvd = join(dirname(fileURLToPath(import.meta.url)), 'kvd.js');

const addresses = Array.from({ length: NODES }, (_, i) => `127.0.0.1:${basePort + i + 1}`);
/** Peer (Raft) listeners: their own ports, never the client ports. */
const peerAddresses = Array.from({ length: NODES }, (_, i) => `127.0.0.1:${basePort + 100 + i + 1}`);
const peers = addresses.map((a, i) => `${i + 1}=${a}/${peerAddresses[i]}`).join(',');
const tokenFile = join(dataRoot, 'admin-token');
/** The example extension loaded at start (set KVCASCADE_EXAMPLE= to load none). */
const example = process.env.KVCASCADE_EXAMPLE ?? join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'extensions', 'stock-watch');
const children: ChildProcess[] = [];
/** The nodes' malloc (glibc; KVD_ALLOCATOR=jemalloc|auto|PATH for jemalloc): decided in main. */
let allocator: AllocatorChoice | undefined;
/** The whole cluster came up once: from then on a node that dies is restarted. */
let started = false;

/** The local cluster's admin token: created once, kept in .data/admin-token (kvctl reads it from there). */
function adminToken(): string {
  mkdirSync(dataRoot, { recursive: true, mode: 0o700 });
  chmodSync(dataRoot, 0o700); // data, logs and the admin token: this user's only
  if (existsSync(tokenFile)) {
    chmodSync(tokenFile, 0o600); // kvd refuses a token file others may read
    return readFileSync(tokenFile, 'utf8').trim();
  }
  const token = randomBytes(24).toString('base64url');
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  return token;
}
let stopping = false;
/** Restarts of each node within the last minute (a node that keeps dying is left down). */
const restarts = new Map<number, number[]>();
/** Restarts of one node allowed within a minute before start-cluster gives up on it. */
const MAX_RESTARTS_PER_MINUTE = 3;

/** A node ended while the cluster runs: say how, and start it again unless it keeps dying. */
function nodeEnded(id: number, code: number | null, signal: NodeJS.Signals | null): void {
  const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
  const log = join(dataRoot, `node-${id}.log`);
  const now = Date.now();
  const recent = (restarts.get(id) ?? []).filter((t) => now - t < 60_000);
  if (recent.length >= MAX_RESTARTS_PER_MINUTE) {
    process.stderr.write(`node ${id} ${how}; it died ${recent.length} times within a minute, so it stays down: see ${log}\n`);
    return;
  }
  recent.push(now);
  restarts.set(id, recent);
  process.stderr.write(`node ${id} ${how}; restarting it (see ${log})\n`);
  startNode(id).then(
    () => process.stderr.write(`node ${id} is back\n`),
    () => {}, // its exit was reported (and handled) by the handler of the new process
  );
}

function startNode(id: number): Promise<void> {
  const dir = join(dataRoot, `node-${id}`);
  mkdirSync(dir, { recursive: true });
  const logFile = createWriteStream(join(dataRoot, `node-${id}.log`), { flags: 'a', mode: 0o600 });
  const child = spawn(
    process.execPath,
    [
      ...KVD_NODE_FLAGS,
      kvd,
      '--id', String(id),
      '--listen', addresses[id - 1]!,
      '--peer-listen', peerAddresses[id - 1]!,
      // A local development cluster: peers on loopback without TLS. Never like this in production (docs/security.md).
      '--insecure-peers',
      '--peers', peers,
      '--data-dir', dir,
      '--metrics-port', String(baseMetricsPort + id),
      '--admin-token-file', tokenFile,
      '--default-shards', '4',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: (allocator ??= kvdAllocatorEnv()).env },
  );
  children[id - 1] = child;
  child.stderr!.pipe(logFile);
  return new Promise((resolveReady, reject) => {
    let ready = false;
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      logFile.write(`${line}\n`);
      if (line.includes('"event":"ready"')) {
        ready = true;
        resolveReady();
      }
    });
    child.once('exit', (code, signal) => {
      if (stopping) return;
      if (!ready && !started) {
        // Still starting the cluster: give up with the reason.
        process.stderr.write(`node ${id} ${signal ? `was killed by ${signal}` : `exited with code ${code}`} while starting; see ${join(dataRoot, `node-${id}.log`)}\n`);
        reject(new Error(`node ${id} did not start`));
        return;
      }
      reject(new Error(`node ${id} ended`));
      nodeEnded(id, code, signal);
    });
  });
}

async function stopAll(): Promise<void> {
  stopping = true;
  await Promise.all(
    children.filter((c) => c !== undefined).map(
      (c) =>
        new Promise<void>((res) => {
          if (c.exitCode !== null) return res();
          c.once('exit', () => res());
          c.kill('SIGTERM');
          setTimeout(() => c.kill('SIGKILL'), 5000).unref();
        }),
    ),
  );
}

async function main(): Promise<void> {
  process.on('SIGINT', () => {
    process.stdout.write('\nstopping the cluster...\n');
    void stopAll().then(() => process.exit(0));
  });
  process.on('SIGTERM', () => void stopAll().then(() => process.exit(0)));
  const token = adminToken();
  allocator = kvdAllocatorEnv();
  await Promise.all(Array.from({ length: NODES }, (_, i) => startNode(i + 1)));
  const client = new KvClient({ endpoints: addresses });
  const deadline = Date.now() + 30_000;
  let leader = 0;
  while (!leader && Date.now() < deadline) {
    try {
      const s = await client.status(addresses[0]);
      leader = s.groups.find((g) => g.group === 1)?.leader ?? 0;
    } catch {
      // not up yet
    }
    if (!leader) await new Promise((r) => setTimeout(r, 100));
  }
  client.close();
  if (!leader) throw new Error('the cluster elected no leader within 30 s');
  started = true;
  let loaded = '';
  if (example) {
    const admin = new AdminClient({ endpoints: addresses, token });
    try {
      const tgz = await packFolder(example);
      const existing = (await admin.list()).records.find((r) => r.sha256 === packageDigest(tgz));
      if (existing) {
        loaded = `${existing.name} ${existing.version} (already loaded)`;
      } else {
        const r = await admin.load(tgz);
        loaded = `${r.status.name} ${r.status.version} (${r.status.state}; watches ${r.status.watches.map((w) => w.prefix).join(', ')})`;
      }
    } finally {
      admin.close();
    }
  }
  // kvctl's defaults are this script's defaults: say what to set when they differ.
  const env: string[] = [];
  if (addresses.join(',') !== DEFAULT_ENDPOINTS) env.push(`  export KVCASCADE_ENDPOINTS=${addresses.join(',')}`);
  if (resolve(LOCAL_TOKEN_FILE) !== tokenFile) env.push(`  export KVCASCADE_ADMIN_TOKEN="$(cat ${tokenFile})"`);
  process.stdout.write(
    [
      '',
      `kvcascade: 3-node cluster running (leader: node ${leader})`,
      `  endpoints : ${addresses.join(',')}`,
      `  console   : http://127.0.0.1:${baseMetricsPort + 1}/ (any node's metrics port serves it)`,
      `  metrics   : ${addresses.map((_, i) => `http://127.0.0.1:${baseMetricsPort + i + 1}/metrics`).join(' ')}`,
      `  data, logs: ${dataRoot}`,
      `  malloc    : ${allocator!.reason}`,
      `  extension : ${loaded || 'none'}`,
      `  admin     : token in ${tokenFile} (kvctl reads it from there)`,
      `  peers     : ${peerAddresses.join(',')} WITHOUT TLS (--insecure-peers): a local development cluster only.`,
      '              For production run kvd with certificates: docs/security.md',
      '',
      ...(env.length > 0 ? ['First, in the other terminal (kvctl defaults to port 7001-7003 and ./.data/admin-token):', ...env] : []),
      'Try, in another terminal:',
      '  npx kvctl put /hello world',
      '  npx kvctl get /hello',
      '  npx kvctl status',
      '  npx kvctl put /stocks/ACME 100 && npx kvctl put /stocks/ACME 97   # a 3% drop...',
      '  npx kvctl ls /alerts/                                            # ...fired the stock-watch lambda',
      '  npx kvctl ext ls',
      '',
      `Ctrl-C stops the cluster (data stays in ${dataRoot}; delete it to start fresh). A node that dies is restarted.`,
      '',
    ].join('\n'),
  );
}

main().catch(async (e) => {
  process.stderr.write(`start-cluster: ${(e as Error).message}\n`);
  await stopAll();
  process.exit(1);
});
