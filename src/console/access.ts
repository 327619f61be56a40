/**
 * Who may view the web console: the single access-control hook of the console's HTTP endpoints
 * (the page, its script and style, `/console/events` and `/console/state.json`).
 *
 * Until access control lands, every request that reaches the metrics port may view everything
 * (the port listens on 127.0.0.1 only). When it lands, replace {@link allowEveryViewer} (or pass
 * another {@link ConsoleViewerCheck} to the console server) with a check of the request's
 * credentials; it may also narrow what a viewer sees once snapshots are filtered per viewer.
 */
import type { IncomingMessage } from 'node:http';

/** Decides whether `req` may view the console: true serves it, false answers 403. */
export type ConsoleViewerCheck = (req: IncomingMessage) => boolean | Promise<boolean>;

/** The default check: everyone who reaches the metrics port may view (no access control yet). */
export const allowEveryViewer: ConsoleViewerCheck = () => true;
