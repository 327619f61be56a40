/**
 * Delivery on the shards this node leads: follows the leadership the host pushes, runs one
 * WatchDispatcher per running extension, watch and led shard (resuming from the shard's
 * replicated cursor and attempt record), and moves an in-process extension to process isolation
 * when one of its lambdas may have taken a node down (the replicated demotion marker).
 */
import type { Logger } from '../log.js';
import { invariant } from '../invariant.js';
import { DeadlineError, NotLeaderError, UnavailableError } from '../node/backend.js';
import { realScheduler, sleep, type Scheduler } from '../node/scheduler.js';
import { isShardLocalKey, shardsForPrefix, type ClusterMap } from '../sharding/index.js';
import type { CommandResult } from '../statemachine/types.js';
import type { ExtensionEvent } from './api.js';
import { attemptKey, cursorKey, decodeAttemptRecord, FAULT_DEFAULTS } from './attempt-record.js';
import { SYSTEM_PREFIX, WatchDispatcher, type DispatchHost, type DispatchWatch } from './dispatcher.js';
import type { ExtensionMetrics } from './extension-metrics.js';
import type { ExtensionHost, HostShard, LeadershipChange, SystemCommand } from './host.js';
import type { Loaded } from './loaded.js';
import { hasStartPoints, startRevisionOf } from './registry.js';
import type { ExtensionRunner } from './sandbox/runner.js';

/** Deadline of a write a dispatcher or the delivery makes into a data shard (cursors, dead letters, markers). */
export const SHARD_WRITE_MS = 10_000;
/** Progress interval of a dispatcher's event subscription (an idle watch's cursor follows the shard's revision). */
const DELIVERY_PROGRESS_MS = 500;
/** Cursor and attempt-record keys of one extension deleted per shard after an unload. */
const DELIVERY_KEYS_PAGE = 10_000;
/** Pause before a new leader's delivery tries its read barrier again (it timed out, the node still leads). */
const BARRIER_RETRY_MS = 200;

const dec = new TextDecoder();

/**
 * The shard-local marker that an in-process lambda of `extension` may have taken a node down in
 * this shard: every node that leads the shard then runs the extension in process isolation. It is
 * `provisional` while the events that node left unfinished are retried in isolation (the node may
 * only have lost the shard), removed when they all complete, and made permanent when one of them
 * proves to be poison. Under the attempt records' prefix, so unloading the extension removes it.
 */
export function demotedKey(extension: string): string {
  return `${SYSTEM_PREFIX}attempt/${extension}/!in-process-killed-a-node`;
}

/** A data shard this node leads, as the host last reported it. */
interface LedShard {
  readonly shard: HostShard;
  /** The term it is led in: a new term (even led here again) restarts delivery from the cursor. */
  readonly term: number;
}

/** What the delivery needs besides the host. */
export interface DeliveryOptions {
  readonly log: Logger;
  readonly maxHops: number;
  readonly poisonAttempts?: number;
  readonly poisonNodes?: number;
  readonly metrics: ExtensionMetrics;
  /** The extensions known on this node. */
  readonly loaded: () => Iterable<Loaded>;
  /** Restarts extension `name` from its registry record (where it runs changed: see demote). */
  readonly reload: (name: string) => void;
  /** This process (a restarted node is another boot): tells a start that died with its node from one that lost the shard. */
  readonly bootId: string;
  /** The boot id of this node's previous process when its event-loop watchdog killed it (see FaultOptions.blockedBoot). */
  readonly blockedBoot?: string;
}

/** The dispatchers of a node's extensions on the data shards it leads. */
export class ShardDelivery {
  /** The data shards this node leads (and delivers for), by group. */
  private readonly led = new Map<number, LedShard>();
  /** In-process extensions this node runs in process isolation instead, since one of their lambdas took a node down. */
  private readonly demoted = new Set<string>();
  private readonly unsubscribe: (() => void)[] = [];
  private stopped = false;

  /** The clock deadlines and markers are read on (the host's: virtual under the simulator). */
  private readonly clock: Scheduler;

  constructor(
    private readonly host: ExtensionHost,
    private readonly opts: DeliveryOptions,
  ) {
    this.clock = host.clock ?? realScheduler;
  }

  /** Follows the host's leadership (the shards led now, then every change) and map changes. */
  start(): void {
    this.unsubscribe.push(this.host.onLeadershipChanged((c) => this.leadershipChanged(c)));
    // A new map can make a shard led here hold keys of a watch (a pool created, a split...).
    this.unsubscribe.push(this.host.onShardMapChanged(() => this.startAllDispatch()));
    for (const [group, term] of this.host.ledShards()) this.leadershipChanged({ group, term, leader: true });
  }

