/** Summarises V8 .cpuprofile files (from `node --cpu-prof` or the bench's `--profile`): self time by function and by area (grpc-js, HTTP/2, LevelDB, kvcascade modules, GC, …), for the "where the time goes" tables of bench/README.md. */
import { readFile, readdir, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';

/** One node of a V8 CPU profile. */
interface ProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
  readonly children?: readonly number[];
}

/** A V8 CPU profile (the subset read here). */
interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/** Self time of one profile, in microseconds, by function and by area. */
export interface ProfileSummary {
  readonly file: string;
  /** Sampled time (idle and the profiler's own work excluded), µs; wall time a runnable thread spent, so it overstates CPU on a busy machine. */
  readonly busyUs: number;
  readonly idleUs: number;
  readonly byFunction: ReadonlyMap<string, number>;
  readonly byArea: ReadonlyMap<string, number>;
}

/** The area a frame's code belongs to (a package, a Node internal module group or a kvcascade directory). */
export function areaOf(url: string, fn: string): string {
  if (url === '') {
    if (fn === '(garbage collector)') return 'GC';
    if (fn === '(program)') return '(program: native)';
    if (fn === '(idle)') return '(idle)';
    return `native ${fn || "(anonymous: addon or builtin)"}`;
  }
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + 'node_modules/'.length).split('/');
    const pkg = rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
    if (pkg === '@grpc/grpc-js') return `grpc-js ${rest.at(-1)!.replace(/\.js$/, '')}`;
    return pkg;
  }
  if (url.startsWith('node:internal/http2') || url.includes('internal/http2')) return 'node http2';
  if (url.startsWith('node:internal/streams') || url.includes('internal/streams')) return 'node streams';
  if (url.startsWith('node:')) return `node ${url.slice(5).split('/').slice(0, 2).join('/')}`;
  const m = /\/dist\/(src|bench)\/(.*)\.js$/.exec(url);
  if (m) return `${m[1]}/${m[2]}`;
  return basename(url);
}

/** The coarse bucket of an area, for the "where the time goes" tables: gRPC and HTTP/2 of both planes with protobuf and request routing, peer transport codec, Raft, storage, state machine, GC, native. */
export function bucketOf(area: string): string {
  if (area === 'GC') return 'GC';
  if (area === '(program: native)' || area.startsWith('native (anonymous')) return 'native (unattributed: syscalls, addons, builtins)';
  if (/^(classic-level|abstract-level|level|maybe-combine-errors|module-error)$/.test(area) || area.startsWith('src/storage/')) return 'storage (LevelDB, log and state stores)';
  if (area.startsWith('src/statemachine/') || area === 'src/node/envelope') return 'state machine (apply, sessions, proposal envelope)';
  if (area.startsWith('src/raft/') || area === 'src/node/replica' || area === 'src/node/kv-node') return 'Raft and replica (ready loop, propose, apply driver)';
  if (area.startsWith('src/node/grpc-transport') || area.startsWith('src/node/peer') || /RaftBatch|RaftMessage/.test(area)) return 'peer transport (codec, streams)';
  if (area.startsWith('grpc-js') || area.startsWith('node http2') || area === 'protobufjs' || area.startsWith('@protobufjs') || area === '@grpc/proto-loader' || /\$(encode|decode|fromObject|toObject)$/.test(area) || area.startsWith('src/server/') || area.startsWith('src/coordinator/') || area.startsWith('src/wire/') || area.startsWith('src/client/')) return 'gRPC, HTTP/2, protobuf (client API and peer plane), request routing';
  if (area === 'prom-client' || area === 'src/node/metrics') return 'metrics (prom-client)';
  if (area.startsWith('node ') || area.startsWith('native ')) return 'Node runtime (streams, events, timers, buffers, microtasks)';
  if (area.startsWith('bench/') || area === 'hdr-histogram-js') return 'load generator';
  return 'other';
}

