/**
 * Failover as running clients feel it, with real kvd processes: the leader is frozen (SIGSTOP)
 * or cut off one way (it hears its peers, they never hear it) while readers and writers keep
 * going. Once a new leader exists, operations must succeed within about one attempt timeout plus
 * backoff, not wait for the frozen node; every write's outcome is known at the end (client
 * sessions let the client retry a write whose response was lost), and no write applies twice
 * (checked from a watch of every change from revision 1). Prints, per fault, the time from the
 * fault to the first successful read and write, how many operations waited longer than an
 * attempt timeout after the new leader was elected, unknown outcomes and duplicates.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { KvdCluster } from './harness.js';

const TICK_MS = 50;
const ELECTION_TICKS = 10;
const ELECTION_MS = TICK_MS * ELECTION_TICKS;
/** The clients' attempt timeout: 1.5 election timeouts. */
const ATTEMPT_MS = 750;

let cluster: KvdCluster | undefined;

afterEach(async () => {
  await cluster?.stop();
  cluster = undefined;
});

interface Op {
  readonly kind: 'get' | 'put';
  readonly start: number;
  readonly end: number;
  readonly ok: boolean;
  /** The error code when it failed. */
  readonly code?: string;
  /** A put's value (unique per put). */
  readonly value?: string;
}

/** Readers and writers that record every operation's start, end and outcome. */
function startLoad(c: ReturnType<KvdCluster['client']>, workers: number) {
  const ops: Op[] = [];
  let stopped = false;
  const loops = Array.from({ length: workers }, async (_, w) => {
    for (let i = 0; !stopped; i++) {
      const kind = w % 2 === 0 ? 'get' : 'put';
      const key = `/fo/${w}/${i % 20}`;
      const start = Date.now();
      const value = `${w}-${i}`;
      let ok = true;
      let code: string | undefined;
      try {
        if (kind === 'get') await c.get(key, { deadlineMs: 5_000 });
        else await c.put(key, value, { deadlineMs: 5_000 });
      } catch (e) {
        ok = false;
        // A retry-safe failure was not applied: its outcome is known.
        code = (e as { retrySafe?: boolean }).retrySafe ? 'NOT_APPLIED' : ((e as { code?: string }).code ?? 'UNKNOWN');
        await new Promise((r) => setTimeout(r, 20));
      }
      ops.push({ kind, start, end: Date.now(), ok, ...(code ? { code } : {}), ...(kind === 'put' ? { value } : {}) });
    }
  });
  return {
    ops,
    async stop() {
      stopped = true;
      await Promise.all(loops);
    },
  };
}

/** Polls until a node other than `old` reports itself leader of group 1; returns when (ms). */
async function newLeaderAt(c: KvdCluster, old: number): Promise<number> {
  await c.waitForLeader(20_000, [old]);
  return Date.now();
}

/**
 * Counts puts applied more than once: a watch of /fo/ opened before the load starts sees every
 * change as it commits (a watch from revision 1 afterwards could find the history compacted);
 * each put's value is unique. `finish` writes an end marker and resolves once the watch saw it.
 */
function duplicateCounter(c: ReturnType<KvdCluster['client']>, fromRevision: number) {
  const seen = new Map<string, number>();
  const ac = new AbortController();
  let endRevision = Number.POSITIVE_INFINITY;
  let reached: () => void = () => {};
  const done = new Promise<void>((r) => (reached = r));
  const watching = (async () => {
    for await (const batch of c.watch('/fo/', { fromRevision, signal: ac.signal })) {
      for (const e of batch.events) {
        if (e.type !== 'put') continue;
        if (e.key === '/fo/end') continue;
        const v = new TextDecoder().decode(e.value);
        seen.set(v, (seen.get(v) ?? 0) + 1);
      }
      if (batch.revision >= endRevision) reached();
    }
  })().catch((e: unknown) => {
    if (!ac.signal.aborted) throw e;
  });
  return {
    async finish(): Promise<number> {
      endRevision = (await c.put('/fo/end', 'end')).version;
      await Promise.race([done, watching.then(() => Promise.reject(new Error('the watch ended before the end marker')))]);
      ac.abort();
      return [...seen.values()].filter((n) => n > 1).length;
    },
  };
}

/** Writes whose outcome the client could not know (a deadline passed, or the servers said so). */
function unknownOutcomes(ops: readonly Op[]): number {
  return ops.filter((o) => o.kind === 'put' && !o.ok && o.code !== 'NOT_APPLIED').length;
}

