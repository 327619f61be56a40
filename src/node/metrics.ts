/**
 * Prometheus metrics of a kvd node (prom-client): requests by method and status, latencies,
 * Raft and storage figures, served on an HTTP `/metrics` endpoint.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type {
  CallOptions,
  DeleteRequest,
  GetRequest,
  KvBackend,
  ListRequest,
  PutRequest,
  TriggerRequest,
  TxnRequest,
  WatchRequest,
  WatchSink,
} from './backend.js';
import { HotCounter, HotHistogram, type HotCounterSeries, type HotHistogramSeries } from './hot-metrics.js';
import type { KvNode, NodeObserver } from './kv-node.js';

/** Every metric of one node, in its own registry. */
export class NodeMetrics {
  readonly registry = new Registry();
  /** Per request (hot-metrics.ts: plain increments, handed to prom-client at scrape time). */
  readonly requests: HotCounter<'method' | 'status'>;
  readonly requestSeconds: HotHistogram<'method'>;
  readonly fsyncSeconds: Histogram;
  readonly batchEntries: Histogram;
  readonly batchGroups: Histogram;
  /** Fsynced rounds staged while another round's fsync ran (NodeOptions.overlapRounds). */
  readonly overlappedRounds: Counter;
  readonly appliedEntries: HotCounter<'group'>;
  readonly leaderChanges: Counter<'group'>;
  readonly proposals: HotCounter<'group'>;
  /** Writes answered from their client session (retries of writes already applied). */
  readonly duplicateWrites: Counter<'group'>;
  readonly commitSeconds: HotHistogram<never>;

