/**
 * The writes of loads and unloads into the replicated registry (on the metadata group's leader):
 * a load test-loads the package, claims its generation, writes the package's chunks and commits
 * the record conditional on its claim; an unload deletes the record (conditional too), leaving
 * where delivery stands for a later load (or, purged, deletes the delivery cursors too), then
 * the package. Loads and unloads of one name run one at a time per node.
 * Every node then follows the registry (the manager's reconcile).
 *
 * Size: about 530 lines, one piece: loads and unloads are two sides of one protocol on the
 * registry (the load claim taken, checked and released, the conditional record write, the
 * package chunks), and each step's failure handling depends on the others' state.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Logger } from '../log.js';
import { UnavailableError } from '../node/backend.js';
import { realScheduler, sleep, type Scheduler } from '../node/scheduler.js';
import { META_GROUP } from '../sharding/index.js';
import type { CommandResult } from '../statemachine/types.js';
import type { ExtensionHost, SystemCommand } from './host.js';
import { packageDigest, PackageError, removeTree, unpackPackage, MAX_PACKAGE_BYTES, type PackageInfo } from './package.js';
import {
  chunkGeneration,
  chunkKey,
  chunkPrefix,
  claimHeld,
  claimKey,
  decodeClaim,
  decodeUnloaded,
  encodeUnloaded,
  encodeClaim,
  encodeRecord,
  hasStartPoints,
  LEGACY_DATA_GROUP,
  metaKey,
  nameFromPackage,
  packagePrefix,
  splitPackage,
  startRevisionsOf,
  unloadedKey,
  validateExtensionName,
  type ExtensionRecord,
  type LoadClaim,
  type UnloadedRecord,
} from './registry.js';
import { ExtensionRunner, ISOLATION_MODES, type IsolationMode, type RunnerOptions } from './sandbox/runner.js';
import type { ShardRevisions } from './store-access.js';

/** How long a load may hold its claim on a name before another load may take it over. */
const LOAD_CLAIM_MS = 120_000;
/** How long `load` tries to learn every shard's current revision. */
const START_REVISIONS_MS = 10_000;
/** Deadline of one ask of the `shardRevisions` provider. */
const REVISIONS_ASK_MS = 5_000;
/** Pause between asks of the `shardRevisions` provider while shards are missing. */
const REVISIONS_RETRY_MS = 100;
/** Deadline of a write into the metadata group by a load, unload or resume. */
const META_WRITE_MS = 30_000;
/** Package chunk keys read (and deleted) per local listing of one extension's chunks. */
const CHUNK_KEYS_PAGE = 10_000;
/** Largest `maxRestartsPerMinute` or `pauseMs` a load may give (a timer's largest delay, 2^31 - 1 ms). */
const MAX_LOAD_OPTION = 2 ** 31 - 1;

/**
 * A load or unload refused because another load of the same extension is in progress (on
 * another node), or changed its registration meanwhile: nothing was registered or removed; try
 * again. The admin service answers it with ABORTED.
 */
export class LoadConflictError extends Error {
  constructor(
    /** The extension. */
    readonly extension: string,
    message: string,
  ) {
    super(message);
    this.name = 'LoadConflictError';
  }
}

/** The LoadConflictError for a claim `c` held by another load of `name`. */
function inProgress(name: string, c: LoadClaim, nowMs: number): LoadConflictError {
  const left = Math.max(1, Math.ceil((c.expiresAtMs - nowMs) / 1000));
  return new LoadConflictError(
    name,
    `another load of ${name} is in progress (generation ${c.generation}, on node ${c.node}); try again once it finished (its claim expires within ${left} s if that load died)`,
  );
}

/** How to load an extension. */
export interface LoadOptions {
  name?: string;
  config?: Record<string, unknown>;
  inProcess?: boolean;
  /** Where the lambdas run; absent: the node's default (`inProcess` set: in-process). */
  isolation?: IsolationMode;
  /** Worker restarts within a minute before it pauses (circuit breaker); default: the node's (30). */
  maxRestartsPerMinute?: number;
  /** The circuit breaker's first pause in ms; default: the node's (30 s). */
  pauseMs?: number;
  /**
   * Where delivery starts. Absent (default): where it left off: from each watch's delivery
   * cursor, kept across replacements and across an unload without purge (so changes made while
   * it was unloaded are delivered), else from the first registration. `'now'`: only changes made
   * from this load on (the backlog is skipped). A revision: every change from that revision on,
   * in every data shard (revisions are per shard), the cursors of earlier loads ignored.
   */
  from?: 'now' | number;
}