  /** Stops following leadership (the extensions' dispatchers are stopped with them). */
  stop(): void {
    this.stopped = true;
    for (const off of this.unsubscribe.splice(0)) off();
  }

  /** Whether in-process extension `name` runs in process isolation on this node instead (see demote). */
  isDemoted(name: string): boolean {
    return this.demoted.has(name);
  }


  /**
   * The host reported a change of leadership. A shard lost (or led in a new term: reported as
   * lost, then gained) drops its dispatchers without writing their cursors: another node (or
   * this one, in its new term) delivers from the replicated cursor. A shard gained gets the
   * dispatchers every running extension lacks there. Reports of a state already known are ignored.
   */
  private leadershipChanged(c: LeadershipChange): void {
    if (this.stopped) return;
    const was = this.led.get(c.group);
    if (!c.leader) {
      if (was?.term === c.term) this.dropLed(c.group);
      return;
    }
    if (was?.term === c.term) return;
    if (was) this.dropLed(c.group);
    const shard = this.host.shard(c.group);
    if (!shard) return;
    this.led.set(c.group, { shard, term: c.term });
    this.opts.log.info({ group: c.group, term: c.term }, 'delivering extension events of this shard (its leader)');
    this.startAllDispatch();
  }

  /** Forgets led shard `group` and drops its dispatchers (see stopGroup). */
  private dropLed(group: number): void {
    this.led.delete(group);
    for (const l of this.opts.loaded()) this.stopGroup(l, group);
    this.opts.log.info({ group }, 'no longer delivering extension events of this shard');
  }

  /** Gives every running extension the dispatchers it lacks on the shards led here. */
  startAllDispatch(): void {
    if (this.stopped) return;
    for (const l of this.opts.loaded()) this.startDispatch(l);
  }

  /** Drops `l`'s dispatchers of `group` without persisting (leadership moved, or the replica went). */
  private stopGroup(l: Loaded, group: number): void {
    for (const [k, d] of l.deliveries) {
      if (d.group !== group) continue;
      l.deliveries.delete(k);
      void d.dispatcher.stop(false);
    }
  }

  /**
   * Starts the dispatchers `l` lacks: one per watch and led shard that can hold keys of the
   * watch's prefix. A dispatcher keeps running while its shard stays led here, even if the
   * prefix stops mapping to it (it finishes the backlog already there).
   */
  startDispatch(l: Loaded): void {
    const runner = l.runner;
    if (!runner || l.state !== 'running' || l.stopping || this.stopped || this.led.size === 0) return;
    const map = this.host.shardMap();
    for (const w of runner.watches) {
      const groups = spannedGroups(map, w.prefix);
      for (const [g, led] of this.led) {
        if (!groups.has(g) || l.deliveries.has(`${g}/${w.id}`)) continue;
        this.startDelivery(l, runner, w, g, led.shard);
      }
    }
  }

  /**
   * Creates the dispatcher of watch `w` in `group` (registered at once, so it is not started twice
   * and a loss of the shard stops it) and starts it once this leader's reads are current (see resume).
   */
  private startDelivery(l: Loaded, runner: ExtensionRunner, w: DispatchWatch, group: number, shard: HostShard): void {
    const name = l.record.name;
    const host: DispatchHost = {
      subscribe: (prefix, fromRevision, sink) => shard.subscribe(prefix, fromRevision, sink, DELIVERY_PROGRESS_MS),
      ...(shard.holdsLease ? { holdsLease: () => shard.holdsLease!() } : {}),
      put: async (key, value) => {
        // A cursor or a dead letter: a shard-local system key, written (system origin: lambdas
        // cannot write reserved keys) into the shard whose events it tracks, led here.
        invariant(isShardLocalKey(key), () => `dispatcher wrote ${JSON.stringify(key)}, which is not a shard-local key`);
        const r = await shard.propose({ type: 'put', key, value }, this.clock.now() + SHARD_WRITE_MS);
        if (r.type === 'rejected') throw r.error;
      },
      write: async (writes) => {
        for (const w of writes) invariant(isShardLocalKey(w.key), () => `dispatcher wrote ${JSON.stringify(w.key)}, which is not a shard-local key`);
        const r = await shard.propose(
          { type: 'txn', compares: [], writes: writes.map((w) => (w.value ? { type: 'put' as const, key: w.key, value: w.value } : { type: 'delete' as const, key: w.key })) },
          this.clock.now() + SHARD_WRITE_MS,
        );
        if (r.type === 'rejected') throw r.error;
      },
      previous: (key, revision) => {
        if (!shard.getAt || revision < 1) return revision < 1 ? { version: 0 } : undefined;
        try {
          const e = shard.getAt(key, revision);
          return e ? { version: e.version, value: e.value } : { version: 0 };
        } catch {
          return undefined; // compacted: no longer known
        }
      },
      shard: group,
      clock: this.clock,
      maxHops: this.opts.maxHops,
      cursorEpoch: l.record.cursorEpoch ?? 0,
      // Only an in-process runner can take the node down with it: it moves to a child process.
      ...(runner.mode === 'in-process' ? { inProcessKilledANode: (node: number) => this.demote(name, node, group) } : {}),
      // In isolation, the events an in-process lambda left unfinished elsewhere decide whether it may come back.
      ...(runner.mode !== 'in-process' && !l.record.native ? { suspectsResolved: (confirmed: boolean) => void this.suspectsResolved(name, group, confirmed) } : {}),
    };
    const d: WatchDispatcher = new WatchDispatcher(
      name,
      w,
      (id, ev: ExtensionEvent, timeoutMs) => runner.invoke(id, ev, timeoutMs),
      host,
      this.opts.metrics.dispatchObserver(name, w),
      (msg) => this.opts.log.warn({ extension: name, prefix: w.prefix, group }, msg),
      {
        poisonAttempts: this.opts.poisonAttempts ?? FAULT_DEFAULTS.poisonAttempts,
        poisonNodes: this.opts.poisonNodes ?? FAULT_DEFAULTS.poisonNodes,
        // In-process lambdas share the node's thread, and native ones its process (a segfault in C
        // takes the node down): a fault of theirs can kill the node, so every invocation is armed first.
        armEveryInvocation: runner.mode === 'in-process' || l.record.native !== undefined,
        canIsolate: runner.mode === 'in-process',
        node: this.host.nodeId,
        boot: this.opts.bootId,
        ...(this.opts.blockedBoot !== undefined ? { blockedBoot: this.opts.blockedBoot } : {}),
      },
    );
    const key = `${group}/${w.id}`;
    l.deliveries.set(key, { group, dispatcher: d });
    void this.resume(l, runner, w, key, d, shard);
  }

