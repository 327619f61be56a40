/** A deliberately naive reference model of the state machine (full write log, linear scans) for model-based tests. */
import {
  CompactedRevisionError,
  EVENT_OVERHEAD_BYTES,
  ValidationError,
  type Command,
  type CommandResult,
  type EventsPage,
  type GetResult,
  type KvEvent,
  type ListItem,
} from '../../src/statemachine/index.js';

interface Write {
  readonly rev: number;
  readonly key: string;
  readonly value: Uint8Array | null;
  readonly ts: number;
}

/** Byte-order comparison via Buffer, independent of the implementation's compareKeys. */
export function byteCompare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** The result of a model apply, in the shape tests compare against (rejected errors reduced to their code). */
export interface ModelApply {
  readonly applied: boolean;
  readonly result: unknown;
  readonly events: readonly KvEvent[];
}

/** Reduces an implementation result to the comparable shape used by the model. */
export function normalizeResult(r: CommandResult): unknown {
  return r.type === 'rejected' ? { type: 'rejected', code: r.error.code, revision: r.revision, timestampMs: r.timestampMs } : r;
}

/** Naive model: keeps every write forever and answers everything by scanning. */
export class ReferenceModel {
  appliedIndex = 0;
  revision = 0;
  lastTs = 0;
  compactRevision = 0;
  historyStart = 1;
  readonly writes: Write[] = [];
  readonly revTs: number[] = [0];
  readonly events: KvEvent[] = [];

  constructor(readonly maxHistoryRevisions: number, readonly maxHistoryBytes: number) {}

  private at(key: string, rev: number): Write | undefined {
    let found: Write | undefined;
    for (const w of this.writes) if (w.key === key && w.rev <= rev) found = w;
    return found;
  }

  /** Current version of a key (0 = absent). */
  version(key: string): number {
    const w = this.at(key, this.revision);
    return w && w.value !== null ? w.rev : 0;
  }

  private bump(ts: number, evs: KvEvent[]): void {
    this.revision++;
    this.revTs.push(ts);
    this.events.push(...evs);
    for (;;) {
      const oldest = this.historyStart;
      const bytes = this.events
        .filter((e) => e.revision >= oldest)
        .reduce((n, e) => n + Buffer.byteLength(e.key, 'utf8') + (e.value?.length ?? 0) + EVENT_OVERHEAD_BYTES, 0);
      if (this.revision - oldest + 1 > this.maxHistoryRevisions || (bytes > this.maxHistoryBytes && oldest < this.revision)) {
        this.historyStart++;
      } else break;
    }
  }

  /** Applies a (valid) command the simple way. */
  apply(index: number, given: number, cmd: Command): ModelApply {
    if (index <= this.appliedIndex) {
      return { applied: false, result: { type: 'skipped', appliedIndex: this.appliedIndex, revision: this.revision }, events: [] };
    }
    this.appliedIndex = index;
    this.lastTs = Math.max(this.lastTs, given);
    const ts = this.lastTs;
    const rev = this.revision;
    switch (cmd.type) {
      case 'noop':
        return { applied: true, result: { type: 'noop', revision: rev, timestampMs: ts }, events: [] };
      case 'compact':
        if (cmd.revision > rev) return { applied: true, result: { type: 'rejected', code: 'FUTURE_REVISION', revision: rev, timestampMs: ts }, events: [] };
        this.compact(cmd.revision);
        return { applied: true, result: { type: 'compact', compactRevision: this.compactRevision, revision: rev, timestampMs: ts }, events: [] };
      case 'triggerPut': {
        const ev: KvEvent = { type: 'trigger', key: cmd.key, value: cmd.value, revision: rev + 1, timestampMs: ts };
        this.bump(ts, [ev]);
        return { applied: true, result: { type: 'trigger', revision: rev + 1, timestampMs: ts }, events: [ev] };
      }
      case 'put': {
        const cur = this.version(cmd.key);
        const curValue = cur ? this.at(cmd.key, rev)!.value! : undefined;
        if (cmd.expectedVersion !== undefined && cmd.expectedVersion !== cur) {
          const current = cmd.returnPrevious && cur ? { version: cur, value: curValue } : { version: cur };
          return { applied: true, result: { type: 'put', succeeded: false, revision: rev, version: cur, timestampMs: ts, current }, events: [] };
        }
        this.writes.push({ rev: rev + 1, key: cmd.key, value: cmd.value, ts });
        const ev: KvEvent = { type: 'put', key: cmd.key, value: cmd.value, revision: rev + 1, timestampMs: ts };
        this.bump(ts, [ev]);
        const result: Record<string, unknown> = { type: 'put', succeeded: true, revision: rev + 1, version: rev + 1, timestampMs: ts };
        if (cmd.returnPrevious && cur) result.previous = { version: cur, value: curValue };
        return { applied: true, result, events: [ev] };
      }
      case 'delete': {
        const cur = this.version(cmd.key);
        if (cmd.expectedVersion !== undefined && cmd.expectedVersion !== cur) {
          return { applied: true, result: { type: 'delete', succeeded: false, revision: rev, timestampMs: ts, deleted: false, current: { version: cur } }, events: [] };
        }
        if (!cur) return { applied: true, result: { type: 'delete', succeeded: true, revision: rev, timestampMs: ts, deleted: false }, events: [] };
        this.writes.push({ rev: rev + 1, key: cmd.key, value: null, ts });
        const ev: KvEvent = { type: 'delete', key: cmd.key, revision: rev + 1, timestampMs: ts };
        this.bump(ts, [ev]);
        return { applied: true, result: { type: 'delete', succeeded: true, revision: rev + 1, timestampMs: ts, deleted: true }, events: [ev] };
      }
      case 'txn': {
        const failedCompares = cmd.compares.flatMap((c, i) => (this.version(c.key) === c.version ? [] : [i]));
        if (failedCompares.length) return { applied: true, result: { type: 'txn', succeeded: false, revision: rev, timestampMs: ts, failedCompares }, events: [] };
        const evs: KvEvent[] = [];
        for (const w of cmd.writes) {
          if (w.type === 'put') evs.push({ type: 'put', key: w.key, value: w.value, revision: rev + 1, timestampMs: ts });
          else if (this.version(w.key)) evs.push({ type: 'delete', key: w.key, revision: rev + 1, timestampMs: ts });
        }
        if (evs.length === 0) return { applied: true, result: { type: 'txn', succeeded: true, revision: rev, timestampMs: ts, failedCompares: [] }, events: [] };
        for (const e of evs) this.writes.push({ rev: rev + 1, key: e.key, value: e.type === 'put' ? e.value! : null, ts });
        this.bump(ts, evs);
        return { applied: true, result: { type: 'txn', succeeded: true, revision: rev + 1, timestampMs: ts, failedCompares: [] }, events: evs };
      }
      case 'revokeLeaseKeys': {
        const prefix = `/_sys/lease-key/${String(cmd.lease).padStart(16, '0')}/`;
        const attachments = [...new Set(this.writes.map((w) => w.key))].filter((k) => k.startsWith(prefix) && this.version(k)).sort(byteCompare);
        const none = { type: 'revokeLeaseKeys', revision: rev, timestampMs: ts, deletedKeys: 0, deletedAttachments: 0, more: false };
        if (attachments.length === 0) return { applied: true, result: none, events: [] };
        const keys = attachments.map((a) => a.slice(prefix.length)).filter((k) => !k.startsWith('/_') && !k.startsWith('/ext/') && this.version(k) !== 0 && this.version(k) === this.version(prefix + k));
        const evs: KvEvent[] = [...keys, ...attachments].map((key) => ({ type: 'delete', key, revision: rev + 1, timestampMs: ts }));
        for (const e of evs) this.writes.push({ rev: rev + 1, key: e.key, value: null, ts });
        this.bump(ts, evs);
        const result = { type: 'revokeLeaseKeys', revision: rev + 1, timestampMs: ts, deletedKeys: keys.length, deletedAttachments: attachments.length, more: false };
        return { applied: true, result, events: evs };
      }
    }
  }

