/** Runs the Transport conformance suite against the in-process LoopbackHub and the gRPC peer transport on loopback. */
import * as grpc from '@grpc/grpc-js';
import { GrpcPeerTransport } from '../../src/node/grpc-transport.js';
import { LoopbackHub, type Transport } from '../../src/node/transport.js';
import type { NodeId } from '../../src/raft/index.js';
import { silentLogger } from '../../src/log.js';
import { transportConformance } from './transport.js';

transportConformance('LoopbackHub', async (ids) => {
  const hub = new LoopbackHub();
  const transports = new Map<NodeId, Transport>(ids.map((id) => [id, hub.transport(id)]));
  return {
    transports,
    stop: async (id) => transports.get(id)!.close(),
    restart: async (id) => {
      const t = hub.transport(id);
      transports.set(id, t);
      return t;
    },
    close: async () => {
      for (const t of transports.values()) await t.close();
    },
  };
});

transportConformance('GrpcPeerTransport', async (ids) => {
  const servers = new Map<NodeId, grpc.Server>();
  const addresses = new Map<NodeId, string>();
  for (const id of ids) {
    const server = new grpc.Server();
    servers.set(id, server);
  }
  const transports = new Map<NodeId, GrpcPeerTransport>();
  const members = new Set(ids);
  for (const id of ids) {
    const t = new GrpcPeerTransport(id, new Map(), { log: silentLogger() });
    t.register(servers.get(id)!, { isMember: (n) => members.has(n), authenticate: () => 'unauthenticated' });
    transports.set(id, t);
    const port = await new Promise<number>((res, rej) =>
      servers.get(id)!.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
    );
    addresses.set(id, `127.0.0.1:${port}`);
  }
  for (const [id, t] of transports) for (const [peer, addr] of addresses) if (peer !== id) t.setPeer(peer, addr);
  const stopped = new Set<NodeId>();
  const stop = async (id: NodeId): Promise<void> => {
    if (stopped.has(id)) return;
    stopped.add(id);
    await transports.get(id)!.close();
    servers.get(id)!.forceShutdown();
  };
  /** A node's transport and its peer listener on an ephemeral loopback port (peers learn the address through setPeer). */
  const listen = async (id: NodeId): Promise<GrpcPeerTransport> => {
    const server = new grpc.Server();
    const t = new GrpcPeerTransport(id, new Map(), { log: silentLogger() });
    t.register(server, { isMember: (n) => members.has(n), authenticate: () => 'unauthenticated' });
    const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
    servers.set(id, server);
    transports.set(id, t);
    addresses.set(id, `127.0.0.1:${port}`);
    return t;
  };
  return {
    transports,
    stop,
    restart: async (id) => {
      const t = await listen(id);
      stopped.delete(id);
      for (const [peer, addr] of addresses) if (peer !== id) t.setPeer(peer, addr);
      for (const [peer, other] of transports) if (peer !== id) other.setPeer(id, addresses.get(id)!);
      return t;
    },
    close: async () => {
      for (const id of ids) await stop(id);
    },
  };
});
