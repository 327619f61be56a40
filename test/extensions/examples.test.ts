/**
 * The example extensions in extensions/, and the README's extension snippet as written, loaded
 * into an in-process 3-node cluster and driven by puts.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExtCluster } from './cluster-harness.js';

let c: ExtCluster;

beforeAll(async () => {
  c = await ExtCluster.start();
});

afterAll(async () => {
  await c?.stop();
});

describe('example extensions', () => {
  it('stock watch: a drop of more than 1.5% since the last price writes an alert', async () => {
    const status = await c.load('extensions/stock-watch');
    expect(status.state).toBe('running');
    await c.put('/stocks/ACME', '100');
    await c.put('/stocks/ACME', '99'); // -1%: no alert
    const v = await c.put('/stocks/ACME', '97'); // -2.02%: alert
    const alert = await c.until(async () => c.get(`/alerts/ACME/${v}`));
    expect(JSON.parse(alert)).toMatchObject({ symbol: 'ACME', from: 99, to: 97 });
    const all = await c.list('/alerts/ACME/');
    expect(all).toHaveLength(1);
  });

  it("the README's snippet runs as written and writes the alert the README shows", async () => {
    const readme = readFileSync('README.md', 'utf8');
    const snippet = /```js\n(\/\/ extensions\/stock-watch\/index\.js[^\n]*\n[\s\S]*?)```/.exec(readme)?.[1];
    expect(snippet).toBeDefined();
    const dir = mkdtempSync(join(tmpdir(), 'kvcascade-readme-'));
    try {
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'readme-snippet', version: '1.0.0', type: 'module', main: 'index.js' }));
      writeFileSync(join(dir, 'index.js'), snippet!);
      expect((await c.load(dir)).state).toBe('running');
      await c.put('/stocks/README', '100');
      const v = await c.put('/stocks/README', '97'); // the README's 3% drop
      // The stock-watch example (loaded above) writes the same key: wait for the snippet's own value.
      const shown = /\/alerts\/ACME\/<version>\s+(\{[^}]*)\}/.exec(readme)?.[1];
      expect(shown).toContain('"symbol":"ACME","from":100,"to":97');
      const alerts = await c.until(async () => {
        const items = await c.list('/alerts/README/');
        return items.length > 0 ? items : undefined;
      });
      expect(alerts.map((a) => a.key)).toEqual([`/alerts/README/${v}`]);
      expect(JSON.parse(alerts[0]!.value)).toMatchObject({ symbol: 'README', from: 100, to: 97 });
      const dlq = await c.list('/_dlq/readme-snippet/').catch(() => []);
      expect(dlq).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('camera: idle -> swivel -> focus -> photo -> idle with conditional puts', async () => {
    await c.load('extensions/camera');
    for (const e of ['motion', 'aimed', 'focused', 'taken', 'motion']) await c.put('/cameras/c1/event', e);
    const state = await c.until(async () => {
      const s = await c.get('/cameras/c1/state');
      return s && JSON.parse(s).photos === 1 && JSON.parse(s).state === 'swivel' ? JSON.parse(s) : undefined;
    });
    expect(state).toMatchObject({ state: 'swivel', photos: 1 });
  });

  it('camera (loaded above): a presence key deleted (its lease ended) fires the offline lambda', async () => {
    await c.put('/cameras/c9/online', 'yes');
    const on = await c.until(async () => {
      const s = await c.get('/cameras/c9/presence');
      return s && JSON.parse(s).online === true ? JSON.parse(s) : undefined;
    });
    expect(on.online).toBe(true);
    await c.del('/cameras/c9/online'); // what a lease's expiry does through the log
    const off = await c.until(async () => {
      const s = await c.get('/cameras/c9/presence');
      return s && JSON.parse(s).online === false ? JSON.parse(s) : undefined;
    });
    expect(off.version).toBeGreaterThan(on.version);
    expect(off.since).toBeGreaterThanOrEqual(on.since);
  });

  it('photo pipeline: metadata -> interesting -> download, with hop counts', async () => {
    await c.load('extensions/photo-pipeline');
    await c.put('/photos/p1/meta', JSON.stringify({ url: 'http://cam/p1.jpg', score: 0.9 }));
    await c.put('/photos/p2/meta', JSON.stringify({ url: 'http://cam/p2.jpg', score: 0.1, tags: ['tree'] }));
    const d = await c.until(async () => c.get('/pipeline/downloads/p1'));
    expect(JSON.parse(d)).toMatchObject({ url: 'http://cam/p1.jpg', hops: 1 });
    expect(await c.get('/pipeline/interesting/p2')).toBeUndefined();
  });
});
