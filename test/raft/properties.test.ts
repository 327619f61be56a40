/**
 * Property tests: random fault schedules (generated and shrunk by fast-check) run through the
 * deterministic simulator; every run must keep Raft's safety properties after every event,
 * produce a linearizable KV history, and recover liveness once the faults heal.
 *
 * Replay a failure exactly: SIM_SEED=<seed> SIM_PATH=<path> npx vitest run test/raft/properties.test.ts
 * (both are printed by fast-check when a property fails).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { checkKvLinearizable } from '../sim/linearizability.js';
import { Simulator, type Fault, type ScheduleStep, type SimConfig } from '../sim/simulator.js';

const RUNS = Number(process.env.SIM_RUNS ?? 1000);
const SPARES = 2;

const faultArb = (nodes: number): fc.Arbitrary<Fault> => {
  const node = fc.integer({ min: 0, max: nodes - 1 });
  return fc.oneof(
    { weight: 2, arbitrary: fc.constant<Fault>({ kind: 'none' }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('crash' as const), node, unsyncedSurvives: fc.boolean() }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('restart' as const), node }) },
    {
      weight: 4,
      arbitrary: fc.record({
        kind: fc.constant('reboot' as const),
        node,
        afterMs: fc.integer({ min: 0, max: 60 }),
        unsyncedSurvives: fc.boolean(),
      }),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('pause' as const), node, forMs: fc.integer({ min: 50, max: 800 }) }) },
    {
      weight: 3,
      arbitrary: fc
        .shuffledSubarray(
          Array.from({ length: nodes }, (_, i) => i),
          { minLength: 1, maxLength: nodes - 1 },
        )
        .map((side): Fault => ({
          kind: 'partition',
          sides: [side, Array.from({ length: nodes }, (_, i) => i).filter((i) => !side.includes(i))],
        })),
    },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('oneWay' as const), from: node, to: node }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('bridge' as const), bridge: node }) },
    {
      weight: 2,
      arbitrary: fc.record({
        kind: fc.constant('lossy' as const),
        dropRate: fc.double({ min: 0, max: 0.3, noNaN: true }),
        duplicateRate: fc.double({ min: 0, max: 0.2, noNaN: true }),
      }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('transfer' as const), to: node }) },
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('membership' as const),
        op: fc.constantFrom('addLearner' as const, 'addVoter' as const, 'remove' as const),
        // any node, including the two spares that start outside the group
        node: fc.integer({ min: 0, max: nodes + SPARES - 1 }),
      }),
    },
    { weight: 3, arbitrary: fc.constant<Fault>({ kind: 'heal' }) },
  );
};

const scheduleArb = (nodes: number): fc.Arbitrary<ScheduleStep[]> =>
  fc.array(fc.record({ afterMs: fc.integer({ min: 0, max: 300 }), fault: faultArb(nodes) }), { minLength: 4, maxLength: 24, size: 'max' });

const configArb = fc
  .record({
    seed: fc.integer({ min: 1, max: 0x7fffffff }),
    nodes: fc.constantFrom(3, 5),
    snapshotEvery: fc.constantFrom(0, 8, 25),
    // Production runs with both on; the core supports every combination, so all are exercised.
    preVote: fc.boolean(),
    checkQuorum: fc.boolean(),
  })
  .chain(({ seed, nodes, snapshotEvery, preVote, checkQuorum }) =>
    scheduleArb(nodes).map(
      (schedule): SimConfig => ({
        seed,
        nodes,
        spareNodes: SPARES,
        schedule,
        clients: 3,
        keys: ['x', 'y'],
        host: { snapshotEvery, compactionLag: 3, electionTicks: 10, heartbeatTicks: 2, snapshotChunkBytes: 128, preVote, checkQuorum },
        livenessBoundMs: 4000,
      }),
    ),
  );

function replayParams(): fc.Parameters<[SimConfig]> {
  const seed = process.env.SIM_SEED;
  const path = process.env.SIM_PATH;
  return {
    numRuns: RUNS,
    ...(seed ? { seed: Number(seed) } : {}),
    ...(path ? { path } : {}),
    endOnFailure: false,
  };
}

describe('raft under random fault schedules', () => {
  it(`keeps every safety property, stays linearizable and recovers liveness (${RUNS} schedules, 3 and 5 nodes)`, () => {
    let totalEvents = 0;
    let totalOps = 0;
    let maxRecovery = 0;
    let elections = 0;
    let snapshots = 0;
    let dropped = 0;
    let confChanges = 0;
    let undecided = 0;
    fc.assert(
      fc.property(configArb, (cfg) => {
        const result = new Simulator(cfg).run();
        totalEvents += result.events;
        totalOps += result.history.length;
        maxRecovery = Math.max(maxRecovery, result.recoveryMs);
        elections += result.elections;
        snapshots += result.snapshotsInstalled;
        dropped += result.messagesDropped;
        confChanges += result.membershipChanges;
        const lin = checkKvLinearizable(result.history);
        if (!lin.ok) {
          throw new Error(`history not linearizable on key ${lin.key}: ${JSON.stringify(lin.history)}`);
        }
        // A history whose search exceeds the checker's budget is undecided, not wrong: counted
        // and bounded below (it happens for rare schedules with many overlapping ops on one key).
        if (lin.unknown) undecided++;
        expect(result.recoveryMs).toBeLessThanOrEqual(4000);
      }),
      replayParams(),
    );
    // The runs did real work (a run with no events or no client operations proves nothing).
    expect(totalEvents).toBeGreaterThan(RUNS * 1000);
    expect(totalOps).toBeGreaterThan(RUNS * 5);
    expect(elections).toBeGreaterThan(RUNS);
    expect(snapshots).toBeGreaterThan(0);
    expect(confChanges).toBeGreaterThan(RUNS / 10);
    expect(undecided).toBeLessThanOrEqual(Math.ceil(RUNS / 100));
    console.log(
      `schedules=${RUNS} events=${totalEvents} clientOps=${totalOps} elections=${elections} ` +
        `snapshotsInstalled=${snapshots} messagesDropped=${dropped} membershipChanges=${confChanges} undecided=${undecided} worstRecoveryMs=${maxRecovery}`,
    );
  });

  it('replays exactly: the same config gives the same history', () => {
    const cfg: SimConfig = {
      seed: 424242,
      nodes: 5,
      schedule: [
        { afterMs: 300, fault: { kind: 'crash', node: 0, unsyncedSurvives: false } },
        { afterMs: 200, fault: { kind: 'lossy', dropRate: 0.2, duplicateRate: 0.1 } },
        { afterMs: 300, fault: { kind: 'restart', node: 0 } },
      ],
    };
    const a = new Simulator(cfg).run();
    const b = new Simulator(cfg).run();
    expect(a.history.length).toBeGreaterThan(10);
    expect(JSON.stringify(a.history)).toBe(JSON.stringify(b.history));
    expect(a.events).toBe(b.events);
  });
});
