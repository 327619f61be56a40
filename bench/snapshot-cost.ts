// What a snapshot costs a node (issue 17): the longest event-loop block, RSS and time of a log compaction and of a follower's catch-up by snapshot, at several data sizes, with main's behaviour ("before") and the current one ("after").
//
// Run: npx tsc -p tsconfig.json (or npm run build), then
//   node dist/bench/snapshot-cost.js [--keys 10000,100000,300000] [--value-bytes 1024] [--modes before,after] [--dir DIR]
// Each (mode, keys) runs in a fresh child process (so RSS figures do not mix) on one shard over LevelDB:
//   fill    N puts applied to the leader's state machine through the node's write path (log entries
//           persisted, records staged with each round, the log compacted every 20 000 entries);
//   compact one log compaction at the applied index. before: `sm.snapshot()` serialises the whole
//           state on the event loop and the store writes it as one value (main); after: a records
//           snapshot (metadata only);
//   catchup an empty follower (a real ShardReplica over its own LevelDB, driven as the node drives it)
//           catches up by snapshot: before, from the bytes kept at compaction; after, streamed from an
//           engine view by a SnapshotSender (each chunk read from the encoder as the follower asks for
//           it; "leader held KiB" is the most the sender held at once). 1 MiB chunks, one
//           event-loop turn per chunk (the network), the follower's Ready rounds as the node runs them.
// Longest block = the largest gap seen by a 1 ms timer chain (what a Raft tick would have waited).
import { fork } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { encodeProposal } from '../src/node/envelope.js';
import { ShardReplica } from '../src/node/replica.js';
import { SnapshotGate, SnapshotSender } from '../src/node/snapshot-sender.js';
import { EntryType, MessageType, SeededRandom, type Entry, type Message, type Snapshot, type SnapshotChunk } from '../src/raft/index.js';
import { KvStateMachine } from '../src/statemachine/index.js';
import { LevelEngine } from '../src/storage/kv-engine.js';
import { RaftLogStore } from '../src/storage/raft-log-store.js';
import { StateRecorder } from '../src/storage/state-store.js';
import { LoopProbe } from './util.js';

/** One measured configuration's figures. */
export interface SnapshotCostResult {
  readonly mode: 'before' | 'after';
  readonly keys: number;
  readonly fillS: number;
  readonly compactMs: number;
  readonly compactBlockMs: number;
  readonly compactStoredBytes: number;
  readonly rssAfterCompactMiB: number;
  readonly catchupMs: number;
  readonly catchupBlockMs: number;
  readonly produceMs: number;
  readonly produceBlockMs: number;
  readonly installBlockMs: number;
  /** The follower's synchronous steps: taking the last chunk (Raft assembles the data, the replica decodes and checks it), applying the install (the records replacement is computed and staged), and the longest block while the replacement is written. */
  readonly installStepMs: number;
  readonly installApplyMs: number;
  readonly installWriteBlockMs: number;
  readonly snapshotMiB: number;
  readonly peakRssMiB: number;
  /** The most bytes the leader held for the transfer at once (after: the sender's chunks and encoder parts; before: the whole snapshot). */
  readonly leaderHeldKiB: number;
}

const GROUP = 1;
const CONF = { voters: [1, 2, 3], learners: [] };
const SNAPSHOT_EVERY = 20_000;
const KEEP = 5_000;
const CHUNK = 1 << 20;
const mib = (n: number): number => Math.round(n / 2 ** 20);
const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

