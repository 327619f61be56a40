// Covers the origin rule of KvStateMachine.apply/applyEntry: a client-origin command touching the reserved keyspace
// (/_..., /ext/) is rejected with PERMISSION_DENIED (deterministically, changing nothing); system-origin commands and
// client commands on ordinary keys apply as before.
import { describe, expect, it } from 'vitest';
import { encodeDescriptor } from '../../src/sharding/index.js';
import {
  KvStateMachine,
  SHARD_DESCRIPTOR_KEY,
  encodeCommand,
  type ApplyOutput,
  type Command,
  type CommandOrigin,
} from '../../src/statemachine/index.js';
import { b, s } from './helpers.js';

const RESERVED = ['/_sys/x', '/_cluster/x', '/_dlq/x', '/ext/x', '/_future', SHARD_DESCRIPTOR_KEY];

/** A descriptor of shard `index` of 2 of the default pool, at `epoch`. */
function descriptor(index: number, epoch: number): Uint8Array {
  return b(encodeDescriptor({ group: index + 1, pool: '', index, shards: 2, excluded: [], epoch }));
}

class Driver {
  index = 0;
  constructor(readonly m = new KvStateMachine()) {}
  run(cmd: Command, origin: CommandOrigin): ApplyOutput {
    return this.m.apply(++this.index, 1000 + this.index, cmd, origin);
  }
}

function rejectedCode(out: ApplyOutput): string | undefined {
  return out.result.type === 'rejected' ? out.result.error.code : undefined;
}

describe('client-origin commands on reserved keys', () => {
  it('are rejected with PERMISSION_DENIED and change nothing: put, delete, trigger, txn writes and compares', () => {
    const d = new Driver();
    for (const key of RESERVED) d.run({ type: 'put', key, value: b('sys') }, 'system');
    d.run({ type: 'put', key: '/ok', value: b('1') }, 'client');
    const before = d.m.snapshot();
    const revision = d.m.revision;
    for (const key of RESERVED) {
      const cmds: Command[] = [
        { type: 'put', key, value: b('evil') },
        { type: 'delete', key },
        { type: 'triggerPut', key, value: b('evil') },
        { type: 'txn', compares: [], writes: [{ type: 'put', key, value: b('evil') }] },
        { type: 'txn', compares: [], writes: [{ type: 'put', key: '/ok', value: b('2') }, { type: 'delete', key }] },
        { type: 'txn', compares: [{ key, version: 0 }], writes: [{ type: 'put', key: '/ok', value: b('2') }] },
      ];
      for (const cmd of cmds) {
        const out = d.run(cmd, 'client');
        expect(rejectedCode(out), `${cmd.type} ${key}`).toBe('RESERVED');
        expect(out.events).toEqual([]);
        if (out.result.type === 'rejected') expect(out.result.error.message).toContain(JSON.stringify(key));
      }
    }
    expect(d.m.revision).toBe(revision);
    for (const key of RESERVED) expect(s(d.m.get(key)?.value)).not.toBe('evil');
    expect(s(d.m.get('/ok')?.value)).toBe('1');
    // Only the applied index and the shard clock moved.
    const after = KvStateMachine.restore(d.m.snapshot()).toRecords();
    const prev = KvStateMachine.restore(before).toRecords();
    expect(after.keys).toEqual(prev.keys);
    expect(after.history).toEqual(prev.history);
  });

  it('a client cannot install a huge-epoch descriptor; the shard keeps accepting its keys and later descriptor updates', () => {
    const d = new Driver();
    expect(d.run({ type: 'put', key: SHARD_DESCRIPTOR_KEY, value: descriptor(0, 5) }, 'system').result.type).toBe('put');
    const owned = ['a', 'b', 'c', 'd', 'e', 'f'].map((k) => `/k/${k}`).filter((k) => d.m.owns(k));
    expect(owned.length).toBeGreaterThan(0);
    const attack = d.run({ type: 'put', key: SHARD_DESCRIPTOR_KEY, value: descriptor(1, Number.MAX_SAFE_INTEGER) }, 'client');
    expect(rejectedCode(attack)).toBe('RESERVED');
    expect(d.m.descriptor?.epoch).toBe(5);
    expect(d.m.descriptor?.index).toBe(0);
    for (const k of owned) expect(d.run({ type: 'put', key: k, value: b('v') }, 'client').result.type).toBe('put');
    expect(d.run({ type: 'put', key: SHARD_DESCRIPTOR_KEY, value: descriptor(0, 6) }, 'system').result.type).toBe('put');
    expect(d.m.descriptor?.epoch).toBe(6);
  });

  it('system-origin commands (and apply without an origin) write reserved keys; client commands on other keys apply', () => {
    const d = new Driver();
    for (const key of RESERVED.filter((k) => k !== SHARD_DESCRIPTOR_KEY)) {
      expect(d.run({ type: 'put', key, value: b('s') }, 'system').result.type).toBe('put');
      expect(d.run({ type: 'delete', key }, 'system').result.type).toBe('delete');
    }
    expect(d.m.apply(++d.index, 5000, { type: 'put', key: '/_sys/default', value: b('s') }).result.type).toBe('put');
    for (const key of ['/a', '/ext', '/extra/x', '/x/_sys/y', 'ext/x']) {
      expect(d.run({ type: 'put', key, value: b('c') }, 'client').result.type, key).toBe('put');
    }
  });

  it('applyEntry honours the origin too', () => {
    const m = new KvStateMachine();
    const data = encodeCommand({ type: 'put', key: '/_sys/x', value: b('x') });
    expect(rejectedCode(m.applyEntry(1, 1, data, 'client'))).toBe('RESERVED');
    expect(m.applyEntry(2, 1, data, 'system').result.type).toBe('put');
    expect(m.applyEntry(3, 1, data).result.type).toBe('put');
  });

  it('is deterministic: replicas applying the same log reach identical snapshots', () => {
    const log: Array<[Command, CommandOrigin]> = [
      [{ type: 'put', key: SHARD_DESCRIPTOR_KEY, value: descriptor(0, 1) }, 'system'],
      [{ type: 'put', key: SHARD_DESCRIPTOR_KEY, value: descriptor(0, 99) }, 'client'],
      [{ type: 'put', key: '/a', value: b('1') }, 'client'],
      [{ type: 'put', key: '/_dlq/e/1/a', value: b('letter') }, 'system'],
      [{ type: 'delete', key: '/_dlq/e/1/a' }, 'client'],
    ];
    const [x, y] = [new Driver(), new Driver()];
    for (const [cmd, origin] of log) {
      x.run(cmd, origin);
      y.run(cmd, origin);
    }
    expect(x.m.snapshot()).toEqual(y.m.snapshot());
    expect(s(x.m.get('/_dlq/e/1/a')?.value)).toBe('letter');
  });
});
