/**
 * The credentials of a kvd process, built from its configuration: the client API's server side
 * (TLS, and client-certificate authentication when a CA is given), the peer listener's (mutual TLS
 * against the cluster CA, the caller's node id taken from its certificate), and the client sides
 * this node dials with (peers, and other nodes' client APIs when it forwards requests).
 */
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { checkServerIdentity } from 'node:tls';
import type { KvdConfig } from './kvd-config.js';
import type { PeerAuthenticator } from '../node/grpc-transport.js';
import { nodeIdOfCertificate, peerServerIdentityCheck } from '../node/peer-identity.js';
import type { NodeId } from '../raft/index.js';

/** Every credential a kvd process serves and dials with. */
export interface KvdCredentials {
  /** The client API's server credentials. */
  readonly clientServer: grpc.ServerCredentials;
  /** How this node dials other nodes' client APIs (forwarding, status probes, lambdas' calls, joining). */
  readonly clientDial: grpc.ChannelCredentials;
  /** The peer listener's server credentials. */
  readonly peerServer: grpc.ServerCredentials;
  /** How this node dials peer `id` (checking, under TLS, that the certificate names `id`). */
  readonly peerDial: (id: NodeId) => grpc.ChannelCredentials;
  /** Who is calling on a peer stream. */
  readonly peerAuthenticator: PeerAuthenticator;
  /** Whether the client API requires client certificates. */
  readonly clientCertAuth: boolean;
}

/** Builds the credentials `cfg` asks for (reads the PEM files; throws with the file name if one is unreadable). */
export function kvdCredentials(cfg: KvdConfig): KvdCredentials {
  const read = (file: string | undefined): Buffer | null => {
    if (!file) return null;
    try {
      return readFileSync(file);
    } catch (e) {
      throw new Error(`cannot read ${file}: ${(e as Error).message}`);
    }
  };
  const cert = read(cfg.tlsCert);
  const key = read(cfg.tlsKey);
  const ca = read(cfg.tlsCa);
  const clientTls = cert !== null && key !== null;
  const clientServer = clientTls
    ? grpc.ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], ca !== null)
    : grpc.ServerCredentials.createInsecure();
  const clientDial = clientTls ? grpc.credentials.createSsl(ca, key, cert) : grpc.credentials.createInsecure();

  const peerCert = read(cfg.peerTlsCert);
  const peerKey = read(cfg.peerTlsKey);
  const peerCa = read(cfg.peerTlsCa);
  const peerTls = !cfg.insecurePeers && peerCert !== null && peerKey !== null && peerCa !== null;
  const peerServer = peerTls
    ? grpc.ServerCredentials.createSsl(peerCa, [{ cert_chain: peerCert, private_key: peerKey }], true)
    : grpc.ServerCredentials.createInsecure();
  const dialCache = new Map<NodeId, grpc.ChannelCredentials>();
  const peerDial = (id: NodeId): grpc.ChannelCredentials => {
    if (!peerTls) return grpc.credentials.createInsecure();
    let c = dialCache.get(id);
    if (!c) {
      c = grpc.credentials.createSsl(peerCa, peerKey, peerCert, { checkServerIdentity: peerServerIdentityCheck(id, checkServerIdentity) });
      dialCache.set(id, c);
    }
    return c;
  };
  const peerAuthenticator: PeerAuthenticator = peerTls
    ? (call) => nodeIdOfCertificate(call.getAuthContext()?.sslPeerCertificate)
    : () => 'unauthenticated';
  return { clientServer, clientDial, peerServer, peerDial, peerAuthenticator, clientCertAuth: clientTls && ca !== null };
}
