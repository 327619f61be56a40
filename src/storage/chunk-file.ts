/**
 * The chunks of one streamed snapshot transfer appended to a plain file (RaftLogStoreOptions.chunkDir),
 * instead of one LevelDB record each: a follower receiving a 1 GiB snapshot wrote every chunk
 * through LevelDB's log, memtable and compactions (about 32 MiB/s with a synced batch per 1 MiB
 * chunk on the 2-core test machine, ~12 s of CPU per GiB) where a file takes the same bytes at
 * disk speed (~190 MiB/s synced per chunk). The store decides when a file must be durable (before the
 * marker naming it is written); the install reads the file back in pieces of {@link CHUNK_PIECE_BYTES}.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Bytes of one piece an installed chunk file is read back in (the last piece is shorter). */
export const CHUNK_PIECE_BYTES = 1 << 20;

/** A chunk file's name: the group and snapshot index, and a number that tells transfers of the same snapshot apart. */
export const CHUNK_FILE_NAME = /^([0-9a-f]{8})-([0-9a-f]{16})-([0-9a-z]+)\.chunks$/;

/** An open transfer's file: appends in order, made durable on request. */
export class ChunkFile {
  private fh: Promise<FileHandle> | undefined;
  private chain: Promise<void> = Promise.resolve();
  /** Bytes appended (queued or written). */
  private appended = 0;
  /** Bytes known durable. */
  private synced = 0;
  private error: unknown;
  private closed = false;

  constructor(readonly path: string) {}

  /** Appends `bytes` (held until written: the caller bounds what is pending with {@link sync}). */
  append(bytes: Uint8Array): void {
    const at = this.appended;
    this.appended += bytes.length;
    this.then(async () => {
      const fh = await this.handle();
      let off = 0;
      while (off < bytes.length) {
        const { bytesWritten } = await fh.write(bytes, off, bytes.length - off, at + off);
        off += bytesWritten;
      }
    });
  }

  /** Bytes appended and not known durable yet. */
  get unsynced(): number {
    return this.appended - this.synced;
  }

  /** Resolves once every append made so far is written and durable; rejects if a write failed. */
  sync(): Promise<void> {
    const target = this.appended;
    this.then(async () => {
      if (this.synced >= target) return;
      await (await this.handle()).datasync();
      this.synced = Math.max(this.synced, target);
    });
    return this.settled();
  }

  /** Makes every append durable, then closes the file (it stays on disk). */
  async finish(): Promise<void> {
    await this.sync();
    await this.close();
  }

  /** Closes the file (pending appends are written first); never rejects. */
  async close(): Promise<void> {
    await this.chain;
    if (this.closed) return;
    this.closed = true;
    const fh = this.fh;
    this.fh = undefined;
    if (fh) await (await fh).close().catch(() => undefined);
  }

  /** Closes and deletes the file (a transfer abandoned); never rejects. */
  async discard(): Promise<void> {
    await this.close();
    await unlink(this.path).catch(() => undefined);
  }

  private then(step: () => Promise<void>): void {
    this.chain = this.chain.then(async () => {
      if (this.error !== undefined || this.closed) return;
      try {
        await step();
      } catch (e) {
        this.error = e;
      }
    });
  }

  private async settled(): Promise<void> {
    await this.chain;
    if (this.error !== undefined) throw this.error;
    if (this.closed && this.synced < this.appended) throw new Error(`chunk file ${this.path} closed before it was made durable`);
  }

  /** The file, created on first use; its directory entry is made durable with it. */
  private handle(): Promise<FileHandle> {
    this.fh ??= (async () => {
      const fh = await open(this.path, 'w');
      const dir = await open(dirname(this.path), 'r');
      try {
        await dir.sync();
      } finally {
        await dir.close();
      }
      return fh;
    })();
    return this.fh;
  }
}

/** Piece `seq` of an installed chunk file of `bytes` bytes (read synchronously), or undefined past its end or when the file is missing or short. */
export function readChunkPiece(path: string, bytes: number, seq: number): Uint8Array | undefined {
  const from = seq * CHUNK_PIECE_BYTES;
  if (seq < 0 || from >= bytes) return undefined;
  const n = Math.min(CHUNK_PIECE_BYTES, bytes - from);
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return undefined;
  }
  try {
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      const r = readSync(fd, out, got, n - got, from + got);
      if (r === 0) return undefined;
      got += r;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

/** Pieces of an installed chunk file of `bytes` bytes. */
export function chunkPieces(bytes: number): number {
  return Math.ceil(bytes / CHUNK_PIECE_BYTES);
}