  constructor(node: KvNode) {
    const registers = [this.registry];
    // Node's own series with our prefix: kvcascade_process_cpu_seconds_total, kvcascade_nodejs_heap_size_used_bytes...
    collectDefaultMetrics({ register: this.registry, prefix: 'kvcascade_' });
    this.requests = new HotCounter(
      'kvcascade_requests_total',
      'Client requests by method and outcome (OK, or the gRPC status code name the client got: NOT_FOUND, UNAVAILABLE...)',
      ['method', 'status'],
      this.registry,
    );
    this.requestSeconds = new HotHistogram(
      'kvcascade_request_duration_seconds',
      'Client request latency on this node',
      ['method'],
      [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      this.registry,
    );
    this.fsyncSeconds = new Histogram({
      name: 'kvcascade_fsync_duration_seconds',
      help: 'Time to make one ready round durable (one fsynced LevelDB batch for all groups)',
      buckets: [0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5],
      registers,
    });
    this.batchEntries = new Histogram({
      name: 'kvcascade_fsync_batch_entries',
      help: 'Log entries made durable by one fsync (group commit)',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096],
      registers,
    });
    this.batchGroups = new Histogram({
      name: 'kvcascade_fsync_batch_groups',
      help: 'Raft groups with work in one ready round',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128],
      registers,
    });
    this.overlappedRounds = new Counter({
      name: 'kvcascade_ready_rounds_overlapped_total',
      help: "Fsynced ready rounds staged while the previous round's fsync ran (overlapped rounds; the rest of kvcascade_fsync_duration_seconds_count ran alone)",
      registers,
    });
    this.appliedEntries = new HotCounter('kvcascade_raft_applied_entries_total', 'Committed entries applied to the state machine', ['group'], this.registry);
    this.leaderChanges = new Counter({
      name: 'kvcascade_raft_leader_changes_total',
      help: 'Leader changes seen by this node',
      labelNames: ['group'],
      registers,
    });
    this.proposals = new HotCounter('kvcascade_raft_proposals_committed_total', 'Proposals made on this node that committed and were applied', ['group'], this.registry);
    this.duplicateWrites = new Counter({
      name: 'kvcascade_session_duplicate_writes_total',
      help: 'Applied entries that repeated a write their client session had already applied (a retry answered with the first result)',
      labelNames: ['group'],
      registers,
    });
    this.commitSeconds = new HotHistogram(
      'kvcascade_raft_commit_duration_seconds',
      'Time from proposing a write to applying it (replication, quorum fsyncs, apply)',
      [],
      [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.5, 1, 2],
      this.registry,
    );
    const groupGauge = (name: string, help: string, pick: (g: Awaited<ReturnType<KvNode['status']>>['groups'][number]) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['group'],
        registers,
        async collect() {
          const s = await node.status();
          for (const g of s.groups) this.set({ group: String(g.group) }, pick(g));
        },
      });
    groupGauge('kvcascade_raft_term', 'Current Raft term', (g) => g.term);
    groupGauge('kvcascade_raft_is_leader', '1 when this node leads the group', (g) => (g.leader === node.id ? 1 : 0));
    groupGauge('kvcascade_raft_commit_index', 'Commit index', (g) => g.commitIndex);
    groupGauge('kvcascade_raft_applied_index', 'Applied index', (g) => g.appliedIndex);
    groupGauge('kvcascade_raft_log_entries', 'Entries held in the log (after the last compaction)', (g) => g.lastIndex - g.firstIndex + 1);
    groupGauge('kvcascade_revision', 'State machine revision', (g) => g.revision);
    // The storage engine's writes, all counted by the Raft log store (the engine's only writer).
    const opsSeen = new Map<string, number>();
    new Counter({
      name: 'kvcascade_engine_ops_total',
      help: 'Storage engine (LevelDB) operations by record kind (g/l log entry, g/h hard state, s/v version, s/l latest, s/r revision block, s/m meta, s/c session header, s/d session result, s/j session journal...) and op: put and del in the synced write batches; clear: keys in the ranges deleted by engine clears (compacted log entries)',
      labelNames: ['record', 'op'],
      registers,
      collect() {
        for (const [record, n] of Object.entries(node.storeOpCounts)) {
          for (const op of ['put', 'del', 'clear'] as const) {
            const id = `${record} ${op}`;
            const seen = opsSeen.get(id) ?? 0;
            if (n[op] > seen) this.inc({ record, op }, n[op] - seen);
            opsSeen.set(id, Math.max(seen, n[op]));
          }
        }
      },
    });
    this.runningTotal('kvcascade_engine_batches_total', 'Write batches handed to the storage engine (fsynced: one per ready round that needs it; plus unsynced ones of state records alone, see kvcascade_engine_unsynced_batches_total)', () => node.storeMetrics.batches);
    this.runningTotal('kvcascade_engine_unsynced_batches_total', 'Engine write batches written without fsync: state records alone (a round that only applied), written so that values can leave the heap on an idle node', () => node.storeMetrics.unsyncedBatches);
    this.runningTotal('kvcascade_engine_clears_total', 'Range deletes handed to the storage engine outside the batches (compacted log entries)', () => node.storeMetrics.clears);
    const cacheGauge = (name: string, help: string, pick: (c: KvNode['valueCache']['stats']) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(pick(node.valueCache.stats));
        },
      });
    cacheGauge('kvcascade_value_cache_bytes', 'Accounted bytes held by the value cache (values served from the engine)', (c) => c.bytes);
    cacheGauge('kvcascade_value_cache_max_bytes', 'Bound of the value cache', (c) => c.maxBytes);
    cacheGauge('kvcascade_value_cache_entries', 'Values held by the value cache', (c) => c.entries);
    cacheGauge('kvcascade_value_cache_hits', 'Value reads answered by the cache since start', (c) => c.hits);
    cacheGauge('kvcascade_value_cache_misses', 'Value reads that went to the engine since start', (c) => c.misses);
    cacheGauge('kvcascade_value_cache_evictions', 'Values evicted from the cache to stay within its bound since start', (c) => c.evictions);
    const indexGauge = (name: string, help: string, pick: (c: KvNode['indexCache']['stats']) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          this.set(pick(node.indexCache.stats));
        },
      });
    indexGauge('kvcascade_index_cache_bytes', 'Accounted bytes held by the hot-index cache (keys\' latest versions served from the engine)', (c) => c.bytes);
    indexGauge('kvcascade_index_cache_max_bytes', 'Bound of the hot-index cache', (c) => c.maxBytes);
    indexGauge('kvcascade_index_cache_entries', 'Keys held by the hot-index cache', (c) => c.entries);
    indexGauge('kvcascade_index_cache_hits', 'Latest-version lookups answered by the cache since start', (c) => c.hits);
    indexGauge('kvcascade_index_cache_misses', 'Latest-version lookups that went to the engine since start', (c) => c.misses);
    indexGauge('kvcascade_index_cache_evictions', 'Keys evicted from the hot-index cache to stay within its bound since start', (c) => c.evictions);
    const budget = node.memoryBudget;
    new Gauge({
      name: 'kvcascade_memory_budget_bytes',
      help: "The node's memory budget (--memory-budget-mib; 0: none)",
      registers,
      collect() {
        this.set(budget.maxBytes);
      },
    });
    new Gauge({
      name: 'kvcascade_memory_accounted_bytes',
      help: 'Accounted memory by part (index: key/version index of all hosted replicas; history: watch histories; log: in-memory Raft logs; value_cache; index_cache: hot latest versions; snapshots: chunks and encoder parts held for sending to lagging followers), as last sampled',
      labelNames: ['part'],
      registers,
      collect() {
        const a = budget.accounted;
        this.set({ part: 'index' }, a.index);
        this.set({ part: 'history' }, a.history);
        this.set({ part: 'log' }, a.log);
        this.set({ part: 'value_cache' }, a.valueCache);
        this.set({ part: 'index_cache' }, a.indexCache);
        this.set({ part: 'snapshots' }, a.snapshots);
      },
    });
    new Gauge({
      name: 'kvcascade_memory_budget_exhausted',
      help: '1 while writes that add data are refused (memory budget spent, or the V8 heap nearly full)',
      registers,
      collect() {
        this.set(budget.exhausted ? 1 : 0);
      },
    });
    let refusedSeen = 0;
    new Counter({
      name: 'kvcascade_memory_budget_refusals_total',
      help: 'Writes refused with RESOURCE_EXHAUSTED (MEMORY_BUDGET) since start',
      registers,
      collect() {
        const v = budget.refusals;
        if (v > refusedSeen) this.inc(v - refusedSeen);
        refusedSeen = Math.max(refusedSeen, v);
      },
    });
    new Gauge({
      name: 'kvcascade_snapshot_sending',
      help: 'Snapshot sending to lagging followers, now (views: engine views open for it, at most one per node; readers: followers being read for; held_bytes: chunks and encoder parts held)',
      labelNames: ['what'],
      registers,
      collect() {
        const s = node.snapshotSending;
        this.set({ what: 'views' }, s.openViews);
        this.set({ what: 'readers' }, s.readers);
        this.set({ what: 'held_bytes' }, s.heldBytes);
      },
    });
    new Gauge({
      name: 'kvcascade_version_sweep',
      help: 'The background sweep of compacted versions (--sweep-versions; all 0 without it) since start: units run, version records read (scanned) and deleted, passes completed, unit_ms spent in units',
      labelNames: ['what'],
      registers,
      collect() {
        const s = node.versionSweep;
        this.set({ what: 'units' }, s?.units ?? 0);
        this.set({ what: 'scanned' }, s?.scanned ?? 0);
        this.set({ what: 'deleted' }, s?.deleted ?? 0);
        this.set({ what: 'passes' }, s?.passes ?? 0);
        this.set({ what: 'unit_ms' }, s?.unitMs ?? 0);
      },
    });
    const sumOverReplicas = (name: string, help: string, pick: (r: NonNullable<ReturnType<KvNode['replica']>>) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          let n = 0;
          for (const g of node.hostedGroups()) {
            const r = node.replica(g);
            if (r) n += pick(r);
          }
          this.set(n);
        },
      });
    sumOverReplicas('kvcascade_snapshot_sent_transfers', 'Snapshot transfers this node started as leader (first chunks sent, retries included), hosted groups since their replica started', (r) => r.snapshotSent.transfers);
    sumOverReplicas('kvcascade_snapshot_sent_bytes', 'Snapshot chunk bytes this node sent as leader, hosted groups since their replica started', (r) => r.snapshotSent.bytes);
    sumOverReplicas('kvcascade_snapshot_received_transfers', 'Streamed snapshot transfers this node started receiving (chunk 0 staged), hosted groups since their replica started', (r) => r.inbox?.counters.transfers ?? 0);
    sumOverReplicas('kvcascade_snapshot_received_completed', 'Streamed snapshot transfers received whole and sound (checksum, format, index), hosted groups since their replica started', (r) => r.inbox?.counters.completed ?? 0);
    sumOverReplicas('kvcascade_snapshot_received_failed', 'Streamed snapshot transfers whose last chunk arrived and failed the checks (checksum, the leader\'s end checksum, format, index): the leader starts over', (r) => r.inbox?.counters.failed ?? 0);
    sumOverReplicas('kvcascade_snapshot_received_bytes', 'Snapshot chunk bytes received and staged to disk (never held in the heap), hosted groups since their replica started', (r) => r.inbox?.counters.bytes ?? 0);
    sumOverReplicas('kvcascade_snapshot_received_refused_chunks', 'Snapshot chunks refused (out of order, or while an earlier install runs), hosted groups since their replica started', (r) => r.inbox?.counters.refused ?? 0);
    sumOverReplicas('kvcascade_raft_pending_proposals', 'Proposals waiting for commit on this node (all groups)', (r) => r.pendingProposals);
    sumOverReplicas('kvcascade_watchers', 'Active watches served by this node (all groups)', (r) => r.watchCount);
    sumOverReplicas(
      'kvcascade_raft_messages_ignored_total',
      'Raft messages the core ignored as invalid (out-of-bound terms or indexes, local-only types, inconsistent entries), all groups since start',
      (r) => r.droppedMessages,
    );
    sumOverReplicas('kvcascade_compaction_steps', 'Compaction commands (retention steps, client compactions) applied by hosted replicas since they started', (r) => r.compactions.steps);
    sumOverReplicas('kvcascade_compaction_revisions', 'Revisions those compactions covered, hosted replicas since they started', (r) => r.compactions.revisions);
    sumOverReplicas('kvcascade_compaction_apply_seconds', 'Synchronous time spent applying those compactions (event-loop time, recorder deletions included), hosted replicas since they started', (r) => r.compactions.applyMs / 1000);
    new Gauge({
      name: 'kvcascade_compaction_apply_max_seconds',
      help: 'The longest single compaction apply (one event-loop block) of any hosted replica since it started',
      registers,
      collect() {
        let m = 0;
        for (const g of node.hostedGroups()) m = Math.max(m, node.replica(g)?.compactions.maxApplyMs ?? 0);
        this.set(m / 1000);
      },
    });
    sumOverReplicas('kvcascade_index_version_lists', 'Keys whose version lists the heap index holds (KvStateMachine records), all hosted replicas', (r) => r.memory.keys);
    sumOverReplicas('kvcascade_index_retained_writes', 'Writes retained in the heap index since the compaction point (write log entries), all hosted replicas', (r) => r.memory.writes);
  }

  /** Exposes the peer transport's message and batch counts (monotonic counts, read at scrape time). */
  watchTransport(t: {
    readonly sentMessages: number;
    readonly sentBatches: number;
    readonly receivedMessages: number;
    readonly dropped: number;
    readonly rejectedBatches?: number;
    readonly rejectedMessages?: number;
  }): void {
    const counter = (name: string, help: string, read: () => number) => this.runningTotal(name, help, read);
    counter('kvcascade_peer_messages_sent_total', 'Raft messages sent to peers (all groups)', () => t.sentMessages);
    counter('kvcascade_peer_batches_sent_total', 'Batches written to peer streams (each carries the messages of every group for that peer)', () => t.sentBatches);
    counter('kvcascade_peer_messages_received_total', 'Raft messages received from peers', () => t.receivedMessages);
    counter('kvcascade_peer_messages_dropped_total', 'Raft messages dropped (queue full or peer down; Raft retransmits)', () => t.dropped);
    counter('kvcascade_peer_batches_rejected_total', 'Peer streams and batches refused: no node identity, a sender that is not a member, or a sender other than the authenticated node', () => t.rejectedBatches ?? 0);
    counter('kvcascade_peer_messages_rejected_total', 'Peer messages dropped on arrival: malformed, or claiming a sender other than the batch\'s', () => t.rejectedMessages ?? 0);
  }

  /** A counter read from a running total at scrape time (the total only grows). */
  private runningTotal(name: string, help: string, read: () => number): Counter {
    let seen = 0;
    return new Counter({
      name,
      help,
      registers: [this.registry],
      collect() {
        const v = read();
        if (v > seen) this.inc(v - seen);
        seen = Math.max(seen, v);
      },
    });
  }

  /** A node observer that records storage and Raft events. */
  observer(): NodeObserver {
    // Series per group, looked up once (the observer runs once per applied round and per committed proposal).
    const applied = new Map<number, HotCounterSeries>();
    const proposals = new Map<number, HotCounterSeries>();
    const seriesOf = (m: Map<number, HotCounterSeries>, c: HotCounter<'group'>, group: number): HotCounterSeries => {
      let s = m.get(group);
      if (s === undefined) m.set(group, (s = c.series({ group: String(group) })));
      return s;
    };
    const commit = this.commitSeconds.series({});
    return {
      readyBatch: (groups, entries, fsyncMs, overlapped) => {
        this.fsyncSeconds.observe(fsyncMs / 1000);
        if (overlapped) this.overlappedRounds.inc();
        this.batchEntries.observe(entries);
        this.batchGroups.observe(groups);
      },
      applied: (group, n) => seriesOf(applied, this.appliedEntries, group).inc(n),
      leaderChanged: (group) => this.leaderChanges.inc({ group: String(group) }),
      committed: (group, ms) => {
        seriesOf(proposals, this.proposals, group).inc();
        commit.observe(ms / 1000);
      },
      duplicateWrite: (group) => this.duplicateWrites.inc({ group: String(group) }),
    };
  }

  /** Wraps a backend so that every client call (txn included) is counted and timed; the routing look-ups pass through. */
  meter(backend: KvBackend, statusName: (e: unknown) => string = (e) => (e as Error).name ?? 'Error'): KvBackend {
    // Each method's OK counter and latency series, looked up once (this runs once per request).
    const series = new Map<string, { readonly ok: HotCounterSeries; readonly seconds: HotHistogramSeries }>();
    const of = (method: string) => {
      let s = series.get(method);
      if (s === undefined) series.set(method, (s = { ok: this.requests.series({ method, status: 'OK' }), seconds: this.requestSeconds.series({ method }) }));
      return s;
    };
    const timed = async <T>(method: string, fn: () => Promise<T>): Promise<T> => {
      const s = of(method);
      const t0 = performance.now();
      try {
        const v = await fn();
        s.ok.inc();
        return v;
      } catch (e) {
        this.requests.series({ method, status: statusName(e) }).inc();
        throw e;
      } finally {
        s.seconds.observe((performance.now() - t0) / 1000);
      }
    };
    return {
      put: (req: PutRequest, o: CallOptions) => timed('put', () => backend.put(req, o)),
      get: (req: GetRequest, o: CallOptions) => timed('get', () => backend.get(req, o)),
      delete: (req: DeleteRequest, o: CallOptions) => timed('delete', () => backend.delete(req, o)),
      trigger: (req: TriggerRequest, o: CallOptions) => timed('trigger', () => backend.trigger(req, o)),
      list: (req: ListRequest, o: CallOptions) => timed('list', () => backend.list(req, o)),
      txn: (req: TxnRequest, o: CallOptions) => timed('txn', () => backend.txn(req, o)),
      watch: (req: WatchRequest, sink: WatchSink) => {
        of('watch').ok.inc();
        return backend.watch(req, sink);
      },
      status: () => timed('status', () => backend.status()),
      // Routing look-ups: passed through, neither counted nor timed.
      shardMap: () => backend.shardMap(),
      shardsForPrefix: (prefix: string) => backend.shardsForPrefix(prefix),
    };
  }

  /**
   * Serves `/metrics` on 127.0.0.1:`port` (0 = ephemeral); resolves with the bound port. `extra`
   * may answer other requests (it returns true when it did).
   */
  async serve(
    port: number,
    host = '127.0.0.1',
    extra?: (req: IncomingMessage, res: ServerResponse) => boolean,
  ): Promise<{ server: Server; port: number }> {
    const server = createServer((req, res) => {
      if (extra?.(req, res)) return;
      if (req.url !== '/metrics') {
        res.statusCode = 404;
        res.end('not found\n');
        return;
      }
      this.registry.metrics().then(
        (text) => {
          res.setHeader('Content-Type', this.registry.contentType);
          res.end(text);
        },
        (err) => {
          res.statusCode = 500;
          res.end(String(err));
        },
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    const addr = server.address();
    return { server, port: typeof addr === 'object' && addr ? addr.port : port };
  }
}
