/**
 * The web console's HTTP side, mounted on a kvd node's metrics server: the static page (`/`, with
 * its script and style under `/console/`), a live stream of cluster snapshots as server-sent
 * events (`/console/events`), and one snapshot as JSON (`/console/state.json`).
 *
 * The cluster is gathered about once a second, and only while at least one viewer is connected;
 * the number of viewers is bounded (one more is answered 503). Every request goes through a
 * single {@link ConsoleViewerCheck} (see access.ts).
 */
import { existsSync, readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { allowEveryViewer, type ConsoleViewerCheck } from './access.js';
import type { ConsoleSnapshot } from './gather.js';

/** The static files of the page, by URL path: file name in the assets folder and content type. */
const ASSETS: Readonly<Record<string, { file: string; type: string }>> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/console/console.js': { file: 'console.js', type: 'text/javascript; charset=utf-8' },
  '/console/console.css': { file: 'console.css', type: 'text/css; charset=utf-8' },
};

/** Sent with every console response: no inline script or style may run, nothing is framed or sniffed. */
const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'Content-Security-Policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'Cache-Control': 'no-store',
};

/** A stream's buffered bytes beyond which a viewer that does not read is dropped. */
const MAX_BUFFERED_BYTES = 4 << 20;

/**
 * The package's `console/` folder (the page's static files) at or above `from` (a file URL or
 * path): found from src/ under the tests and from the compiled dist/ tree alike.
 */
