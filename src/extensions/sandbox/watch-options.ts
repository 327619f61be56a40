/** Validation of `ctx.watch` arguments and the default watch options (the values documented in api.ts). */
import type { EventType, WatchOptions } from '../api.js';

/** The defaults for every `WatchOptions` field, as documented in api.ts. */
export const WATCH_DEFAULTS: Readonly<Required<WatchOptions>> = Object.freeze({
  mode: 'stateful',
  events: Object.freeze(['put', 'delete', 'trigger'] as const),
  concurrency: 16,
  maxAttempts: 5,
  retryBackoffMs: 100,
  timeoutMs: 10_000,
  maxBacklog: 10_000,
  previousValue: false,
});

const EVENT_TYPES: readonly EventType[] = ['put', 'delete', 'trigger'];
const OPTION_KEYS = new Set(Object.keys(WATCH_DEFAULTS));

/** A `ctx.watch` call with a bad prefix, lambda or option; the message says which and why. */
export class InvalidWatchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvalidWatchError';
  }
}

function positiveInt(options: WatchOptions, key: 'concurrency' | 'maxAttempts' | 'maxBacklog'): number {
  const v = options[key];
  if (v === undefined) return WATCH_DEFAULTS[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
    throw new InvalidWatchError(`option ${key} must be a positive integer (got ${String(v)})`);
  }
  return v;
}

function duration(options: WatchOptions, key: 'retryBackoffMs' | 'timeoutMs', min: number): number {
  const v = options[key];
  if (v === undefined) return WATCH_DEFAULTS[key];
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > 2 ** 31 - 1) {
    throw new InvalidWatchError(`option ${key} must be a number of ms${min > 0 ? ' > 0' : ' >= 0'} (got ${String(v)})`);
  }
  return v;
}

function flag(options: WatchOptions, key: 'previousValue'): boolean {
  const v = options[key];
  if (v === undefined) return WATCH_DEFAULTS[key];
  if (typeof v !== 'boolean') throw new InvalidWatchError(`option ${key} must be true or false (got ${String(v)})`);
  return v;
}

/**
 * Checks the arguments of one `ctx.watch(prefix, lambda, options)` call and returns the options
 * with every default filled in (`events` deduplicated, in the order put, delete, trigger).
 * Throws `InvalidWatchError` when the prefix is not a non-empty string starting with '/', the
 * lambda is not a function, or an option is unknown or out of range.
 */
export function normalizeWatch(prefix: unknown, lambda: unknown, options: unknown): Required<WatchOptions> {
  const where = typeof prefix === 'string' ? `watch(${JSON.stringify(prefix)})` : 'watch()';
  try {
    if (typeof prefix !== 'string' || prefix.length === 0 || !prefix.startsWith('/')) {
      throw new InvalidWatchError(`prefix must be a non-empty string starting with '/' (got ${typeof prefix === 'string' ? JSON.stringify(prefix) : typeof prefix})`);
    }
    if (typeof lambda !== 'function') throw new InvalidWatchError(`the lambda must be a function (got ${typeof lambda})`);
    if (options === undefined || options === null) return WATCH_DEFAULTS;
    if (typeof options !== 'object' || Array.isArray(options)) throw new InvalidWatchError('options must be an object');
    const o = options as WatchOptions;
    for (const key of Object.keys(o)) {
      if (!OPTION_KEYS.has(key)) throw new InvalidWatchError(`unknown option ${JSON.stringify(key)} (known: ${[...OPTION_KEYS].join(', ')})`);
    }
    let mode = WATCH_DEFAULTS.mode;
    if (o.mode !== undefined) {
      if (o.mode !== 'stateful' && o.mode !== 'stateless') throw new InvalidWatchError(`option mode must be 'stateful' or 'stateless' (got ${String(o.mode)})`);
      mode = o.mode;
    }
    let events = WATCH_DEFAULTS.events;
    if (o.events !== undefined) {
      if (!Array.isArray(o.events) || o.events.length === 0) throw new InvalidWatchError('option events must be a non-empty array of event types');
      for (const e of o.events) {
        if (!EVENT_TYPES.includes(e)) throw new InvalidWatchError(`option events: unknown event type ${JSON.stringify(e)} (known: ${EVENT_TYPES.join(', ')})`);
      }
      events = Object.freeze(EVENT_TYPES.filter((t) => o.events!.includes(t)));
    }
    return Object.freeze({
      mode,
      events,
      concurrency: positiveInt(o, 'concurrency'),
      maxAttempts: positiveInt(o, 'maxAttempts'),
      retryBackoffMs: duration(o, 'retryBackoffMs', 0),
      timeoutMs: duration(o, 'timeoutMs', Number.MIN_VALUE),
      maxBacklog: positiveInt(o, 'maxBacklog'),
      previousValue: flag(o, 'previousValue'),
    });
  } catch (e) {
    if (e instanceof InvalidWatchError) throw new InvalidWatchError(`${where}: ${e.message}`);
    throw e;
  }
}
