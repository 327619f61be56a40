/**
 * The chunk records of streamed snapshots in the Raft log store: chunks staged in order as they
 * arrive, a streamed snapshot persisted with a marker naming them, its data read back chunk by
 * chunk, dropped with them, and leftovers of transfers that never completed deleted at open.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CHUNK_PIECE_BYTES } from '../../src/storage/chunk-file.js';
import { MemoryEngine, scanAll } from '../../src/storage/kv-engine.js';
import { metaKey, RaftLogStore, snapshotChunkKey, StorageCorruptionError } from '../../src/storage/raft-log-store.js';
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

describe('snapshot chunk files (RaftLogStoreOptions.chunkDir)', () => {
  const withDir = async (f: (dir: string) => Promise<void>): Promise<void> => {
    const dir = mkdtempSync(join(tmpdir(), 'kvcascade-chunk-files-'));
    try {
      await f(join(dir, 'chunks'));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const files = (dir: string): string[] => readdirSync(dir).sort();
  const pattern = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);

  it('appends a transfer to one file, not to records; after a restart its data is read back in pieces, and dropped with the marker', async () => {
    await withDir(async (dir) => {
      let engine = new MemoryEngine();
      const store = await RaftLogStore.open(engine, { chunkDir: dir });
      store.storageFor(1, conf);
      // Chunks that do not line up with the pieces the install reads.
      const sent = [pattern(700_000, 1), pattern(700_000, 2), pattern(800_000, 3)];
      sent.forEach((c, i) => store.stageSnapshotChunk(1, 10, i, c));
      store.persistReady(1, { snapshot: streamed(10) });
      await store.flush();
      expect(await chunkKeys(engine)).toEqual([]);
      const marker = JSON.parse(Buffer.from((await engine.get(metaKey(1, 'snapstream')))!).toString()) as { chunks: number; bytes: number; file: string };
      expect(marker).toMatchObject({ chunks: 3, bytes: 2_200_000 });
      expect(files(dir)).toEqual([marker.file]);

      engine = engine.crash(0);
      const reopened = await RaftLogStore.open(engine, { chunkDir: dir });
      expect(reopened.storageFor(1).snapshot()!.streamed).toBe(true);
      const c = reopened.installedSnapshotChunks(1)!;
      expect(c).toEqual({ index: 10, chunks: Math.ceil(2_200_000 / CHUNK_PIECE_BYTES), bytes: 2_200_000 });
      const pieces: Uint8Array[] = [];
      for (let i = 0; i < c.chunks; i++) pieces.push(reopened.readSnapshotChunk(1, 10, i)!);
      expect(pieces.slice(0, -1).every((p) => p.length === CHUNK_PIECE_BYTES)).toBe(true);
      expect(Buffer.concat(pieces).equals(Buffer.concat(sent))).toBe(true);
      expect(reopened.readSnapshotChunk(1, 10, c.chunks)).toBeUndefined();

      reopened.dropSnapshotData(1);
      await reopened.flush();
      expect(await engine.get(metaKey(1, 'snapstream'))).toBeUndefined();
      expect(files(dir)).toEqual([]);
    });
  });

  it('deletes the file of a transfer that never completed: at the next transfer, at open, and with the group', async () => {
    await withDir(async (dir) => {
      let engine = new MemoryEngine();
      const store = await RaftLogStore.open(engine, { chunkDir: dir });
      store.storageFor(1, conf);
      store.stageSnapshotChunk(1, 10, 0, chunk(10, 1));
      await store.flush();
      expect(files(dir)).toHaveLength(1);
      const first = files(dir)[0]!;
      // The same snapshot started over, then another: each transfer its own file, the earlier ones deleted.
      store.stageSnapshotChunk(1, 10, 0, chunk(10, 2));
      store.stageSnapshotChunk(1, 12, 0, chunk(10, 3));
      await store.flush();
      await new Promise((r) => setTimeout(r, 50)); // (the discarded files are deleted asynchronously)
      expect(files(dir)).toHaveLength(1);
      expect(files(dir)[0]).not.toBe(first);
      // A crash mid-transfer: no marker names the file, the restarted store deletes it.
      engine = engine.crash(0);
      const reopened = await RaftLogStore.open(engine, { chunkDir: dir });
      expect(files(dir)).toEqual([]);
      expect(reopened.storageFor(1).snapshot()).toBeUndefined();
      // A group deleted with an installed file and another with a transfer under way.
      reopened.stageSnapshotChunk(1, 20, 0, chunk(10, 1));
      reopened.persistReady(1, { snapshot: streamed(20) });
      reopened.storageFor(2, conf);
      reopened.stageSnapshotChunk(2, 5, 0, chunk(10, 1));
      await reopened.flush();
      expect(files(dir)).toHaveLength(2);
      reopened.deleteGroup(1);
      reopened.deleteGroup(2);
      await reopened.flush();
      await new Promise((r) => setTimeout(r, 50));
      expect(files(dir)).toEqual([]);
      expect(await engine.get(metaKey(1, 'snapstream'))).toBeUndefined();
    });
  });

  it('a crash before the marker is durable leaves neither marker nor file', async () => {
    await withDir(async (dir) => {
      const engine = new MemoryEngine();
      const store = await RaftLogStore.open(engine, { chunkDir: dir });
      store.storageFor(1, conf);
      store.stageSnapshotChunk(1, 10, 0, pattern(1000, 1));
      store.persistReady(1, { snapshot: streamed(10) });
      // Not flushed: a crash keeps no marker, and the file goes at open.
      const crashed = engine.crash(0);
      expect(await crashed.get(metaKey(1, 'snapstream'))).toBeUndefined();
      await new Promise((r) => setTimeout(r, 50));
      const reopened = await RaftLogStore.open(crashed, { chunkDir: dir });
      expect(reopened.installedSnapshotChunks(1)).toBeUndefined();
      expect(files(dir)).toEqual([]);
    });
  });

  it('keeps reading records of a snapshot installed before, and refuses a marker naming a file without the folder', async () => {
    await withDir(async (dir) => {
      let engine = new MemoryEngine();
      const old = await RaftLogStore.open(engine);
      old.storageFor(1, conf);
      old.stageSnapshotChunk(1, 10, 0, chunk(100, 9));
      old.persistReady(1, { snapshot: streamed(10) });
      await old.flush();
      engine = engine.crash(0);
      const withFiles = await RaftLogStore.open(engine, { chunkDir: dir });
      expect(withFiles.installedSnapshotChunks(1)).toEqual({ index: 10, chunks: 1, bytes: 100 });
      expect(withFiles.readSnapshotChunk(1, 10, 0)).toEqual(chunk(100, 9));
      expect(await chunkKeys(engine)).toEqual([snapshotChunkKey(1, 10, 0)]);
      // The next transfer goes to a file; a store opened without the folder cannot read its marker.
      withFiles.stageSnapshotChunk(1, 20, 0, chunk(100, 1));
      withFiles.persistReady(1, { snapshot: streamed(20) });
      await withFiles.flush();
      expect(await chunkKeys(engine)).toEqual([]);
      expect(existsSync(dir)).toBe(true);
      // (the marker of the snapshot installed over one whose chunks were not dropped yet: its put is not undone by the drop)
      expect(JSON.parse(Buffer.from((await engine.get(metaKey(1, 'snapstream')))!).toString())).toMatchObject({ chunks: 1, bytes: 100 });
      const after = engine.crash(0);
      await expect(RaftLogStore.open(after)).rejects.toBeInstanceOf(StorageCorruptionError);
      // With `chunkFiles: false` new transfers are records again (the installed file is still read).
      const records = await RaftLogStore.open(after, { chunkDir: dir, chunkFiles: false });
      expect(Buffer.from(records.readSnapshotChunk(1, 20, 0)!).equals(Buffer.from(chunk(100, 1)))).toBe(true);
      records.stageSnapshotChunk(1, 30, 0, chunk(10, 1));
      await records.flush();
      expect(await chunkKeys(after)).toEqual([snapshotChunkKey(1, 30, 0)]);
    });
  });
});