/** Reads and summarises one profile. */
export async function summarise(file: string): Promise<ProfileSummary> {
  const p = JSON.parse(await readFile(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  for (const n of p.nodes) byId.set(n.id, n);
  // The profiler's own work (stopping and serialising the profile) is not the process's.
  const profiler = new Set<number>();
  const mark = (id: number, inside: boolean): void => {
    const n = byId.get(id)!;
    const here = inside || n.callFrame.url === 'node:inspector';
    if (here) profiler.add(id);
    for (const c of n.children ?? []) mark(c, here);
  };
  if (p.nodes.length > 0) mark(p.nodes[0]!.id, false);
  // A native frame (no script) is charged to the nearest caller with one: LevelDB's batch put is
  // storage, a protobuf codec function is the gRPC layer that called it.
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const scriptedCaller = (id: number): ProfileNode['callFrame'] | undefined => {
    for (let q = parent.get(id); q !== undefined; q = parent.get(q)) {
      const f = byId.get(q)!.callFrame;
      if (f.url !== '') return f;
    }
    return undefined;
  };
  const selfById = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i]!;
    selfById.set(id, (selfById.get(id) ?? 0) + (p.timeDeltas[i] ?? 0));
  }
  const byFunction = new Map<string, number>();
  const byArea = new Map<string, number>();
  let busyUs = 0;
  let idleUs = 0;
  for (const [id, us] of selfById) {
    const cf = byId.get(id)!.callFrame;
    if (cf.functionName === '(idle)' || profiler.has(id)) {
      idleUs += us;
      continue;
    }
    busyUs += us;
    const special = cf.functionName === '(garbage collector)' || cf.functionName === '(program)';
    const caller = cf.url === '' && !special ? scriptedCaller(id) : undefined;
    const area = caller ? areaOf(caller.url, caller.functionName) : areaOf(cf.url, cf.functionName);
    const fname = caller
      ? `${cf.functionName || '(native)'} in ${caller.functionName || '(anonymous)'} ${basename(caller.url)}:${caller.lineNumber + 1}`
      : `${cf.functionName || '(anonymous)'} ${cf.url ? `${basename(cf.url)}:${cf.lineNumber + 1}` : ''}`.trim();
    byFunction.set(fname, (byFunction.get(fname) ?? 0) + us);
    byArea.set(area, (byArea.get(area) ?? 0) + us);
  }
  return { file, busyUs, idleUs, byFunction, byArea };
}

function top(m: ReadonlyMap<string, number>, n: number): [string, number][] {
  return [...m].sort((a, b) => b[1] - a[1]).slice(0, n);
}

/** Merges summaries (e.g. the three kvd nodes) into one. */
export function merge(all: readonly ProfileSummary[], file: string): ProfileSummary {
  const byFunction = new Map<string, number>();
  const byArea = new Map<string, number>();
  let busyUs = 0;
  let idleUs = 0;
  for (const s of all) {
    busyUs += s.busyUs;
    idleUs += s.idleUs;
    for (const [k, v] of s.byFunction) byFunction.set(k, (byFunction.get(k) ?? 0) + v);
    for (const [k, v] of s.byArea) byArea.set(k, (byArea.get(k) ?? 0) + v);
  }
  return { file, busyUs, idleUs, byFunction, byArea };
}

/** A Markdown rendering of a summary: top areas and top functions by self time, with shares of busy time. */
export function render(s: ProfileSummary, n = 20, opsForPerOp?: number): string {
  const pct = (us: number): string => `${((100 * us) / Math.max(1, s.busyUs)).toFixed(1)} %`;
  const perOp = (us: number): string => (opsForPerOp ? ` | ${(us / opsForPerOp).toFixed(1)}` : '');
  const head = opsForPerOp ? ' | µs/op' : '';
  const sep = opsForPerOp ? '|---' : '';
  const out = [`### ${s.file}: busy ${(s.busyUs / 1e6).toFixed(2)} s, idle ${(s.idleUs / 1e6).toFixed(2)} s`, ''];
  const buckets = new Map<string, number>();
  for (const [k, v] of s.byArea) buckets.set(bucketOf(k), (buckets.get(bucketOf(k)) ?? 0) + v);
  out.push(`| bucket | self${head} |`, `|---|---${sep}|`);
  for (const [k, v] of top(buckets, n)) out.push(`| ${k} | ${pct(v)}${perOp(v)} |`);
  out.push('');
  out.push(`| area | self${head} |`, `|---|---${sep}|`);
  for (const [k, v] of top(s.byArea, n)) out.push(`| ${k} | ${pct(v)}${perOp(v)} |`);
  out.push('', `| function | self${head} |`, `|---|---${sep}|`);
  for (const [k, v] of top(s.byFunction, n)) out.push(`| ${k.replace(/\|/g, '\\|')} | ${pct(v)}${perOp(v)} |`);
  return out.join('\n');
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  if (args.length === 0 || args.includes('--help')) {
    console.log('usage: node dist/bench/profile-summary.js [--top N] [--ops N] DIR|FILE.cpuprofile ...\n' +
      '  summarises self time by area and function; files named kvd-* are also merged into "all kvd", client-* into "all clients";\n' +
      '  --ops N adds µs per op (N = ops the profiled window completed)');
    return;
  }
  let n = 20;
  let ops: number | undefined;
  const files: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '--top') n = Number(args[++i]);
    else if (a === '--ops') ops = Number(args[++i]);
    else if ((await stat(a)).isDirectory()) files.push(...(await readdir(a)).filter((f) => f.endsWith('.cpuprofile')).sort().map((f) => join(a, f)));
    else files.push(a);
  }
  const sums = await Promise.all(files.map(summarise));
  for (const s of sums) console.log(`${render(s, n, ops)}\n`);
  const kvd = sums.filter((s) => basename(s.file).startsWith('kvd-'));
  const cli = sums.filter((s) => basename(s.file).startsWith('client-'));
  if (kvd.length > 1) console.log(`${render(merge(kvd, 'all kvd'), n, ops)}\n`);
  if (cli.length > 1) console.log(`${render(merge(cli, 'all clients'), n, ops)}\n`);
}

if (process.argv[1] && import.meta.url.endsWith(basename(process.argv[1]))) await main();
