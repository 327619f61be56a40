/**
 * The web console in a real headless browser against real kvd processes: Debian's chromium driven
 * by puppeteer-core opens one node's console; the page shows each shard's leader (as the nodes
 * themselves report it), and a pool named with markup as plain text; then the test kills one
 * shard's leader and waits, event-driven, until the page shows another leader for that shard and
 * the killed node as down. A second cluster with TLS on the client API checks that the console
 * reaches the other nodes there too.
 *
 * Without chromium (KVCASCADE_CHROMIUM, default /usr/bin/chromium) or puppeteer-core, the
 * browser test is skipped with a message locally and fails under CI (.ci/run installs both).
 * puppeteer-core is a devDependency; for a checkout without it, KVCASCADE_PUPPETEER_DIR may
 * name a folder whose node_modules holds it.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConsoleSnapshot } from '../../src/console/gather.js';
import { KVCASCADE_VERSION } from '../../src/node/kv-node.js';
import { AdminClient } from '../../src/client/admin-client.js';
import { KvdCluster } from './harness.js';
import { TestPki } from './pki.js';

/** The little of puppeteer-core's API this test uses (typed here: the package may be absent when tsc runs). */
interface Page {
  goto(url: string, o?: { waitUntil?: string }): Promise<unknown>;
  waitForFunction<A extends unknown[]>(fn: (...args: A) => unknown, o: { polling?: string | number; timeout?: number }, ...args: A): Promise<unknown>;
  evaluate<T, A extends unknown[]>(fn: (...args: A) => T, ...args: A): Promise<T>;
  on(event: 'pageerror', fn: (e: Error) => void): void;
  close(): Promise<void>;
}
interface Browser {
  newPage(): Promise<Page>;
  close(): Promise<void>;
}
interface Puppeteer {
  launch(o: { executablePath: string; args: string[]; headless?: boolean }): Promise<Browser>;
}

/** The DOM the page functions below use (they run in the browser; the project compiles without the DOM library). */
interface PageElement {
  readonly textContent: string | null;
  getAttribute(name: string): string | null;
  querySelector(selector: string): PageElement | null;
  querySelectorAll(selector: string): Iterable<PageElement>;
}
declare const document: { readonly body: PageElement; querySelector(selector: string): PageElement | null; querySelectorAll(selector: string): Iterable<PageElement> };

/** A pool whose name and affinity are markup: the page must show them as text. */
const MARKUP_POOL = '/<img src=x onerror=window.__xss=1>';
const MARKUP_AFFINITY = '^/<script>window.__xss=2</script>(x)';
const TOKEN = 'console-test-admin-token-0123456789';

const CHROMIUM = process.env.KVCASCADE_CHROMIUM ?? '/usr/bin/chromium';

/** puppeteer-core from the project's node_modules, else from KVCASCADE_PUPPETEER_DIR; undefined when neither has it. */
async function loadPuppeteer(): Promise<Puppeteer | undefined> {
  const name = 'puppeteer-core';
  try {
    const m = (await import(name)) as { default?: Puppeteer } & Puppeteer;
    return m.default ?? m;
  } catch {
    const dir = process.env.KVCASCADE_PUPPETEER_DIR;
    if (!dir) return undefined;
    try {
      const entry = createRequire(join(dir, 'package.json')).resolve(name);
      const m = (await import(pathToFileURL(entry).href)) as { default?: Puppeteer } & Puppeteer;
      return m.default ?? m;
    } catch {
      return undefined;
    }
  }
}

const puppeteer = await loadPuppeteer();
const missing = [...(puppeteer ? [] : ['puppeteer-core (npm ci installs it)']), ...(existsSync(CHROMIUM) ? [] : [`chromium at ${CHROMIUM} (apt-get install chromium)`])];
const runBrowser = missing.length === 0 || process.env.CI === 'true';
if (!runBrowser) process.stderr.write(`console.test.ts: SKIPPING the headless-browser test: missing ${missing.join(' and ')}\n`);