  /**
   * Starts dispatcher `d` from the shard's replicated cursor, attempt record and demotion marker,
   * read only after a barrier: a new leader may not yet have applied what its predecessor
   * committed (the failures it recorded, its last cursor), and reading before that would forget
   * them (a poison event would run its full count of attempts again here). Gives up when `d` was
   * dropped meanwhile (leadership lost, unload); retries the barrier while this node still leads.
   */
  private async resume(l: Loaded, runner: ExtensionRunner, w: DispatchWatch, key: string, d: WatchDispatcher, shard: HostShard): Promise<void> {
    const name = l.record.name;
    const current = () => !this.stopped && !l.stopping && l.deliveries.get(key)?.dispatcher === d;
    for (;;) {
      try {
        await shard.barrier(this.clock.now() + SHARD_WRITE_MS);
        break;
      } catch (e) {
        if (!current() || !shard.isLeader()) return; // the shard's loss drops `d`
        this.opts.log.warn({ extension: name, group: shard.group, err: String(e) }, 'delivery waits for this new leader to apply what is committed before resuming');
        await sleep(this.clock, BARRIER_RETRY_MS);
      }
      if (!current()) return;
    }
    if (!current()) return;
    // An in-process lambda of this extension took a node down in this shard before: never run it
    // in this thread here either (the marker is replicated, so every later leader sees it).
    if (runner.mode === 'in-process' && shard.get(demotedKey(name))) {
      l.deliveries.delete(key);
      void d.stop(false);
      this.demote(name, undefined);
      return;
    }
    const epoch = l.record.cursorEpoch ?? 0;
    const saved = shard.get(cursorKey(name, w, epoch));
    const record = decodeAttemptRecord(shard.get(attemptKey(name, w, epoch))?.value);
    const cursor = saved ? Number(dec.decode(saved.value)) || 0 : 0;
    // A watch starts in this shard where the extension was registered (it sees every change made
    // after `load` returned, whichever node leads the shard), or further on from the shard's
    // replicated cursor. A cursor older than the start point belongs to an earlier incarnation
    // (purged, or loaded with `from`) and is ignored; a reload, and a load after an unload
    // without purge, keep the start points, so their cursors count. A shard created after the
    // registration has no start point: from its start.
    const start = startRevisionOf(l.record, shard.group) ?? (hasStartPoints(l.record) ? 0 : shard.revision() + 1);
    const registeredAt = Math.max(0, start - 1);
    d.start(Math.max(cursor, registeredAt), record);
  }

