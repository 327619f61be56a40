/**
 * Node identity in peer certificates: which node id a certificate names, so a peer stream can be
 * bound to the node that authenticated it (mutual TLS) and a dialler can check it reached the
 * node it meant to. A certificate names node N by a URI SAN `urn:kvcascade:node:N` or, failing
 * that, a subject common name `node-N`.
 */
import type { PeerCertificate } from 'node:tls';
import type { NodeId } from '../raft/index.js';

/** Largest node id (2^31 - 1), as in the cluster map. */
const MAX_NODE_ID = 2 ** 31 - 1;

const URI_SAN = /^urn:kvcascade:node:([1-9][0-9]{0,9})$/;
const COMMON_NAME = /^node-([1-9][0-9]{0,9})$/;

function parseId(text: string | undefined, pattern: RegExp): NodeId | undefined {
  if (text === undefined) return undefined;
  const m = pattern.exec(text.trim());
  if (!m) return undefined;
  const id = Number(m[1]);
  return id <= MAX_NODE_ID ? id : undefined;
}

/**
 * The node id a peer certificate names, or undefined when it names none or names several
 * (more than one `urn:kvcascade:node:` SAN, or a SAN and a common name that disagree).
 */
export function nodeIdOfCertificate(cert: Pick<PeerCertificate, 'subject' | 'subjectaltname'> | undefined | null): NodeId | undefined {
  if (!cert) return undefined;
  const sanIds = new Set<NodeId>();
  let sanClaims = 0;
  for (const part of (cert.subjectaltname ?? '').split(',')) {
    const p = part.trim();
    if (!p.startsWith('URI:urn:kvcascade:node:')) continue;
    sanClaims++;
    const id = parseId(p.slice('URI:'.length), URI_SAN);
    if (id === undefined) return undefined;
    sanIds.add(id);
  }
  if (sanClaims > 0 && sanIds.size !== 1) return undefined;
  const cnRaw = cert.subject?.CN as string | string[] | undefined;
  const cns = cnRaw === undefined ? [] : Array.isArray(cnRaw) ? cnRaw : [cnRaw];
  const cnIds = new Set(cns.map((c) => parseId(c, COMMON_NAME)).filter((x): x is NodeId => x !== undefined));
  const san = sanIds.size === 1 ? [...sanIds][0] : undefined;
  if (san !== undefined) {
    if (cnIds.size > 0 && !(cnIds.size === 1 && cnIds.has(san))) return undefined;
    return san;
  }
  return cnIds.size === 1 ? [...cnIds][0] : undefined;
}

/**
 * A `checkServerIdentity` for dialling peer `expected`: the usual host name check, then the
 * certificate must name node `expected` (so a stream for node 2 never lands on node 3).
 */
export function peerServerIdentityCheck(
  expected: NodeId,
  hostCheck: (host: string, cert: PeerCertificate) => Error | undefined,
): (host: string, cert: PeerCertificate) => Error | undefined {
  return (host, cert) => {
    const err = hostCheck(host, cert);
    if (err) return err;
    const id = nodeIdOfCertificate(cert);
    if (id !== expected) {
      return new Error(`the peer at ${host} presented a certificate for ${id === undefined ? 'no node id' : `node ${id}`}, expected node ${expected} (CN node-${expected} or SAN URI urn:kvcascade:node:${expected})`);
    }
    return undefined;
  };
}
