/** AccessControl over an in-memory metadata group: changes as conditional txns, authentication (admin token, tokens, certificate names), authorization, lambdas' roles and the login lock-out. */
import { describe, expect, it } from 'vitest';
import { AccessControl, AuthError, NotMetaLeaderError, type AuthMetaStore } from '../../src/auth/access-control.js';
import { authorizeOp } from '../../src/coordinator/coordinator.js';
import type { CommandResult, TxnCommand } from '../../src/statemachine/types.js';

const ADMIN = 'admin-token-0123456789abcdef';

/** A one-replica metadata group: a versioned map that applies txns like the state machine. */
class MemoryMeta implements AuthMetaStore {
  readonly data = new Map<string, { value: Uint8Array; version: number }>();
  rev = 0;
  leader = true;
  revision(): number {
    return this.rev;
  }
  list(prefix: string, o: { limit: number; after?: string }) {
    const keys = [...this.data.keys()].filter((k) => k.startsWith(prefix) && (o.after === undefined || k > o.after)).sort();
    return { items: keys.slice(0, o.limit).map((key) => ({ key, ...this.data.get(key)! })) };
  }
  isLeader(): boolean {
    return this.leader;
  }
  async barrier(): Promise<void> {}
  async currentRevision(): Promise<number> {
    return this.rev;
  }
  async propose(cmd: TxnCommand): Promise<CommandResult> {
    const failed = cmd.compares.map((c, i) => ((this.data.get(c.key)?.version ?? 0) === c.version ? -1 : i)).filter((i) => i >= 0);
    if (failed.length > 0) return { type: 'txn', succeeded: false, revision: this.rev, timestampMs: 0, failedCompares: failed };
    this.rev++;
    for (const w of cmd.writes) {
      if (w.type === 'put') this.data.set(w.key, { value: w.value, version: this.rev });
      else this.data.delete(w.key);
    }
    return { type: 'txn', succeeded: true, revision: this.rev, timestampMs: 0, failedCompares: [] };
  }
}

const cheap = { N: 1 << 10, r: 8, p: 1 };
const soon = () => Date.now() + 5000;

async function setup(): Promise<{ meta: MemoryMeta; ac: AccessControl }> {
  const meta = new MemoryMeta();
  const ac = new AccessControl({ meta: () => meta, adminToken: ADMIN, scrypt: cheap, limiter: { maxFailures: 2, lockMs: 60_000 } });
  await ac.addRole('app', soon());
  await ac.grantPermission('app', '/app/', 'readwrite', soon());
  await ac.addUser('alice', 'pw', soon());
  await ac.userRole('alice', 'app', true, soon());
  await ac.addUser('cert-user', '', soon());
  await ac.setEnabled(true, soon());
  return { meta, ac };
}

