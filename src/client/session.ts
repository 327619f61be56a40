/**
 * The client's write session (Raft dissertation §6.3): a random id, and a sequence number per
 * logical write that every retry of it reuses, so the shard's state machine applies each write at
 * most once however often the client resends it. `ackedBelow` tells the servers which results the
 * client no longer needs: every seq below it has completed at the client.
 */
import { randomBytes } from 'node:crypto';

/** The session fields a write request carries (proto `WriteSession`). */
export interface WriteSessionMsg {
  readonly id: string;
  readonly seq: number;
  readonly ackedBelow: number;
}

/** One write in progress: its session fields; call `end()` once the call has completed (whatever its outcome). */
export interface SessionWrite {
  readonly wire: WriteSessionMsg;
  end(): void;
}

/** A client session: hands out sequence numbers and tracks which writes are still in flight. */
export class ClientSession {
  /** 22 characters of base64url (128 random bits). */
  readonly id = randomBytes(16).toString('base64url');
  private next = 1;
  private readonly inFlight = new Set<number>();
  /** The lowest seq still in flight (or `next` when none), maintained lazily. */
  private lowest = 1;

  /** Starts a logical write: a fresh seq, and the current lower bound of writes in flight. */
  begin(): SessionWrite {
    const seq = this.next++;
    this.inFlight.add(seq);
    const wire: WriteSessionMsg = { id: this.id, seq, ackedBelow: this.ackedBelow() };
    let ended = false;
    return {
      wire,
      end: () => {
        if (ended) return;
        ended = true;
        this.inFlight.delete(seq);
      },
    };
  }

  /** Every seq below this has completed at the client. */
  ackedBelow(): number {
    while (this.lowest < this.next && !this.inFlight.has(this.lowest)) this.lowest++;
    return this.lowest;
  }
}
