/**
 * Runs a batch of node-level simulation schedules for a test file: which seeds (from the
 * environment), one run and its checks per seed, and a failure line per failing seed with the
 * command that replays it.
 *
 * - `KVC_SIM_SEED=<n>`: run only seed n (in the first part; the other parts run nothing), with a
 *   trace of faults and node restarts when `KVC_SIM_TRACE=1`.
 * - `KVC_SIM_SCHEDULES=<n>`: schedules in all (default 200, split between the parts).
 * - `KVC_SIM_BASE_SEED=<n>`: the first seed (default 1).
 */
import { checkRun } from './checks.js';
import { runDigest, runNodeSim, type NodeSimRun } from './node-sim.js';

/** What a batch did. */
export interface BatchResult {
  readonly seeds: number;
  readonly failures: string[];
  readonly ms: number;
  readonly ops: number;
  readonly crashes: number;
  readonly events: number;
}

/** The seeds part `part` (0-based) of `parts` runs. */
export function seedsOf(part: number, parts: number): number[] {
  const env = process.env;
  if (env.KVC_SIM_SEED !== undefined) return part === 0 ? [Number(env.KVC_SIM_SEED)] : [];
  const total = Number(env.KVC_SIM_SCHEDULES ?? 200);
  const base = Number(env.KVC_SIM_BASE_SEED ?? 1);
  const out: number[] = [];
  for (let i = part; i < total; i += parts) out.push(base + i);
  return out;
}

/** The test timeout for part `part` of 2: the default 2 minutes, or 3 s a schedule when more are asked for. */
export function scheduleTimeoutMs(part: number): number {
  return Math.max(120_000, seedsOf(part, 2).length * 3_000);
}

/** The one-line command that replays `seed`. */
export function replayCommand(seed: number): string {
  return `KVC_SIM_SEED=${seed} KVC_SIM_TRACE=1 npx vitest run test/sim/node-sim.test.ts`;
}

/** Runs one seed and its checks: the problems (empty when it passed) and the run. */
export async function runSeed(seed: number, trace?: (line: string) => void): Promise<{ problems: string[]; run: NodeSimRun }> {
  const run = await runNodeSim({ seed, ...(trace ? { trace } : {}) });
  return { problems: checkRun(run), run };
}

/** Runs `seeds`, printing a line per failing seed (the seed, what failed, the replay command). */
export async function runBatch(seeds: readonly number[]): Promise<BatchResult> {
  const traceOn = process.env.KVC_SIM_TRACE === '1';
  const failures: string[] = [];
  let ops = 0;
  let crashes = 0;
  let events = 0;
  const t0 = performance.now();
  for (const seed of seeds) {
    const lines: string[] = [];
    let problems: string[];
    let run: NodeSimRun | undefined;
    try {
      ({ problems, run } = await runSeed(seed, traceOn ? (l) => lines.push(l) : undefined));
    } catch (e) {
      problems = [`the run threw: ${(e as Error).stack ?? String(e)}`];
    }
    if (traceOn) console.log(lines.join('\n'));
    if (run) {
      ops += run.stats.ops;
      crashes += run.stats.crashes;
      events += run.stats.events;
      if (traceOn) console.log(`seed ${seed}: digest ${runDigest(run)}, ${JSON.stringify(run.stats)}${run.notes.length > 0 ? `\nerror logs:\n  ${run.notes.join('\n  ')}` : ''}`);
    }
    if (problems.length > 0) {
      const faults = run ? `\n  faults: ${run.faults.join('; ')}` : '';
      const msg = `node sim seed ${seed} FAILED (${run?.nodes ?? '?'} nodes):\n  ${problems.slice(0, 8).join('\n  ')}${faults}\n  replay: ${replayCommand(seed)}`;
      console.error(msg);
      failures.push(msg);
    }
  }
  return { seeds: seeds.length, failures, ms: performance.now() - t0, ops, crashes, events };
}
