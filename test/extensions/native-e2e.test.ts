/** End to end: the native counter example (C, built with make) loaded on a 3-node in-process cluster counts the puts under /counter/events/. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATA_GROUP } from '../../src/node/kv-node.js';
import { ExtCluster } from './cluster-harness.js';
import { buildCounterInPlace, COUNTER_DIR, HAVE_GCC, NO_GCC_REASON } from './native/helpers.js';

if (!HAVE_GCC) console.warn(NO_GCC_REASON);

describe.skipIf(!HAVE_GCC)(HAVE_GCC ? 'native extension on a cluster' : NO_GCC_REASON, () => {
  let c: ExtCluster;
  beforeAll(async () => {
    buildCounterInPlace(); // make in extensions/native/counter: build/libcounter.so, as its package.json declares
    c = await ExtCluster.start(3);
  });
  afterAll(async () => {
    await c?.stop();
  });

  it('counter: every put under /counter/events/ adds one to /counter/total (C lambdas, sync store calls through the worker bridge)', async () => {
    const status = await c.load(COUNTER_DIR, { name: 'counter' });
    expect(status.state).toBe('running');
    expect(status.watches.map((w) => w.prefix)).toEqual(['/counter/events/']);

    const keys = ['a', 'b', 'c', 'a', 'd', 'b', 'a'];
    for (const [i, k] of keys.entries()) await c.put(`/counter/events/${k}`, `event ${i}`);
    await c.until(async () => ((await c.get('/counter/total')) === String(keys.length) ? true : undefined));

    // Every node runs the extension (in a worker); the data leader delivers.
    await c.until(async () => (c.managers.every((m) => m.statuses().find((s) => s.name === 'counter')?.state === 'running') ? true : undefined));

    // The native write carried hop count event.hops + 1 = 1 (client puts have 0) into the log.
    const leader = await c.leader(DATA_GROUP);
    const total = await leader.get({ key: '/counter/total', consistency: 'linearizable' }, { deadlineMs: Date.now() + 5000 });
    expect(leader.replica(DATA_GROUP)!.hopsOf(total.version)).toBe(1);

    // One marker per event key, holding the version of its last counted put.
    const markers = await c.list('/counter/last-version/');
    expect(markers.map((m) => m.key)).toEqual(['a', 'b', 'c', 'd'].map((k) => `/counter/last-version/${k}`));

    // Writes outside the watched prefix (including the extension's own) are not counted.
    await c.put('/counter/other', 'x');
    await c.put('/counter/events/e', 'late');
    await c.until(async () => ((await c.get('/counter/total')) === String(keys.length + 1) ? true : undefined));
    await new Promise((r) => setTimeout(r, 300));
    expect(await c.get('/counter/total')).toBe(String(keys.length + 1));
  });
});
