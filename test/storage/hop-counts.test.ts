/**
 * Lambda hop counts carried in the committed data (issue 10): each version and event records the
 * hop count of the write that made it, through the snapshot codec (a trailing section), the
 * durable records (a flag in a version's kind byte and in an event's type byte), their loader and
 * the snapshot streamed from them. Snapshots and records written before hop counts existed (the
 * golden bytes below were produced by the code of main at dc161af) still decode, with hop count 0,
 * and a state without hop counts is still written byte for byte as before.
 */
import { describe, expect, it } from 'vitest';
import { crc32 } from '../../src/statemachine/binary.js';
import { decodeSnapshot, KvStateMachine, ValidationError, type Command, type KvEvent } from '../../src/statemachine/index.js';
import { MemoryEngine, scanAll } from '../../src/storage/kv-engine.js';
import { StorageCorruptionError } from '../../src/storage/raft-log-store.js';
import { encodeSnapshotFromRecords, loadState, StateRecorder } from '../../src/storage/state-store.js';

const GROUP = 7;
const enc = new TextEncoder();
const hex = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'hex'));
const SESSION = { id: 'session-0123456789ab', seq: 1, ackedBelow: 1 };

/** The commands behind the golden bytes: a put (with a session in the format 2 case), a put, a delete, a txn and a trigger. */
const COMMANDS: readonly Command[] = [
  { type: 'put', key: '/a', value: enc.encode('one') },
  { type: 'put', key: '/b', value: enc.encode('two') },
  { type: 'delete', key: '/a' },
  { type: 'txn', compares: [], writes: [{ type: 'put', key: '/c', value: enc.encode('three') }, { type: 'delete', key: '/b' }] },
  { type: 'triggerPut', key: '/t', value: enc.encode('tick') },
];

/** Snapshot format 1 (no sessions) of COMMANDS, written before hop counts existed. */
const OLD_SNAPSHOT_V1 = hex(
  '4b56534d01050500ec07904e8080802000e807010101010300022f610201046f6e65020001016202020474776f02000101630104067468726565060100022f610100022f620101022f610100022f630001022f620102022f74047469636ba8863c82',
);
/** Snapshot format 2 (the first put with SESSION) of COMMANDS, written before hop counts existed. */
const OLD_SNAPSHOT_V2 = hex(
  '4b56534d02050500ec07904e8080802000e807010101010300022f610201046f6e65020001016202020474776f02000101630104067468726565060100022f610100022f620101022f610100022f630001022f620102022f74047469636bc0cf24d08603904e011473657373696f6e2d3031323334353637383961620101e807010101010101e80728dcb761',
);
/** The durable records (key, value) of the format 2 state, written before hop counts existed. */
const OLD_RECORDS: ReadonlyArray<readonly [string, string]> = [
  ['732f30303030303030372f632f73657373696f6e2d303132333435363738396162', '0101e807'],
  ['732f30303030303030372f762f2f6100010000000000000001', '01e8076f6e65'],
  ['732f30303030303030372f642f73657373696f6e2d3031323334353637383961622f0000000000000001', '01010101e807'],
  ['732f30303030303030372f762f2f6200010000000000000002', '01e90774776f'],
  ['732f30303030303030372f762f2f6100010000000000000003', '00ea07'],
  ['732f30303030303030372f762f2f6300010000000000000004', '01eb077468726565'],
  ['732f30303030303030372f6c2f2f63', '04'],
  ['732f30303030303030372f762f2f6200010000000000000004', '00eb07'],
  ['732f30303030303030372f6c2f2f61', '03'],
  ['732f30303030303030372f6c2f2f62', '04'],
  ['732f30303030303030372f722f0000000000000001', '05e807010100022f61e907010100022f62ea07010101022f61eb07020200022f6301022f62ec07000102022f74047469636b'],
  ['732f30303030303030372f6d657461', '01050500ec07904e8080802001'],
];

/**
 * The session of OLD_RECORDS (its `c/` header and `d/` result) as the one session journal record a
 * recorder writes for it now (`s/00000007/j/<5>`: format 1, one update of session-0123456789ab:
 * floor 0, last active at index 1 and 1000 ms, with its put result at seq 1).
 */