  /** Moves the compaction point forward (reads before it become errors; the model keeps the data). */
  compact(c: number): void {
    if (c <= this.compactRevision) return;
    this.compactRevision = c;
    this.historyStart = Math.max(this.historyStart, c);
  }

  /** Newest revision with timestamp <= t, or throws as the implementation should. */
  revisionAtTime(t: number): number {
    let best = -1;
    for (let r = this.compactRevision; r <= this.revision; r++) if (this.revTs[r]! <= t) best = r;
    if (best >= 0) return best;
    if (this.compactRevision === 0) return 0;
    throw new CompactedRevisionError({ timeMs: t }, this.compactRevision);
  }

  /** Point read. */
  get(key: string, opts: { atRevision?: number; atTimeMs?: number } = {}): GetResult | undefined {
    let rev = this.revision;
    if (opts.atRevision !== undefined) {
      if (opts.atRevision > this.revision) throw new ValidationError('FUTURE_REVISION', 'future');
      if (opts.atRevision < this.compactRevision) throw new CompactedRevisionError({ revision: opts.atRevision }, this.compactRevision);
      rev = opts.atRevision;
    } else if (opts.atTimeMs !== undefined) rev = this.revisionAtTime(opts.atTimeMs);
    const w = this.at(key, rev);
    return w && w.value !== null ? { value: w.value, version: w.rev, timestampMs: w.ts } : undefined;
  }

  /** All live keys with the prefix, in byte order, with their latest versions. */
  liveItems(prefix: string): ListItem[] {
    const keys = [...new Set(this.writes.map((w) => w.key))].filter((k) => k.startsWith(prefix) && this.version(k));
    return keys.sort(byteCompare).map((k) => {
      const w = this.at(k, this.revision)!;
      return { key: k, value: w.value!, version: w.rev, timestampMs: w.ts };
    });
  }

  /** Watch history read with the same soft-limit rule as the implementation. */
  eventsSince(from: number, prefix: string, limit: number): EventsPage {
    if (from < this.historyStart) throw new CompactedRevisionError({ revision: from }, this.historyStart);
    const out: KvEvent[] = [];
    for (let r = from; r <= this.revision; r++) {
      const group = this.events.filter((e) => e.revision === r && e.key.startsWith(prefix));
      if (group.length === 0) continue;
      if (out.length > 0 && out.length + group.length > limit) return { events: out, nextRevision: r, more: true, revision: this.revision };
      out.push(...group);
    }
    return { events: out, nextRevision: Math.max(from, this.revision + 1), more: false, revision: this.revision };
  }

  /** Revision picked for a retention window. */
  retentionCompactRevision(now: number, retention: number): number {
    let best = this.compactRevision;
    for (let r = this.compactRevision; r <= this.revision; r++) if (this.revTs[r]! <= now - retention) best = r;
    return best;
  }
}
