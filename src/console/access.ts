/**
 * Who may view the web console: the single access-control hook of the console's HTTP endpoints
 * (the page, its script and style, `/console/events` and `/console/state.json`).
 *
 * kvd passes its own check (src/bin/kvd.ts `consoleViewerCheck`): while access control is off,
 * every request that reaches the metrics port may view everything; while it is on, the cluster
 * state is for root only (the admin token or a root user's token, as a header or `?token=`).
 * {@link allowEveryViewer} is the default for embedders and tests.
 */
import type { IncomingMessage } from 'node:http';

/** Decides whether `req` may view the console: true serves it, false answers 403. */
export type ConsoleViewerCheck = (req: IncomingMessage) => boolean | Promise<boolean>;

/** The default check: everyone who reaches the metrics port may view (no access control yet). */
export const allowEveryViewer: ConsoleViewerCheck = () => true;