const JOURNAL_RECORD: readonly [string, string] = [
  '732f30303030303030372f6a2f0000000000000005',
  '0101011473657373696f6e2d3031323334353637383961620101e807010101010101e807',
];

/** A machine that applied COMMANDS, command i with hop count `hops[i]` (0 when absent). */
function machine(hops: readonly number[] = [], withSession = false): { sm: KvStateMachine; rec: StateRecorder } {
  const sm = new KvStateMachine();
  const rec = new StateRecorder(GROUP);
  sm.observe(rec);
  COMMANDS.forEach((c, i) => sm.apply(i + 1, 1000 + i, c, 'client', withSession && i === 0 ? SESSION : undefined, hops[i] ?? 0));
  return { sm, rec };
}

/** The records `rec` wrote for `sm`, in an engine. */
async function recorded(sm: KvStateMachine, rec: StateRecorder): Promise<MemoryEngine> {
  const engine = new MemoryEngine();
  await engine.batch(rec.take(sm) ?? [], { sync: true });
  return engine;
}

/** The snapshot streamed from `engine`'s records. */
async function streamed(engine: MemoryEngine): Promise<Uint8Array> {
  const view = engine.view();
  try {
    return (await encodeSnapshotFromRecords(view, GROUP, { partBytes: 5, sliceMs: 0 }))!.data;
  } finally {
    await view.close();
  }
}

/** Each event of the history as [revision, type, key, hops]. */
function eventHops(sm: KvStateMachine): Array<[number, string, string, number | undefined]> {
  return sm.eventsSince(sm.oldestHistoryRevision).events.map((e: KvEvent) => [e.revision, e.type, e.key, e.hops]);
}

/** `bytes` with its last 4 bytes (the CRC) replaced by `body`'s CRC: `body` is everything but the CRC. */
function withCrc(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.length + 4);
  out.set(body);
  new DataView(out.buffer).setUint32(body.length, crc32(body));
  return out;
}

