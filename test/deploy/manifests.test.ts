/**
 * Checks of `deploy/` without a Kubernetes cluster or Docker: the manifests parse and hang
 * together (selectors, ports, probes, quorum-keeping disruption budget), the pod start script
 * builds the kvd command each ordinal needs, the Secret script makes certificates the nodes
 * accept, and the Dockerfile copies only what exists.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { KVD_NODE_FLAGS } from '../../src/bin/runtime-flags.js';
import { DEFAULT_MALLOC_CONF, JEMALLOC_LIBRARY_PATHS } from '../../src/bin/allocator.js';

const root = resolve(import.meta.dirname, '..', '..');
const deploy = join(root, 'deploy');
const tmp = mkdtempSync(join(tmpdir(), 'kvcascade-deploy-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

type Doc = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

function manifests(): Doc[] {
  const docs = parseAllDocuments(readFileSync(join(deploy, 'kubernetes', 'kvcascade.yaml'), 'utf8'));
  for (const d of docs) expect(d.errors.map(String)).toEqual([]);
  return docs.map((d) => d.toJS() as Doc);
}

function byKind(docs: Doc[], kind: string, name?: string): Doc {
  const d = docs.find((x) => x.kind === kind && (name === undefined || x.metadata?.name === name));
  if (!d) throw new Error(`no ${kind} ${name ?? ''}`);
  return d;
}

describe('deploy/kubernetes/kvcascade.yaml', () => {
  it('parses, and every object has apiVersion, kind and a name', () => {
    const docs = manifests();
    expect(docs.map((d) => d.kind).sort()).toEqual(['PodDisruptionBudget', 'Service', 'Service', 'StatefulSet']);
    for (const d of docs) {
      expect(typeof d.apiVersion).toBe('string');
      expect(typeof d.metadata?.name).toBe('string');
    }
  });

  it('a headless Service that publishes not-ready pods names the StatefulSet', () => {
    const docs = manifests();
    const sts = byKind(docs, 'StatefulSet');
    const headless = byKind(docs, 'Service', sts.spec.serviceName);
    expect(headless.spec.clusterIP).toBe('None');
    expect(headless.spec.publishNotReadyAddresses).toBe(true);
    const labels = sts.spec.template.metadata.labels;
    for (const svc of docs.filter((d) => d.kind === 'Service')) {
      for (const [k, v] of Object.entries(svc.spec.selector)) expect(labels[k]).toBe(v);
    }
    for (const [k, v] of Object.entries(sts.spec.selector.matchLabels)) expect(labels[k]).toBe(v);
    const env = Object.fromEntries(sts.spec.template.spec.containers[0].env.map((e: Doc) => [e.name, e.value ?? e.valueFrom]));
    expect(env.KVC_SERVICE).toBe(headless.metadata.name);
  });

  it('the StatefulSet starts members in parallel, spreads them over hosts, runs unprivileged, keeps data on a claim', () => {
    const sts = byKind(manifests(), 'StatefulSet');
    const pod = sts.spec.template.spec;
    expect(sts.spec.podManagementPolicy).toBe('Parallel');
    expect(pod.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey).toBe('kubernetes.io/hostname');
    expect(pod.securityContext.runAsNonRoot).toBe(true);
    expect(pod.securityContext.runAsUser).not.toBe(0);
    const c = pod.containers[0];
    const claim = sts.spec.volumeClaimTemplates[0].metadata.name;
    expect(c.volumeMounts.find((m: Doc) => m.name === claim)?.mountPath).toBe('/data');
    expect(c.command).toEqual(['/app/kvd-start.sh']);
  });

  it('readiness and liveness are separate probes on named ports kvd serves; preStop drains leaderships', () => {
    const c = byKind(manifests(), 'StatefulSet').spec.template.spec.containers[0];
    const ports = new Map(c.ports.map((p: Doc) => [p.name, p.containerPort]));
    expect(c.readinessProbe.httpGet.path).toBe('/readyz');
    expect(c.livenessProbe.httpGet.path).toBe('/livez');
    for (const probe of [c.readinessProbe, c.livenessProbe]) expect(ports.has(probe.httpGet.port)).toBe(true);
    expect(ports.get('metrics')).toBe(9464);
    expect(c.lifecycle.preStop.exec.command.join(' ')).toMatch(/127\.0\.0\.1:9464\/drain/);
  });

  it('the disruption budget keeps a quorum of the members', () => {
    const docs = manifests();
    const replicas = byKind(docs, 'StatefulSet').spec.replicas as number;
    const pdb = byKind(docs, 'PodDisruptionBudget');
    expect(pdb.spec.minAvailable).toBeGreaterThanOrEqual(Math.floor(replicas / 2) + 1);
    expect(pdb.spec.minAvailable).toBeLessThan(replicas); // or no voluntary disruption could ever happen
  });
});

describe('deploy/kubernetes/kvd-start.sh', () => {
  const script = join(deploy, 'kubernetes', 'kvd-start.sh');
  const run = (pod: string, extra: Record<string, string> = {}): { code: number | null; args: string[]; stderr: string } => {
    const r = spawnSync('sh', [script, '--retention-ms', '60000'], {
      env: { PATH: process.env.PATH ?? '', POD_NAME: pod, POD_NAMESPACE: 'prod', KVC_SERVICE: 'kvcascade', KVD: 'printf %s\\n', ...extra },
      encoding: 'utf8',
    });
    return { code: r.status, args: r.stdout.split('\n').filter(Boolean), stderr: r.stderr };
  };
  const flag = (args: string[], name: string): string | undefined => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };

  it('an initial ordinal creates the cluster with every initial member by DNS name', () => {
    const { code, args } = run('kvcascade-1', { KVC_TLS_DIR: '/etc/kvcascade/tls' });
    expect(code).toBe(0);
    expect(flag(args, '--id')).toBe('2');
    expect(flag(args, '--listen')).toBe('0.0.0.0:7379');
    expect(flag(args, '--advertise')).toBe('kvcascade-1.kvcascade.prod.svc.cluster.local:7379');
    expect(flag(args, '--advertise-peer')).toBe('kvcascade-1.kvcascade.prod.svc.cluster.local:7380');
    expect(flag(args, '--peers')).toBe(
      [0, 1, 2].map((i) => `${i + 1}=kvcascade-${i}.kvcascade.prod.svc.cluster.local:7379/kvcascade-${i}.kvcascade.prod.svc.cluster.local:7380`).join(','),
    );
    expect(flag(args, '--tls-cert')).toBe('/etc/kvcascade/tls/node-2.pem');
    expect(args).not.toContain('--insecure-peers');
    expect(flag(args, '--retention-ms')).toBe('60000'); // extra arguments pass through
  });

  it('a later ordinal joins by name and adds itself', () => {
    const { code, args } = run('kvcascade-4');
    expect(code).toBe(0);
    expect(flag(args, '--id')).toBe('5');
    expect(flag(args, '--join')).toBe('kvcascade-0.kvcascade.prod.svc.cluster.local:7379');
    expect(args).toContain('--join-auto-add');
    expect(args).not.toContain('--peers');
  });

  it('refuses a pod name without an ordinal, and a missing namespace', () => {
    expect(run('kvcascade').code).toBe(64);
    const r = spawnSync('sh', [script], { env: { PATH: process.env.PATH ?? '', POD_NAME: 'kvcascade-0', KVC_SERVICE: 'kvcascade' }, encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/POD_NAMESPACE/);
  });
});

describe('deploy/kubernetes/make-secrets.sh', () => {
  it('makes per-node certificates the cluster CA signs, with the node name and pod DNS names, and Secret manifests', () => {
    const out = join(tmp, 'pki');
    const yaml = execFileSync('sh', [join(deploy, 'kubernetes', 'make-secrets.sh'), 'prod', '3', out], { encoding: 'utf8' });
    const docs = parseAllDocuments(yaml).map((d) => d.toJS() as Doc);
    const tls = docs.find((d) => d.metadata.name === 'kvcascade-tls')!;
    expect(Object.keys(tls.data).sort()).toEqual(['ca.pem', 'node-1.key', 'node-1.pem', 'node-2.key', 'node-2.pem', 'node-3.key', 'node-3.pem']);
    expect(docs.find((d) => d.metadata.name === 'kvcascade-admin')!.data.token.length).toBeGreaterThan(20);
    execFileSync('openssl', ['verify', '-CAfile', join(out, 'ca.pem'), join(out, 'node-2.pem')]);
    const text = execFileSync('openssl', ['x509', '-in', join(out, 'node-2.pem'), '-noout', '-text'], { encoding: 'utf8' });
    expect(text).toMatch(/Subject: CN\s*=\s*node-2/);
    expect(text).toContain('DNS:kvcascade-1.kvcascade.prod.svc.cluster.local');
    expect(text).toContain('URI:urn:kvcascade:node:2');
  });
});

describe('deploy/Dockerfile', () => {
  it('copies only paths that exist, runs as a non-root user, and starts kvd', () => {
    const text = readFileSync(join(deploy, 'Dockerfile'), 'utf8');
    for (const m of text.matchAll(/^COPY (?!--from)(.+)$/gm)) {
      const parts = m[1]!.trim().split(/\s+/);
      for (const src of parts.slice(0, -1)) expect(existsSync(join(root, src)), src).toBe(true);
    }
    expect(text).toMatch(/^USER node$/m);
    const entry = /ENTRYPOINT \["node", (.*)"\/app\/dist\/src\/bin\/kvd\.js"/.exec(text);
    expect(entry).not.toBeNull();
    // kvd's V8 flags, as its shebang and the launchers pass them.
    const flags = [...entry![1]!.matchAll(/"([^"]+)", /g)].map((m) => m[1]);
    expect(flags).toEqual([...KVD_NODE_FLAGS]);
    expect(existsSync(join(root, 'src', 'bin', 'kvd.ts'))).toBe(true);
  });

  it('installs jemalloc for an opt-in preload, and preloads nothing by default (glibc, like the other launchers)', () => {
    const text = readFileSync(join(deploy, 'Dockerfile'), 'utf8');
    const runtime = text.slice(text.lastIndexOf('\nFROM '));
    expect(runtime).toMatch(/apt-get install -y --no-install-recommends libjemalloc2/);
    expect(runtime).not.toMatch(/^ENV[^\n]*LD_PRELOAD/m);
    // What the comment tells operators to set is what the launchers set for KVD_ALLOCATOR=jemalloc.
    expect(runtime).toContain(`MALLOC_CONF=${DEFAULT_MALLOC_CONF}`);
    expect(JEMALLOC_LIBRARY_PATHS.every((p) => p.endsWith('/libjemalloc.so.2'))).toBe(true);
  });
});
