#!/usr/bin/env node
/**
 * `npm start`: runs a local 3-node kvcascade cluster on loopback (data under ./.data), waits
 * until it has a leader, prints how to reach it, and stops it cleanly on Ctrl-C.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { KvClient } from '../client/index.js';

const NODES = 3;
const basePort = Number(process.env.KVCASCADE_BASE_PORT ?? 7000);
const baseMetricsPort = Number(process.env.KVCASCADE_BASE_METRICS_PORT ?? 9100);
const dataRoot = resolve(process.env.KVCASCADE_DATA ?? '.data');
const kvd = join(dirname(fileURLToPath(import.meta.url)), 'kvd.js');

const addresses = Array.from({ length: NODES }, (_, i) => `127.0.0.1:${basePort + i + 1}`);
const peers = addresses.map((a, i) => `${i + 1}=${a}`).join(',');
const children: ChildProcess[] = [];
let stopping = false;

function startNode(id: number): Promise<void> {
  const dir = join(dataRoot, `node-${id}`);
  mkdirSync(dir, { recursive: true });
  const logFile = createWriteStream(join(dataRoot, `node-${id}.log`), { flags: 'a' });
  const child = spawn(
    process.execPath,
    [kvd, '--id', String(id), '--listen', addresses[id - 1]!, '--peers', peers, '--data-dir', dir, '--metrics-port', String(baseMetricsPort + id)],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  children.push(child);
  child.stderr!.pipe(logFile);
  return new Promise((resolveReady, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      logFile.write(`${line}\n`);
      if (line.includes('"event":"ready"')) resolveReady();
    });
    child.once('exit', (code) => {
      if (!stopping) {
        process.stderr.write(`node ${id} exited with code ${code}; see ${join(dataRoot, `node-${id}.log`)}\n`);
        reject(new Error(`node ${id} exited`));
      }
    });
  });
}

async function stopAll(): Promise<void> {
  stopping = true;
  await Promise.all(
    children.map(
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
  process.stdout.write(
    [
      '',
      `kvcascade: 3-node cluster running (leader: node ${leader})`,
      `  endpoints : ${addresses.join(',')}`,
      `  metrics   : ${addresses.map((_, i) => `http://127.0.0.1:${baseMetricsPort + i + 1}/metrics`).join(' ')}`,
      `  data, logs: ${dataRoot}`,
      '',
      'Try, in another terminal:',
      '  npx kvctl put /hello world',
      '  npx kvctl get /hello',
      '  npx kvctl status',
      '',
      'Ctrl-C stops the cluster (data stays in .data; delete it to start fresh).',
      '',
    ].join('\n'),
  );
}

main().catch(async (e) => {
  process.stderr.write(`start-cluster: ${(e as Error).message}\n`);
  await stopAll();
  process.exit(1);
});
