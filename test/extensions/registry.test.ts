/** Unit tests of the registry record's per-shard start points (old records included) and of the local LambdaKv's merged listings. */
import { describe, expect, it } from 'vitest';
import { localLambdaKv, type LocalStore } from '../../src/extensions/local-lambda-kv.js';
import { decodeRecord, encodeRecord, startRevisionOf, startRevisionsOf, type ExtensionRecord } from '../../src/extensions/registry.js';

const base: ExtensionRecord = { name: 'x', version: '1.0.0', generation: 1, sha256: 'ab', size: 1, chunks: 1, config: {}, loadedAtMs: 1 };
const bytes = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));

describe('extension record start points', () => {
  it('round-trips per-shard start points; a shard without one has none', () => {
    const r = decodeRecord(encodeRecord({ ...base, startRevisions: { '1': 5, '3': 9 } }));
    expect(startRevisionOf(r, 1)).toBe(5);
    expect(startRevisionOf(r, 3)).toBe(9);
    expect(startRevisionOf(r, 2)).toBeUndefined();
    expect(startRevisionsOf(r)).toEqual({ '1': 5, '3': 9 });
  });

  it("decodes an old record: its startRevision is shard 1's", () => {
    const r = decodeRecord(bytes({ ...base, startRevision: 7 }));
    expect(startRevisionOf(r, 1)).toBe(7);
    expect(startRevisionOf(r, 2)).toBeUndefined();
    expect(startRevisionsOf(r)).toEqual({ '1': 7 });
    expect(startRevisionsOf(decodeRecord(bytes(base)))).toEqual({});
  });

  it('refuses malformed start points', () => {
    expect(() => decodeRecord(bytes({ ...base, startRevisions: { a: 1 } }))).toThrow(/malformed/);
    expect(() => decodeRecord(bytes({ ...base, startRevisions: { '2': -1 } }))).toThrow(/malformed/);
    expect(() => decodeRecord(bytes({ ...base, startRevisions: [1] }))).toThrow(/malformed/);
    expect(() => decodeRecord(bytes({ ...base, startRevision: 'x' }))).toThrow(/malformed/);
  });
});

describe('localLambdaKv', () => {
  it('merges a listing across the shards a prefix spans, in key order, paging with nextAfter', async () => {
    const shards = new Map<number, string[]>([
      [1, ['/p/a', '/p/d', '/p/e']],
      [2, ['/p/b', '/p/c', '/p/f', '/p/g']],
    ]);
    const store = {
      shardsForPrefix: () => [1, 2],
      list: async (req: { prefix: string; shard?: number; limit?: number; after?: string }) => {
        const all = shards.get(req.shard!)!.filter((k) => k.startsWith(req.prefix) && (req.after === undefined || k > req.after));
        const items = all.slice(0, req.limit).map((key) => ({ key, version: 1, timestampMs: 0 }));
        return { items, ...(all.length > items.length ? { nextAfter: items[items.length - 1]!.key } : {}), revision: 1 };
      },
    } as unknown as LocalStore;
    const kv = localLambdaKv(store);
    const seen: string[] = [];
    let after: string | undefined;
    for (let pages = 0; pages < 10; pages++) {
      const page = await kv.list('/p/', { limit: 2, keysOnly: true, ...(after !== undefined ? { after } : {}) }, Date.now() + 1000);
      seen.push(...page.items.map((i) => i.key));
      if (page.nextAfter === undefined) break;
      after = page.nextAfter;
    }
    expect(seen).toEqual(['/p/a', '/p/b', '/p/c', '/p/d', '/p/e', '/p/f', '/p/g']);
  });
});
