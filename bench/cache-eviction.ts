// CPU cost of one insert with an eviction in the node's caches once they are full (issue 17, "throughput falling with data size"): the value cache and the hot-index cache at 10 k-300 k entries, under the churn of a fill (every insert a new key, every insert evicting the oldest entry).
//
// Run: npx tsc -p tsconfig.json, then node dist/bench/cache-eviction.js [--entries 10000,100000,300000] [--rounds 3]
// Each size: the cache is filled to its bound, then `rounds` × entries more inserts are timed
// (process CPU µs per insert). A JS Map whose oldest entry is found with a fresh
// `map.entries().next()` walks the holes V8 leaves where deleted entries were (until the table is
// rehashed), so that cost grows with the cache's size; a persistent iterator does not.
import { parseArgs } from 'node:util';
import { IndexCache, INDEX_CACHE_ENTRY_OVERHEAD_BYTES } from '../src/storage/index-cache.js';
import { CACHE_ENTRY_OVERHEAD_BYTES, ValueCache } from '../src/storage/value-cache.js';
import { flagInt, flagIntList } from './util.js';

const key = (i: number): string => `data/k${String(i).padStart(8, '0')}`;

function perInsertUs(n: number, rounds: number, make: (bytes: number) => { set(k: string, i: number): void }, entryBytes: number): number {
  const cache = make(n * entryBytes);
  for (let i = 0; i < n; i++) cache.set(key(i), i);
  const ops = n * rounds;
  const c0 = process.cpuUsage();
  for (let i = n; i < n + ops; i++) cache.set(key(i), i);
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / ops;
}

const { values } = parseArgs({ options: { entries: { type: 'string', default: '10000,100000,300000' }, rounds: { type: 'string', default: '3' } } });
const rounds = flagInt('rounds', values.rounds, 1);
const value = new Uint8Array(16);
const head = { revision: 1, timestampMs: 1, value: null };
for (const n of flagIntList('entries', values.entries, 1, 10_000_000)) {
  const v = perInsertUs(n, rounds, (b) => {
    const c = new ValueCache(b * 8); // values up to an eighth of the bound are cached: the bound is 8× larger, entries limited below
    return { set: (k) => c.set(k, value) };
  }, (value.byteLength + key(0).length * 2 + CACHE_ENTRY_OVERHEAD_BYTES) / 8);
  const x = perInsertUs(n, rounds, (b) => {
    const c = new IndexCache(b);
    return { set: (k) => c.set(k, head) };
  }, key(0).length * 2 + INDEX_CACHE_ENTRY_OVERHEAD_BYTES);
  console.log(`${n} entries: value cache ${v.toFixed(2)} µs CPU per insert, hot-index cache ${x.toFixed(2)} µs`);
}
