/** The gRPC metadata conventions shared by the kvcascade services and clients (leader hints, forwarding, retry safety, compaction). */
import * as grpc from '@grpc/grpc-js';

/**
 * Response metadata (trailers of unary calls and errors; initial metadata and trailers of
 * streams): the client-API address of the shard leader, when the node knows it. Clients send
 * later calls there directly.
 */
export const META_LEADER = 'kv-leader';

/** Request metadata `kv-forwarded: 1`: a node forwarded this call to the leader; a non-leader answers UNAVAILABLE instead of forwarding again. */
export const META_FORWARDED = 'kv-forwarded';

/** Error metadata `kv-retry-safe: 1`: the request was definitely not executed, so retrying a write cannot apply it twice. */
export const META_RETRY_SAFE = 'kv-retry-safe';

/** Error metadata on OUT_OF_RANGE: the oldest revision still available (the request named a compacted one). */
export const META_COMPACT_REVISION = 'kv-compact-revision';

/** The first string value of a metadata key, if any. */
export function metaString(md: grpc.Metadata | undefined | null, key: string): string | undefined {
  const v = md?.get(key)[0];
  return typeof v === 'string' ? v : v === undefined ? undefined : v.toString('utf8');
}

/** Fields of a response's kvcascade metadata. */
export interface KvMetadataFields {
  readonly leader?: string | undefined;
  readonly retrySafe?: boolean | undefined;
  readonly compactRevision?: number | undefined;
}

/** Builds metadata carrying the given kvcascade fields (absent fields are omitted). */
export function kvMetadata(fields: KvMetadataFields): grpc.Metadata {
  const md = new grpc.Metadata();
  if (fields.leader) md.set(META_LEADER, fields.leader);
  if (fields.retrySafe) md.set(META_RETRY_SAFE, '1');
  if (fields.compactRevision !== undefined) md.set(META_COMPACT_REVISION, String(fields.compactRevision));
  return md;
}

/** Reads the kvcascade fields of response metadata. */
export function readKvMetadata(md: grpc.Metadata | undefined | null): KvMetadataFields {
  const compact = metaString(md, META_COMPACT_REVISION);
  const n = compact === undefined ? NaN : Number(compact);
  return {
    leader: metaString(md, META_LEADER) || undefined,
    retrySafe: metaString(md, META_RETRY_SAFE) === '1',
    compactRevision: Number.isSafeInteger(n) && n >= 0 ? n : undefined,
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