/** Options of an unload. */
export interface UnloadOptions {
  /**
   * Also forget the delivery cursors and start points: a later load starts from that load,
   * like a first one. Without it they stay, and a later load resumes from them.
   */
  purge?: boolean;
}

/** What the registry writes need besides the host; `S` is the status a load resolves with. */
export interface RegistryWritesOptions<S> {
  readonly dataDir: string;
  readonly log: Logger;
  /** Where extensions loaded without an `isolation` run (see ExtensionManagerOptions). */
  readonly defaultIsolation?: IsolationMode;
  /** Every data shard's current revision (see ExtensionManagerOptions.shardRevisions). */
  readonly shardRevisions?: ShardRevisions;
  /** The registry as replicated (read locally). */
  readonly records: () => ExtensionRecord[];
  /** The runner options that choose where an extension runs and its limits. */
  readonly placement: (mode: IsolationMode | undefined) => Pick<RunnerOptions, 'mode' | 'resourceLimits' | 'memoryLimitMb'>;
  /** Resolves with this node's status of `name` once `generation` loaded or failed here; `cancel` forgets the wait. */
  readonly waitFor: (name: string, generation: number) => { outcome: Promise<S>; cancel: () => void };
  /** Forgets an unloaded extension's delivery cursors in the shards led here (best effort). */
  readonly forgetCursors: (name: string) => Promise<void>;
}

/** Loads and unloads of extensions, as writes into the replicated registry. */
export class RegistryWrites<S> {
  /** The last load or unload of each name on this node (they run one at a time). */
  private readonly adminOps = new Map<string, Promise<void>>();
  /** Names this node's loads in load claims (see {@link LoadClaim.loader}). */
  private readonly loaderId = randomBytes(8).toString('hex');

  /** The clock claims, deadlines and registry timestamps are read on (the host's). */
  private readonly clock: Scheduler;

  constructor(
    private readonly host: ExtensionHost,
    private readonly opts: RegistryWritesOptions<S>,
  ) {
    this.clock = host.clock ?? realScheduler;
  }

  /**
   * Loads (or replaces) an extension cluster-wide. Must run on the metadata group's leader.
   * The package is test-loaded here first: a module that fails to import, has no initialize
   * or throws from it is refused with the reason, and nothing is registered; so is a package
   * holding links, absolute or `..` paths, devices or FIFOs (an UnsafePackageEntryError). Its
   * staging folder is removed whatever happens.
   *
   * Loads and unloads of one name run one at a time on this node (a second load waits, then
   * registers the next generation). Each load first claims its generation in the registry (see
   * {@link LoadClaim}) and commits only if its claim still stands, so no two loads ever write the
   * same chunk keys and the registered package is always one upload's bytes. A claim held by
   * another loader on this node (its previous process) makes a load fail with a
   * {@link LoadConflictError} until released or expired; one held by another node (which lost the
   * metadata leadership mid-load) is taken over at once, and that load fails should it go on.
   */
  async load(tgz: Uint8Array, opts: LoadOptions): Promise<S> {
    for (const [k, min] of [['maxRestartsPerMinute', 0], ['pauseMs', 1]] as const) {
      const v = opts[k];
      if (v !== undefined && (!Number.isSafeInteger(v) || v < min || v > MAX_LOAD_OPTION)) throw new PackageError(`${k} must be an integer >= ${min} (got ${String(v)})`);
    }
    if (tgz.length > MAX_PACKAGE_BYTES) throw new PackageError(`package is larger than ${MAX_PACKAGE_BYTES} bytes`);
    if (opts.isolation !== undefined && !ISOLATION_MODES.includes(opts.isolation)) throw new PackageError(`isolation must be one of ${ISOLATION_MODES.join(', ')} (got ${String(opts.isolation)})`);
    if (opts.inProcess && opts.isolation !== undefined && opts.isolation !== 'in-process') throw new PackageError(`inProcess contradicts isolation '${opts.isolation}'`);
    if (opts.from !== undefined && opts.from !== 'now' && !(Number.isSafeInteger(opts.from) && opts.from >= 0)) throw new PackageError(`from must be 'now' or a revision (an integer >= 0), got ${JSON.stringify(opts.from)}`);
    const staging = join(this.stagingRoot(), randomBytes(6).toString('hex'));
    let info: PackageInfo;
    let name: string;
    try {
      await mkdir(staging, { recursive: true });
      info = await unpackPackage(tgz, staging);
      name = validateExtensionName(opts.name ?? nameFromPackage(info.name));
      const probe = await ExtensionRunner.start({
        name,
        modulePath: staging,
        config: opts.config ?? {},
        // Tried where it will run (in-process extensions in a worker: not on this thread yet).
        ...this.opts.placement(opts.isolation === 'in-process' || opts.inProcess ? 'worker' : (opts.isolation ?? this.opts.defaultIsolation)),
        host: {
          kv: async () => {
            throw new Error('the store is not available while an extension is being validated');
          },
          log: () => {},
          metric: () => {},
        },
      });
      await probe.stop();
    } finally {
      // Never masks the load's own outcome: a folder that cannot be removed is logged.
      await removeTree(staging).catch((e: unknown) => this.opts.log.warn({ dir: staging, err: (e as Error).message }, 'could not remove an extension staging folder'));
    }
    return this.oneAtATime(name, () => this.register(name, info, tgz, opts));
  }

