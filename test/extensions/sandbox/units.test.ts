/** Unit tests of the sandbox helpers: watch option validation/defaults, transfer copies, error (de)serialization, entry resolution. */
import { describe, expect, it } from 'vitest';
import { InvalidWatchError, normalizeWatch, resolveExtensionEntry, WATCH_DEFAULTS } from '../../../src/extensions/sandbox/index.js';
import { cloneSafe, prepareTransfer, reviveError, serializeError } from '../../../src/extensions/sandbox/transfer.js';
import { fixture } from './helpers.js';

const noop = () => {};

describe('normalizeWatch', () => {
  it('fills the documented defaults', () => {
    expect(normalizeWatch('/a/', noop, undefined)).toEqual({
      mode: 'stateful', events: ['put', 'delete', 'trigger'], concurrency: 16, maxAttempts: 5, retryBackoffMs: 100, timeoutMs: 10_000, maxBacklog: 10_000, previousValue: false,
    });
    expect(normalizeWatch('/', noop, {})).toEqual(WATCH_DEFAULTS);
  });

  it('keeps given options and canonicalizes events', () => {
    expect(normalizeWatch('/a/', noop, { mode: 'stateless', events: ['trigger', 'put', 'put'], retryBackoffMs: 0, timeoutMs: 50 })).toMatchObject({
      mode: 'stateless', events: ['put', 'trigger'], retryBackoffMs: 0, timeoutMs: 50,
    });
  });

  it.each([
    ['a', noop, undefined],
    [42, noop, undefined],
    ['/a', 'x', undefined],
    ['/a', noop, { mode: 'fast' }],
    ['/a', noop, { events: [] }],
    ['/a', noop, { concurrency: 1.5 }],
    ['/a', noop, { maxAttempts: 0 }],
    ['/a', noop, { retryBackoffMs: -1 }],
    ['/a', noop, { timeoutMs: 0 }],
    ['/a', noop, { maxBacklog: Infinity }],
    ['/a', noop, { extra: 1 }],
    ['/a', noop, [1]],
  ])('rejects watch(%j, …, %j)', (prefix, lambda, options) => {
    expect(() => normalizeWatch(prefix, lambda, options)).toThrow(InvalidWatchError);
  });
});

describe('transfer helpers', () => {
  it('copies only the viewed bytes and lists the copies for transfer', () => {
    const big = new Uint8Array(1024).fill(7);
    const view = big.subarray(10, 14);
    const { value, transfer } = prepareTransfer({ a: [view], b: 'x', c: { d: view } });
    expect(transfer).toHaveLength(2);
    expect(value.a[0]).not.toBe(view);
    expect(value.a[0]!.byteLength).toBe(4);
    expect(value.a[0]!.buffer.byteLength).toBe(4);
    expect(value.b).toBe('x');
    structuredClone(value, { transfer });
    expect(view.byteLength).toBe(4); // the original is untouched
  });

  it('round-trips errors with name, message and code', () => {
    const e = Object.assign(new RangeError('bad'), { code: 'E_BAD' });
    const r = reviveError(serializeError(e));
    expect([r.name, r.message, r.code]).toEqual(['RangeError', 'bad', 'E_BAD']);
    expect(serializeError('plain')).toEqual({ name: 'Error', message: 'plain' });
  });

  it('makes log fields cloneable', () => {
    const cyc: Record<string, unknown> = { a: 1 };
    cyc.self = cyc;
    const shared = { s: 1 };
    const out = cloneSafe({ cyc, f: noop, n: 5n, e: new Error('x'), pair: [shared, shared] });
    expect(() => structuredClone(out)).not.toThrow();
    expect(out).toMatchObject({ cyc: { a: 1, self: '[Circular]' }, f: '[Function noop]', n: '5', e: { message: 'x' }, pair: [{ s: 1 }, { s: 1 }] });
  });
});

describe('resolveExtensionEntry', () => {
  it('follows exports (import condition), main (no extension) and index files', async () => {
    expect(await resolveExtensionEntry(fixture('esm-ext'))).toMatch(/esm-ext\/lib\/main\.js$/);
    expect(await resolveExtensionEntry(fixture('cjs-ext'))).toMatch(/cjs-ext\/index\.js$/);
    expect(await resolveExtensionEntry(fixture('init-hangs'))).toMatch(/init-hangs\/index\.js$/);
    expect(await resolveExtensionEntry(fixture('init-throws'))).toMatch(/init-throws\/index\.cjs$/);
  });

  it('explains what is missing', async () => {
    await expect(resolveExtensionEntry(fixture('nope'))).rejects.toThrow(/does not exist/);
  });
});
