/**
 * The requests waiting on one shard replica: proposals waiting to be applied (settled by log
 * index, or lost when another leader's entry took their slot) and linearizable reads waiting for
 * a ReadIndex round (coalesced into one round per ready loop pass, settled once applied up to
 * the confirmed index). The replica (replica.ts) feeds them what it applies.
 */
import type { CommandResult } from '../statemachine/index.js';
import { UnavailableError } from './backend.js';

/** A proposal whose log slot was taken by another leader's entry: it was not applied; retrying is safe. */
export class ProposalLostError extends UnavailableError {
  constructor() {
    super('leadership changed before the write committed; it was not applied');
    this.name = 'ProposalLostError';
  }
}

interface PendingProposal {
  readonly term: number;
  readonly startedMs: number;
  readonly resolve: (r: CommandResult) => void;
  readonly reject: (e: Error) => void;
}

interface ReadWaiter {
  readonly resolve: () => void;
  readonly reject: (e: Error) => void;
}

interface ReadBatch {
  index: number | undefined;
  readonly waiters: ReadWaiter[];
}

/** Proposals waiting to be applied, by log index. */
export class PendingProposals {
  private readonly byIndex = new Map<number, PendingProposal>();

  /** Number of proposals waiting. */
  get size(): number {
    return this.byIndex.size;
  }

  /**
   * Waits for the entry proposed at `index` in `term`; resolves with its result once applied. A
   * proposal still waiting at `index` from an earlier term is lost (ProposalLostError): this
   * replica leads again and its log's entry there is the new one, so the old entry was truncated
   * (overwriting its waiter left the old caller waiting, unanswered, until its deadline).
   */
  wait(index: number, term: number): Promise<CommandResult> {
    const stale = this.byIndex.get(index);
    if (stale && stale.term !== term) {
      this.byIndex.delete(index);
      stale.reject(new ProposalLostError());
    }
    // The propose → apply latency is a measurement for metrics (it decides nothing): monotonic clock.
    const startedMs = performance.now();
    return new Promise((resolve, reject) => this.byIndex.set(index, { term, startedMs, resolve, reject }));
  }

  /**
   * Settles the proposal waiting at `index` (if any) with the entry applied there: its result when
   * the entry is the one proposed (same term), else ProposalLostError. Returns the proposal's
   * latency when it was settled with its result.
   */
  applied(index: number, term: number, result: CommandResult): number | undefined {
    const pending = this.byIndex.get(index);
    if (!pending) return undefined;
    this.byIndex.delete(index);
    if (pending.term !== term) {
      pending.reject(new ProposalLostError());
      return undefined;
    }
    pending.resolve(result);
    return performance.now() - pending.startedMs;
  }

  /** Fails every waiting proposal. */
  failAll(err: Error): void {
    for (const p of this.byIndex.values()) p.reject(err);
    this.byIndex.clear();
  }
}

/** Linearizable reads waiting for a ReadIndex round, then for the state to be applied up to it. */
export class PendingReads {
  private next: ReadWaiter[] = [];
  private readonly batches = new Map<string, ReadBatch>();
  private seq = 0;

  /** `prefix` makes request ids unique beyond the group (a follower's rounds go to the leader, which drops a repeated id). */
  constructor(
    private readonly group: number,
    private readonly prefix = 'r',
  ) {}

  /** Rounds started and not yet settled or failed. */
  get startedRounds(): number {
    return this.batches.size;
  }

  /** Whether reads wait for a round to be started (`startRound`). */
  get waiting(): boolean {
    return this.next.length > 0;
  }

  /** Waits for the next ReadIndex round (see `startRound`). */
  wait(): Promise<void> {
    return new Promise((resolve, reject) => this.next.push({ resolve, reject }));
  }

  /**
   * Takes every read that arrived since the last round into one batch and returns the request id
   * to start its ReadIndex round with, or undefined when none arrived. `refuse`: fail them instead
   * (this replica no longer leads).
   */
  startRound(refuse?: () => Error): string | undefined {
    if (this.next.length === 0) return undefined;
    const waiters = this.next;
    this.next = [];
    if (refuse) {
      for (const w of waiters) w.reject(refuse());
      return undefined;
    }
    const id = `${this.prefix}${this.group}.${++this.seq}`;
    this.batches.set(id, { index: undefined, waiters });
    return id;
  }

  /** Records the index a ReadIndex round confirmed. */
  confirmed(requestId: string, index: number): void {
    const b = this.batches.get(requestId);
    if (b) b.index = index;
  }

  /** Resolves the reads whose confirmed index is applied. */
  settle(appliedIndex: number): void {
    for (const [id, b] of this.batches) {
      if (b.index !== undefined && b.index <= appliedIndex) {
        this.batches.delete(id);
        for (const w of b.waiters) w.resolve();
      }
    }
  }

  /** Fails the reads of rounds already started (leadership lost: they cannot be confirmed here). */
  failStarted(err: () => Error): void {
    for (const b of this.batches.values()) for (const w of b.waiters) w.reject(err());
    this.batches.clear();
  }

  /** Fails every waiting read, started or not. */
  failAll(err: Error): void {
    this.failStarted(() => err);
    for (const w of this.next) w.reject(err);
    this.next = [];
  }
}