async function runOne(mode: 'before' | 'after', keys: number, valueBytes: number, baseDir: string): Promise<SnapshotCostResult> {
  const dirA = await mkdtemp(join(baseDir, 'kvc-snapcost-leader-'));
  const dirB = await mkdtemp(join(baseDir, 'kvc-snapcost-follower-'));
  const probe = new LoopProbe();
  probe.start();
  try {
    // ---- fill the leader
    const engine = await LevelEngine.open(dirA);
    const store = await RaftLogStore.open(engine);
    const storage = store.storageFor(GROUP, CONF);
    const sm = new KvStateMachine();
    const recorder = new StateRecorder(GROUP);
    sm.observe(recorder);
    const value = new Uint8Array(valueBytes).map((_, i) => (i * 131 + 7) & 0xff);
    const t0 = performance.now();
    let index = 0;
    let lastCompact = 0;
    const ROUND = 500;
    for (let done = 0; done < keys; ) {
      const entries: Entry[] = [];
      const cmds: Array<{ index: number; ts: number; key: string; value: Uint8Array }> = [];
      for (let i = 0; i < ROUND && done < keys; i++, done++) {
        const v = value.slice();
        v[0] = done & 0xff;
        v[1] = (done >> 8) & 0xff;
        v[2] = (done >> 16) & 0xff;
        const ts = 1_000_000 + done;
        const key = `/bench/${String(done).padStart(8, '0')}`;
        index++;
        entries.push({ term: 1, index, type: EntryType.Normal, data: encodeProposal(ts, { type: 'put', key, value: v }, 'client') });
        cmds.push({ index, ts, key, value: v });
      }
      store.persistReady(GROUP, { entries, hardState: { term: 1, vote: 1, commit: index } });
      for (const c of cmds) sm.apply(c.index, c.ts, { type: 'put', key: c.key, value: c.value }, 'client');
      const unit = recorder.take(sm);
      if (unit) store.stageStateOps(GROUP, unit);
      if (index - lastCompact >= SNAPSHOT_EVERY) {
        store.compact(GROUP, { meta: { index, term: 1, conf: CONF }, data: new Uint8Array(0) }, KEEP);
        lastCompact = index;
      }
      await store.flush();
    }
    const fillS = (performance.now() - t0) / 1000;
    // A few more entries, so the compaction has something new to cover.
    index++;
    store.persistReady(GROUP, { entries: [{ term: 1, index, type: EntryType.Normal, data: new Uint8Array(0) }], hardState: { term: 1, vote: 1, commit: index } });
    sm.apply(index, sm.lastTimestampMs, { type: 'noop' });
    const unit = recorder.take(sm);
    if (unit) store.stageStateOps(GROUP, unit);
    await store.flush();
    globalThis.gc?.();
    await new Promise((r) => setTimeout(r, 50));
    probe.take();

    // ---- compaction
    const c0 = performance.now();
    let storedBytes = 0;
    if (mode === 'before') {
      const data = sm.snapshot(); // main: the whole state, serialised on the loop
      storedBytes = data.length;
      store.compact(GROUP, { meta: { index, term: 1, conf: CONF }, data }, KEEP);
    } else {
      store.compact(GROUP, { meta: { index, term: 1, conf: CONF }, data: new Uint8Array(0) }, KEEP);
    }
    await store.flush();
    const compactMs = Math.round(performance.now() - c0);
    const compactBlockMs = probe.take();
    const rssAfterCompactMiB = mib(process.memoryUsage.rss());

    // ---- catch-up of an empty follower by snapshot
    const leader = new ShardReplica({
      nodeId: 1,
      group: GROUP,
      storage,
      random: new SeededRandom(1),
      electionTicks: 10,
      heartbeatTicks: 1,
      snapshotEveryEntries: SNAPSHOT_EVERY,
      maxPendingProposals: 10,
      initialState: { sm, recorder },
      openView: () => engine.view(),
      nowMs: () => Date.now(),
    });
    const fEngine = await LevelEngine.open(dirB);
    const fStore = await RaftLogStore.open(fEngine);
    const follower = new ShardReplica({
      nodeId: 2,
      group: GROUP,
      storage: fStore.storageFor(GROUP, CONF),
      random: new SeededRandom(2),
      electionTicks: 10,
      heartbeatTicks: 1,
      snapshotEveryEntries: SNAPSHOT_EVERY,
      maxPendingProposals: 10,
      stepwiseInstall: mode === 'after',
      nowMs: () => Date.now(),
    });
    probe.take();
    const k0 = performance.now();
    // The leader's snapshot to send, as its Raft core asks for it (again on every heartbeat response).
    // After: a sender of its own (the replica's hands its chunks to a Raft core that does not lead here).
    const gate = new SnapshotGate(1);
    let answer: ((c: SnapshotChunk) => void) | undefined;
    const sender = new SnapshotSender(
      storage,
      {
        group: GROUP,
        openView: () => engine.view(),
        termAt: () => 1,
        confAt: () => CONF,
        produced: () => {},
        failed: (e) => {
          throw e;
        },
        chunk: (c) => answer?.(c),
      },
      { gate, chunkBytes: CHUNK },
    );
    let snap: Snapshot | undefined;
    while (!(snap = mode === 'after' ? sender.snapshot() : leader.snapshots.snapshot())) await new Promise((r) => setTimeout(r, 5));
    const produceMs = Math.round(performance.now() - k0);
    const produceBlockMs = probe.take();
    let leaderHeld = snap.data.length;
    const streamed = snap.streamed === true;
    const chunkAt = async (offset: number): Promise<{ bytes: Uint8Array; last: boolean; crc?: number }> => {
      if (!streamed) {
        const end = Math.min(snap!.data.length, offset + CHUNK);
        return { bytes: snap!.data.subarray(offset, end), last: end >= snap!.data.length };
      }
      const c = await new Promise<SnapshotChunk>((resolve) => {
        answer = resolve;
        sender.read({ to: 2, meta: snap!.meta, offset });
      });
      leaderHeld = Math.max(leaderHeld, gate.heldBytes);
      return { bytes: c.bytes, last: c.last, ...(c.crc !== undefined ? { crc: c.crc } : {}) };
    };
    let installBlockMs = 0;
    let installStepMs = 0;
    let installApplyMs = 0;
    let installWriteBlockMs = 0;
    let sentBytes = 0;
    for (let offset = 0, last = false; !last; ) {
      const c = await chunkAt(offset);
      last = c.last;
      const end = offset + c.bytes.length;
      sentBytes = end;
      const m: Message = {
        type: MessageType.Snap, group: GROUP, from: 1, to: 2, term: 1, snapshot: snap.meta,
        offset, chunk: c.bytes, ...(streamed ? {} : { total: snap.data.length }), ...(last ? { done: true, total: end, ...(c.crc !== undefined ? { crc: c.crc } : {}) } : {}),
      };
      await turn(); // the network
      const s0 = performance.now();
      follower.step(m);
      if (m.done) installStepMs = Math.round(performance.now() - s0);
      await turn(); // KvNode.receive steps, then runs the Ready round on a later turn (scheduleReady)
      // The follower's Ready rounds, as KvNode.runReady runs them.
      while (follower.hasReady()) {
        const rd = follower.ready();
        if (rd.entries.length > 0 || rd.hardState || rd.snapshot) {
          fStore.persistReady(GROUP, { entries: rd.entries, ...(rd.hardState ? { hardState: rd.hardState } : {}), ...(rd.snapshot ? { snapshot: rd.snapshot } : {}) });
        }
        const a0 = performance.now();
        follower.apply(rd);
        for (const u of follower.takeStateUnits()) fStore.stageStateOps(GROUP, u);
        if (rd.snapshot) {
          installApplyMs = Math.round(performance.now() - a0);
          installBlockMs = Math.max(installBlockMs, probe.take());
        }
        await fStore.flush();
        follower.advance(rd);
        if (rd.snapshot && follower.installing) {
          // As KvNode.finishInstall: the replacement's units, ~10 ms of work per turn, then the data drop.
          for (let done = false; !done; ) {
            const t1 = performance.now();
            while (performance.now() - t1 < 10) {
              const u = follower.nextReplacementUnit();
              if (u === undefined) {
                done = true;
                break;
              }
              fStore.stageStateOps(GROUP, u);
            }
            fStore.flush().catch(() => {});
            await turn();
          }
          fStore.dropSnapshotData(GROUP);
        } else if (rd.snapshot && mode === 'after') fStore.dropSnapshotData(GROUP);
        await fStore.flush();
        if (rd.snapshot) installWriteBlockMs = probe.take();
      }
      offset = end;
    }
    sender.release();
    installBlockMs = Math.max(installBlockMs, installWriteBlockMs, probe.take());
    const catchupMs = Math.round(performance.now() - k0);
    if (follower.appliedIndex !== snap.meta.index || follower.internalsForTests().sm.keyCount !== sm.keyCount) {
      throw new Error(`follower at ${follower.appliedIndex} with ${follower.internalsForTests().sm.keyCount} keys, leader snapshot at ${snap.meta.index} with ${sm.keyCount}`);
    }
    const result: SnapshotCostResult = {
      mode,
      keys,
      fillS: +fillS.toFixed(1),
      compactMs,
      compactBlockMs,
      compactStoredBytes: storedBytes,
      rssAfterCompactMiB,
      catchupMs,
      catchupBlockMs: Math.max(produceBlockMs, installBlockMs),
      produceMs,
      produceBlockMs,
      installBlockMs,
      installStepMs,
      installApplyMs,
      installWriteBlockMs,
      snapshotMiB: mib(sentBytes),
      leaderHeldKiB: Math.round(leaderHeld / 1024),
      peakRssMiB: mib(probe.peakRss),
    };
    leader.failAll(new Error('done'));
    await fStore.close();
    await store.close();
    return result;
  } finally {
    probe.stop();
    await rm(dirA, { recursive: true, force: true });
    await rm(dirB, { recursive: true, force: true });
  }
}

