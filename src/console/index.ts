/**
 * The web console of a kvd node, put together: the Console gRPC service other nodes' consoles
 * ask for this node's request counters, and the page with its live event stream, served on the
 * node's metrics HTTP server (see docs in README.md, "Web console").
 */
import type * as grpc from '@grpc/grpc-js';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Registry } from 'prom-client';
import type { NodeStubs } from '../coordinator/node-stubs.js';
import type { NodeStatusInfo } from '../node/backend.js';
import type { AdminExtensionStatus } from '../server/admin-service.js';
import type { ClusterMap } from '../sharding/index.js';
import type { ConsoleViewerCheck } from './access.js';
import { ConsoleGatherer } from './gather.js';
import { ConsoleServer } from './http.js';
import { addConsoleService, nodeStatsFromRegistry } from './node-stats.js';
import { GrpcConsoleSources } from './sources.js';

export { allowEveryViewer, type ConsoleViewerCheck } from './access.js';
export type { ConsoleSnapshot } from './gather.js';

/** What a node's console needs from kvd. */
export interface NodeConsoleOptions {
  readonly nodeId: number;
  /** The node's gRPC server (client API): the Console service is added to it. */
  readonly grpcServer: grpc.Server;
  /** The node's metrics registry (request counters and latency). */
  readonly registry: Registry;
  readonly map: () => ClusterMap;
  readonly status: () => Promise<NodeStatusInfo>;
  readonly extensions: () => readonly AdminExtensionStatus[];
  /** The node's stub pool (Cluster.Status calls to the other members). */
  readonly stubs: NodeStubs;
  /** How the node dials other nodes' client APIs (TLS in a TLS cluster). */
  readonly credentials: grpc.ChannelCredentials;
  /** Who may view (default: everyone who reaches the metrics port; see access.ts). */
  readonly mayView?: ConsoleViewerCheck;
  readonly log?: { warn(obj: object, msg: string): void };
}

/** A node's running console. */
export interface NodeConsole {
  /** The metrics server's hook: answers the console's paths, returns false for others. */
  handle(req: IncomingMessage, res: ServerResponse): boolean;
  /** Ends the viewers' streams and closes the channels the console opened. */
  close(): void;
}

/** Adds the Console service to the node's gRPC server and returns the HTTP side to mount. */
export function createNodeConsole(o: NodeConsoleOptions): NodeConsole {
  const stats = () => nodeStatsFromRegistry(o.registry);
  addConsoleService(o.grpcServer, o.nodeId, stats);
  const sources = new GrpcConsoleSources({
    selfId: o.nodeId,
    map: o.map,
    selfStatus: o.status,
    selfExtensions: o.extensions,
    selfStats: stats,
    stubs: o.stubs,
    credentials: o.credentials,
  });
  const gatherer = new ConsoleGatherer(sources);
  const server = new ConsoleServer({
    gather: () => gatherer.gather(),
    ...(o.mayView ? { mayView: o.mayView } : {}),
    ...(o.log ? { log: o.log } : {}),
  });
  return {
    handle: (req, res) => server.handle(req, res),
    close: () => {
      server.close();
      sources.close();
    },
  };
}