describe('hop counts written before they existed', () => {
  it('an old snapshot (formats 1 and 2) decodes with hop count 0 everywhere and re-encodes to the same bytes', () => {
    for (const [old, withSession] of [[OLD_SNAPSHOT_V1, false], [OLD_SNAPSHOT_V2, true]] as const) {
      const d = decodeSnapshot(old);
      for (const [, versions] of d.keys) for (const v of versions) expect(v.hops).toBeUndefined();
      for (const e of d.history) expect(e.hops).toBeUndefined();
      const sm = KvStateMachine.restore(old);
      expect(Buffer.from(sm.snapshot()).equals(Buffer.from(old))).toBe(true);
      for (let rev = 1; rev <= sm.revision; rev++) expect(sm.hopsAt(rev)).toBe(0);
      // A state without hop counts is written exactly as before they existed.
      expect(Buffer.from(machine([], withSession).sm.snapshot()).equals(Buffer.from(old))).toBe(true);
    }
  });

  it('old durable records load with hop count 0, and the snapshot streamed from them is the old one', async () => {
    const engine = new MemoryEngine();
    await engine.batch(OLD_RECORDS.map(([k, v]) => ({ type: 'put' as const, key: hex(k), value: hex(v) })), { sync: true });
    const loaded = await loadState(engine, GROUP);
    const sm = KvStateMachine.fromRecords(loaded!.data);
    expect(eventHops(sm).map((e) => e[3])).toEqual([undefined, undefined, undefined, undefined, undefined, undefined]);
    expect(Buffer.from(sm.snapshot()).equals(Buffer.from(OLD_SNAPSHOT_V2))).toBe(true);
    expect(Buffer.from(await streamed(engine)).equals(Buffer.from(OLD_SNAPSHOT_V2))).toBe(true);
    // The old records' deleted keys (/a, /b) have their latests in `l/`: the loader names them for the recorder to move.
    expect([...loaded!.written.legacyTombstones!]).toEqual([['/a', 3], ['/b', 4]]);
    // The recorder writes a hop-free state's records exactly as before, but for the client
    // session, which is now one journal record (golden bytes below) instead of a header and a result,
    // and the deleted keys' latests, now in `t/` (same values), and `meta`, which now ends with the
    // key counts (varint 1 live key, 0 reserved: the old one, without them, still loads above).
    const { sm: fresh, rec } = machine([], true);
    const oursEngine = await recorded(fresh, rec);
    const ours = (await scanAll(oursEngine)).map(([k, v]) => [Buffer.from(k).toString('hex'), Buffer.from(v).toString('hex')]);
    const theirs = (await scanAll(engine)).map(([k, v]) => [Buffer.from(k).toString('hex'), Buffer.from(v).toString('hex')]);
    const isSession = ([k]: string[]) => /^732f30303030303030372f(63|64|6a)2f/.test(k!);
    const deletedLatests = ['732f30303030303030372f6c2f2f61', '732f30303030303030372f6c2f2f62']; // s/00000007/l//a, l//b
    const theirsMoved = theirs
      .filter((r) => !isSession(r))
      .map(([k, v]) => (deletedLatests.includes(k!) ? [k!.replace(/^(732f30303030303030372f)6c/, '$174'), v] : [k, v]))
      .map(([k, v]) => (k === '732f30303030303030372f6d657461' ? [k, `${v!}0100`] : [k, v])) // s/00000007/meta
      .sort((x, y) => (x[0]! < y[0]! ? -1 : 1));
    expect(ours.filter((r) => !isSession(r))).toEqual(theirsMoved);
    expect(theirs.filter(isSession).map(([k]) => Buffer.from(k!, 'hex').toString('latin1').slice(11, 13))).toEqual(['c/', 'd/']);
    expect(ours.filter(isSession)).toEqual([[JOURNAL_RECORD[0], JOURNAL_RECORD[1]]]);
    // Both layouts load to the same machine, and stream the same snapshot.
    expect(Buffer.from(KvStateMachine.fromRecords((await loadState(oursEngine, GROUP))!.data).snapshot()).equals(Buffer.from(OLD_SNAPSHOT_V2))).toBe(true);
    expect(Buffer.from(await streamed(oursEngine)).equals(Buffer.from(OLD_SNAPSHOT_V2))).toBe(true);
  });

  it('the session journal record has a fixed layout (golden bytes) and a newer format is refused by name', async () => {
    const engine = new MemoryEngine();
    const others = OLD_RECORDS.filter(([k]) => !/^732f30303030303030372f(63|64)2f/.test(k));
    await engine.batch([...others, JOURNAL_RECORD].map(([k, v]) => ({ type: 'put' as const, key: hex(k), value: hex(v) })), { sync: true });
    const sm = KvStateMachine.fromRecords((await loadState(engine, GROUP))!.data);
    expect(Buffer.from(sm.snapshot()).equals(Buffer.from(OLD_SNAPSHOT_V2))).toBe(true);
    const newer = hex(JOURNAL_RECORD[1]);
    newer[0] = 2;
    await engine.batch([{ type: 'put', key: hex(JOURNAL_RECORD[0]), value: newer }], { sync: true });
    const err = await loadState(engine, GROUP).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(StorageCorruptionError);
    expect((err as Error).message).toMatch(/session journal format 2 is not known to this version/);
  });
});

