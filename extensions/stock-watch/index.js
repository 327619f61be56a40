// kvcascade example extension: on every put of /stocks/<symbol>, compare the new price with the
// previous version of the same key (read "as of" the revision before this one) and write an
// alert under /alerts/<symbol>/<version> when it dropped by more than the threshold (1.5%).
// Idempotent: the alert's key is the price's version, so a redelivered event rewrites the same alert.

/** @param {import('kvcascade/extension').ExtensionContext} ctx */
export function initialize(ctx) {
  const thresholdPct = Number(ctx.config.thresholdPct ?? 1.5);
  const alerts = ctx.metrics.counter('alerts_total', 'price-drop alerts written');
  ctx.watch(
    '/stocks/',
    async (event) => {
      const symbol = event.key.slice('/stocks/'.length);
      const price = parsePrice(event.value);
      if (price === undefined) {
        ctx.log.warn('not a price', { key: event.key });
        return;
      }
      if (event.created) return; // the first price of this symbol
      // The price before this change (previousVersion; version - 1 reads the same on older nodes).
      const before = await ctx.kv.get(event.key, { atVersion: event.previousVersion ?? event.version - 1 });
      if (!before.found) return;
      const previous = parsePrice(before.value);
      if (previous === undefined || previous <= 0) return;
      const dropPct = ((previous - price) / previous) * 100;
      if (dropPct > thresholdPct) {
        const alert = { symbol, from: previous, to: price, dropPct: Math.round(dropPct * 100) / 100, version: event.version, at: event.timestamp };
        await ctx.kv.put(`/alerts/${symbol}/${event.version}`, JSON.stringify(alert));
        alerts.inc();
        ctx.log.info('price drop alert', alert);
      }
    },
    { mode: 'stateful', events: ['put'] },
  );
}

/** A price is a decimal number, or JSON with a "price" field. */
function parsePrice(value) {
  if (!value) return undefined;
  const text = new TextDecoder().decode(value).trim();
  const n = text.startsWith('{') ? Number(JSON.parse(text).price) : Number(text);
  return Number.isFinite(n) ? n : undefined;
}
