// kvcascade example extension: a two-stage pipeline where each lambda's output key triggers the
// next one. Stage 1 watches /photos/<id>/meta and decides whether the photo is interesting;
// interesting ones get /pipeline/interesting/<id>. Stage 2 watches /pipeline/interesting/ and
// "downloads" the photo by writing /pipeline/downloads/<id>. Every write made by a lambda carries
// a hop count, so a chain that loops back on itself stops at the hop limit instead of running forever.

/** @param {import('kvcascade/extension').ExtensionContext} ctx */
export function initialize(ctx) {
  const minScore = Number(ctx.config.minScore ?? 0.8);
  const wanted = new Set(ctx.config.tags ?? ['bird', 'deer', 'person']);

  ctx.watch(
    '/photos/',
    async (event) => {
      const m = /^\/photos\/([^/]+)\/meta$/.exec(event.key);
      if (!m) return;
      const meta = JSON.parse(new TextDecoder().decode(event.value));
      const interesting = (meta.score ?? 0) >= minScore || (meta.tags ?? []).some((t) => wanted.has(t));
      if (!interesting) return;
      await ctx.kv.put(`/pipeline/interesting/${m[1]}`, JSON.stringify({ url: meta.url, score: meta.score ?? null, tags: meta.tags ?? [], from: event.version }));
    },
    { mode: 'stateless', events: ['put'], concurrency: 8 },
  );

  ctx.watch(
    '/pipeline/interesting/',
    async (event) => {
      const id = event.key.slice('/pipeline/interesting/'.length);
      const item = JSON.parse(new TextDecoder().decode(event.value));
      // A real stage would fetch item.url; the example records what it would download and when.
      await ctx.kv.put(`/pipeline/downloads/${id}`, JSON.stringify({ url: item.url, hops: event.hops, at: event.timestamp }));
    },
    { mode: 'stateless', events: ['put'], concurrency: 8 },
  );
}
