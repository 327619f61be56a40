// kvcascade example extension: counts orders, exactly once.
//
// Each new order /orders/<id> (JSON {"customer": "...", "amount": 12.5}) adds 1 to the
// customer's count and to the total, and its amount to the customer's revenue, in one txn
// (all-or-nothing, in one shard): /order-counts/<customer> holds {"orders", "amount"} and
// /order-counts/_total holds the number of orders.
//
// Delivery is at least once: after a leader change the new leader delivers again the events
// after the replicated cursor, some of which were already counted. No de-duplication is needed
// here: every ctx.kv write made while handling an event carries an idempotency key derived from
// that event (its shard, key and version), and the shard answers a repeated write with its first
// result instead of applying it again. So a redelivered order gets back "succeeded" for its txn
// and is not counted twice. The rule for the lambda: make the same writes in the same order
// for the same event (read-compare-write loops like the one below are fine).

const TOTAL = '/order-counts/_total';
const text = (bytes) => new TextDecoder().decode(bytes);

/** @param {import('kvcascade/extension').ExtensionContext} ctx */
export function initialize(ctx) {
  ctx.watch(
    '/orders/',
    async (event) => {
      if (!event.created) return; // count an order once, when it is created (not on updates)
      const order = JSON.parse(text(event.value));
      const key = `/order-counts/${order.customer}`;
      for (;;) {
        const [mine, total] = await Promise.all([ctx.kv.get(key), ctx.kv.get(TOTAL)]);
        const stats = mine.found ? JSON.parse(text(mine.value)) : { orders: 0, amount: 0 };
        const count = total.found ? Number(text(total.value)) : 0;
        const r = await ctx.kv.txn({
          // Unchanged since read (version 0: still absent), else read again and retry.
          compares: [
            { key, version: mine.version },
            { key: TOTAL, version: total.version },
          ],
          writes: [
            { type: 'put', key, value: JSON.stringify({ orders: stats.orders + 1, amount: stats.amount + Number(order.amount ?? 0) }) },
            { type: 'put', key: TOTAL, value: String(count + 1) },
          ],
        });
        if (r.succeeded) return;
      }
    },
    // Orders of different customers are counted concurrently; conflicts on the total retry the loop.
    { mode: 'stateless', events: ['put'] },
  );
}