  /** Where `load` unpacks packages to test them (one folder per load, removed after). */
  stagingRoot(): string {
    return join(this.opts.dataDir, 'extensions', '.staging');
  }

  /** Runs `fn` once every earlier load or unload of `name` on this node has finished. */
  private oneAtATime<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const before = this.adminOps.get(name) ?? Promise.resolve();
    const run = before.then(fn);
    const tail = run.then(
      () => {},
      () => {},
    );
    this.adminOps.set(name, tail);
    void tail.then(() => {
      if (this.adminOps.get(name) === tail) this.adminOps.delete(name);
    });
    return run;
  }

  /**
   * Registers a validated package as the next generation of `name`: claims the generation,
   * writes its chunks, then writes the record and releases the claim in one txn conditional on
   * the claim (the commit point). Anything failing before the commit deletes the chunks written
   * and releases the claim. Resolves with this node's status once the generation loaded here.
   */
  private async register(name: string, info: PackageInfo, tgz: Uint8Array, opts: LoadOptions): Promise<S> {
    const claim = await this.claimGeneration(name);
    const generation = claim.generation;
    /** 'no': not committed (clean up); 'unknown': the commit's outcome is unknown (leave the chunks); 'yes'. */
    let committed: 'no' | 'unknown' | 'yes' = 'no';
    let waiting: { outcome: Promise<S>; cancel: () => void } | undefined;
    try {
      // Read once the claim is ours: no record can be written for this name meanwhile.
      const previous = this.opts.records().find((r) => r.name === name);
      if (previous && previous.generation >= generation) {
        throw new LoadConflictError(name, `generation ${previous.generation} of ${name} was registered while this load claimed generation ${generation}; try again`);
      }
      // A reload keeps the first registration's start points (its cursors stay valid), and so
      // does a load after an unload without purge (the unloaded record keeps them): delivery
      // resumes from the cursors. Shards created since have none and are delivered from their
      // start, as they were so far. Read before anything is written: a shard without a reachable
      // leader refuses the load cleanly. An explicit `from` starts afresh, with new cursors.
      const unloaded = previous ? undefined : this.unloadedRecord(name);
      let startRevisions: Record<string, number>;
      let cursorEpoch = previous?.cursorEpoch ?? unloaded?.cursorEpoch;
      if (opts.from === 'now') {
        startRevisions = await this.currentStartRevisions();
        cursorEpoch = generation;
      } else if (opts.from !== undefined) {
        const from = opts.from;
        startRevisions = Object.fromEntries(Object.keys(await this.currentStartRevisions()).map((g) => [g, from]));
        cursorEpoch = generation;
      } else if (previous && hasStartPoints(previous)) startRevisions = startRevisionsOf(previous);
      else if (unloaded) startRevisions = { ...unloaded.startRevisions };
      else startRevisions = await this.currentStartRevisions();
      const chunks = splitPackage(tgz);
      for (let i = 0; i < chunks.length; i++) {
        await this.metaWrite({ type: 'put', key: chunkKey(name, generation, i), value: chunks[i]! });
      }
      const legacy = startRevisions[String(LEGACY_DATA_GROUP)];
      const record: ExtensionRecord = {
        name,
        version: info.version,
        // Shard 1's start point also in the old field, for nodes that do not know startRevisions yet.
        ...(legacy !== undefined ? { startRevision: legacy } : {}),
        startRevisions,
        generation,
        sha256: packageDigest(tgz),
        size: tgz.length,
        chunks: chunks.length,
        config: opts.config ?? {},
        ...(info.native ? { native: info.native } : {}),
        ...(opts.inProcess || opts.isolation === 'in-process' ? { inProcess: true } : {}),
        ...(opts.isolation ? { isolation: opts.isolation } : {}),
        ...(opts.maxRestartsPerMinute !== undefined ? { maxRestartsPerMinute: opts.maxRestartsPerMinute } : {}),
        ...(opts.pauseMs !== undefined ? { pauseMs: opts.pauseMs } : {}),
        ...(cursorEpoch ? { cursorEpoch } : {}),
        loadedAtMs: this.clock.now(),
      };
      waiting = this.opts.waitFor(name, generation);
      committed = 'unknown';
      const res = await this.metaWrite({
        type: 'txn',
        compares: [{ key: claimKey(name), version: claim.version }],
        writes: [
          { type: 'put', key: metaKey(name), value: encodeRecord(record) },
          { type: 'put', key: claimKey(name), value: encodeClaim({ generation, node: this.host.nodeId, loader: this.loaderId, expiresAtMs: 0, released: true }) },
          // Registered again: what an unload left is now in the record.
          ...(unloaded ? [{ type: 'delete' as const, key: unloadedKey(name) }] : []),
        ],
      });
      if (res.type !== 'txn' || !res.succeeded) {
        committed = 'no';
        throw new LoadConflictError(name, `this load of ${name} lost its claim on generation ${generation} to another load (it took longer than ${LOAD_CLAIM_MS / 1000} s); nothing was registered, try again`);
      }
      committed = 'yes';
      // Earlier generations, and chunks of loads that died before committing.
      await this.deleteChunksBelow(name, generation).catch((e: unknown) => this.opts.log.warn({ extension: name, err: (e as Error).message }, 'could not delete the previous package chunks'));
      return await waiting.outcome;
    } finally {
      if (committed !== 'yes') {
        waiting?.cancel();
        await this.abandonClaim(name, claim, committed === 'no');
      }
    }
  }

  /**
   * Claims the next generation of `name` (a put of its claim key conditional on the version
   * read). Throws a LoadConflictError while another load holds the claim, or when one took it
   * between the read and the write.
   */
  private async claimGeneration(name: string): Promise<{ generation: number; version: number }> {
    const meta = this.host.meta();
    const got = meta.get(claimKey(name));
    let last = 0;
    if (got) {
      let held: LoadClaim | undefined;
      try {
        held = decodeClaim(got.value);
      } catch (e) {
        this.opts.log.warn({ extension: name, err: String(e) }, 'malformed extension load claim: replaced');
      }
      if (held && this.blockedBy(held)) throw inProgress(name, held, this.clock.now());
      last = held?.generation ?? 0;
    }
    const recorded = this.opts.records().find((r) => r.name === name)?.generation ?? 0;
    // Generations never go back, even should the claim key be gone: an unload leaves its last one.
    const generation = Math.max(last, recorded, this.unloadedRecord(name)?.generation ?? 0) + 1;
    const claim: LoadClaim = { generation, node: this.host.nodeId, loader: this.loaderId, expiresAtMs: this.clock.now() + LOAD_CLAIM_MS, released: false };
    const res = await this.metaWrite({ type: 'put', key: claimKey(name), value: encodeClaim(claim), expectedVersion: got?.version ?? 0 });
    if (res.type !== 'put' || !res.succeeded) {
      const now = meta.get(claimKey(name));
      let other: LoadClaim | undefined;
      try {
        other = now ? decodeClaim(now.value) : undefined;
      } catch {
        // reported as a plain conflict
      }
      throw other && claimHeld(other, this.clock.now()) && other.loader !== this.loaderId ? inProgress(name, other, this.clock.now()) : new LoadConflictError(name, `another load or unload of ${name} changed its registration meanwhile; try again`);
    }
    return { generation, version: res.version };
  }

  /**
   * Whether claim `c` stops a load or unload here: only a claim held (unreleased, within its
   * lease) by another loader on this node (another manager, or this node's previous process).
   * A claim of another node never does: this node leads the metadata group now, so that load
   * can write nothing more (and could not commit, its claim being taken over); nor one of this
   * manager's own: its loads of a name run one at a time, so that one is a leftover.
   */
  private blockedBy(c: LoadClaim): boolean {
    return claimHeld(c, this.clock.now()) && c.node === this.host.nodeId && c.loader !== this.loaderId;
  }

  /**
   * After a load that did not commit: deletes its chunks (unless the commit's outcome is unknown:
   * they may be registered; a later load deletes them if not) and releases its claim if still
   * held (conditional: a load that took it over keeps it). Best effort, logged.
   */
  private async abandonClaim(name: string, claim: { generation: number; version: number }, deleteChunks: boolean): Promise<void> {
    if (deleteChunks) {
      await this.deleteChunks(name, claim.generation).catch((e: unknown) =>
        this.opts.log.warn({ extension: name, generation: claim.generation, err: (e as Error).message }, 'could not delete the chunks of a failed load'),
      );
    }
    const released: LoadClaim = { generation: claim.generation, node: this.host.nodeId, loader: this.loaderId, expiresAtMs: 0, released: true };
    await this.metaWrite({ type: 'put', key: claimKey(name), value: encodeClaim(released), expectedVersion: claim.version }).catch((e: unknown) =>
      this.opts.log.warn({ extension: name, generation: claim.generation, err: (e as Error).message }, 'could not release the load claim of a failed load (it expires by itself)'),
    );
  }

  /**
   * A write to the metadata group by a load or unload (META_WRITE_MS deadline); a command the state
   * machine rejected throws its error.
   */
  async metaWrite(cmd: SystemCommand): Promise<CommandResult> {
    const res = await this.host.meta().propose(cmd, this.clock.now() + META_WRITE_MS);
    if (res.type === 'rejected') throw res.error;
    return res;
  }

  /**
   * Every routed data shard's current revision + 1 (group → start point): as the
   * `shardRevisions` provider reports it, else from this node's replica of the shard (a
   * linearizable read on a leader; a follower once it applied what it knows committed, which
   * may be a little older: the safe side), else the provider is asked again for a while. A start
   * point is never newer than a write acknowledged before it was read. Throws UnavailableError
   * naming the shards no revision could be learnt for. Shards of pools still being created hold
   * no keys yet and are left out (delivered from their start).
   */
  private async currentStartRevisions(): Promise<Record<string, number>> {
    const until = this.clock.now() + START_REVISIONS_MS;
    const out: Record<string, number> = {};
    const missing = (): number[] => {
      const map = this.host.shardMap();
      const creating = new Set(map.pools.filter((p) => p.state === 'creating').map((p) => p.name));
      return map.shards.filter((s) => !creating.has(s.pool) && out[String(s.group)] === undefined).map((s) => s.group);
    };
    const provider = this.opts.shardRevisions;
    const ask = async (): Promise<void> => {
      if (!provider) return;
      try {
        const got = await provider(Math.min(until, this.clock.now() + REVISIONS_ASK_MS));
        // The first answer for a shard is kept: an earlier revision is the safe side.
        for (const [g, rev] of got) if (g !== META_GROUP && out[String(g)] === undefined) out[String(g)] = rev + 1;
      } catch (e) {
        this.opts.log.warn({ err: (e as Error).message }, "could not read the shards' revisions");
      }
    };
    await ask();
    for (const g of missing()) {
      const local = await this.localStartRevision(g, until);
      if (local !== undefined) out[String(g)] = local;
    }
    while (provider && missing().length > 0 && this.clock.now() < until) {
      await sleep(this.clock, REVISIONS_RETRY_MS);
      await ask();
    }
    const left = missing();
    if (left.length > 0) {
      throw new UnavailableError(`cannot learn the current revision of shard(s) ${left.join(', ')} (no reachable leader); nothing was loaded, try again`);
    }
    return out;
  }

  /** Shard `group`'s current revision + 1 from its replica here (undefined when not hosted here). */
  private async localStartRevision(group: number, until: number): Promise<number | undefined> {
    const shard = this.host.shard(group);
    return shard ? (await shard.currentRevision(until)) + 1 : undefined;
  }

  /**
   * Unloads an extension cluster-wide (on the metadata leader). Resolves false when it was not
   * loaded. Runs after any load or unload of `name` in progress on this node; throws a
   * {@link LoadConflictError} while another loader holds its claim (see {@link load}), or when a
   * load changed its registration meanwhile: the record is deleted only if unchanged and unclaimed.
   * Without `purge`, an unloaded record keeps the start points and the cursors stay in the data
   * shards: a later load resumes from them. With it, those are forgotten (the cursors in the
   * shards led here are deleted; any left elsewhere are older than a later load's start points,
   * and so ignored); a purge of an extension already unloaded without one resolves true.
   */
  async unload(name: string, opts: UnloadOptions = {}): Promise<boolean> {
    validateExtensionName(name);
    return this.oneAtATime(name, async () => {
      const meta = this.host.meta();
      const got = meta.get(metaKey(name));
      const record = this.opts.records().find((r) => r.name === name);
      if (!got || !record) {
        // Already unloaded: a purge still forgets what the unload kept.
        if (opts.purge && meta.get(unloadedKey(name))) {
          await this.metaWrite({ type: 'delete', key: unloadedKey(name) });
          await this.opts.forgetCursors(name);
          return true;
        }
        return false;
      }
      const claimed = meta.get(claimKey(name));
      if (claimed) {
        let held: LoadClaim | undefined;
        try {
          held = decodeClaim(claimed.value);
        } catch {
          // a malformed claim holds nothing
        }
        if (held && this.blockedBy(held)) throw inProgress(name, held, this.clock.now());
      }
      const res = await this.metaWrite({
        type: 'txn',
        compares: [
          { key: metaKey(name), version: got.version },
          { key: claimKey(name), version: claimed?.version ?? 0 },
        ],
        writes: [
          { type: 'delete', key: metaKey(name) },
          // Kept unless purged: where a later load resumes (the cursors stay in the data shards).
          opts.purge
            ? { type: 'delete', key: unloadedKey(name) }
            : {
                type: 'put',
                key: unloadedKey(name),
                value: encodeUnloaded({
                  name,
                  version: record.version,
                  generation: record.generation,
                  startRevisions: hasStartPoints(record) ? startRevisionsOf(record) : await this.currentStartRevisions(),
                  ...(record.cursorEpoch ? { cursorEpoch: record.cursorEpoch } : {}),
                  unloadedAtMs: this.clock.now(),
                }),
              },
        ],
      });
      if (res.type !== 'txn' || !res.succeeded) throw new LoadConflictError(name, `another load or unload of ${name} changed its registration meanwhile; check with ext ls and try again`);
      // Only generations up to the unloaded one: a load that claims the next one right now keeps its chunks.
      await this.deleteChunksBelow(name, record.generation + 1);
      if (opts.purge) await this.opts.forgetCursors(name);
      return true;
    });
  }

  /** What the last unload of `name` left (undefined when none, or malformed). */
  private unloadedRecord(name: string): UnloadedRecord | undefined {
    const got = this.host.meta().get(unloadedKey(name));
    return got ? decodeUnloaded(got.value) : undefined;
  }

  /** Deletes one generation's chunks of `name`. */
  private async deleteChunks(name: string, generation: number): Promise<void> {
    const keys = this.host.meta().list(chunkPrefix(name, generation), { keysOnly: true, limit: CHUNK_KEYS_PAGE }).items.map((i) => i.key);
    for (const key of keys) await this.metaWrite({ type: 'delete', key });
  }

  /** Deletes the chunks of every generation of `name` below `generation` (earlier ones, and leftovers of failed loads). */
  private async deleteChunksBelow(name: string, generation: number): Promise<void> {
    for (;;) {
      const keys = this.host
        .meta()
        .list(packagePrefix(name), { keysOnly: true, limit: CHUNK_KEYS_PAGE })
        .items.map((i) => i.key)
        .filter((k) => (chunkGeneration(k) ?? Infinity) < generation);
      if (keys.length === 0) return;
      for (const key of keys) await this.metaWrite({ type: 'delete', key });
    }
  }
}
