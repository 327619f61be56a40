/** Tests of node identities in peer certificates. */
import { describe, expect, it } from 'vitest';
import type { PeerCertificate } from 'node:tls';
import { nodeIdOfCertificate, peerServerIdentityCheck } from '../../src/node/peer-identity.js';

const cert = (cn: string | string[] | undefined, san = ''): PeerCertificate =>
  ({ subject: cn === undefined ? {} : { CN: cn }, subjectaltname: san }) as unknown as PeerCertificate;

describe('node identity of a certificate', () => {
  it('reads CN node-<id> or SAN URI urn:kvcascade:node:<id>', () => {
    expect(nodeIdOfCertificate(cert('node-3'))).toBe(3);
    expect(nodeIdOfCertificate(cert('anything', 'DNS:localhost, URI:urn:kvcascade:node:7, IP Address:127.0.0.1'))).toBe(7);
    expect(nodeIdOfCertificate(cert('node-7', 'URI:urn:kvcascade:node:7'))).toBe(7);
  });

  it('names no node for other names, ambiguous or out-of-range ids', () => {
    for (const c of [
      cert('app-client'),
      cert(undefined),
      cert('node-0'),
      cert('node-03'),
      cert('node-2147483648'),
      cert('node-1x'),
      cert(['node-1', 'node-2']),
      cert('node-1', 'URI:urn:kvcascade:node:2'),
      cert(undefined, 'URI:urn:kvcascade:node:1, URI:urn:kvcascade:node:2'),
      cert(undefined, 'URI:urn:kvcascade:node:abc'),
    ]) {
      expect(nodeIdOfCertificate(c)).toBeUndefined();
    }
    expect(nodeIdOfCertificate(undefined)).toBeUndefined();
  });

  it('a dialler accepts only the node it meant to reach, after the host name check', () => {
    const ok = () => undefined;
    expect(peerServerIdentityCheck(2, ok)('127.0.0.1', cert('node-2'))).toBeUndefined();
    expect(peerServerIdentityCheck(2, ok)('127.0.0.1', cert('node-3'))?.message).toMatch(/certificate for node 3, expected node 2/);
    expect(peerServerIdentityCheck(2, ok)('127.0.0.1', cert('app'))?.message).toMatch(/certificate for no node id, expected node 2/);
    const hostErr = new Error('host mismatch');
    expect(peerServerIdentityCheck(2, () => hostErr)('h', cert('node-2'))).toBe(hostErr);
  });
});