const USAGE = `usage: node dist/bench/snapshot-cost.js [--keys 10000,100000,300000] [--value-bytes 1024] [--modes before,after] [--dir DIR]`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      keys: { type: 'string', default: '10000,100000,300000' },
      'value-bytes': { type: 'string', default: '1024' },
      modes: { type: 'string', default: 'before,after' },
      dir: { type: 'string', default: tmpdir() },
      child: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const valueBytes = Number(values['value-bytes']);
  if (values.child) {
    const [mode, keys] = values.child.split(':');
    const r = await runOne(mode as 'before' | 'after', Number(keys), valueBytes, values.dir!);
    process.send?.(r);
    return;
  }
  const rows: SnapshotCostResult[] = [];
  console.log('mode    keys     fill s  compact ms  compact block ms  stored MiB  rss MiB  snapshot MiB  produce ms  produce block ms  install block ms  catch-up ms  catch-up block ms  peak rss MiB  leader held KiB  (install: last chunk ms, apply ms, write block ms)');
  for (const keys of values.keys!.split(',').map(Number)) {
    for (const mode of values.modes!.split(',') as Array<'before' | 'after'>) {
      const r = await new Promise<SnapshotCostResult>((resolve, reject) => {
        const child = fork(process.argv[1]!, ['--child', `${mode}:${keys}`, '--value-bytes', String(valueBytes), '--dir', values.dir!], {
          execArgv: ['--expose-gc', '--max-old-space-size=8192'],
        });
        let got: SnapshotCostResult | undefined;
        child.on('message', (m) => (got = m as SnapshotCostResult));
        child.on('exit', (code) => (got ? resolve(got) : reject(new Error(`child ${mode}:${keys} exited with ${code}`))));
      });
      rows.push(r);
      console.log(
        [r.mode.padEnd(6), String(r.keys).padStart(7), String(r.fillS).padStart(7), String(r.compactMs).padStart(10), String(r.compactBlockMs).padStart(16),
          String(mib(r.compactStoredBytes)).padStart(10), String(r.rssAfterCompactMiB).padStart(7), String(r.snapshotMiB).padStart(12),
          String(r.produceMs).padStart(10), String(r.produceBlockMs).padStart(16), String(r.installBlockMs).padStart(16),
          String(r.catchupMs).padStart(11), String(r.catchupBlockMs).padStart(17), String(r.peakRssMiB).padStart(12), String(r.leaderHeldKiB).padStart(14),
          `  (${r.installStepMs}, ${r.installApplyMs}, ${r.installWriteBlockMs})`].join('  '),
      );
    }
  }
  console.log(JSON.stringify(rows));
}

if (process.argv[1]?.endsWith('snapshot-cost.js')) {
  main().catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
}
