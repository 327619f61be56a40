/** Unit tests of WatchDispatcher with a fake host: ordering, concurrency, retries, dead letters, back-pressure, cursor, compaction gaps. */
import { describe, expect, it } from 'vitest';
import { WatchDispatcher, type DispatchHost, type DispatchWatch } from '../../src/extensions/dispatcher.js';
import type { KvEvent } from '../../src/statemachine/index.js';
import type { ExtensionEvent } from '../../src/extensions/api.js';

type Sink = Parameters<DispatchHost['subscribe']>[2];

function fakeHost() {
  const puts = new Map<string, string>();
  let sink: Sink | undefined;
  let from = 0;
  const host: DispatchHost = {
    subscribe: (_prefix, fromRevision, s) => {
      sink = s;
      from = fromRevision;
      return { cancel: () => {} };
    },
    hopsOf: () => 0,
    put: async (key, value) => {
      puts.set(key, new TextDecoder().decode(value));
    },
    write: async (writes) => {
      for (const w of writes) {
        if (w.value) puts.set(w.key, new TextDecoder().decode(w.value));
        else puts.delete(w.key);
      }
    },
    shard: 1,
    maxHops: 8,
  };
  return { host, puts, sink: () => sink!, from: () => from };
}

const ev = (key: string, revision: number): KvEvent => ({ type: 'put', key, value: new Uint8Array([1]), revision, timestampMs: revision });

function watch(over: Partial<DispatchWatch['options']> = {}): DispatchWatch {
  return {
    id: 1,
    prefix: '/p/',
    options: { mode: 'stateful', events: ['put', 'delete', 'trigger'], concurrency: 16, maxAttempts: 3, retryBackoffMs: 1, timeoutMs: 1000, maxBacklog: 100, previousValue: false, ...over },
  };
}

const tick = () => new Promise((r) => setTimeout(r, 2));