describe('hop counts in the committed data', () => {
  const HOPS = [3, 0, 255, 7, 1]; // put, put, delete, txn (put + delete), trigger

  it('every version and event of a write carries its hop count (absent for 0)', () => {
    const { sm } = machine(HOPS);
    expect(eventHops(sm)).toEqual([
      [1, 'put', '/a', 3],
      [2, 'put', '/b', undefined],
      [3, 'delete', '/a', 255],
      [4, 'put', '/c', 7],
      [4, 'delete', '/b', 7],
      [5, 'trigger', '/t', 1],
    ]);
    expect([1, 2, 3, 4, 5, 6].map((r) => sm.hopsAt(r))).toEqual([3, 0, 255, 7, 1, undefined]);
    const versions = new Map(sm.toRecords().keys.map(([k, vs]) => [k, vs.map((v) => [v.revision, v.hops])]));
    expect(versions).toEqual(
      new Map([
        ['/a', [[1, 3], [3, 255]]],
        ['/b', [[2, undefined], [4, 7]]],
        ['/c', [[4, 7]]],
      ]),
    );
  });

  it('survive a snapshot, the durable records, their reload and the snapshot streamed from them', async () => {
    for (const withSession of [false, true]) {
      const { sm, rec } = machine(HOPS, withSession);
      const snap = sm.snapshot();
      expect(snap.length).toBeGreaterThan((withSession ? OLD_SNAPSHOT_V2 : OLD_SNAPSHOT_V1).length); // the trailing section
      const restored = KvStateMachine.restore(snap);
      expect(eventHops(restored)).toEqual(eventHops(sm));
      expect(restored.toRecords().keys).toEqual(sm.toRecords().keys);
      expect(Buffer.from(restored.snapshot()).equals(Buffer.from(snap))).toBe(true);

      const engine = await recorded(sm, rec);
      const loaded = KvStateMachine.fromRecords((await loadState(engine, GROUP))!.data);
      expect(eventHops(loaded)).toEqual(eventHops(sm));
      expect(Buffer.from(loaded.snapshot()).equals(Buffer.from(snap))).toBe(true);
      expect(Buffer.from(await streamed(engine)).equals(Buffer.from(snap))).toBe(true);
      // Values held on disk keep their version's hop count.
      const head = KvStateMachine.fromRecords((await loadState(engine, GROUP, { values: false }))!.data);
      expect(head.toRecords().keys.map(([k, vs]) => [k, vs.map((v) => v.hops)])).toEqual(sm.toRecords().keys.map(([k, vs]) => [k, vs.map((v) => v.hops)]));
    }
  });

  it('a compaction keeps the hop count of the surviving version, and the history trims with it', () => {
    const { sm } = machine(HOPS);
    sm.apply(6, 2000, { type: 'compact', revision: 4 });
    const restored = KvStateMachine.restore(sm.snapshot());
    expect(restored.toRecords().keys.map(([k, vs]) => [k, vs.map((v) => [v.revision, v.hops])])).toEqual([['/c', [[4, 7]]]]);
    expect(eventHops(restored)).toEqual([
      [4, 'put', '/c', 7],
      [4, 'delete', '/b', 7],
      [5, 'trigger', '/t', 1],
    ]);
  });

  it('refuses a malformed hop count section or record', async () => {
    const { sm } = machine([0, 0, 0, 0, 2]); // only the trigger (revision 5) has a hop count
    const snap = sm.snapshot();
    const body = snap.subarray(0, snap.length - 4);
    const section = body.subarray(body.length - 4);
    expect([...section]).toEqual([1, 1, 5, 2]); // tag 1 (hop counts), one entry: revision 5, hops 2
    const patched = (bytes: number[]): Uint8Array => withCrc(new Uint8Array([...body.subarray(0, body.length - 4), ...bytes]));
    expect(KvStateMachine.restore(patched([1, 1, 5, 2])).hopsAt(5)).toBe(2);
    for (const bad of [[1, 1, 5, 0], [1, 1, 6, 2], [1, 1, 5, 0x80, 0x02], [1, 0], [1, 2, 5, 2, 0, 3], [1, 1, 5], [2, 1, 5, 2], [1, 1, 5, 2, 1, 1, 4, 2], [0]]) {
      expect(() => decodeSnapshot(patched(bad)), bad.join(',')).toThrow(ValidationError);
    }

    // A version or event with an unknown flag is corruption, never read as something else.
    const { sm: m2, rec } = machine([4]);
    const engine = await recorded(m2, rec);
    const versionKey = hex('732f30303030303030372f762f2f6100010000000000000001');
    const good = (await engine.get(versionKey))!;
    expect([...good.subarray(0, 4)]).toEqual([0x03, 0xe8, 0x07, 4]); // value | hops flag, timestamp 1000, hops 4
    for (const bad of [[0x43, 0xe8, 0x07, 4], [0x03, 0xe8, 0x07, 0], [0x03, 0xe8, 0x07, 0x80, 0x02]]) {
      await engine.batch([{ type: 'put', key: versionKey, value: new Uint8Array([...bad, ...good.subarray(4)]) }], { sync: true });
      await expect(loadState(engine, GROUP), bad.join(',')).rejects.toThrow(StorageCorruptionError);
    }
  });
});
