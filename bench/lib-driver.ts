/** A benchmark {@link Driver} for kvd that goes through the client library's default API (KvClient put/get, no special code), so the bench measures what an application gets. */
import { KvClient } from '../src/client/index.js';
import { keyName, type Driver, type RmwOutcome } from './clients.js';

/** The size of values written by rmw when the key had no value yet (as the stub driver). */
const RMW_VALUE_BYTES = 256;

/** A new value derived from `old`: the same bytes with a little-endian counter in the first 4 bytes incremented. */
function modify(old: Uint8Array | undefined, size: number): Buffer {
  const out = Buffer.alloc(size);
  if (old) out.set(old.subarray(0, size));
  out.writeUInt32LE((out.readUInt32LE(0) + 1) >>> 0, 0);
  return out;
}

/**
 * One KvClient (its own connections, `address` first among the endpoints) shared by the workers
 * of one connection of the bench's plan; put, get and rmw are the KvClient calls an application
 * would make: `put(key, value)`, `get(key)` (linearizable), `get` then `put(…, {expectedVersion,
 * returnCurrentValue})`.
 */
export class LibDriver implements Driver {
  private readonly client: KvClient;
  private readonly keys: string[] = [];

  /** A client of the cluster at `endpoints`, trying `address` first; `timeoutMs` is each call's deadline; `unbatched`: `batching: false`. */
  constructor(readonly address: string, endpoints: readonly string[], timeoutMs: number, private readonly keyPrefix?: string, unbatched = false) {
    this.client = new KvClient({
      endpoints: [address, ...endpoints.filter((e) => e !== address)],
      defaultDeadlineMs: timeoutMs,
      ...(unbatched ? { batching: false } : {}),
    });
  }

  private key(i: number): string {
    return (this.keys[i] ??= keyName(i, this.keyPrefix));
  }

  async put(i: number, value: Uint8Array): Promise<void> {
    await this.client.put(this.key(i), value);
  }

  async get(i: number): Promise<boolean> {
    return (await this.client.get(this.key(i))).found;
  }

  async rmw(i: number, maxAttempts: number): Promise<RmwOutcome> {
    const key = this.key(i);
    const cur = await this.client.get(key);
    let version = cur.found ? cur.version : 0;
    let value = cur.found ? cur.value : undefined;
    let conflicts = 0;
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      const res = await this.client.put(key, modify(value, RMW_VALUE_BYTES), { expectedVersion: version, returnCurrentValue: true });
      if (res.succeeded) return { conflicts, abandoned: false };
      conflicts++;
      version = res.currentVersion ?? 0;
      value = res.currentValue;
    }
    return { conflicts, abandoned: true };
  }

  async ready(timeoutMs: number): Promise<void> {
    await this.client.shardMap({ deadlineMs: timeoutMs });
  }

  close(): void {
    this.client.close();
  }
}
