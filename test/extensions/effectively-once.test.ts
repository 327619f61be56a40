/**
 * Effectively-once effects: the order-count example (extensions/order-count) counts every order
 * exactly once although its shard's leader is cut off mid-delivery and the new leader delivers
 * again every event the old one had handled (its cursor writes were held back, so none of them
 * was acknowledged): the lambdas' writes carry the triggering event as their idempotency key,
 * and the shard answers the repeated txns with their first result.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATA_GROUP, type KvNode } from '../../src/node/kv-node.js';
import { ExtCluster } from './cluster-harness.js';

let c: ExtCluster;

beforeAll(async () => {
  c = await ExtCluster.start();
});

afterAll(async () => {
  await c?.stop();
});

/** Makes `node` fail every write of `extension`'s delivery cursors (its delivery then never moves its replicated cursor). */
function holdCursorWrites(node: KvNode, extension: string): () => void {
  const original = node.execute;
  const prefix = `/_sys/cursor/${extension}/`;
  node.execute = async function (this: KvNode, ...args: Parameters<KvNode['execute']>) {
    const cmd = args[1];
    const keys = cmd.type === 'put' ? [cmd.key] : cmd.type === 'txn' ? cmd.writes.map((w) => w.key) : [];
    if (keys.some((k) => k.startsWith(prefix))) throw new Error('cursor write held back by the test');
    return original.apply(this, args);
  } as KvNode['execute'];
  return () => (node.execute = original);
}

const cut = (old: KvNode, on: boolean) => {
  for (const n of c.nodes) {
    if (n === old) continue;
    for (const link of [`${old.id}>${n.id}`, `${n.id}>${old.id}`]) {
      if (on) c.hub.blocked.add(link);
      else c.hub.blocked.delete(link);
    }
  }
};

describe('effectively-once effects', () => {
  it('order-count counts every order exactly once across a leader cut off mid-delivery', async () => {
    expect((await c.load('extensions/order-count', { isolation: 'worker' })).state).toBe('running');
    const old = await c.leader(DATA_GROUP);
    const release = holdCursorWrites(old, 'order-count');
    const customers = ['ann', 'bob', 'cy'];
    let n = 0;
    /** Writes the next order (a write cut off with its leader may or may not have committed: the check reads what did). */
    const order = async () => {
      const i = n++;
      await c.put(`/orders/${String(i).padStart(4, '0')}`, JSON.stringify({ customer: customers[i % customers.length], amount: i + 1 }));
    };
    for (let i = 0; i < 30; i++) await order();
    // The old leader counted them (its effects are committed), but its cursor never moved.
    expect(await c.until(async () => ((await c.get('/order-counts/_total')) === '30' ? '30' : undefined))).toBe('30');
    // (an invocation is counted once its lambda returned, a moment after its txn applied)
    const oldInvocations = () => c.managerOf(old).statuses().find((s) => s.name === 'order-count')!.invocations;
    expect(await c.until(async () => (oldInvocations() >= 30 ? oldInvocations() : undefined))).toBeGreaterThanOrEqual(30);
    // Mid-delivery: orders keep coming while the leader is cut off.
    const more = (async () => {
      for (let i = 0; i < 10; i++) await order().catch(() => {}); // its leader may be cut off meanwhile
    })();
    cut(old, true);
    try {
      await c.leader(DATA_GROUP, [old]); // a new leader took over
      await more;
      for (let i = 0; i < 10; i++) await order();
      // ... and yet every order is counted exactly once.
      // Read through whichever node leads the shard now (the harness follows leadership changes).
      const read = (key: string) => c.get(key);
      const orders = await c.list('/orders/');
      expect(orders.length).toBeGreaterThanOrEqual(40);
      // The new leader(s) delivered every order again from the replicated cursor (never moved by the old one) ...
      const others = c.nodes.filter((x) => x !== old);
      const invocations = () => others.reduce((a, x) => a + (c.managerOf(x).statuses().find((s) => s.name === 'order-count')?.invocations ?? 0), 0);
      expect(await c.until(async () => (invocations() >= orders.length ? invocations() : undefined), 30_000)).toBeGreaterThanOrEqual(orders.length);
      const expected = new Map<string, { orders: number; amount: number }>();
      for (const o of orders) {
        const { customer, amount } = JSON.parse(o.value) as { customer: string; amount: number };
        const e = expected.get(customer) ?? { orders: 0, amount: 0 };
        expected.set(customer, { orders: e.orders + 1, amount: e.amount + amount });
      }
      const total = String(orders.length);
      expect(await c.until(async () => ((await read('/order-counts/_total')) === total ? total : undefined), 20_000)).toBe(total);
      await new Promise((r) => setTimeout(r, 500)); // nothing late changes it
      expect(await read('/order-counts/_total')).toBe(total);
      for (const [customer, want] of expected) expect(JSON.parse((await read(`/order-counts/${customer}`))!)).toEqual(want);
    } finally {
      release();
      cut(old, false);
    }
  });
});
