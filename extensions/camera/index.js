// kvcascade example extension: each camera's state (idle -> swivel -> focus -> photo -> idle)
// lives in a versioned key, /cameras/<id>/state. Events arrive as successive puts of
// /cameras/<id>/event whose value names the event ("motion", "aimed", "focused", "taken",
// "reset"); a stateful watch hands one key's events to the lambda one at a time, in version
// order. The lambda advances the state with a conditional put on the version it read, and
// re-reads and retries when another writer (an operator's reset, say) got there first: no locks.
//
// Presence: a camera announces itself with /cameras/<id>/online, put with a lease it keeps
// alive (`kvctl put --lease`, or `client.put(key, v, { lease })` + `client.leases.keepAlive`).
// When the camera stops renewing, the lease expires, the key is deleted through the log, and the
// second lambda below sees that DELETE: "camera 7 went offline" is written to
// /cameras/<id>/presence (and back to online when the key is put again). See docs/leases.md.

const TRANSITIONS = {
  idle: { motion: 'swivel' },
  swivel: { aimed: 'focus', reset: 'idle' },
  focus: { focused: 'photo', reset: 'idle' },
  photo: { taken: 'idle', reset: 'idle' },
};

/** @param {import('kvcascade/extension').ExtensionContext} ctx */
export function initialize(ctx) {
  const maxRetries = Number(ctx.config.maxRetries ?? 20);
  const conflicts = ctx.metrics.counter('cas_conflicts_total', 'conditional puts that lost a race and were retried');
  const rejected = ctx.metrics.counter('invalid_events_total', 'events that are not valid in the current state');
  ctx.watch(
    '/cameras/',
    async (event) => {
      const m = /^\/cameras\/([^/]+)\/event$/.exec(event.key);
      if (!m) return; // state keys and anything else under /cameras/ are not events
      const camera = m[1];
      const what = new TextDecoder().decode(event.value).trim();
      const stateKey = `/cameras/${camera}/state`;
      for (let attempt = 0; attempt <= maxRetries; attempt++) {
        const cur = await ctx.kv.get(stateKey);
        const state = cur.found ? JSON.parse(new TextDecoder().decode(cur.value)) : { state: 'idle', photos: 0, lastEvent: 0 };
        if (state.lastEvent >= event.version) return; // already applied (a redelivered event)
        const next = TRANSITIONS[state.state]?.[what];
        if (!next) {
          rejected.inc();
          ctx.log.warn('event not valid in this state', { camera, state: state.state, event: what });
          return;
        }
        const updated = { state: next, photos: state.photos + (what === 'taken' ? 1 : 0), lastEvent: event.version };
        const r = await ctx.kv.put(stateKey, JSON.stringify(updated), { expectedVersion: cur.found ? cur.version : 0 });
        if (r.succeeded) return;
        conflicts.inc(); // someone else advanced the state: read again and retry
      }
      throw new Error(`camera ${camera}: gave up after ${maxRetries} conflicting updates`);
    },
    { mode: 'stateful', events: ['put'] },
  );
  const offline = ctx.metrics.counter('cameras_offline_total', 'cameras that went offline (their lease ended)');
  ctx.watch(
    '/cameras/',
    async (event) => {
      const m = /^\/cameras\/([^/]+)\/online$/.exec(event.key);
      if (!m) return;
      const camera = m[1];
      const online = event.type === 'put';
      if (!online) {
        offline.inc();
        ctx.log.info('camera went offline', { camera, at: new Date(event.timestamp).toISOString() });
      }
      // Idempotent on redelivery: the presence record names the event's version.
      await ctx.kv.put(`/cameras/${camera}/presence`, JSON.stringify({ online, since: event.timestamp, version: event.version }));
    },
    { mode: 'stateful', events: ['put', 'delete'] },
  );
}
