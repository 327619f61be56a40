/**
 * Unload, then load again after more changes than the shard's history window holds (issue 14):
 * the range lost to the window is dead-lettered with a reason, and every change after it, and
 * every change made after the load, is still delivered. On an in-process 3-node cluster whose
 * replicas keep a short history (a few dozen revisions), so the window is cheap to outrun.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DATA_GROUP } from '../../src/node/kv-node.js';
import { ExtCluster } from './cluster-harness.js';

const FIX = 'test/extensions/fixtures';
/** Revisions each replica keeps in its event history. */
const WINDOW = 40;
let c: ExtCluster;

beforeAll(async () => {
  c = await ExtCluster.start(3, { stateMachine: { maxHistoryRevisions: WINDOW } });
});

afterAll(async () => {
  await c?.stop();
});

describe('a load after an unload longer than the history window', () => {
  it('dead-letters the lost range with a reason, then delivers every later change', async () => {
    const m = await c.metaManager();
    await c.load(`${FIX}/it-version`, { config: { v: '1' } });
    await c.put('/ver/first', 'x');
    expect(await c.until(async () => c.get('/ver-seen/first'))).toBe('1');

    expect(await m.unload('it-version')).toBe(true);
    await c.until(async () => (c.managers.every((x) => !x.statuses().some((s) => s.name === 'it-version')) ? true : undefined));
    // Three windows' worth of changes while unloaded: the oldest are gone from history at the load.
    const written: { i: number; revision: number }[] = [];
    for (let i = 0; i < 3 * WINDOW; i++) written.push({ i, revision: await c.put(`/ver/u${i}`, 'x') });

    await c.load(`${FIX}/it-version`, { config: { v: '2' } });
    const afterLoad = await c.put('/ver/after-load', 'x');
    expect(await c.until(async () => c.get('/ver-seen/after-load'))).toBe('2');

    // The lost range: one dead letter naming the shard, the range and why.
    const gaps = (await c.list('/_dlq/it-version/')).filter((d) => d.key.includes('/gap-'));
    expect(gaps).toHaveLength(1);
    const gap = JSON.parse(gaps[0]!.value) as { kind: string; shard: number; error: string; lostFrom: number; lostTo: number };
    expect(gap.kind).toBe('compacted');
    expect(gap.shard).toBe(DATA_GROUP);
    expect(gap.error).toMatch(/history window/);
    expect(gap.lostFrom).toBeLessThanOrEqual(written[0]!.revision);
    expect(gap.lostTo).toBeGreaterThanOrEqual(written[0]!.revision);
    expect(gap.lostTo).toBeLessThan(afterLoad);

    // Every change after the lost range was delivered (by the new generation); none inside it was.
    const after = written.filter((w) => w.revision > gap.lostTo);
    expect(after.length).toBeGreaterThan(0);
    for (const w of after) expect(await c.until(async () => c.get(`/ver-seen/u${w.i}`)), `u${w.i} at revision ${w.revision}`).toBe('2');
    for (const w of written.filter((x) => x.revision <= gap.lostTo)) expect(await c.get(`/ver-seen/u${w.i}`)).toBeUndefined();

    // And delivery goes on.
    await c.put('/ver/later', 'x');
    expect(await c.until(async () => c.get('/ver-seen/later'))).toBe('2');
  });
});