describe('AccessControl', () => {
  it('allows everything while off, and authenticates every request once on', async () => {
    const meta = new MemoryMeta();
    const ac = new AccessControl({ meta: () => meta, adminToken: ADMIN, scrypt: cheap });
    expect(ac.authenticate(undefined, undefined)).toBeUndefined();
    await ac.setEnabled(true, soon());
    expect(() => ac.authenticate(undefined, undefined)).toThrow(expect.objectContaining({ code: 'UNAUTHENTICATED' }));
    expect(ac.authenticate(`Bearer ${ADMIN}`, undefined)).toMatchObject({ name: 'root', root: true });
    expect(() => ac.authenticate('Bearer wrong', undefined)).toThrow(expect.objectContaining({ code: 'UNAUTHENTICATED' }));
  });

  it('refuses to turn on when nobody could administer afterwards', async () => {
    const meta = new MemoryMeta();
    const ac = new AccessControl({ meta: () => meta, scrypt: cheap });
    await expect(ac.setEnabled(true, soon())).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    await ac.addUser('boss', 'pw', soon());
    await ac.userRole('boss', 'root', true, soon());
    await ac.setEnabled(true, soon());
    expect(ac.enabled).toBe(true);
  });

  it('logs users in and authorizes their keys by their roles, changes applying to issued tokens', async () => {
    const { ac } = await setup();
    const { token } = await ac.login('alice', 'pw', '10.0.0.1');
    const p = ac.authenticate(`Bearer ${token}`, undefined)!;
    expect(p.name).toBe('alice');
    expect(() => authorizeOp('put', { key: '/app/x' }, p)).not.toThrow();
    expect(() => authorizeOp('put', { key: '/x' }, p)).toThrow(expect.objectContaining({ code: 'PERMISSION_DENIED' }));
    expect(() => authorizeOp('list', { prefix: '/' }, p)).toThrow(AuthError);
    expect(() => authorizeOp('txn', { compares: [{ key: '/other', version: 0 }], writes: [{ put: { key: '/app/y' } }] }, p)).toThrow(AuthError);
    await ac.revokePermission('app', '/app/', 'write', soon());
    const q = ac.authenticate(`Bearer ${token}`, undefined)!;
    expect(() => authorizeOp('put', { key: '/app/x' }, q)).toThrow(AuthError);
    expect(() => authorizeOp('get', { key: '/app/x' }, q)).not.toThrow();
    await ac.deleteUser('alice', soon());
    expect(() => ac.authenticate(`Bearer ${token}`, undefined)).toThrow(expect.objectContaining({ code: 'UNAUTHENTICATED' }));
  });

  it('authenticates a client certificate by its common name, and forwards with a token it signs', async () => {
    const { ac } = await setup();
    expect(() => ac.authenticate(undefined, 'stranger')).toThrow(expect.objectContaining({ code: 'UNAUTHENTICATED' }));
    const p = ac.authenticate(undefined, 'cert-user')!;
    expect(p.name).toBe('cert-user');
    expect(ac.authenticate(p.authorization, undefined)!.name).toBe('cert-user');
    await expect(ac.login('cert-user', '', 'x')).rejects.toMatchObject({ code: 'UNAUTHENTICATED' }); // no password: no login
  });

  it('locks a user out after repeated failures, with one clear error each time', async () => {
    const { ac } = await setup();
    await expect(ac.login('alice', 'bad', '10.0.0.2')).rejects.toThrow('wrong user name or password');
    await expect(ac.login('alice', 'bad', '10.0.0.2')).rejects.toMatchObject({ code: 'UNAUTHENTICATED' });
    await expect(ac.login('alice', 'pw', '10.0.0.3')).rejects.toMatchObject({ code: 'RESOURCE_EXHAUSTED' });
  });

  it("gives lambdas their extension's role, root by default, nothing once the role is gone", async () => {
    const { ac } = await setup();
    expect(ac.lambdaPrincipal('ext-a')).toMatchObject({ root: true });
    await ac.setExtensionRole('ext-a', 'app', soon());
    const p = ac.lambdaPrincipal('ext-a')!;
    expect(p).toMatchObject({ name: 'role:app', root: false });
    expect(() => authorizeOp('put', { key: '/app/k' }, p)).not.toThrow();
    expect(() => authorizeOp('put', { key: '/alerts/k' }, p)).toThrow(AuthError);
    expect(ac.authenticate(p.authorization, undefined)!.name).toBe('role:app'); // forwarded lambda writes
    await ac.deleteRole('app', soon());
    expect(() => authorizeOp('get', { key: '/app/k' }, ac.lambdaPrincipal('ext-a'))).toThrow(AuthError);
    await expect(ac.setExtensionRole('ext-b', 'missing', soon())).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('changes need the metadata leader and validate their input', async () => {
    const { meta, ac } = await setup();
    await expect(ac.addUser('alice', 'x', soon())).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    await expect(ac.addUser('bad name', 'x', soon())).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(ac.grantPermission('root', '/x', 'read', soon())).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(ac.grantPermission('app', '/_sys/', 'read', soon())).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(ac.userRole('alice', 'nope', true, soon())).rejects.toMatchObject({ code: 'NOT_FOUND' });
    meta.leader = false;
    // Classified by type (the gRPC layer answers it with the leader's address), not by its message.
    await expect(ac.addRole('r2', soon())).rejects.toBeInstanceOf(NotMetaLeaderError);
    await expect(ac.addRole('r2', soon())).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });
});
