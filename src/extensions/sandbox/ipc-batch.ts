/** Coalesces the protocol messages sent over a child process's IPC channel: one write per event-loop turn instead of one per message. */

/** What a batch is sent as: one message alone, or several in an array (messages are objects, never arrays). */
export type Wire<M> = M | M[];

/** The messages of a received `Wire` value. */
export function unbatch<M>(wire: unknown): M[] {
  return Array.isArray(wire) ? (wire as M[]) : [wire as M];
}

interface Queued<M> {
  msg: M;
  onFail: ((e: unknown) => void) | undefined;
}

/**
 * Queues messages and sends them with `send` in one array at the next `setImmediate` (a single
 * message is sent alone). Each IPC message costs a serializer, a write and a wake-up of the other
 * side, so under load (many invocations in flight) batching is what makes a child process
 * competitive with a worker thread; a lone message waits one event-loop turn. A message that cannot
 * be serialized fails the batch: it is then resent one message at a time, and `onFail` of each
 * message that still fails is called (asynchronously, where a worker's postMessage would throw).
 */
export class IpcBatcher<M> {
  private queue: Queued<M>[] = [];
  private scheduled = false;

  constructor(private readonly send: (wire: Wire<M>) => void) {}

  /** Queues `msg`; `onFail` is called if it cannot be sent (serialization failure, closed channel). */
  push(msg: M, onFail?: (e: unknown) => void): void {
    this.queue.push({ msg, onFail });
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  /** Sends what is queued now. */
  flush(): void {
    this.scheduled = false;
    const q = this.queue;
    if (q.length === 0) return;
    this.queue = [];
    try {
      this.send(q.length === 1 ? q[0]!.msg : q.map((x) => x.msg));
      return;
    } catch (e) {
      if (q.length === 1) {
        q[0]!.onFail?.(e);
        return;
      }
    }
    for (const x of q) {
      try {
        this.send(x.msg);
      } catch (e) {
        x.onFail?.(e);
      }
    }
  }
}
