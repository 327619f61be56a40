/**
 * The coordinator and the extension layer run on the clock they are given (issue 10): a
 * dispatcher's retries and cursor writes, a coordinator's deadlines, a lambda call's deadline, a
 * runner's invocation timeout and the KvNode host's clock all follow an injected scheduler, not the wall clock (what lets the
 * simulator run them on virtual time without swapping globals for them).
 */
import { describe, expect, it } from 'vitest';
import { withDeadline } from '../../src/coordinator/coordinator.js';
import { WatchDispatcher, CURSOR_PERSIST_MS, type DispatchHost, type DispatchWatch } from '../../src/extensions/dispatcher.js';
import { hostServices, LAMBDA_CALL_MS } from '../../src/extensions/host-services.js';
import { kvNodeHost } from '../../src/extensions/kv-node-host.js';
import { MemoryExtensionHost } from '../../src/extensions/testing/memory-host.js';
import { ExtensionRunner, LambdaError } from '../../src/extensions/sandbox/index.js';
import type { LambdaKv } from '../../src/extensions/store-access.js';
import { FakeHost, fixture, put } from './sandbox/helpers.js';
import { DeadlineError } from '../../src/node/backend.js';
import { DATA_GROUP, KvNode } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { silentLogger } from '../../src/log.js';
import type { KvEvent } from '../../src/statemachine/index.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { ManualScheduler, settle } from '../support/manual-scheduler.js';



const ev = (key: string, revision: number): KvEvent => ({ type: 'put', key, value: new Uint8Array([1]), revision, timestampMs: revision });

describe('an injected clock', () => {
  it('drives a dispatcher: its retry backoff and cursor writes wait for the clock, not the wall clock', async () => {
    const clock = new ManualScheduler(5_000_000);
    const puts = new Map<string, string>();
    let sink: Parameters<DispatchHost['subscribe']>[2] | undefined;
    const host: DispatchHost = {
      subscribe: (_p, _from, s) => {
        sink = s;
        return { cancel: () => {} };
      },
      put: async (key, value) => void puts.set(key, new TextDecoder().decode(value)),
      write: async (writes) => {
        for (const w of writes) if (w.value) puts.set(w.key, new TextDecoder().decode(w.value));
      },
      shard: 1,
      maxHops: 8,
      clock,
    };
    const watch: DispatchWatch = {
      id: 1,
      prefix: '/p/',
      options: { mode: 'stateful', events: ['put'], concurrency: 4, maxAttempts: 3, retryBackoffMs: 1_000, timeoutMs: 1000, maxBacklog: 100, previousValue: false },
    };
    let calls = 0;
    const d = new WatchDispatcher('x', watch, async () => {
      if (++calls === 1) throw Object.assign(new Error('first attempt fails'), { kind: 'threw' });
    }, host);
    d.start(0);
    sink!.events([ev('/p/a', 1)], 1);
    await settle();
    expect(calls).toBe(1);
    // Real time passing does nothing: the backoff is on the injected clock.
    await new Promise((r) => setTimeout(r, 30));
    expect(calls).toBe(1);
    expect(puts.has('/_sys/cursor/x/1/p/')).toBe(false);
    await clock.advance(999);
    expect(calls).toBe(1);
    await clock.advance(1);
    expect(calls).toBe(2);
    expect(d.stats.cursor).toBe(1);
    // The cursor is written on the clock's interval.
    await clock.advance(CURSOR_PERSIST_MS);
    expect(puts.get('/_sys/cursor/x/1/p/')).toBe('1');
    await d.stop(false);
    expect(clock.pending).toBe(0); // stop cancels its timers
  });

  it('drives a coordinator deadline', async () => {
    const clock = new ManualScheduler(5_000_000);
    let err: unknown;
    const p = withDeadline(() => new Promise<never>(() => {}), clock.now() + 100, clock).catch((e: unknown) => (err = e));
    await new Promise((r) => setTimeout(r, 20));
    expect(err).toBeUndefined();
    await clock.advance(99);
    expect(err).toBeUndefined();
    await clock.advance(1);
    await p;
    expect(err).toBeInstanceOf(DeadlineError);
    // A deadline already passed on the clock fails at once, whatever the wall clock says.
    await expect(withDeadline(async () => 1, clock.now(), clock)).rejects.toBeInstanceOf(DeadlineError);
    await expect(withDeadline(async () => 1, clock.now() + 1, clock)).resolves.toBe(1);
  });

  it('sets the deadline of a lambda store call', async () => {
    const deadlines: number[] = [];
    const kv = { put: async (_k: string, _v: Uint8Array, _o: object, _h: number, deadlineMs: number) => (deadlines.push(deadlineMs), { succeeded: true, version: 1, currentVersion: 1 }) } as unknown as LambdaKv;
    const services = hostServices('x', { kv, maxHops: 8, log: silentLogger(), metric: () => {}, clock: { now: () => 42_000 } });
    await services.kv('put', ['/k', 'v'], 1);
    expect(deadlines).toEqual([42_000 + LAMBDA_CALL_MS]);
  });

  it("times a runner's invocation out on the clock", async () => {
    const clock = new ManualScheduler(5_000_000);
    const runner = await ExtensionRunner.start({ name: 'clocked', modulePath: fixture('esm-ext'), host: new FakeHost(), mode: 'in-process', config: {}, clock });
    try {
      let err: unknown;
      const p = runner.invoke(1, put('/in/sleep/s', '300'), 1000).catch((e: unknown) => (err = e));
      await new Promise((r) => setTimeout(r, 30));
      expect(err).toBeUndefined(); // the wall clock does not time it out
      await clock.advance(1000);
      await p;
      expect(err).toBeInstanceOf(LambdaError);
      expect((err as LambdaError).kind).toBe('timeout');
    } finally {
      await runner.stop();
    }
  });

  it('reaches the extension layer from the node: kvNodeHost gives the node its scheduler', async () => {
    const clock = new ManualScheduler(5_000_000);
    const node = await KvNode.open(
      { id: 1, members: new Map([[1, '127.0.0.1:7301']]), tickMs: 10, log: silentLogger(), onFatal: () => {}, scheduler: clock },
      new MemoryEngine(),
      new LoopbackHub().transport(1),
    );
    try {
      expect(node.scheduler).toBe(clock);
      expect(kvNodeHost(node).clock).toBe(clock);
    } finally {
      await node.stop();
    }
  });

  it('runs the ExtensionHost twin too: its clock is the host clock, its writes and deadlines read it', async () => {
    const clock = new ManualScheduler(5_000_000);
    const host = new MemoryExtensionHost(1, 1, {}, clock);
    expect(host.clock).toBe(clock);
    host.lead(DATA_GROUP, 1);
    const shard = host.shard(DATA_GROUP)!;
    const r = await shard.propose({ type: 'put', key: '/_sys/t', value: new Uint8Array([1]) }, clock.now() + 10);
    expect(r.type === 'put' && r.timestampMs).toBe(clock.now());
    await clock.advance(11);
    await expect(shard.propose({ type: 'put', key: '/_sys/t', value: new Uint8Array([2]) }, clock.now() - 1)).rejects.toThrow('deadline passed');
  });
});
