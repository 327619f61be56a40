/**
 * Traces lone puts end to end (`node dist/bench/trace-writes.js [--puts N] [--kvd-bin PATH]`):
 * starts a fresh 3-node kvd cluster with step tracing on (src/write-trace.ts,
 * KVCASCADE_TRACE_WRITES), makes one put at a time through the default KvClient, then matches
 * each put's steps on the client, the leader and the follower that acknowledged first (entries by
 * index; one machine, so one wall clock) and prints the median of each segment of the path.
 */
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { KvClient } from '../src/client/index.js';
import { TRACE_WRITES_ENV } from '../src/write-trace.js';
import { findKvd, startKvdCluster } from './kvd-cluster.js';
import { flagInt } from './util.js';

const USAGE = `usage: node dist/bench/trace-writes.js [--puts N] [--warmup N] [--value-bytes N] [--kvd-bin PATH]
One client, one put at a time (--puts, default 500, after --warmup puts, default 300), on a fresh
3-node cluster whose nodes record each write's steps; prints the median of every segment of a
put's path (client → leader → follower → leader → client) in ms.`;

/** One traced step: wall-clock µs, step name, group, index. */
interface Stamp {
  readonly t: number;
  readonly step: string;
  readonly group: number;
  readonly index: number;
}

function parse(text: string): Stamp[] {
  const out: Stamp[] = [];
  for (const line of text.split('\n')) {
    const [t, step, group, index] = line.split(' ');
    if (t === undefined || step === undefined || group === undefined || index === undefined) continue;
    out.push({ t: Number(t), step, group: Number(group), index: Number(index) });
  }
  return out;
}

