/** Runs the raft Storage conformance suite against MemoryStorage and RaftLogStore (its live view, with and without a catch-up tail, and its view reloaded from a MemoryEngine and from LevelDB after each write). */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryStorage } from '../../src/raft/storage.js';
import type { ConfState, Snapshot } from '../../src/raft/types.js';
import { type KvEngine, LevelEngine, MemoryEngine } from '../../src/storage/kv-engine.js';
import { RaftLogStore } from '../../src/storage/raft-log-store.js';
import { storageConformance, type StorageUnderTest } from './storage.js';

const GROUP = 7;

storageConformance('MemoryStorage', async (conf) => {
  const ms = new MemoryStorage(conf);
  return {
    storage: () => ms,
    append: async (es) => ms.append(es),
    setHardState: async (hs) => ms.setHardState(hs),
    applySnapshot: async (snap) => ms.applySnapshot(snap),
    snapshotAndCompact: async (index, c, data) => {
      ms.createSnapshot(index, c, data);
      ms.compact(index);
    },
    close: async () => {},
  };
});

/**
 * RaftLogStore as a Storage: writes go through persistReady / compact; `reopen` (when given) makes
 * every write durable and reopens the store over what is on disk, so reads see the reloaded view.
 */
async function logStore(
  engine: KvEngine,
  conf: ConfState,
  reopen?: (engine: KvEngine, store: RaftLogStore) => Promise<KvEngine>,
  keepEntries = 0,
): Promise<StorageUnderTest> {
  let store = await RaftLogStore.open(engine);
  store.storageFor(GROUP, conf);
  const after = async (): Promise<void> => {
    await store.flush();
    if (reopen) {
      engine = await reopen(engine, store);
      store = await RaftLogStore.open(engine);
    }
  };
  return {
    storage: () => store.storageFor(GROUP),
    append: async (entries) => {
      store.persistReady(GROUP, { entries });
      await after();
    },
    setHardState: async (hardState) => {
      store.persistReady(GROUP, { hardState });
      await after();
    },
    applySnapshot: async (snapshot) => {
      store.persistReady(GROUP, { snapshot });
      await after();
    },
    snapshotAndCompact: async (index, c, data) => {
      const view = store.storageFor(GROUP);
      const cur = view.snapshot();
      // The host never snapshots behind its last snapshot; the store ignores such a call anyway.
      const term = cur && index <= cur.meta.index ? cur.meta.term : view.term(index);
      const snap: Snapshot = { meta: { index, term, conf: c }, data };
      store.compact(GROUP, snap, keepEntries);
      await after();
    },
    close: async () => {
      await store.close();
    },
  };
}

storageConformance('RaftLogStore view (MemoryEngine)', async (conf) => logStore(new MemoryEngine(), conf));

storageConformance(
  'RaftLogStore reloaded after each write (MemoryEngine, crash after flush)',
  async (conf) => logStore(new MemoryEngine(), conf, async (engine) => (engine as MemoryEngine).crash()),
  { commitIsLowerBound: true },
);

storageConformance(
  'RaftLogStore reloaded after each write (LevelDB)',
  async (conf) => {
    const dir = await mkdtemp(join(tmpdir(), 'kvcascade-conf-storage-'));
    const s = await logStore(await LevelEngine.open(dir), conf, async (_engine, store) => {
      await store.close();
      return LevelEngine.open(dir);
    });
    return {
      ...s,
      close: async () => {
        await s.close();
        await rm(dir, { recursive: true, force: true });
      },
    };
  },
  { numRuns: 15, commitIsLowerBound: true },
);

/**
 * Divergence (reported, not fixed: RaftLogStore's snapshot/compaction internals are being changed
 * on another branch): with a catch-up tail (`compact(..., keepEntries)`, kvd keeps 5000 by default)
 * the live view's firstIndex() is below snapshot index + 1 and entries before the snapshot stay
 * readable, while the Storage doc says firstIndex() is the snapshot index + 1 and
 * term(firstIndex() - 1) is the snapshot's term; after a restart the tail is gone (load drops it),
 * so the live and reloaded views of the same durable state differ.
 */
const TAIL = 'the view keeps a catch-up tail behind the snapshot, so firstIndex() < snapshot index + 1 (Storage doc: = snapshot index + 1)';
storageConformance(
  'RaftLogStore view keeping 2 entries behind a snapshot (as kvd keeps 5000)',
  async (conf) => logStore(new MemoryEngine(), conf, undefined, 2),
  {
    divergences: {
      'reads outside the log: LogUnavailableError past the end, LogCompactedError before the start': TAIL,
      'compaction: entries up to the index are gone, the index keeps its term, later entries stay, the snapshot is reported': TAIL,
      'compacting the whole log leaves it empty at the snapshot index': TAIL,
      'random append / hard state / compaction / snapshot sequences read back as the reference MemoryStorage does': TAIL,
    },
  },
);
