/** The tiny replicated key-value state machine the simulator runs on top of Raft. */
import { EntryType, type Entry } from '../../src/raft/index.js';

/** A put command as carried in a log entry. */
export interface PutCommand {
  /** Client id and request id: together they identify the request (deduplicated on apply). */
  readonly c: number;
  readonly r: number;
  readonly k: string;
  readonly v: string;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Encodes a put command as entry data. */
export function encodePut(cmd: PutCommand): Uint8Array {
  return enc.encode(JSON.stringify(cmd));
}

/** Decodes entry data written by `encodePut`. */
export function decodePut(data: Uint8Array): PutCommand {
  return JSON.parse(dec.decode(data)) as PutCommand;
}

/** The identity of a request, unique across the run. */
export function requestKey(c: number, r: number): string {
  return `${c}:${r}`;
}

/** A map of registers; each request applies at most once, even if proposed twice. */
export class KvFsm {
  readonly data = new Map<string, string>();
  private readonly appliedRequests = new Set<string>();
  applied = 0;

  /**
   * Applies one committed entry; returns the put it carried if it took effect now. With
   * `lenient`, data that is not a put is a no-op (it throws otherwise).
   */
  apply(e: Entry, lenient = false): PutCommand | undefined {
    if (e.index !== this.applied + 1) {
      throw new Error(`kv fsm: applying index ${e.index} after ${this.applied}`);
    }
    this.applied = e.index;
    if (e.type !== EntryType.Normal || e.data.length === 0) return undefined;
    let cmd: PutCommand;
    try {
      cmd = decodePut(e.data);
      if (typeof cmd !== 'object' || cmd === null || typeof cmd.k !== 'string' || typeof cmd.v !== 'string') throw new Error('not a put');
    } catch (err) {
      if (lenient) return undefined;
      throw err;
    }
    const key = requestKey(cmd.c, cmd.r);
    if (this.appliedRequests.has(key)) return undefined;
    this.appliedRequests.add(key);
    this.data.set(cmd.k, cmd.v);
    return cmd;
  }

  /** Whether a request has taken effect. */
  hasApplied(c: number, r: number): boolean {
    return this.appliedRequests.has(requestKey(c, r));
  }

  /** Serialises the state (data and deduplication table). */
  snapshot(): Uint8Array {
    return enc.encode(JSON.stringify({ d: [...this.data], r: [...this.appliedRequests], a: this.applied }));
  }

  /** Rebuilds a state machine from `snapshot()` bytes. */
  static restore(bytes: Uint8Array): KvFsm {
    const s = JSON.parse(dec.decode(bytes)) as { d: [string, string][]; r: string[]; a: number };
    const f = new KvFsm();
    for (const [k, v] of s.d) f.data.set(k, v);
    for (const r of s.r) f.appliedRequests.add(r);
    f.applied = s.a;
    return f;
  }
}