const now = (): number => Math.round((performance.timeOrigin + performance.now()) * 1000);

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor(s.length / 2)]!;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      puts: { type: 'string', default: '500' },
      warmup: { type: 'string', default: '300' },
      'value-bytes': { type: 'string', default: '256' },
      'kvd-bin': { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) return console.log(USAGE);
  const puts = flagInt('--puts', values.puts!, 1);
  const warmup = flagInt('--warmup', values.warmup!, 0);
  const value = new Uint8Array(flagInt('--value-bytes', values['value-bytes']!, 0));
  const bin = findKvd(values['kvd-bin']);
  if (bin === undefined) throw new Error('kvd binary not found (run npm run build)');
  const dir = await mkdtemp(join(tmpdir(), 'kvcascade-trace-'));
  process.env[TRACE_WRITES_ENV] = dir; // inherited by the kvd children only: this process imports no traced module
  const cluster = await startKvdCluster({ bin });
  const client = new KvClient({ endpoints: cluster.endpoints });
  const calls: [number, number][] = [];
  try {
    for (let i = 0; i < warmup; i++) await client.put(`trace/k${i % 100}`, value);
    for (let i = 0; i < puts; i++) {
      const t0 = now();
      await client.put(`trace/k${i % 100}`, value);
      calls.push([t0, now()]);
    }
  } finally {
    client.close();
    await cluster.stop();
  }
  const files: Stamp[][] = [];
  for (const f of await readdir(dir)) files.push(parse(await readFile(join(dir, f), 'utf8')));
  await rm(dir, { recursive: true, force: true });
  const seg = new Map<string, number[]>();
  const add = (name: string, a: number | undefined, b: number | undefined): void => {
    if (a === undefined || b === undefined) return;
    let l = seg.get(name);
    if (!l) seg.set(name, (l = []));
    l.push((b - a) / 1000);
  };
  let matched = 0;
  const first = (f: Stamp[], step: string, pred: (s: Stamp) => boolean): Stamp | undefined => f.find((s) => s.step === step && pred(s));
  const last = (f: Stamp[], step: string, pred: (s: Stamp) => boolean): Stamp | undefined => f.findLast((s) => s.step === step && pred(s));
  let leaderLater = 0;
  let lazyBeforeAnswer = 0;
  let lazyBeforeAck = 0;
  for (const [cs, ce] of calls) {
    let leader: Stamp[] | undefined;
    let prop: Stamp | undefined;
    for (const f of files) {
      const p = first(f, 'propose', (s) => s.t >= cs && s.t <= ce);
      if (p) {
        leader = f;
        prop = p;
        break;
      }
    }
    if (!leader || !prop) continue;
    const { group, index } = prop;
    const at = (s: Stamp) => s.group === group && s.index === index;
    const recv = last(leader, 'srv.recv', (s) => s.t >= cs && s.t <= prop.t);
    const round = first(leader, 'round', (s) => s.group === group && s.index >= index);
    const appSend = first(leader, 'app.send', at);
    const leaderDurable = first(leader, 'durable', (s) => s.group === group && s.index >= index);
    const ackRecv = first(leader, 'ack.recv', (s) => s.group === group && s.index >= index);
    const applied = first(leader, 'applied', at);
    const answer = applied && first(leader, 'srv.answer', (s) => s.t >= applied.t && s.t <= ce);
    // The follower whose acknowledgement went first.
    let fol: Stamp[] | undefined;
    let ackSend: Stamp | undefined;
    for (const f of files) {
      if (f === leader) continue;
      const a = first(f, 'ack.send', (s) => s.group === group && s.index >= index);
      if (a && (!ackSend || a.t < ackSend.t)) {
        ackSend = a;
        fol = f;
      }
    }
    if (!recv || !round || !appSend || !leaderDurable || !ackRecv || !applied || !answer || !fol || !ackSend) continue;
    const fRecv = first(fol, 'app.recv', (s) => s.group === group && s.index >= index);
    const fRound = first(fol, 'round', (s) => s.group === group && s.index >= index);
    const fDurable = first(fol, 'durable', (s) => s.group === group && s.index >= index);
    if (!fRecv || !fRound || !fDurable) continue;
    matched++;
    // Finer steps (stamped by the driver and the log store): when each synced batch went to the
    // engine, when the leader's applying round ended, and unsynced batches on the answer's way.
    const fSync = first(fol, 'sync.start', (s) => s.t >= fRound.t && s.t <= fDurable.t);
    const lSync = first(leader, 'sync.start', (s) => s.t >= round.t && s.t <= leaderDurable.t);
    const readyEnd = first(leader, 'ready.end', (s) => s.t >= applied.t && s.t <= answer.t);
    if (first(leader, 'lazy.start', (s) => s.t >= applied.t && s.t <= answer.t)) lazyBeforeAnswer++;
    if (first(fol, 'lazy.start', (s) => s.t >= fDurable.t && s.t <= ackSend.t)) lazyBeforeAck++;
    add('client → leader (request on the stream, decoded)', cs, recv.t);
    add('leader: request → propose', recv.t, prop.t);
    add('leader: propose → ready round takes the entry', prop.t, round.t);
    add('leader: round → appends written to the peer streams', round.t, appSend.t);
    add('leader → follower (peer stream)', appSend.t, fRecv.t);
    add('follower: append received → its ready round', fRecv.t, fRound.t);
    add('follower: round → entry durable (stage, apply earlier entries, synced write)', fRound.t, fDurable.t);
    add('follower: round → its synced batch handed to the engine', fRound.t, fSync?.t);
    add('follower: synced batch handed to the engine → durable', fSync?.t, fDurable.t);
    add('follower: durable → acknowledgement written', fDurable.t, ackSend.t);
    add('follower → leader (peer stream)', ackSend.t, ackRecv.t);
    add('leader: acknowledgement → applied', ackRecv.t, applied.t);
    add('leader: applied → answer', applied.t, answer.t);
    add('leader: applied → its round ends', applied.t, readyEnd?.t);
    add('leader: round ends → answer', readyEnd?.t, answer.t);
    add('leader → client (answer to the caller)', answer.t, ce);
    add('(leader: round → own entry durable, in parallel)', round.t, leaderDurable.t);
    add('(leader: round → its synced batch handed to the engine)', round.t, lSync?.t);
    add('(leader: own entry durable → first acknowledgement; < 0: after it)', leaderDurable.t, ackRecv.t);
    if (leaderDurable.t > ackRecv.t) leaderLater++;
    add('whole put', cs, ce);
  }
  console.log(`${matched} of ${calls.length} puts matched; load ${loadavg().map((l) => l.toFixed(1)).join(' ')}; the leader's own write ended after the first acknowledgement in ${leaderLater}; an unsynced batch went to the engine between applied and answer in ${lazyBeforeAnswer}, between the follower's durable write and its acknowledgement in ${lazyBeforeAck}`);
  console.log('| segment | median ms |\n|---|---|');
  for (const [name, xs] of seg) console.log(`| ${name} | ${median(xs).toFixed(3)} |`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