describe.runIf(runBrowser)('web console in a headless browser', () => {
  let cluster: KvdCluster;
  let browser: Browser;
  let page: Page;
  const pageErrors: string[] = [];

  beforeAll(async () => {
    if (missing.length > 0) throw new Error(`the browser test needs ${missing.join(' and ')} (.ci/run installs both)`);
    cluster = await KvdCluster.start({ nodes: 3, defaultShards: 2, extraArgs: ['--admin-token', TOKEN] });
    const admin = new AdminClient({ endpoints: cluster.endpoints, token: TOKEN });
    try {
      await admin.createPool({ name: MARKUP_POOL, shards: 1, affinity: MARKUP_AFFINITY });
    } finally {
      admin.close();
    }
    browser = await puppeteer!.launch({ executablePath: CHROMIUM, args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
    page = await browser.newPage();
    page.on('pageerror', (e) => pageErrors.push(e.message));
  }, 180_000);

  afterAll(async () => {
    await page?.close().catch(() => {});
    await browser?.close().catch(() => {});
    await cluster?.stop();
  });

  /** Who leads each group, as the leaders themselves report it (group → node). */
  async function leadersFromNodes(): Promise<Map<number, number>> {
    const client = cluster.client();
    const out = new Map<number, number>();
    for (const n of cluster.nodes) {
      if (!n.proc) continue;
      const s = await client.status(n.address).catch(() => undefined);
      for (const g of s?.groups ?? []) if (g.role === 'Leader' && g.leader === s!.nodeId) out.set(g.group, g.leader);
    }
    return out;
  }

  /** Opens node `id`'s console and waits until it shows every node up and a live leader for every shard. */
  async function open(id: number): Promise<void> {
    await page.goto(`http://127.0.0.1:${cluster.node(id).metricsPort}/`, { waitUntil: 'domcontentloaded' });
    await page.waitForFunction(
      () => {
        const nodes = [...document.querySelectorAll('#nodes tbody tr')];
        const shards = [...document.querySelectorAll('#shards tbody tr')];
        return (
          nodes.length === 3 &&
          nodes.every((r) => r.getAttribute('data-up') === 'true') &&
          shards.length === 4 && // the metadata group, 2 default shards and the markup pool's
          shards.every((r) => r.getAttribute('data-leader') !== '0' && r.getAttribute('data-leader-down') === 'false')
        );
      },
      { polling: 'mutation', timeout: 30_000 },
    );
  }

  /** The leader each shard row shows: group → [data-leader, the leader cell's text]. */
  function shownLeaders(): Promise<[number, number, string][]> {
    return page.evaluate(() =>
      [...document.querySelectorAll('#shards tbody tr')].map((r): [number, number, string] => [
        Number(r.getAttribute('data-group')),
        Number(r.getAttribute('data-leader')),
        r.querySelector('td.leader')?.textContent ?? '',
      ]),
    );
  }

  it('shows each shard leader, then the new leader and the old one down after it is killed', async () => {
    await open(1);
    // The page agrees with the nodes (elections may still settle: wait for agreement, event-driven on the page's updates).
    let truth = await leadersFromNodes();
    for (let attempt = 0; attempt < 50; attempt++) {
      const shown = await shownLeaders();
      if (shown.length === 4 && shown.every(([g, l]) => truth.get(g) === l)) break;
      await page.waitForFunction((at: string | null) => document.body.getAttribute('data-updated') !== at, { polling: 'mutation', timeout: 10_000 }, await page.evaluate(() => document.body.getAttribute('data-updated')));
      truth = await leadersFromNodes();
    }
    const shown = await shownLeaders();
    expect(shown.map(([g, l]) => [g, l])).toEqual([...truth].sort((a, b) => a[0] - b[0]));
    for (const [, l, text] of shown) expect(text).toBe(`n${l}`);

    // User data is shown as text, never run or parsed as markup.
    const markup = await page.evaluate(() => ({
      pools: [...document.querySelectorAll('#pools tbody tr td.mono')].map((td) => td.textContent),
      shardPools: [...document.querySelectorAll('#shards tbody tr td.mono')].map((td) => td.textContent),
      injected: [...document.querySelectorAll('main img, main script')].length,
      xss: (globalThis as { __xss?: unknown }).__xss ?? null,
    }));
    expect(markup.pools).toContain(MARKUP_POOL);
    expect(markup.pools).toContain(MARKUP_AFFINITY);
    expect(markup.shardPools).toContain(`${MARKUP_POOL} #0`);
    expect(markup.injected).toBe(0);
    expect(markup.xss).toBeNull();

    // Kill the leader of data shard 1, watching from a node that survives.
    const victim = shown.find(([g]) => g === 1)![1];
    const watcher = cluster.nodes.map((n) => n.id).find((id) => id !== victim)!;
    if (watcher !== 1) await open(watcher);
    const started = Date.now();
    await cluster.kill(victim);
    await page.waitForFunction(
      (v: number) => {
        const row = document.querySelector('#shards tbody tr[data-group="1"]');
        const node = document.querySelector(`#nodes tbody tr[data-node="${v}"]`);
        const leader = Number(row?.getAttribute('data-leader'));
        return (
          leader !== 0 &&
          leader !== v &&
          row?.getAttribute('data-leader-down') === 'false' &&
          row?.querySelector('td.leader')?.textContent === `n${leader}` &&
          node?.getAttribute('data-up') === 'false' &&
          node?.textContent?.includes('down') === true
        );
      },
      { polling: 'mutation', timeout: 30_000 },
      victim,
    );
    const after = await shownLeaders();
    const newLeader = after.find(([g]) => g === 1)![1];
    expect(newLeader).not.toBe(victim);
    expect(await leadersFromNodes().then((m) => m.get(1))).toBe(newLeader);
    // The killed node's replica cells say so.
    const cell = await page.evaluate((v: number) => {
      const row = document.querySelector('#shards tbody tr[data-group="1"]')!;
      return [...row.querySelectorAll('td.cell')].map((c) => c.getAttribute('data-role'));
    }, victim);
    expect(cell[victim - 1]).toBe('down');
    process.stderr.write(`console.test.ts: the page showed node ${newLeader} leading shard 1 and node ${victim} down ${Date.now() - started} ms after the kill\n`);
    expect(pageErrors).toEqual([]);
  });
});

describe('web console with TLS on the client API', () => {
  let pki: TestPki;
  let cluster: KvdCluster;

  beforeAll(async () => {
    pki = new TestPki();
    const app = pki.issue('app', 'app-client');
    cluster = await KvdCluster.start({
      nodes: 3,
      nodeArgs: (id) => pki.nodeArgs(id),
      tls: { rootCert: readFileSync(pki.ca), certChain: readFileSync(app.cert), privateKey: readFileSync(app.key) },
    });
  }, 120_000);

  afterAll(async () => {
    await cluster?.stop();
    pki?.remove();
  });

  it('reaches every node with the node credentials and shows them up', async () => {
    const url = `http://127.0.0.1:${cluster.node(2).metricsPort}/console/state.json`;
    let s: ConsoleSnapshot | undefined;
    for (let i = 0; i < 100; i++) {
      s = (await (await fetch(url)).json()) as ConsoleSnapshot;
      if (s.nodes.length === 3 && s.nodes.every((n) => n.up) && s.shards.every((g) => g.leader !== 0)) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(s!.nodes.map((n) => [n.id, n.up, n.version])).toEqual([
      [1, true, KVCASCADE_VERSION],
      [2, true, KVCASCADE_VERSION],
      [3, true, KVCASCADE_VERSION],
    ]);
    expect(s!.servedBy).toBe(2);
    expect(s!.shards.every((g) => g.leader !== 0 && !g.leaderDown)).toBe(true);
  });
});