function report(name: string, ops: readonly Op[], faultAt: number, electedAt: number) {
  const firstOk = (kind: Op['kind']) => ops.filter((o) => o.kind === kind && o.ok && o.start >= faultAt).sort((a, b) => a.end - b.end)[0];
  const get = firstOk('get');
  const put = firstOk('put');
  // Operations started after the new leader existed that took longer than an attempt timeout plus backoff.
  const slow = ops.filter((o) => o.start >= electedAt && o.end - o.start > ATTEMPT_MS + 500);
  const failedAfter = ops.filter((o) => o.start >= electedAt && !o.ok);
  const figures = {
    newLeaderAfterMs: electedAt - faultAt,
    firstGetAfterMs: get ? get.end - faultAt : undefined,
    firstPutAfterMs: put ? put.end - faultAt : undefined,
    slowAfterElection: slow.length,
    failedAfterElection: failedAfter.length,
    ops: ops.length,
  };
  console.log(`${name}: ${JSON.stringify(figures)}`);
  return figures;
}

/** The faults: how to inject each into the leader, for how long, and how to heal it. */
const FAULTS = [
  { name: 'kill -9 of the leader', durationMs: 4_000 },
  { name: 'SIGSTOP of the leader for 4 s', durationMs: 4_000 },
  { name: 'SIGSTOP of the leader for 9 s', durationMs: 9_000 },
  { name: 'partition of the leader', durationMs: 4_000 },
  { name: 'one-way partition of the leader', durationMs: 4_000 },
] as const;

type FaultName = (typeof FAULTS)[number]['name'];

async function inject(c: KvdCluster, fault: FaultName, leader: number, others: number[]): Promise<void> {
  if (fault === 'kill -9 of the leader') await c.kill(leader, 'SIGKILL');
  else if (fault.startsWith('SIGSTOP')) c.pause(leader);
  else {
    await c.cutOutgoing(leader, others);
    if (fault === 'partition of the leader') for (const o of others) await c.cutOutgoing(o, [leader]);
  }
}

async function heal(c: KvdCluster, fault: FaultName, leader: number, others: number[]): Promise<void> {
  if (fault === 'kill -9 of the leader') await c.startNode(leader);
  else if (fault.startsWith('SIGSTOP')) c.resume(leader);
  else {
    await c.cutOutgoing(leader, []);
    if (fault === 'partition of the leader') for (const o of others) await c.cutOutgoing(o, []);
  }
}

describe('failover under running clients', () => {
  for (const { name: fault, durationMs } of FAULTS) {
    it(`${fault}: operations succeed within an attempt timeout once a new leader exists; no unknown outcome, no duplicate`, async () => {
      cluster = await KvdCluster.start({ nodes: 3, tickMs: TICK_MS, electionTicks: ELECTION_TICKS, extraArgs: ['--test-fault-injection'] });
      const c = cluster.client(cluster.endpoints, { attemptTimeoutMs: ATTEMPT_MS });
      const counter = duplicateCounter(c, (await c.put('/fo/start', 'start')).version + 1);
      const load = startLoad(c, 8);
      while (load.ops.filter((o) => o.ok).length < 100) await new Promise((r) => setTimeout(r, 20));
      const leader = await cluster.waitForLeader();
      const others = [1, 2, 3].filter((id) => id !== leader);
      const faultAt = Date.now();
      await inject(cluster, fault, leader, others);
      const electedAt = await newLeaderAt(cluster, leader);
      await new Promise((r) => setTimeout(r, Math.max(0, faultAt + durationMs - Date.now())));
      const opsDuringFault = load.ops.length;
      await heal(cluster, fault, leader, others);
      await new Promise((r) => setTimeout(r, 500));
      await load.stop();
      const f = report(fault, load.ops.slice(0, opsDuringFault), faultAt, electedAt);
      const unknown = unknownOutcomes(load.ops);
      const dups = await counter.finish();
      console.log(`${fault}: ${JSON.stringify({ writes: load.ops.filter((o) => o.kind === 'put').length, unknownOutcomes: unknown, duplicatesApplied: dups })}`);
      expect(unknown).toBe(0);
      expect(dups).toBe(0);
      expect(f.slowAfterElection).toBe(0);
      expect(f.newLeaderAfterMs).toBeLessThan(ELECTION_MS * 2 + 2_000);
      // Reads retry at once; writes without a session may still wait for their deadline (sessions make them retryable).
      expect(f.firstGetAfterMs).toBeDefined();
      expect(f.firstGetAfterMs!).toBeLessThan(f.newLeaderAfterMs + ATTEMPT_MS + 1_000);
      expect(f.firstPutAfterMs).toBeDefined();
      expect(f.firstPutAfterMs!).toBeLessThan(f.newLeaderAfterMs + ATTEMPT_MS + 1_500);
    }, 120_000);
  }
});
