/**
 * The cluster map as this node knows it: decoded from the metadata group's state machine (the
 * `/_cluster/` records) whenever they change, or, before the metadata is initialised, the map
 * every bootstrapping node computes alike from its flags.
 */
import { CLUSTER_PREFIX, decodeClusterMap, type ClusterMap } from '../sharding/index.js';
import type { ListOptions, ListResult } from '../statemachine/index.js';

/** Records of the map read per page while decoding. */
const PAGE = 1000;

/** What the view reads the map from: the metadata group's applied state (its replica here). */
export interface MapSource {
  /** The revision of the last applied write. */
  readonly revision: number;
  /** A page of keys under `prefix`. */
  list(prefix: string, options?: ListOptions): ListResult;
}

/** Caches the decoded map per metadata revision. */
export class ClusterView {
  private map: ClusterMap;
  private readAtRevision = -1;
  private initialised = false;

  /** `fallback`: the map to use until the metadata group holds one (the bootstrap map, or a joiner's seed). */
  constructor(fallback: ClusterMap) {
    this.map = fallback;
  }

  /** Whether the metadata group holds a map (false until the first leader writes the bootstrap map). */
  get isInitialised(): boolean {
    return this.initialised;
  }

  /** The current map. */
  get current(): ClusterMap {
    return this.map;
  }

  /**
   * Re-reads the map from the metadata state machine if it changed since the last call. Returns
   * true when the map (its epoch) changed. A malformed map is reported through `onError` and the
   * previous map kept (routing on a known-good map beats routing on garbage).
   */
  refresh(meta: MapSource, onError: (e: unknown) => void): boolean {
    if (meta.revision === this.readAtRevision) return false;
    this.readAtRevision = meta.revision;
    const records: { key: string; value: string }[] = [];
    let epoch = 0;
    let after: string | undefined;
    const dec = new TextDecoder();
    for (;;) {
      const page = meta.list(CLUSTER_PREFIX, { limit: PAGE, ...(after !== undefined ? { after } : {}) });
      for (const it of page.items) {
        records.push({ key: it.key, value: dec.decode(it.value!) });
        if (it.version > epoch) epoch = it.version;
      }
      if (page.nextAfter === undefined) break;
      after = page.nextAfter;
    }
    if (records.length === 0) return false;
    if (this.initialised && epoch === this.map.epoch) return false;
    try {
      this.map = decodeClusterMap(records, epoch);
      this.initialised = true;
      return true;
    } catch (e) {
      onError(e);
      return false;
    }
  }
}
