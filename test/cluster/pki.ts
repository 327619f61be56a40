/**
 * A throwaway public-key infrastructure for TLS tests, made with the `openssl` command: a cluster
 * CA, one certificate per node (CN `node-<id>`, for 127.0.0.1, usable as server and client), a
 * client certificate naming no node, and certificates from a second, untrusted CA.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Paths of a certificate and its key. */
export interface CertFiles {
  readonly cert: string;
  readonly key: string;
}

/** The files of a test PKI. */
export class TestPki {
  readonly dir = mkdtempSync(join(tmpdir(), 'kvcascade-pki-'));
  /** The cluster CA certificate. */
  readonly ca = join(this.dir, 'ca.pem');
  private readonly caKey = join(this.dir, 'ca.key');
  private readonly rogueCa = join(this.dir, 'rogue-ca.pem');
  private readonly rogueCaKey = join(this.dir, 'rogue-ca.key');

  constructor() {
    this.selfSigned('kvcascade test CA', this.ca, this.caKey);
    this.selfSigned('rogue CA', this.rogueCa, this.rogueCaKey);
  }

  private ssl(...args: string[]): void {
    execFileSync('openssl', args, { stdio: 'pipe' });
  }

  private newKey(): string[] {
    return ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  }

  private selfSigned(cn: string, cert: string, key: string): void {
    this.ssl('req', '-x509', ...this.newKey(), '-days', '2', '-subj', `/CN=${cn}`, '-keyout', key, '-out', cert);
  }

  /** A certificate for `cn` (with extra SAN entries) signed by the cluster CA, or by the rogue CA. */
  issue(name: string, cn: string, opts: { san?: readonly string[]; rogue?: boolean } = {}): CertFiles {
    const key = join(this.dir, `${name}.key`);
    const csr = join(this.dir, `${name}.csr`);
    const cert = join(this.dir, `${name}.pem`);
    const ext = join(this.dir, `${name}.cnf`);
    this.ssl('req', ...this.newKey(), '-subj', `/CN=${cn}`, '-keyout', key, '-out', csr);
    const san = ['IP:127.0.0.1', 'DNS:localhost', ...(opts.san ?? [])].join(',');
    writeFileSync(ext, `subjectAltName=${san}\nextendedKeyUsage=serverAuth,clientAuth\n`);
    const [ca, caKey] = opts.rogue ? [this.rogueCa, this.rogueCaKey] : [this.ca, this.caKey];
    this.ssl('x509', '-req', '-in', csr, '-CA', ca, '-CAkey', caKey, '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', cert);
    return { cert, key };
  }

  private readonly nodes = new Map<number, CertFiles>();

  /** Node `id`'s certificate (CN node-<id>), issued once. */
  node(id: number): CertFiles {
    let c = this.nodes.get(id);
    if (!c) this.nodes.set(id, (c = this.issue(`node-${id}`, `node-${id}`)));
    return c;
  }

  /** kvd flags that give node `id` its certificate for both planes and the cluster CA (client certificates required). */
  nodeArgs(id: number): string[] {
    const c = this.node(id);
    return ['--tls-cert', c.cert, '--tls-key', c.key, '--tls-ca', this.ca];
  }

  /** Removes the files. */
  remove(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
