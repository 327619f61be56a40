/** A List over several shards: pages asked of each shard with bounded fan-out, merged in key order with exact paging. */
import { compareKeys } from '../statemachine/index.js';
import type { KeyValueMsg, ListResponseMsg } from '../wire/proto.js';
import { decodePageToken, encodePageToken } from '../wire/request-validation.js';
import { fitting } from './messages.js';

/** Most shards a cross-shard List queries at once. */
export const LIST_FANOUT_CONCURRENCY = 16;

/** Runs `fn` over `items` with at most `limit` calls in flight; rejects with the first failure (launching nothing more). */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async (): Promise<void> => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  return out;
}

/**
 * Merges shard pages (each of up to `limit` keys after the same page token) in key (UTF-8 byte)
 * order. The merged page ends at the smallest of the limit-th merged key and the last key of
 * every shard page that has more (keys beyond that may be missing from the shards' pages), and
 * within `maxBytes`; the next page token is its last key, so nothing is skipped or repeated.
 * `revision` is 0 and `shard_revisions` names each shard's revision. Throws ValidationError for
 * a shard's malformed page token.
 */
export function mergeListPages(
  pages: readonly { group: number; page: ListResponseMsg }[],
  prefix: string,
  limit: number,
  maxBytes: number,
): ListResponseMsg {
  const shardRevisions: Record<string, number> = {};
  const all: KeyValueMsg[] = [];
  let bound: string | undefined;
  for (const { group, page } of pages) {
    shardRevisions[String(group)] = page.revision ?? 0;
    for (const it of page.items ?? []) all.push(it);
    if (page.nextPageToken) {
      const last = decodePageToken(page.nextPageToken, prefix);
      if (bound === undefined || compareKeys(last, bound) < 0) bound = last;
    }
  }
  all.sort((a, b) => compareKeys(a.key ?? '', b.key ?? ''));
  let end = all.length;
  if (bound !== undefined) {
    const b = bound;
    end = all.findIndex((it) => compareKeys(it.key ?? '', b) > 0);
    if (end < 0) end = all.length;
  }
  let next = bound;
  if (end > limit) {
    end = limit;
    next = all[end - 1]!.key;
  }
  let items = all.slice(0, end);
  const n = fitting(items, maxBytes);
  if (n < items.length) {
    items = items.slice(0, n);
    next = items[n - 1]!.key;
  }
  return { items, nextPageToken: next === undefined ? '' : encodePageToken(next), revision: 0, shardRevisions };
}