  /**
   * An in-process lambda of `name` left events unfinished on node `node` (it may have taken that
   * node down): from now on this node runs `name` in a child process (where the same lambda only
   * kills that process), delivering again from the replicated cursor and retrying those events
   * there. Local to this node, plus a replicated provisional marker in `group` so every later
   * leader of the shard does the same: a stream of distinct poison events cannot walk through the
   * cluster. `suspectsResolved` undoes it when those events complete in isolation.
   */
  private demote(name: string, node: number | undefined, group?: number): void {
    if (group !== undefined) this.writeDemotion(name, group, { killedNode: node, byNode: this.host.nodeId, atMs: this.clock.now(), provisional: true });
    if (this.demoted.has(name)) return;
    this.demoted.add(name);
    this.opts.log.warn(
      { extension: name, node },
      node !== undefined
        ? `in-process lambdas of this extension never finished on node ${node} (it died or lost the shard): running this extension in process isolation on this node until those events complete there`
        : 'running this extension in process isolation on this node: the shard is marked (an in-process lambda may have taken a node down)',
    );
    this.opts.reload(name);
  }

  /** Replicates the demotion marker of `name` in `group` (undefined: removes it). */
  private writeDemotion(name: string, group: number, marker: Record<string, unknown> | undefined): Promise<void> {
    const cmd: SystemCommand = marker ? { type: 'put', key: demotedKey(name), value: new TextEncoder().encode(JSON.stringify(marker)) } : { type: 'delete', key: demotedKey(name) };
    return this.proposeIn(group, cmd)
      .then(() => undefined)
      .catch((e: unknown) => {
        // Lost to a leadership change: the shard's next leader finds the same unfinished events and
        // decides again, so it is worth a warning only; anything else (storage) is an error.
        const leadershipMoved = e instanceof NotLeaderError || e instanceof UnavailableError || e instanceof DeadlineError;
        this.opts.log[leadershipMoved ? 'warn' : 'error']({ extension: name, group, err: String(e) }, 'could not record where this extension runs (process isolation marker)');
      });
  }

  /**
   * The events an in-process lambda of `name` left unfinished in `group` were retried in process
   * isolation: `confirmed` (one of them was poison there too) makes the shard's marker permanent;
   * otherwise the marker goes, and once no shard led here carries one, `name` runs in-process again.
   */
  private async suspectsResolved(name: string, group: number, confirmed: boolean): Promise<void> {
    const current = this.host.shard(group)?.get(demotedKey(name));
    if (!current) return;
    let marker: Record<string, unknown> = {};
    try {
      marker = JSON.parse(dec.decode(current.value)) as Record<string, unknown>;
    } catch {
      // a malformed marker is replaced
    }
    if (confirmed) {
      if (marker.provisional === false) return;
      this.opts.log.warn({ extension: name, group }, 'an event an in-process lambda left unfinished was poison in isolation too: this extension stays in process isolation in this shard');
      await this.writeDemotion(name, group, { ...marker, provisional: false, confirmedAtMs: this.clock.now() });
      return;
    }
    if (marker.provisional !== true) return;
    await this.writeDemotion(name, group, undefined);
    const stillMarked = [...this.led.values()].some((s) => s.shard.get(demotedKey(name)));
    if (stillMarked || !this.demoted.delete(name)) return;
    this.opts.log.info({ extension: name, group }, 'the events left unfinished completed in process isolation: this extension runs in-process again on this node');
    this.opts.reload(name);
  }

  /** Proposes a system command to data shard `group` (hosted and led here) with the call deadline. */
  private proposeIn(group: number, cmd: SystemCommand): Promise<CommandResult> {
    const shard = this.host.shard(group);
    if (!shard) return Promise.reject(new UnavailableError(`shard ${group} is not hosted on node ${this.host.nodeId}`));
    return shard.propose(cmd, this.clock.now() + SHARD_WRITE_MS);
  }

  /**
   * Forgets an extension's delivery cursors (unload with purge) in the shards this node leads
   * (best effort), so that loading it again later starts from that load. Cursors left in other shards
   * are older than any later load's start points, and so ignored.
   */
  async forgetCursors(name: string): Promise<void> {
    for (const g of this.host.ledShards().keys()) {
      const shard = this.host.shard(g);
      if (!shard) continue;
      try {
        for (const prefix of [`${SYSTEM_PREFIX}cursor/${name}/`, `${SYSTEM_PREFIX}attempt/${name}/`]) {
          await shard.barrier(this.clock.now() + SHARD_WRITE_MS);
          const page = shard.list(prefix, { keysOnly: true, limit: DELIVERY_KEYS_PAGE });
          for (const item of page.items) await shard.propose({ type: 'delete', key: item.key }, this.clock.now() + SHARD_WRITE_MS);
        }
      } catch (e) {
        this.opts.log.warn({ extension: name, group: g, err: (e as Error).message }, 'could not delete delivery cursors after unload');
      }
    }
  }
}

/** The data groups that can hold keys under `prefix` in `map`. */
function spannedGroups(map: ClusterMap, prefix: string): Set<number> {
  return new Set(shardsForPrefix(map, prefix).map((s) => s.group));
}