export function findConsoleAssets(from: string = import.meta.url): string {
  let dir = dirname(from.startsWith('file:') ? fileURLToPath(from) : from);
  for (;;) {
    const candidate = join(dir, 'console');
    if (existsSync(join(candidate, 'index.html')) && existsSync(join(candidate, 'console.js'))) return candidate;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find console/index.html above ${from}`);
    dir = parent;
  }
}

/** Options of {@link ConsoleServer}. */
export interface ConsoleServerOptions {
  /** Gathers one snapshot (called at most once at a time). */
  readonly gather: () => Promise<ConsoleSnapshot>;
  /** Time between the starts of two gatherings while someone watches (default 1000 ms). */
  readonly intervalMs?: number;
  /** Viewers connected to `/console/events` at once (default 16); one more gets 503. */
  readonly maxViewers?: number;
  /** Who may view (default: everyone who reaches the port, until access control lands). */
  readonly mayView?: ConsoleViewerCheck;
  /**
   * The folder of index.html, console.js and console.css (default: the package's `console/`,
   * looked up on the first request; when it is missing the page answers 503 and the node runs on).
   */
  readonly assetsDir?: string;
  readonly log?: { warn(obj: object, msg: string): void };
}

/** Serves the console; {@link handle} plugs into the metrics server's request handler. */
export class ConsoleServer {
  private readonly viewers = new Set<ServerResponse>();
  private readonly intervalMs: number;
  private readonly maxViewers: number;
  private readonly mayView: ConsoleViewerCheck;
  private assetsDir: string | undefined;
  private readonly files = new Map<string, Buffer>();
  private latest: ConsoleSnapshot | undefined;
  private inFlight: Promise<ConsoleSnapshot> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private looping = false;
  private closed = false;
  private gatherings = 0;

  constructor(private readonly opts: ConsoleServerOptions) {
    this.intervalMs = opts.intervalMs ?? 1000;
    this.maxViewers = opts.maxViewers ?? 16;
    this.mayView = opts.mayView ?? allowEveryViewer;
    this.assetsDir = opts.assetsDir;
  }

  /** Viewers connected to the event stream now. */
  get viewerCount(): number {
    return this.viewers.size;
  }

  /** Snapshots gathered so far (tests: gathering stops when nobody watches). */
  get gatheredCount(): number {
    return this.gatherings;
  }

  /** Answers the console's requests; returns false (touching nothing) for any other path. */
  handle(req: IncomingMessage, res: ServerResponse): boolean {
    const path = new URL(req.url ?? '/', 'http://localhost').pathname;
    const asset = ASSETS[path];
    if (path === '/favicon.ico') {
      res.writeHead(204).end();
      return true;
    }
    if (!asset && path !== '/console/events' && path !== '/console/state.json') return false;
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) res.setHeader(k, v);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain; charset=utf-8' });
      res.end('method not allowed\n');
      return true;
    }
    Promise.resolve()
      .then(() => this.mayView(req))
      .then(
        (ok) => {
          if (!ok) {
            res.writeHead(403, { 'Content-Type': 'text/plain; charset=utf-8' });
            res.end('not allowed to view the console\n');
          } else if (asset) this.serveAsset(req, res, asset);
          else if (path === '/console/events') this.openStream(req, res);
          else this.serveState(res);
        },
        (e: unknown) => {
          this.opts.log?.warn({ err: String(e) }, 'console access check failed');
          res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' });
          res.end('access check failed\n');
        },
      );
    return true;
  }

  /** Ends every stream and stops gathering. */
  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const v of this.viewers) v.end();
    this.viewers.clear();
  }

  private serveAsset(req: IncomingMessage, res: ServerResponse, asset: { file: string; type: string }): void {
    let body = this.files.get(asset.file);
    if (!body) {
      try {
        this.assetsDir ??= findConsoleAssets();
        body = readFileSync(join(this.assetsDir, asset.file));
      } catch (e) {
        res.writeHead(503, { 'Content-Type': 'text/plain; charset=utf-8' });
        res.end(`the web console's files are not installed (${asset.file}; the package's console/ folder): /metrics and /console/state.json still answer\n`);
        this.opts.log?.warn({ err: String(e), dir: this.assetsDir }, 'console file missing');
        return;
      }
      this.files.set(asset.file, body);
    }
    res.writeHead(200, { 'Content-Type': asset.type, 'Content-Length': body.length });
    res.end(req.method === 'HEAD' ? undefined : body);
  }

  private serveState(res: ServerResponse): void {
    this.snapshot().then(
      (s) => {
        res.writeHead(200, { 'Content-Type': 'application/json; charset=utf-8' });
        res.end(JSON.stringify(s));
      },
      (e: unknown) => {
        res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' });
        res.end(`gathering the cluster state failed: ${(e as Error)?.message ?? String(e)}\n`);
      },
    );
  }

  private openStream(req: IncomingMessage, res: ServerResponse): void {
    if (this.closed) {
      res.writeHead(503, { 'Content-Type': 'text/plain; charset=utf-8' });
      res.end('the node is stopping\n');
      return;
    }
    if (this.viewers.size >= this.maxViewers) {
      res.writeHead(503, { 'Content-Type': 'text/plain; charset=utf-8', 'Retry-After': '10' });
      res.end(`too many console viewers on this node (at most ${this.maxViewers}): close another console, or open the console of another node\n`);
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/event-stream; charset=utf-8', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
    res.write(`retry: ${Math.max(1000, 2 * this.intervalMs)}\n\n`);
    this.viewers.add(res);
    const drop = (): void => {
      this.viewers.delete(res);
    };
    req.on('close', drop);
    res.on('close', drop);
    res.on('error', drop);
    if (this.latest && Date.now() - this.latest.at < 2 * this.intervalMs) this.send(res, this.latest);
    if (!this.looping) this.loop();
  }

  /** One snapshot: the one being gathered, else a new one. */
  private snapshot(): Promise<ConsoleSnapshot> {
    if (!this.inFlight) {
      this.gatherings++;
      this.inFlight = this.opts.gather().finally(() => {
        this.inFlight = undefined;
      });
      this.inFlight.then(
        (s) => {
          this.latest = s;
        },
        () => {},
      );
    }
    return this.inFlight;
  }

  /** Gathers and broadcasts, then schedules the next round while someone watches. */
  private loop(): void {
    this.timer = undefined;
    if (this.closed || this.viewers.size === 0) {
      this.looping = false;
      return;
    }
    this.looping = true;
    const started = Date.now();
    this.snapshot().then(
      (s) => {
        for (const v of this.viewers) this.send(v, s);
      },
      (e: unknown) => {
        const msg = JSON.stringify({ message: (e as Error)?.message ?? String(e) });
        for (const v of this.viewers) v.write(`event: failure\ndata: ${msg}\n\n`);
      },
    ).finally(() => {
      if (this.closed || this.viewers.size === 0) {
        this.looping = false;
        return;
      }
      this.timer = setTimeout(() => this.loop(), Math.max(0, this.intervalMs - (Date.now() - started)));
      this.timer.unref();
    });
  }

  private send(v: ServerResponse, s: ConsoleSnapshot): void {
    if (v.writableLength > MAX_BUFFERED_BYTES) {
      // A viewer that stopped reading: drop it rather than buffer without bound.
      this.viewers.delete(v);
      v.destroy();
      return;
    }
    v.write(`event: snapshot\ndata: ${JSON.stringify(s)}\n\n`);
  }
}
