/**
 * kvcascade/testing: an extension unit-tested in a few lines, without a cluster: the examples
 * run against the in-memory shard with the real delivery; `redeliver` shows order-count's effects
 * happen once; a failing lambda's events end in the dead letters; the package exports it.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { testExtension } from '../../src/extensions/testing/index.js';
// @ts-expect-error an example written in JavaScript (no declarations)
import * as orderCount from '../../extensions/order-count/index.js';
// @ts-expect-error an example written in JavaScript (no declarations)
import * as stockWatch from '../../extensions/stock-watch/index.js';

describe('kvcascade/testing', () => {
  it('runs stock-watch against an in-memory shard', async () => {
    const t = await testExtension(stockWatch, { name: 'stock-watch' });
    await t.put('/stocks/ACME', '100');
    const v = await t.put('/stocks/ACME', '97');
    await t.settled();
    expect(JSON.parse(t.get(`/alerts/ACME/${v}`)!)).toMatchObject({ symbol: 'ACME', from: 100, to: 97 });
    expect(t.logs.some((l) => l.msg === 'price drop alert')).toBe(true);
    await t.stop();
  });

  it('order-count counts once, even when every event is delivered again', async () => {
    const t = await testExtension(orderCount);
    for (let i = 0; i < 10; i++) await t.put(`/orders/${i}`, JSON.stringify({ customer: i % 2 ? 'ann' : 'bob', amount: 10 }));
    await t.put('/orders/3', JSON.stringify({ customer: 'ann', amount: 99 })); // an update: not a new order
    await t.settled();
    expect(t.get('/order-counts/_total')).toBe('10');
    const before = t.invocations();
    await t.redeliver();
    expect(t.invocations()).toBeGreaterThanOrEqual(before + 11);
    expect(t.get('/order-counts/_total')).toBe('10');
    expect(JSON.parse(t.get('/order-counts/ann')!)).toEqual({ orders: 5, amount: 50 });
    expect(t.deadLetters()).toEqual([]);
    await t.stop();
  });

  it('dead-letters what keeps failing, with the error', async () => {
    const t = await testExtension({
      initialize(ctx: { watch: (p: string, l: () => void, o: object) => void }) {
        ctx.watch('/x/', () => {
          throw new Error('nope');
        }, { maxAttempts: 2, retryBackoffMs: 1 });
      },
    });
    await t.put('/x/1', 'a');
    await t.settled();
    expect(t.deadLetters()).toMatchObject([{ kind: 'threw', attempts: 2, event: { key: '/x/1' } }]);
    expect(t.deadLetters()[0]!.error).toContain('nope');
    await t.stop();
  });

  it('is exported as kvcascade/testing', () => {
    const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as { exports: Record<string, { import: string; types: string }> };
    expect(pkg.exports['./testing']).toEqual({ types: './dist/src/extensions/testing/index.d.ts', import: './dist/src/extensions/testing/index.js' });
  });
});
