/**
 * What a watch's delivery replicates in its shard besides the events themselves: the delivery
 * cursor and the attempt record (the poison-pill protection's memory of events that killed or
 * hung their runner, or were being attempted), with their keys, encoding and fault limits.
 */
import { SYSTEM_KEY_PREFIX } from '../sharding/index.js';

/** A watch as its replicated keys name it: its id and prefix. */
export interface WatchId {
  readonly id: number;
  readonly prefix: string;
}

/**
 * Poison-pill protection (see {@link AttemptRecord}): how many runner-killing failures an event
 * may cause, and on how many nodes, before it is dead-lettered with kind `poison`.
 */
export interface FaultOptions {
  /** Runner-killing failures (timeout, worker-crashed, out-of-memory, or a start that never finished) before `poison` (default 3). */
  readonly poisonAttempts: number;
  /** Distinct nodes on which it failed that way before `poison` (default 2). */
  readonly poisonNodes: number;
  /**
   * Record every invocation in the attempt record before it starts (in-process and native
   * lambdas: one that blocks the thread or crashes takes the node down, and nothing can be
   * written then). A start another node finds unfinished is never run again in a shared thread:
   * with `canIsolate` the host moves the extension to process isolation (inProcessKilledANode)
   * and it is retried there; without (native), it is dead-lettered at once.
   */
  readonly armEveryInvocation: boolean;
  /** The lambdas run in the node's thread and the host can move them to a child process (JS in-process mode). */
  readonly canIsolate: boolean;
  /** This node's id and this process's boot id (a restart of the node is another boot). */
  readonly node: number;
  readonly boot: string;
  /**
   * The boot id of this node's previous process when its event-loop watchdog killed it (a lambda
   * blocked the thread): what that boot left armed is dead-lettered at once. Any other death
   * (kill -9, out of memory, power) is not known to be the lambda's doing: retried in isolation.
   */
  readonly blockedBoot?: string;
}

/** The defaults of the fault options. */
export const FAULT_DEFAULTS = Object.freeze({ poisonAttempts: 3, poisonNodes: 2 });

/** Kinds of failure that kill (or hang) the lambda's runner: counted towards `poison`. */
export const RUNNER_KILLING_KINDS: ReadonlySet<string> = new Set(['timeout', 'worker-crashed', 'process-exited', 'out-of-memory']);

/** One event of a watch with a history of runner-killing failures, or being attempted (armed). */
export interface AttemptEntry {
  readonly revision: number;
  readonly key: string;
  /** Runner-killing failures so far (a start found unfinished by a new leader counts as one). */
  failures: number;
  /** Nodes on which it failed that way, ascending, distinct. */
  nodes: number[];
  /** The last failure. */
  reason?: string;
  /**
   * Set while an attempt may be running: the node and process (boot) that started it; `shared`
   * true when it ran in that node's own process (in-process or native), where it could kill the
   * node, false (or absent, in records written before session ext30) when it ran in isolation.
   */
  armed?: { node: number; boot: string; atMs: number; shared?: boolean };
  /** Found armed by a new process of the same node: the node died while running it. */
  diedHere?: boolean;
  /**
   * Found armed (in-process or native) by another node (it died or lost the shard while running
   * it), or by this node's previous process when it did not die of a blocked loop: the node that
   * ran it. Never run again in a node's own thread; retried in process isolation.
   */
  unfinishedElsewhere?: number;
}

/**
 * The replicated attempt record of one watch in one shard (`/_sys/attempt/<ext>/<watch id><prefix>`,
 * written with the cursor in one txn): the events after the cursor that failed in a way that
 * kills the runner, or that are being attempted. Written only (a) in in-process mode before
 * invocations start (batched: one write arms every event about to start, and carries the cursor),
 * (b) after a runner-killing failure, arming the retry, and (c) with the periodic cursor write
 * while it is not empty (to drop finished events). A well-behaved worker-mode watch never writes it.
 */
export interface AttemptRecord {
  readonly v: 1;
  readonly cursor: number;
  readonly events: readonly AttemptEntry[];
}

/** The key of a watch's attempt record. */
export function attemptKey(extension: string, watch: WatchId, epoch = 0): string {
  return `${SYSTEM_KEY_PREFIX}attempt/${extension}/${epochPart(epoch)}${watch.id}${watch.prefix}`;
}

/** Parses an attempt record (undefined when absent or malformed). */
export function decodeAttemptRecord(value: Uint8Array | undefined): AttemptRecord | undefined {
  if (!value) return undefined;
  try {
    const r = JSON.parse(new TextDecoder().decode(value)) as AttemptRecord;
    return r && r.v === 1 && Array.isArray(r.events) ? r : undefined;
  } catch {
    return undefined;
  }
}

/** The key under which a watch's delivery cursor is replicated. */
export function cursorKey(extension: string, watch: WatchId, epoch = 0): string {
  return `${SYSTEM_KEY_PREFIX}cursor/${extension}/${epochPart(epoch)}${watch.id}${watch.prefix}`;
}

/** The part of a cursor or attempt key naming its cursor epoch (none for epoch 0, the original keys). */
function epochPart(epoch: number): string {
  return epoch > 0 ? `e${epoch}/` : '';
}
