/** Shared helpers for the sandbox tests: a fake node (HostServices recording every call), fixture paths and event builders. */
import { fileURLToPath } from 'node:url';
import type { ExtensionEvent } from '../../../src/extensions/api.js';
import type { HostServices, KvOp, LogLevel, MetricKind, MetricOp } from '../../../src/extensions/sandbox/index.js';

/** Absolute path of a fixture extension folder. */
export function fixture(name: string): string {
  return fileURLToPath(new URL(`../fixtures/${name}`, import.meta.url));
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** UTF-8 decoding of a value (undefined stays undefined). */
export function text(v: unknown): string | undefined {
  return v instanceof Uint8Array ? dec.decode(v) : undefined;
}

/** A put event on `key` (value = UTF-8 of `value`). */
export function put(key: string, value = '', hops = 0): ExtensionEvent {
  return { type: 'put', key, value: enc.encode(value), version: 7, timestamp: 1_700_000_000_000, shard: 3, hops };
}

/** One recorded `host.kv` call. */
export interface KvCall {
  op: KvOp;
  args: unknown[];
  hops: number;
}

/** A HostServices that records calls and keeps an in-memory map; `get('/fail')` rejects with code E_SHARD. */
export class FakeHost implements HostServices {
  readonly data = new Map<string, { value: Uint8Array; version: number }>();
  readonly calls: KvCall[] = [];
  readonly logs: { level: LogLevel; msg: string; fields?: Record<string, unknown> }[] = [];
  readonly metrics: { kind: MetricKind; name: string; help: string; op: MetricOp }[] = [];
  private version = 0;

  async kv(op: KvOp, args: unknown[], hops: number): Promise<unknown> {
    this.calls.push({ op, args, hops });
    const key = args[0] as string;
    switch (op) {
      case 'get': {
        if (key === '/fail') throw Object.assign(new Error('shard 3 unavailable'), { name: 'UnavailableError', code: 'E_SHARD' });
        const e = this.data.get(key);
        return e ? { found: true, value: e.value, version: e.version, timestamp: 1 } : { found: false, value: undefined, version: 0, timestamp: 0 };
      }
      case 'put': {
        const version = ++this.version;
        this.data.set(key, { value: args[1] as Uint8Array, version });
        return { succeeded: true, version, currentVersion: version };
      }
      case 'trigger':
        return undefined;
      case 'delete':
        return { succeeded: true, deleted: this.data.delete(key) };
      case 'list':
        return { items: [...this.data].filter(([k]) => k.startsWith(key)).map(([k, v]) => ({ key: k, value: v.value, version: v.version })), nextAfter: undefined };
    }
  }

  log(level: LogLevel, msg: string, fields?: Record<string, unknown>): void {
    this.logs.push({ level, msg, fields });
  }

  metric(kind: MetricKind, name: string, help: string, op: MetricOp): void {
    this.metrics.push({ kind, name, help, op });
  }

  /** The value last put at `key`, decoded. */
  value(key: string): string | undefined {
    return text(this.data.get(key)?.value);
  }

  /** The kv calls made on `key`. */
  callsOn(key: string): KvCall[] {
    return this.calls.filter((c) => c.args[0] === key);
  }

  /** Seeds a stored value. */
  set(key: string, value: string): void {
    this.data.set(key, { value: enc.encode(value), version: ++this.version });
  }
}

/** Resolves when `cond()` holds (polling every 5 ms), rejects after `timeoutMs`. */
export async function waitFor(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error('waitFor: condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The rejection of `p` (fails when `p` resolves). */
export async function rejection(p: Promise<unknown>): Promise<Error & { kind?: string; code?: string }> {
  try {
    await p;
  } catch (e) {
    return e as Error & { kind?: string; code?: string };
  }
  throw new Error('expected a rejection');
}
