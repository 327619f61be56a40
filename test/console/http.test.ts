/**
 * The web console's HTTP side (src/console/http.ts) on a real HTTP server with a fake gatherer:
 * the page and its files (with their security headers), the event stream (snapshots about every
 * interval, gathering only while someone watches), the viewer limit (503), the access hook (403),
 * and that the page's files ship with the package and are found from the compiled tree.
 */
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, get, type IncomingMessage, type Server } from 'node:http';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { ConsoleSnapshot } from '../../src/console/gather.js';
import { ConsoleServer, findConsoleAssets, type ConsoleServerOptions } from '../../src/console/http.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

function snapshot(n: number): ConsoleSnapshot {
  return { at: Date.now(), tookMs: 1, servedBy: 1, mapEpoch: n, nodes: [], pools: [], shards: [], extensions: [] };
}

let servers: { http: Server; console: ConsoleServer }[] = [];

afterEach(async () => {
  for (const s of servers) {
    s.console.close();
    s.http.closeAllConnections();
    await new Promise((r) => s.http.close(r));
  }
  servers = [];
});

/** A console on an ephemeral port (404 for anything it does not answer, as the metrics server does). */
async function start(opts: Partial<ConsoleServerOptions> = {}): Promise<{ url: string; console: ConsoleServer; gathered: () => number }> {
  let n = 0;
  const c = new ConsoleServer({ gather: async () => snapshot(++n), intervalMs: 50, ...opts });
  const http = createServer((req, res) => {
    if (!c.handle(req, res)) res.writeHead(404).end('not found\n');
  });
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  servers.push({ http, console: c });
  const port = (http.address() as { port: number }).port;
  return { url: `http://127.0.0.1:${port}`, console: c, gathered: () => n };
}

/** Opens the event stream; resolves with the response and a function that waits for the next `count` snapshots. */
function openEvents(url: string): Promise<{ res: IncomingMessage; next: (count: number) => Promise<ConsoleSnapshot[]>; close: () => void }> {
  return new Promise((resolveOpen, reject) => {
    const req = get(`${url}/console/events`, (res) => {
      let buf = '';
      const got: ConsoleSnapshot[] = [];
      let waiter: (() => void) | undefined;
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        buf += d;
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = block.split('\n').find((l) => l.startsWith('data: '));
          if (block.includes('event: snapshot') && data) got.push(JSON.parse(data.slice(6)) as ConsoleSnapshot);
        }
        waiter?.();
      });
      resolveOpen({
        res,
        next: (count) =>
          new Promise((done) => {
            const check = () => {
              if (got.length >= count) {
                waiter = undefined;
                done(got.splice(0, count));
              }
            };
            waiter = check;
            check();
          }),
        close: () => req.destroy(),
      });
    });
    req.on('error', reject);
  });
}

describe('ConsoleServer', () => {
  it('serves the page and its files with a strict content security policy', async () => {
    const { url } = await start();
    const page = await fetch(`${url}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toContain('text/html');
    expect(page.headers.get('content-security-policy')).toContain("script-src 'self'");
    expect(page.headers.get('x-content-type-options')).toBe('nosniff');
    const html = await page.text();
    expect(html).toContain('/console/console.js');
    expect((await fetch(`${url}/console/console.js`)).headers.get('content-type')).toContain('javascript');
    expect((await fetch(`${url}/console/console.css`)).headers.get('content-type')).toContain('text/css');
    expect((await fetch(`${url}/console/../package.json`)).status).toBe(404);
    expect((await fetch(`${url}/metrics`)).status).toBe(404); // left to the metrics server
    expect((await fetch(`${url}/`, { method: 'POST' })).status).toBe(405);
    const state = await fetch(`${url}/console/state.json`);
    expect(state.status).toBe(200);
    expect(((await state.json()) as ConsoleSnapshot).servedBy).toBe(1);
  });

  it('streams snapshots while someone watches, and stops gathering when nobody does', async () => {
    const { url, console: c, gathered } = await start();
    expect(gathered()).toBe(0); // nobody watches yet
    const a = await openEvents(url);
    expect(a.res.statusCode).toBe(200);
    expect(a.res.headers['content-type']).toContain('text/event-stream');
    const first = await a.next(3);
    expect(first.map((s) => s.mapEpoch)).toEqual([...first.map((s) => s.mapEpoch)].sort((x, y) => x - y));
    expect(c.viewerCount).toBe(1);
    a.close();
    await expect.poll(() => c.viewerCount).toBe(0);
    await new Promise((r) => setTimeout(r, 150)); // let a round in flight finish
    const after = gathered();
    await new Promise((r) => setTimeout(r, 300)); // 6 intervals: no gathering without viewers
    expect(gathered()).toBe(after);
    // A new viewer starts it again.
    const b = await openEvents(url);
    await b.next(1);
    b.close();
  });

  it('refuses viewers beyond the limit with 503 and a reason', async () => {
    const { url } = await start({ maxViewers: 2 });
    const a = await openEvents(url);
    const b = await openEvents(url);
    const res = await fetch(`${url}/console/events`);
    expect(res.status).toBe(503);
    expect(await res.text()).toContain('too many console viewers');
    a.close();
    b.close();
  });

  it('asks the access hook for every request', async () => {
    const seen: string[] = [];
    const { url } = await start({ mayView: async (req) => (seen.push(req.url ?? ''), !req.url?.includes('events')) });
    expect((await fetch(`${url}/`)).status).toBe(200);
    expect((await fetch(`${url}/console/events`)).status).toBe(403);
    expect(seen).toEqual(['/', '/console/events']);
  });

  it('answers 503 for the page when its files are missing, and still serves snapshots', async () => {
    const { url } = await start({ assetsDir: join(root, 'no-such-folder') });
    const page = await fetch(`${url}/`);
    expect(page.status).toBe(503);
    expect(await page.text()).toContain('not installed');
    expect((await fetch(`${url}/console/state.json`)).status).toBe(200);
  });
});

describe('the console page files', () => {
  it('ship with the package and are found from the compiled tree', () => {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { files: string[] };
    expect(pkg.files).toContain('console');
    expect(findConsoleAssets(join(root, 'dist', 'src', 'console', 'http.js'))).toBe(join(root, 'console'));
    expect(findConsoleAssets(join(root, 'src', 'console', 'http.ts'))).toBe(join(root, 'console'));
  });

  it('never parse server data as HTML', () => {
    const js = readFileSync(join(root, 'console', 'console.js'), 'utf8');
    for (const sink of ['innerHTML', 'outerHTML', 'insertAdjacentHTML', 'document.write', 'eval(', 'new Function']) expect(js).not.toContain(sink);
    const html = readFileSync(join(root, 'console', 'index.html'), 'utf8');
    expect(html).not.toMatch(/<script>(?!<\/script>)/); // no inline script (the CSP would block it anyway)
    expect(html).not.toMatch(/\sstyle=/);
  });
});
