/**
 * The chunk records of streamed snapshots in the Raft log store: chunks staged in order as they
 * arrive, a streamed snapshot persisted with a marker naming them, its data read back chunk by
 * chunk, dropped with them, and leftovers of transfers that never completed deleted at open.
 */
import { describe, expect, it } from 'vitest';
import { MemoryEngine, scanAll } from '../../src/storage/kv-engine.js';
import { metaKey, RaftLogStore, snapshotChunkKey } from '../../src/storage/raft-log-store.js';
import type { Snapshot } from '../../src/raft/index.js';

const conf = { voters: [1, 2, 3], learners: [] };
const streamed = (index: number): Snapshot => ({ meta: { index, term: 2, conf }, data: new Uint8Array(0), streamed: true });
const chunk = (n: number, fill: number) => new Uint8Array(n).fill(fill);
const chunkKeys = async (e: MemoryEngine) => (await scanAll(e, { prefix: 't/' })).map(([k]) => Buffer.from(k).toString('latin1'));

describe('snapshot chunk records', () => {
  it('persists a streamed snapshot over its staged chunks and reads them back after a restart', async () => {
    let engine = new MemoryEngine();
    const store = await RaftLogStore.open(engine);
    store.storageFor(1, conf);
    for (let i = 0; i < 3; i++) store.stageSnapshotChunk(1, 10, i, chunk(100 + i, i + 1));
    store.persistReady(1, { snapshot: streamed(10) });
    await store.flush();
    expect(await engine.get(metaKey(1, 'snapdata'))).toBeUndefined();
    expect(JSON.parse(Buffer.from((await engine.get(metaKey(1, 'snapstream')))!).toString())).toEqual({ chunks: 3, bytes: 303 });

    engine = engine.crash(0);
    const reopened = await RaftLogStore.open(engine);
    const snap = reopened.storageFor(1).snapshot()!;
    expect(snap.streamed).toBe(true);
    expect(snap.data.length).toBe(0);
    expect(reopened.installedSnapshotChunks(1)).toEqual({ index: 10, chunks: 3, bytes: 303 });
    expect(reopened.readSnapshotChunk(1, 10, 2)).toEqual(chunk(102, 3));
    expect(reopened.readSnapshotChunk(1, 10, 3)).toBeUndefined();

    // Dropping the data (the install's records are staged) deletes the chunks and the marker.
    reopened.dropSnapshotData(1);
    await reopened.flush();
    expect(await chunkKeys(engine)).toEqual([]);
    expect(await engine.get(metaKey(1, 'snapstream'))).toBeUndefined();
    const again = await RaftLogStore.open(engine.crash(0));
    expect(again.storageFor(1).snapshot()!.streamed).toBeUndefined();
    expect(again.installedSnapshotChunks(1)).toBeUndefined();
  });

  it('deletes the chunks of a transfer that never completed: at the next transfer, and at open', async () => {
    let engine = new MemoryEngine();
    const store = await RaftLogStore.open(engine);
    store.storageFor(1, conf);
    store.stageSnapshotChunk(1, 10, 0, chunk(10, 1));
    store.stageSnapshotChunk(1, 10, 1, chunk(10, 2));
    // A new transfer (another snapshot) replaces it.
    store.stageSnapshotChunk(1, 12, 0, chunk(10, 3));
    await store.flush();
    expect(await chunkKeys(engine)).toEqual([snapshotChunkKey(1, 12, 0)]);
    // A crash mid-transfer: the restarted store deletes what no marker names.
    engine = engine.crash(0);
    const reopened = await RaftLogStore.open(engine);
    await reopened.flush();
    expect(await chunkKeys(engine)).toEqual([]);
    expect(reopened.storageFor(1).snapshot()).toBeUndefined();
  });

  it('refuses chunks out of order and a streamed snapshot whose chunks were not staged', async () => {
    const store = await RaftLogStore.open(new MemoryEngine());
    store.storageFor(1, conf);
    expect(() => store.stageSnapshotChunk(1, 10, 1, chunk(1, 1))).toThrow(RangeError);
    store.stageSnapshotChunk(1, 10, 0, chunk(1, 1));
    expect(() => store.stageSnapshotChunk(1, 10, 2, chunk(1, 1))).toThrow(RangeError);
    expect(() => store.stageSnapshotChunk(1, 11, 1, chunk(1, 1))).toThrow(RangeError);
    expect(() => store.persistReady(1, { snapshot: streamed(11) })).toThrow(RangeError);
    expect(store.storageFor(1).snapshot()).toBeUndefined();
  });

  it('deletes a group\'s chunk records with the group', async () => {
    const engine = new MemoryEngine();
    const store = await RaftLogStore.open(engine);
    store.storageFor(1, conf);
    store.stageSnapshotChunk(1, 10, 0, chunk(10, 1));
    store.persistReady(1, { snapshot: streamed(10) });
    store.storageFor(2, conf);
    store.stageSnapshotChunk(2, 5, 0, chunk(10, 1));
    await store.flush();
    store.deleteGroup(1);
    store.deleteGroup(2);
    await store.flush();
    expect(await chunkKeys(engine)).toEqual([]);
    expect(await engine.get(metaKey(1, 'snapstream'))).toBeUndefined();
  });
});
