/** The gRPC metadata conventions shared by the kvcascade services and clients (per-shard leader hints, shard and map epoch, forwarding hop counts, retry safety, compaction). */
import * as grpc from '@grpc/grpc-js';

/**
 * Response metadata (trailers of unary calls and errors; initial metadata and trailers of
 * streams): the client-API address of the leader of the shard named by {@link META_SHARD}, when
 * the node knows it. Clients send later calls for that shard there directly. It is only sent
 * together with `kv-shard` (except by a node whose cluster map cannot route the request), never
 * for calls that spanned several shards.
 */
export const META_LEADER = 'kv-leader';

/** Response metadata: the shard (Raft group id, decimal) that served a single-shard call; `kv-leader` is that shard's leader. */
export const META_SHARD = 'kv-shard';

/**
 * Response metadata on every response: the epoch of the cluster map the serving node routes
 * with (decimal). A client whose cached map is older refetches it (Cluster.GetShardMap).
 */
export const META_MAP_EPOCH = 'kv-map-epoch';

/**
 * Request metadata `kv-forwarded: <n>`: how many times nodes already forwarded this call toward
 * the shard's leader (absent = 0; the old value `1` means one hop). A node that cannot serve a
 * call forwards it again only while n < {@link MAX_FORWARD_HOPS} (so "client → node not hosting
 * the shard → a follower replica → leader" works); otherwise it answers UNAVAILABLE, retry-safe,
 * with the leader hint.
 */
export const META_FORWARDED = 'kv-forwarded';

/** Forwarding stops at this many hops (see {@link META_FORWARDED}). */
export const MAX_FORWARD_HOPS = 2;

/**
 * Response metadata `kv-pipeline-batch: 1` in a Pipeline stream's headers: the server takes
 * several ops in one `PipelineRequest.batch` (and, once the client sent one, may answer in
 * `PipelineResponse.batch`). A client batches only on a stream whose headers say so.
 */
export const META_PIPELINE_BATCH = 'kv-pipeline-batch';

/**
 * Response metadata `kv-pipeline-txn: 1` in a Pipeline stream's headers: the server takes
 * `PipelineRequest.txn` ops (a client sends a txn on a stream only when its headers say so).
 */
export const META_PIPELINE_TXN = 'kv-pipeline-txn';

/** Error metadata `kv-retry-safe: 1`: the request was definitely not executed, so retrying a write cannot apply it twice. */
export const META_RETRY_SAFE = 'kv-retry-safe';

/** Error metadata on OUT_OF_RANGE: the oldest revision still available (the request named a compacted one). */
export const META_COMPACT_REVISION = 'kv-compact-revision';

/**
 * Error metadata: why a call failed, as a machine-readable code (e.g. `WRONG_SHARD`, `NOT_LEADER`,
 * `BUSY`, `MEMORY_BUDGET`), so clients classify failures by this field rather than by message
 * text. Servers from before it send none; clients then fall back to the message.
 */
export const META_REASON = 'kv-reason';

/** The reasons servers send in {@link META_REASON} (sharding error codes such as `BUSY` or `POOL_NOT_FOUND` are sent as they are). */
export type ErrorReason = 'WRONG_SHARD' | 'NOT_LEADER' | 'CROSS_SHARD' | 'OVERLOADED' | 'MEMORY_BUDGET' | (string & {});

/** The first string value of a metadata key, if any. */
export function metaString(md: grpc.Metadata | undefined | null, key: string): string | undefined {
  const v = md?.get(key)[0];
  return typeof v === 'string' ? v : v === undefined ? undefined : v.toString('utf8');
}

/** A non-negative safe integer in decimal, or undefined. */
function metaUint(md: grpc.Metadata | undefined | null, key: string): number | undefined {
  const s = metaString(md, key);
  if (s === undefined || !/^[0-9]{1,16}$/.test(s)) return undefined;
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : undefined;
}

/**
 * The hop count of a request's `kv-forwarded` metadata: 0 when absent; a malformed value counts
 * as {@link MAX_FORWARD_HOPS} (never forwarded again, so it cannot loop).
 */
export function forwardHops(md: grpc.Metadata | undefined | null): number {
  if (metaString(md, META_FORWARDED) === undefined) return 0;
  return Math.min(metaUint(md, META_FORWARDED) ?? MAX_FORWARD_HOPS, MAX_FORWARD_HOPS);
}

/** Fields of a response's kvcascade metadata. */
export interface KvMetadataFields {
  /** Leader of `shard` (client-API address). */
  readonly leader?: string | undefined;
  /** The shard that served the call. */
  readonly shard?: number | undefined;
  /** The serving node's cluster map epoch. */
  readonly mapEpoch?: number | undefined;
  readonly retrySafe?: boolean | undefined;
  readonly compactRevision?: number | undefined;
  /** Why the call failed ({@link META_REASON}), on errors. */
  readonly reason?: ErrorReason | undefined;
}

/** Builds metadata carrying the given kvcascade fields (absent fields are omitted). */
export function kvMetadata(fields: KvMetadataFields): grpc.Metadata {
  const md = new grpc.Metadata();
  if (fields.leader) md.set(META_LEADER, fields.leader);
  if (fields.shard !== undefined) md.set(META_SHARD, String(fields.shard));
  if (fields.mapEpoch !== undefined) md.set(META_MAP_EPOCH, String(fields.mapEpoch));
  if (fields.retrySafe) md.set(META_RETRY_SAFE, '1');
  if (fields.compactRevision !== undefined) md.set(META_COMPACT_REVISION, String(fields.compactRevision));
  if (fields.reason) md.set(META_REASON, fields.reason);
  return md;
}

/** Reads the kvcascade fields of response metadata (malformed numbers read as absent). */
export function readKvMetadata(md: grpc.Metadata | undefined | null): KvMetadataFields {
  return {
    leader: metaString(md, META_LEADER) || undefined,
    shard: metaUint(md, META_SHARD),
    mapEpoch: metaUint(md, META_MAP_EPOCH),
    retrySafe: metaString(md, META_RETRY_SAFE) === '1',
    compactRevision: metaUint(md, META_COMPACT_REVISION),
    reason: metaString(md, META_REASON) || undefined,
  };
}

/**
 * True when a failed call provably never reached a server, so even a write is safe to retry:
 * grpc-js fails calls with UNAVAILABLE "No connection established" when no connection to the
 * target could be made (the request was never sent), and with "Stream refused by server" when
 * the server refused the HTTP/2 stream before processing it.
 */
export function neverReachedServer(err: { code?: number; details?: string } | undefined): boolean {
  if (err?.code !== grpc.status.UNAVAILABLE) return false;
  const d = err.details ?? '';
  return d.startsWith('No connection established') || d.startsWith('Stream refused by server');
}

/** Request metadata: the depth of the extension lambda chain that made this write (absent = a client write); the hop limit holds across nodes. */
export const META_HOPS = 'kv-hops';
