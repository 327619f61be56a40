/**
 * The checks of a node-level simulation run (node-sim.ts), each returning the problems it found
 * as one line apiece (empty: passed):
 *
 * - replicas: every node's final history of the data prefix is the same (where they overlap).
 * - linearizability: the clients' puts, gets and conditional puts (linearizability.ts), and every
 *   acknowledged write is in the final history (durability).
 * - watches: each stream is ordered (revisions ascending, whole revisions per response), unique,
 *   gap-free (exactly the committed events from its start revision up to the last revision it
 *   reported), each watcher (resuming across streams) caught up with the last committed event once
 *   everything healed, and re-watches opened at the end from random earlier revisions match the history.
 * - lambda delivery: every committed put and delete under the watched prefix was delivered at least once,
 *   with its value, nothing uncommitted was delivered, per key the first deliveries start in
 *   revision order (a redelivery after a leader change may repeat older ones; a frozen process
 *   may finish one late), and every write the
 *   lambda made through the coordinator and saw acknowledged is in the final state.
 */
import { checkKvLinearizable } from '../linearizability.js';
import { derivedKey, type NodeSimRun, type SeenEvent } from './node-sim.js';

const id = (e: SeenEvent): string => `${e.revision}/${e.key}`;
const show = (e: SeenEvent | undefined): string => (e ? `${e.type} ${e.key}=${String(e.value)} @${e.revision}` : 'nothing');

/** The final history every node agrees on (the longest), or problems when they disagree. */
export function agreedHistory(run: NodeSimRun): { history: SeenEvent[]; problems: string[] } {
  const problems: string[] = [];
  let longest: SeenEvent[] = [];
  for (const h of run.finalHistories.values()) if (h.length > longest.length) longest = h;
  for (const [node, h] of run.finalHistories) {
    for (let i = 0; i < Math.min(h.length, longest.length); i++) {
      if (JSON.stringify(h[i]) !== JSON.stringify(longest[i])) {
        problems.push(`replicas disagree: node ${node} has ${show(h[i])} where another has ${show(longest[i])}`);
        break;
      }
    }
  }
  if (run.finalHistories.size === 0) problems.push('no node served a full history at the end');
  return { history: longest, problems };
}

/** Linearizability of the client history, and durability of acknowledged writes. */
export function checkClients(run: NodeSimRun, history: readonly SeenEvent[]): string[] {
  const problems: string[] = [];
  const res = checkKvLinearizable(run.history);
  if (!res.ok) {
    const ops = (res.history ?? []).map((o) => `  c${o.clientId} ${o.kind}${o.kind === 'cas' ? `(${String(o.expected)}→${o.value}) ${o.casOk === undefined ? '?' : o.casOk ? 'ok' : 'failed'}` : o.kind === 'put' ? `(${o.value})` : ` → ${String(o.output)}`} [${o.call}, ${o.ret ?? '∞'}]`);
    problems.push(`history of ${res.key} is not linearizable:\n${ops.join('\n')}`);
  } else if (res.unknown) {
    problems.push(`linearizability of ${res.key} undecided (search budget exhausted)`);
  }
  const written = new Set(history.filter((e) => e.type === 'put').map((e) => `${e.key}=${String(e.value)}`));
  for (const op of run.history) {
    const wrote = op.ret !== undefined && (op.kind === 'put' || (op.kind === 'cas' && op.casOk === true));
    if (wrote && !written.has(`${op.key}=${op.value}`)) problems.push(`acknowledged ${op.kind} ${op.key}=${op.value} (client ${op.clientId}, returned at ${op.ret}) is not in the final history: lost`);
  }
  return problems;
}

/** Checks one stream of events from `from` up to `upTo` against the agreed history. */
function checkStream(what: string, events: readonly SeenEvent[], from: number, upTo: number, history: readonly SeenEvent[]): string[] {
  const expected = history.filter((e) => e.revision >= from && e.revision <= upTo);
  for (let i = 0; i < Math.max(events.length, expected.length); i++) {
    const got = events[i];
    const want = expected[i];
    if (got === undefined || want === undefined || JSON.stringify(got) !== JSON.stringify(want)) {
      const why = want === undefined ? 'an event beyond the committed history' : got === undefined ? 'a gap (missing events)' : got.revision < want.revision ? 'a duplicate or out-of-order event' : got.revision > want.revision ? 'a gap' : 'a different event';
      return [`${what} (from ${from}, up to ${upTo}): ${why}: event #${i} is ${show(got)}, expected ${show(want)}`];
    }
  }
  return [];
}

