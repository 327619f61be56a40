/** Helpers for moving values and errors across the worker boundary: byte copies with transfer lists, error (de)serialization, clone-safe log fields. */
import type { SerializedError } from './types.js';

const MAX_DEPTH = 32;

/**
 * Returns `value` with every `Uint8Array` (including `Buffer`) inside plain objects and arrays
 * replaced by an exact, freshly allocated copy, plus the copies' buffers as a transfer list. The
 * caller's arrays are never detached, and only the viewed bytes are sent (structured-cloning a
 * view would copy its whole backing buffer, e.g. an 8 KiB `Buffer` pool slab).
 */
export function prepareTransfer<T>(value: T): { value: T; transfer: ArrayBuffer[] } {
  const transfer: ArrayBuffer[] = [];
  const walk = (v: unknown, depth: number): unknown => {
    if (v instanceof Uint8Array) {
      const copy = new Uint8Array(v.byteLength);
      copy.set(v);
      transfer.push(copy.buffer);
      return copy;
    }
    if (depth >= MAX_DEPTH || v === null || typeof v !== 'object') return v;
    if (Array.isArray(v)) return v.map((x) => walk(x, depth + 1));
    const proto = Object.getPrototypeOf(v) as unknown;
    if (proto !== Object.prototype && proto !== null) return v;
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) out[k] = walk(x, depth + 1);
    return out;
  };
  return { value: walk(value, 0) as T, transfer };
}

/** A copy of `bytes` (or undefined), so the receiver never aliases the sender's memory. */
export function copyBytes(bytes: Uint8Array | undefined): Uint8Array | undefined {
  return bytes === undefined ? undefined : new Uint8Array(bytes);
}

/** The message of anything thrown. */
export function errorMessage(e: unknown): string {
  if (e instanceof Error) return e.message;
  try {
    return String(e);
  } catch {
    return 'unprintable error';
  }
}

/** Flattens anything thrown into a cloneable record keeping name, message, code and stack. */
export function serializeError(e: unknown): SerializedError {
  if (e !== null && typeof e === 'object') {
    const o = e as { name?: unknown; message?: unknown; code?: unknown; stack?: unknown; loadCode?: unknown };
    const out: SerializedError = {
      name: typeof o.name === 'string' ? o.name : 'Error',
      message: typeof o.message === 'string' ? o.message : errorMessage(e),
    };
    if (typeof o.code === 'string' || typeof o.code === 'number') out.code = o.code;
    if (typeof o.stack === 'string') out.stack = o.stack;
    if (typeof o.loadCode === 'string') out.loadCode = o.loadCode as SerializedError['loadCode'];
    return out;
  }
  return { name: 'Error', message: errorMessage(e) };
}

/** Rebuilds an `Error` from `serializeError` output (same name, message, code and stack). */
export function reviveError(s: SerializedError): Error & { code?: string | number } {
  const err = new Error(s.message) as Error & { code?: string | number };
  err.name = s.name;
  if (s.code !== undefined) err.code = s.code;
  if (s.stack !== undefined) err.stack = s.stack;
  return err;
}

/**
 * A structured-clone-safe version of log fields: functions, symbols and bigints become strings,
 * errors become `{ name, message, stack }`, cycles (and nesting past 32 levels) become `'[Circular]'`.
 */
export function cloneSafe(fields: Record<string, unknown>): Record<string, unknown> {
  const seen = new WeakSet<object>();
  const walk = (v: unknown, depth: number): unknown => {
    if (typeof v === 'function') return `[Function ${(v as { name?: string }).name || 'anonymous'}]`;
    if (typeof v === 'symbol' || typeof v === 'bigint') return v.toString();
    if (v === null || typeof v !== 'object') return v;
    if (v instanceof Error) return { name: v.name, message: v.message, stack: v.stack };
    if (v instanceof Uint8Array || v instanceof Date) return v;
    if (seen.has(v) || depth >= MAX_DEPTH) return '[Circular]';
    seen.add(v);
    let out: unknown;
    if (Array.isArray(v)) out = v.map((x) => walk(x, depth + 1));
    else {
      const o: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) o[k] = walk(x, depth + 1);
      out = o;
    }
    seen.delete(v);
    return out;
  };
  return walk(fields, 0) as Record<string, unknown>;
}