describe('WatchDispatcher', () => {
  it('stateful: one key at a time, in version order, keys concurrently; the cursor trails the oldest open event', async () => {
    const f = fakeHost();
    const started: string[] = [];
    const release = new Map<string, () => void>();
    const d = new WatchDispatcher('x', watch(), (_id, e: ExtensionEvent) => {
      started.push(`${e.key}@${e.version}`);
      return new Promise<void>((r) => release.set(`${e.key}@${e.version}`, r));
    }, f.host);
    d.start(0);
    expect(f.from()).toBe(1);
    f.sink().events([ev('/p/a', 1), ev('/p/b', 2), ev('/p/a', 3)], 3);
    expect(started).toEqual(['/p/a@1', '/p/b@2']); // a@3 waits for a@1
    release.get('/p/b@2')!();
    await tick();
    expect(d.stats.cursor).toBe(0); // a@1 still open
    release.get('/p/a@1')!();
    await tick();
    expect(started).toEqual(['/p/a@1', '/p/b@2', '/p/a@3']);
    expect(d.stats.cursor).toBe(2);
    release.get('/p/a@3')!();
    await tick();
    expect(d.stats.cursor).toBe(3);
    await d.stop(true);
    expect(f.puts.get('/_sys/cursor/x/1/p/')).toBe('3');
  });

  it('retries with backoff, keeping later events of the key behind, then dead-letters', async () => {
    const f = fakeHost();
    const calls: string[] = [];
    const d = new WatchDispatcher('x', watch({ maxAttempts: 3 }), async (_id, e) => {
      calls.push(`${e.key}@${e.version}`);
      if (e.version === 1) throw Object.assign(new Error('nope'), { kind: 'threw' });
    }, f.host);
    d.start(0);
    f.sink().events([ev('/p/a', 1), ev('/p/a', 2)], 2);
    for (let i = 0; i < 50 && d.stats.cursor < 2; i++) await tick();
    expect(calls).toEqual(['/p/a@1', '/p/a@1', '/p/a@1', '/p/a@2']);
    expect(d.stats.deadLettered).toBe(1);
    const letter = JSON.parse(f.puts.get('/_dlq/x/000000000001/p/a')!);
    expect(letter).toMatchObject({ attempts: 3, kind: 'threw', error: 'nope' });
    await d.stop(false);
  });

  it('reports back-pressure to the event source and resumes when drained', async () => {
    const f = fakeHost();
    const release: (() => void)[] = [];
    const d = new WatchDispatcher('x', watch({ maxBacklog: 4, concurrency: 1, mode: 'stateless' }), () => new Promise<void>((r) => release.push(r)), f.host);
    d.start(0);
    let drained = false;
    f.sink().events([1, 2, 3, 4].map((i) => ev(`/p/k${i}`, i)), 4);
    expect(f.sink().writable()).toBe(false);
    f.sink().onDrain(() => (drained = true));
    for (let i = 0; i < 3; i++) {
      release.shift()!();
      await tick();
    }
    expect(drained).toBe(true);
    expect(f.sink().writable()).toBe(true);
    await d.stop(false);
  });

  it('records a compacted gap as a dead letter and continues from the oldest revision left', async () => {
    const f = fakeHost();
    const d = new WatchDispatcher('x', watch(), async () => {}, f.host);
    d.start(5);
    f.sink().canceled('compacted', 20);
    await tick();
    expect(JSON.parse(f.puts.get('/_dlq/x/gap-1-000000000006-000000000019')!)).toMatchObject({ kind: 'compacted', shard: 1, lostFrom: 6, lostTo: 19 });
    expect(f.from()).toBe(20);
    await d.stop(false);
  });

  it('a compacted gap whose dead letter cannot be written is reported and retried; the cursor stays before the gap until it lands', async () => {
    const f = fakeHost();
    const put = f.host.put;
    let failures = 2;
    f.host.put = async (key, value) => {
      if (key.includes('/gap-') && failures-- > 0) throw new Error('not the leader');
      return put(key, value);
    };
    const reported: string[] = [];
    const failed: string[] = [];
    const d = new WatchDispatcher('x', watch(), async () => {}, f.host, { deadLetterFailed: (kind) => failed.push(kind) }, (msg) => reported.push(msg));
    d.start(5);
    const firstSink = f.sink();
    firstSink.canceled('compacted', 20);
    await tick();
    expect(f.puts.has('/_dlq/x/gap-1-000000000006-000000000019')).toBe(false);
    expect(failed).toEqual(['compacted']);
    expect(reported.some((m) => m.includes('compacted gap 6..19'))).toBe(true);
    expect(d.stats.cursor).toBe(5);
    // Followed again at once from the oldest revision left, but what comes after the gap waits for its letter.
    expect(f.sink()).not.toBe(firstSink);
    expect(f.from()).toBe(20);
    f.sink().events([ev('/p/a', 21)], 21);
    await tick();
    expect(d.stats.invocations).toBe(0);
    expect(d.stats.cursor).toBe(5);
    for (let i = 0; i < 50 && !f.puts.has('/_dlq/x/gap-1-000000000006-000000000019'); i++) await new Promise((r) => setTimeout(r, 20));
    expect(failed).toEqual(['compacted', 'compacted']);
    expect(JSON.parse(f.puts.get('/_dlq/x/gap-1-000000000006-000000000019')!)).toMatchObject({ kind: 'compacted', lostFrom: 6, lostTo: 19 });
    await tick();
    expect(d.stats.invocations).toBe(1);
    expect(d.stats.cursor).toBe(21);
    await d.stop(true);
    expect(f.puts.get('/_sys/cursor/x/1/p/')).toBe('21');
  });

  it('a watch the node cut off (a slow watcher) is followed again from the first revision not received', async () => {
    const f = fakeHost();
    const seen: number[] = [];
    const reported: string[] = [];
    const d = new WatchDispatcher('x', watch(), async (_id, e) => void seen.push(e.version), f.host, {}, (msg) => reported.push(msg));
    d.start(5);
    const first = f.sink();
    first.events([ev('/p/a', 7)], 9);
    first.canceled('slow watcher: more than 50000 revisions behind; resume from revision 10');
    for (let i = 0; i < 100 && f.sink() === first; i++) await tick();
    expect(f.sink()).not.toBe(first);
    expect(f.from()).toBe(10);
    expect(reported.some((m) => m.includes('slow watcher'))).toBe(true);
    f.sink().events([ev('/p/b', 12)], 12);
    await tick();
    expect(seen).toEqual([7, 12]);
    expect(d.stats.cursor).toBe(12);
    await d.stop(false);
  });

  it('a gap found with the history window full is recorded once, then delivery resumes (it used to chase the window: each letter dropped the oldest revision)', async () => {
    // A shard whose history holds its last WINDOW revisions: every write (the letter, a cursor) drops the oldest.
    const WINDOW = 10;
    let revision = 100;
    const oldest = () => revision - WINDOW + 1;
    const puts = new Map<string, string>();
    let sink: Sink | undefined;
    const subscribed: number[] = [];
    const write = () => void revision++;
    const host: DispatchHost = {
      subscribe: (_prefix, fromRevision, s) => {
        subscribed.push(fromRevision);
        if (subscribed.length > 20) throw new Error(`subscribed ${subscribed.length} times: ${subscribed.join(', ')}`);
        if (fromRevision < oldest()) s.canceled(`revision ${fromRevision} is compacted`, oldest()); // from inside subscribe, as the node's watch hub does
        else sink = s;
        return { cancel: () => {} };
      },
      put: async (key, value) => {
        await Promise.resolve();
        write();
        puts.set(key, new TextDecoder().decode(value));
      },
      write: async (writes) => {
        await Promise.resolve();
        write();
        for (const w of writes) if (w.value) puts.set(w.key, new TextDecoder().decode(w.value));
      },
      shard: 1,
      maxHops: 8,
    };
    const seen: number[] = [];
    const d = new WatchDispatcher('x', watch(), async (_id, e) => void seen.push(e.version), host);
    d.start(5);
    expect(subscribed).toEqual([6, 91]);
    sink!.events([ev('/p/a', 95), ev('/p/b', 100)], 100);
    for (let i = 0; i < 50 && seen.length < 2; i++) await tick();
    expect([...puts.keys()].filter((k) => k.includes('/gap-'))).toEqual(['/_dlq/x/gap-1-000000000006-000000000090']);
    expect(seen).toEqual([95, 100]);
    expect(d.stats.cursor).toBe(100);
    await d.stop(true);
    expect(puts.get('/_sys/cursor/x/1/p/')).toBe('100');
  });
});