/** Watch streams and re-watches: ordered, unique, gap-free, resumable. */
export function checkWatches(run: NodeSimRun, history: readonly SeenEvent[]): string[] {
  const problems: string[] = [];
  for (const s of run.streams) {
    const what = `watcher ${s.watcher} on node ${s.node}`;
    let last = s.from - 1;
    const events: SeenEvent[] = [];
    let bad = false;
    for (const b of s.batches) {
      if (b.revision < last) {
        problems.push(`${what} (from ${s.from}): revision went back from ${last} to ${b.revision} (${b.kind})`);
        bad = true;
        break;
      }
      for (const e of b.events) {
        if (e.revision <= last || e.revision > b.revision) {
          problems.push(`${what} (from ${s.from}): ${show(e)} in a response for revisions ${last + 1}..${b.revision}`);
          bad = true;
        }
      }
      if (bad) break;
      events.push(...b.events);
      last = b.revision;
    }
    if (!bad) problems.push(...checkStream(what, events, s.from, last, history));
  }
  const last = history.at(-1)?.revision ?? 0;
  run.watcherEnds.forEach((upTo, i) => {
    if (upTo < last) problems.push(`watcher ${i + 1} saw revisions up to ${upTo} only, after everything healed (the last committed event is at ${last})`);
  });
  for (const w of run.rewatches) {
    const what = `re-watch on node ${w.node}`;
    if (w.canceled !== undefined) problems.push(`${what} from ${w.from} was cancelled: ${w.canceled}`);
    else problems.push(...checkStream(what, w.events, w.from, w.upTo, history));
  }
  return problems;
}

/** Lambda delivery: complete, nothing uncommitted, first deliveries in per-key order. */
export function checkDeliveries(run: NodeSimRun, history: readonly SeenEvent[]): string[] {
  const problems: string[] = [];
  const committed = new Map(history.filter((e) => e.type === 'put' || e.type === 'delete').map((e) => [id(e), e]));
  const delivered = new Set<string>();
  const firstMax = new Map<string, number>();
  // Order is the order in which the invocations started (the dispatcher's doing); one can finish
  // much later, when its process was frozen meanwhile.
  const byStart = [...run.deliveries].sort((a, b) => a.startedAt - b.startedAt);
  for (const d of byStart) {
    const k = `${d.revision}/${d.key}`;
    const c = committed.get(k);
    if (!c) {
      problems.push(`lambda on node ${d.node} got ${d.key}=${String(d.value)} @${d.revision} at ${d.startedAt}, which is not in the committed history`);
      continue;
    }
    if (c.value !== d.value) problems.push(`lambda got ${d.key} @${d.revision} with value ${String(d.value)}, committed ${String(c.value)}`);
    const wrote = run.derived.get(derivedKey(d.key, d.revision));
    if (wrote !== (d.value ?? '')) problems.push(`the lambda's acknowledged write for ${d.key} @${d.revision} ${wrote === undefined ? 'is lost' : `holds ${wrote}`} (expected ${String(d.value)})`);
    if (delivered.has(k)) continue;
    delivered.add(k);
    const max = firstMax.get(d.key) ?? 0;
    if (d.revision < max) problems.push(`lambda on node ${d.node} started ${d.key} @${d.revision} (at ${d.startedAt}) for the first time after @${max} had been: per-key order broken`);
    firstMax.set(d.key, Math.max(max, d.revision));
  }
  // An event dead-lettered as poison (in-process lambdas running when their node died, again and
  // again) is handled without a delivery; any other dead letter is a failure here (the lambda
  // fails one time in ten, far below its attempts).
  const poisoned = new Set<string>();
  for (const dl of run.deadLetters) {
    if (dl.kind === 'poison') poisoned.add(`${dl.revision}/${dl.key}`);
    else problems.push(`the lambda dead-lettered ${dl.key} @${dl.revision} (${dl.kind})`);
  }
  const missing = [...committed.values()].filter((e) => !delivered.has(id(e)) && !poisoned.has(id(e)));
  if (missing.length > 0) problems.push(`lambda never got ${missing.length} committed event(s), first ${show(missing[0])}`);
  return problems;
}

/**
 * Hop counts recorded with the data: every lambda write (under DERIVED_PREFIX, made at depth 1
 * by a lambda handling a client's write) still in a replica's history carries hop count 1 there,
 * whatever crashes, restarts and snapshot installs it went through; and if the lambda wrote
 * anything, some replica still holds such an event (the check is not vacuous).
 */
export function checkHops(run: NodeSimRun): string[] {
  const problems: string[] = [];
  for (const r of run.derivedHops) {
    const wrong = r.hops.filter((h) => h.hops !== 1);
    if (wrong.length > 0) problems.push(`node ${r.node}: ${wrong.length} lambda write(s) recorded with a hop count other than 1, first ${wrong[0]!.key} @${wrong[0]!.revision} with ${wrong[0]!.hops}`);
  }
  if (run.derived.size > 0 && !run.derivedHops.some((r) => r.hops.length > 0)) problems.push('the lambda wrote, but no replica holds an event of its writes to check the hop count of');
  return problems;
}

/** Every check of a run; the problems found (empty when it passed). */
export function checkRun(run: NodeSimRun): string[] {
  const { history, problems } = agreedHistory(run);
  return [...run.problems, ...problems, ...checkClients(run, history), ...checkWatches(run, history), ...checkDeliveries(run, history), ...checkHops(run)];
}
