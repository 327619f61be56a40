/**
 * The client session under which a node's extension lambdas write (Raft client sessions, see
 * src/statemachine/sessions.ts): one random id per store (one per node process), a sequence number
 * per logical write that its retries reuse, and the acknowledgement floor the shards may forget
 * below. With it, a lambda write whose attempt ended with an unknown outcome can be retried
 * without risk of applying twice.
 */
import { randomBytes } from 'node:crypto';
import type { WriteSession } from '../statemachine/index.js';

/** A random session id: `prefix` followed by 24 characters of base64url (144 random bits); 16-64 characters in all. */
export function randomSessionId(prefix = ''): string {
  const id = `${prefix}${randomBytes(18).toString('base64url')}`;
  if (!/^[A-Za-z0-9_-]{16,64}$/.test(id)) throw new RangeError(`session id prefix ${JSON.stringify(prefix)} makes an invalid id`);
  return id;
}

/**
 * Hands out the (id, seq, ackedBelow) of each logical write of one session. `ackedBelow` is the
 * lowest seq whose write has not finished (every seq below it has its answer), so a shard keeps
 * the results of writes still in flight and forgets the others. O(1) amortized per write.
 */
export class WriteSessionSource {
  /** The session id. */
  readonly id: string;
  private next = 1;
  /** Seqs handed out and not known finished, ascending (finished ones are dropped from the front). */
  private readonly pending: number[] = [];
  private head = 0;
  private readonly finished = new Set<number>();

  constructor(id: string = randomSessionId('lambda-')) {
    this.id = id;
  }

  /** The session of a new logical write (retries of it reuse the returned object). */
  begin(): WriteSession {
    const seq = this.next++;
    this.pending.push(seq);
    return { id: this.id, seq, ackedBelow: this.pending[this.head]! };
  }

  /** The write `seq` has its final answer (success, or given up on): later writes let the shards forget it. */
  end(seq: number): void {
    this.finished.add(seq);
    while (this.head < this.pending.length && this.finished.delete(this.pending[this.head]!)) this.head++;
    if (this.head > 1024 && this.head * 2 > this.pending.length) {
      this.pending.splice(0, this.head);
      this.head = 0;
    }
  }

  /** Runs one logical write under a new seq (`fn` may call the store several times with it), then ends it. */
  async run<T>(fn: (session: WriteSession) => Promise<T>): Promise<T> {
    const session = this.begin();
    try {
      return await fn(session);
    } finally {
      this.end(session.seq);
    }
  }
}
