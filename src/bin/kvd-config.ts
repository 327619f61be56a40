/** Configuration of a kvd process: flags and an optional JSON file, validated into `KvdConfig`. */
import { Command, InvalidArgumentError, Option } from 'commander';
import { readFileSync, statSync } from 'node:fs';
import { resolve } from 'node:path';
import { KVCASCADE_VERSION } from '../node/kv-node.js';

/** The node's configuration after merging the config file and flags. */
export interface KvdConfig {
  id: number;
  /** Where the client API binds (e.g. 0.0.0.0:7379 in a container). */
  listen: string;
  /** The client API address other nodes and clients are told (the map's member address; default `listen`). */
  advertise: string;
  /** Initial members: id → client address (empty when joining). */
  peers: Map<number, string>;
  /** Initial members: id → peer address (their Raft listeners). */
  peerAddresses: Map<number, string>;
  /** Where the peer listener binds; unset only for a single-node cluster without peers. */
  peerListen?: string;
  /** The peer address other nodes dial (default `peerListen`). */
  advertisePeer?: string;
  /** Serve and dial peers without TLS (local development only: any local process can then act as a peer). */
  insecurePeers: boolean;
  dataDir: string;
  metricsPort: number;
  /** Interface the metrics/probe HTTP endpoint binds (default 127.0.0.1). */
  metricsHost: string;
  tickMs: number;
  electionTicks: number;
  snapshotEveryEntries: number;
  /** Log entries kept behind a snapshot, so a follower slightly behind catches up without one. */
  snapshotKeepEntries: number;
  retentionMs: number;
  /** Bound of the node's cache of value bytes, MiB (values live in LevelDB; README "Memory model"). */
  valueCacheMib: number;
  /** LevelDB's open (mapped) table files (`--leveldb-max-open-files`; absent: LevelDB's 1,000). */
  leveldbMaxOpenFiles?: number;
  /** LevelDB's block cache, MiB (`--leveldb-cache-mib`; absent: 8). */
  leveldbCacheMib?: number;
  /** Bound of the hot-index cache, MiB (`--index-cache-mib`). */
  indexCacheMib: number;
  /** `--malloc-trim-mib`: give freed native memory back to the OS when quiet, once this much was freed since the last time (unset: 64, `DEFAULT_MALLOC_TRIM_MIB`; 0: never; src/node/malloc-trim.ts). */
  mallocTrimMib?: number;
  /** `--malloc-trim-interval-ms`: least time between two such trims (unset: 60000). */
  mallocTrimIntervalMs?: number;
  /** `--index-drop-cold` / `--no-index-drop-cold` (NodeOptions.indexDropCold; unset: the node's default, on). */
  indexDropCold?: boolean;
  /** `--snapshot-chunks-in-flight` (NodeOptions.snapshotChunksInFlight; unset: the node's default, 4). */
  snapshotChunksInFlight?: number;
  /** `--snapshot-chunk-kib` (NodeOptions.snapshotChunkBytes / 1024; unset: the node's default). */
  snapshotChunkKib?: number;
  /** `--snapshot-chunk-files` / `--no-snapshot-chunk-files` (NodeOptions.snapshotChunkFiles; default on). */
  snapshotChunkFiles: boolean;
  /** `--sweep-versions` (experimental). */
  sweepVersions?: boolean;
  /** `--overlap-rounds` / `--no-overlap-rounds` (NodeOptions.overlapRounds; unset: the node's default). */
  overlapRounds?: boolean;
  /** `--sync-pace-ms` (NodeOptions.syncPaceMs; unset: the node's default). */
  syncPaceMs?: number;
  /** `--gather-turn` / `--no-gather-turn` (NodeOptions.gatherTurn; unset: the node's default). */
  gatherTurn?: boolean;
  /** `--gather-turns` (NodeOptions.gatherTurns; unset: the node's default). */
  gatherTurns?: number;
  /** `--state-write-delay-ms` (NodeOptions.stateWriteDelayMs; unset: the node's default). */
  stateWriteDelayMs?: number;
  /** `--sync-before-apply` / `--no-sync-before-apply` (NodeOptions.syncBeforeApply; unset: the node's default). */
  syncBeforeApply?: boolean;
  /** `--legacy-conditional-puts`: propose conditional puts older nodes can decode (rolling upgrade; NodeOptions.legacyConditionalPuts). */
  legacyConditionalPuts?: boolean;
  /** The node's memory budget, MiB (unset: 60 % of V8's heap limit; README "Memory model"). */
  memoryBudgetMib?: number;
  /** Shards of the default pool of a brand-new cluster (only read when the cluster is created). */
  defaultShards: number;
  /** Join the existing cluster at this address (host:port of any member) instead of creating one. */
  join?: string;
  /** With `join`: add this node to the cluster itself (with the admin token) instead of waiting for `kvctl member add`. */
  joinAutoAdd?: boolean;
  /** Extensions this node makes sure are loaded (registered cluster-wide) at start. */
  extensions: ConfiguredExtension[];
  /** Where extensions loaded without an isolation run on this node (unset: the runner's default, `process`). */
  extensionIsolation?: 'worker' | 'process' | 'in-process';
  /** Process isolation: each extension process's resident-memory budget, MiB (unset: the runner's default). */
  extensionMemoryMb?: number;
  /** V8 heap limit of each extension's worker or process, MiB (unset: the manager's default, 256). */
  extensionHeapMb?: number;
  /** Token required for admin operations (extension load/unload); unset = admin disabled. With access control on, it is root's credential. */
  adminToken?: string;
  /** Lifetime of the tokens users get by logging in (ms; unset: 10 minutes). */
  authTokenTtlMs?: number;
  /** Leases (docs/leases.md): the grace a new metadata leader gives every lease (ms), the most leases, the shortest TTL (s). Unset: the defaults. */
  leaseGraceMs?: number;
  maxLeases?: number;
  leaseMinTtl?: number;
  /** Client plane: this node's certificate and key (PEM files). */
  tlsCert?: string;
  tlsKey?: string;
  /** Client plane: CA bundle; when given, clients must present a certificate it signed. */
  tlsCa?: string;
  /** Peer plane: certificate (naming this node), key and cluster CA; default the client plane's. */
  peerTlsCert?: string;
  peerTlsKey?: string;
  peerTlsCa?: string;
  /** Things worth telling the operator at start (insecure choices, deprecated flags). */
  warnings: string[];
  /** Tests only: serve the fault-injection endpoint on the metrics port. */
  testFaultInjection: boolean;
  /** Report an event loop blocked this long (ms). */
  loopBlockWarnMs: number;
  /** Kill the process once its event loop is blocked this long (ms; 0 = never). */
  loopBlockKillMs: number;
  /** Extensions: worker restarts within a minute before an extension pauses (circuit breaker). */
  extMaxRestartsPerMinute?: number;
  /** Extensions: runner-killing failures of one event before it is dead-lettered as poison. */
  extPoisonAttempts?: number;
}

/** An extension listed in the node's configuration. */
export interface ConfiguredExtension {
  /** Folder (with package.json) or .tgz. */
  path: string;
  name?: string;
  config?: Record<string, unknown>;
}

/** Initial members as given: id → client address and (optionally) peer address. */
type PeerList = Map<number, { client: string; peer?: string }>;

function parsePeerEntry(id: number, text: string): { client: string; peer?: string } {
  const m = /^([^/\s]+:\d+)(?:\/([^/\s]+:\d+))?$/.exec(text.trim());
  if (!m) throw new InvalidArgumentError(`peer "${id}=${text}" is not id=CLIENT_HOST:PORT/PEER_HOST:PORT`);
  return { client: m[1]!, ...(m[2] !== undefined ? { peer: m[2] } : {}) };
}

function parsePeers(s: string): PeerList {
  const out: PeerList = new Map();
  for (const part of s.split(',').map((p) => p.trim()).filter(Boolean)) {
    const m = /^(\d+)=(.+)$/.exec(part);
    if (!m) throw new InvalidArgumentError(`peer "${part}" is not id=CLIENT_HOST:PORT/PEER_HOST:PORT`);
    out.set(Number(m[1]), parsePeerEntry(Number(m[1]), m[2]!));
  }
  return out;
}

/** Reads the admin token file, refusing one that other users may read (the token is a key to code execution). */
function readTokenFile(file: string): string {
  const mode = statSync(file).mode;
  if ((mode & 0o077) !== 0) {
    throw new Error(`the admin token file ${file} is readable or writable by other users (mode ${(mode & 0o777).toString(8)}): chmod 600 ${file}`);
  }
  return readFileSync(file, 'utf8').trim();
}

function int(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a non-negative integer`);
    return n;
  };
}

/** Parses argv into a config (exits with a one-line error on bad input). */
export function parseConfig(argv: string[]): KvdConfig {
  const program = new Command('kvd')
    .description('kvcascade node: serves the KV API and replicates with its peers')
    .version(KVCASCADE_VERSION)
    .option('--config <file>', 'JSON config file (flags override it)')
    .option('--id <n>', 'this node id (positive integer)', int('--id'))
    .option('--listen <host:port>', 'address the client API binds (e.g. 0.0.0.0:7379)')
    .option('--advertise <host:port>', 'client API address other nodes and clients are told, e.g. a DNS name (default: --listen)')
    .option('--peer-listen <host:port>', 'address of the peer (Raft) listener: mutual TLS, never the client port')
    .option('--advertise-peer <host:port>', 'peer address other nodes dial (default: --peer-listen)')
    .option('--peers <list>', 'initial members: 1=CLIENT/PEER,2=CLIENT/PEER,... as host:port pairs (including this node)')
    .option('--insecure-peers', 'serve and dial peers without TLS: LOCAL DEVELOPMENT ONLY, any process that reaches the peer port can act as a node')
    .option('--data-dir <dir>', 'where the node keeps its data')
    .option('--metrics-port <port>', 'port of the HTTP endpoint serving /metrics, /readyz and /livez (0 = ephemeral)', int('--metrics-port'))
    .option('--metrics-host <host>', 'interface of the metrics endpoint (default 127.0.0.1; 0.0.0.0 in a container, so probes and scrapers reach it)')
    .option('--tick-ms <ms>', 'Raft tick length', int('--tick-ms'))
    .option('--election-ticks <n>', 'ticks before a follower campaigns', int('--election-ticks'))
    .option('--snapshot-every <entries>', 'take a snapshot after this many applied entries', int('--snapshot-every'))
    .option('--snapshot-keep-entries <entries>', 'log entries kept behind a snapshot for followers slightly behind (default 5000)', int('--snapshot-keep-entries'))
    .option('--default-shards <n>', 'shards of the default pool when this node creates a new cluster (default 1)', int('--default-shards'))
    .option('--join <host:port>', 'join the existing cluster at this member address (add the node first: kvctl member add <id> <addr>)')
    .option('--join-auto-add', 'with --join: add this node to the cluster itself (needs the admin token), e.g. a new StatefulSet ordinal')
    .option('--retention-ms <ms>', 'keep old versions this long (0 = bounded only by history limits)', int('--retention-ms'))
    .option('--value-cache-mib <n>', 'bound of the cache of values read from disk, MiB (default 64)', int('--value-cache-mib'))
    .option('--leveldb-max-open-files <n>', "LevelDB's table files kept open and mapped, plus 10 (default 1000: every table of a 2 GiB store; at least 74; mapped pages count in RSS)", int('--leveldb-max-open-files'))
    .option('--leveldb-cache-mib <n>', "LevelDB's block cache, MiB (default 8)", int('--leveldb-cache-mib'))
    .option('--malloc-trim-mib <n>', 'give freed native memory (glibc malloc) back to the OS with malloc_trim when the node is quiet, once this many MiB were freed since the last trim (default 64; 0 = never; a trim pauses the quiet node\'s event loop, tens of ms to ~1 s: docs/memory.md "Trimming by default (session 33)")', int('--malloc-trim-mib'))
    .option('--malloc-trim-interval-ms <ms>', 'least time between two malloc trims (default 60000, at least 1000)', int('--malloc-trim-interval-ms'))
    .option('--index-drop-cold', "keep only hot keys' version lists and reserved keys in the heap, the rest is read from disk (the default)")
    .option('--no-index-drop-cold', "keep every key's version list and the live-key set in the heap (NodeOptions.indexDropCold false; about 3x the heap per key)")
    .option('--snapshot-chunks-in-flight <n>', 'snapshot chunks in flight to one lagging follower (default 4)', int('--snapshot-chunks-in-flight'))
    .option('--snapshot-chunk-files', "a lagging follower appends a streamed snapshot's chunks to a file in <data-dir>/snapshot-chunks (the default)")
    .option('--no-snapshot-chunk-files', "write them as LevelDB records instead (as before; ~6x the disk and CPU cost)")
    .option('--snapshot-chunk-kib <n>', 'KiB of one snapshot chunk sent to a lagging follower (default 1024; 64 to 16384)', int('--snapshot-chunk-kib'))
    .option('--sweep-versions', 'experimental: compaction leaves dropped versions to a background sweep in bounded units')
    .option('--overlap-rounds', "stage the next ready round while one's fsync runs (two rounds in flight; the default)")
    .option('--no-overlap-rounds', 'one ready round at a time (NodeOptions.overlapRounds false)')
    .option('--sync-pace-ms <ms>', 'with overlapped rounds: least time between the starts of two fsyncs of a busy node (0 = none, the default)', int('--sync-pace-ms'))
    .option('--gather-turn', "with overlapped rounds: hold the write of the round staged behind a finished fsync one event-loop turn, gathering what arrives in it (the default)")
    .option('--no-gather-turn', 'start that write at once (NodeOptions.gatherTurn false)')
    .option('--gather-turns <n>', 'with --gather-turn: hold that write this many event-loop turns, gathering what arrives after each (default 1)', int('--gather-turns'))
    .option('--state-write-delay-ms <ms>', 'how long applied state records wait for a synced batch before they are written alone, unsynced (default 5; 0 = at once)', int('--state-write-delay-ms'))
    .option('--sync-before-apply', "hand a round's synced batch to LevelDB before applying the entries it commits (NodeOptions.syncBeforeApply; off by default)")
    .option('--no-sync-before-apply', "apply first, the applied records in the round's batch (the default)")
    .option('--legacy-conditional-puts', 'rolling upgrade from a version before put flag currentOnConflict: write conditional puts older nodes can decode (docs/sessions.md, Upgrading)')
    .option('--index-cache-mib <n>', "bound of the hot-index cache of keys' latest versions read from disk, MiB (default 32)", int('--index-cache-mib'))
    .option('--memory-budget-mib <n>', "memory budget of the node, MiB: past it writes that add data get RESOURCE_EXHAUSTED (default 60 % of V8's heap limit; 0: none)", int('--memory-budget-mib'))
    .option('--extension <path>', 'load this extension folder or .tgz at start (repeatable; the config file takes {path, name, config} objects)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--extension-isolation <mode>', 'where extensions loaded without --isolation run: process (default), worker or in-process')
    .option('--extension-memory-mb <n>', 'resident-memory budget of each extension process, MiB (default 512)', int('--extension-memory-mb'))
    .option('--extension-heap-mb <n>', 'V8 heap limit (old generation) of each extension worker or process, MiB (default 256)', int('--extension-heap-mb'))
    .option('--admin-token-file <file>', 'read the admin token (for admin operations such as loading extensions) from a file only its owner can read (or env KVCASCADE_ADMIN_TOKEN)')
    .option('--lease-grace-ms <ms>', 'leases: the grace a new metadata leader gives every lease before revoking it (default 5000; docs/leases.md)', int('--lease-grace-ms'))
    .option('--max-leases <n>', 'leases: the most leases the cluster holds (default 100000)', int('--max-leases'))
    .option('--lease-min-ttl <s>', 'leases: the shortest TTL a grant may ask for, seconds (default 2)', int('--lease-min-ttl'))
    .option('--auth-token-ttl-ms <ms>', 'access control: lifetime of a login token (default 600000, 10 minutes; clients log in again before it ends)', int('--auth-token-ttl-ms'))
    .option('--admin-token <token>', 'the admin token itself (discouraged: visible in the process list; use --admin-token-file)')
    .option('--tls-cert <file>', 'PEM certificate of the client API (also presented when this node calls another node\'s client API)')
    .option('--tls-key <file>', 'PEM private key of the client API')
    .option('--tls-ca <file>', 'PEM CA bundle: clients must present a certificate it signed (client certificate authentication)')
    .option('--peer-tls-cert <file>', 'PEM certificate of the peer listener, naming this node (CN node-<id> or SAN URI urn:kvcascade:node:<id>); default --tls-cert')
    .option('--peer-tls-key <file>', 'PEM private key of the peer listener (default --tls-key)')
    .option('--peer-tls-ca <file>', 'PEM CA bundle of the cluster: peers must present a certificate it signed (default --tls-ca)')
    .option('--loop-block-warn-ms <ms>', 'report an event loop blocked this long (default 1000)', int('--loop-block-warn-ms'))
    .option('--loop-block-kill-ms <ms>', 'kill the process when its event loop stays blocked this long, e.g. by an in-process lambda in an endless loop (default 5000; 0 = never)', int('--loop-block-kill-ms'))
    .option('--ext-max-restarts-per-minute <n>', 'worker restarts of one extension within a minute before it pauses (default 30)', int('--ext-max-restarts-per-minute'))
    .option('--ext-poison-attempts <n>', 'runner-killing failures of one event before it is dead-lettered as poison (default 3)', int('--ext-poison-attempts'))
    .addOption(
      new Option('--test-fault-injection', 'tests only: POST /test/faults?drop-to=2,3 on the metrics port cuts this node\'s outgoing peer traffic').hideHelp(),
    )
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });
  program.parse(argv, { from: 'user' });
  const o = program.opts<Record<string, unknown>>();
  let file: Record<string, unknown> = {};
  if (typeof o.config === 'string') file = JSON.parse(readFileSync(o.config, 'utf8')) as Record<string, unknown>;
  const pick = <T>(k: string, fallback: T): T => (o[k] ?? file[k] ?? fallback) as T;
  const peersRaw = pick<string | Record<string, string> | undefined>('peers', undefined);
  const peerList: PeerList =
    typeof peersRaw === 'string'
      ? parsePeers(peersRaw)
      : new Map(Object.entries(peersRaw ?? {}).map(([k, v]) => [Number(k), parsePeerEntry(Number(k), String(v))] as const));
  const id = Number(pick('id', 0));
  const listenFlag = pick<string | undefined>('listen', undefined);
  const advertiseFlag = pick<string | undefined>('advertise', undefined);
  const listen = listenFlag ?? advertiseFlag ?? peerList.get(id)?.client;
  const advertise = advertiseFlag ?? (listenFlag !== undefined && !isWildcard(listenFlag) ? listenFlag : peerList.get(id)?.client ?? listenFlag);
  const join = pick<string | undefined>('join', undefined);
  const peerListen = pick<string | undefined>('peerListen', undefined);
  const advertisePeer = pick<string | undefined>('advertisePeer', undefined) ?? peerListen ?? peerList.get(id)?.peer;
  const insecurePeers = Boolean(pick('insecurePeers', false));
  if (!id) throw new Error('--id is required');
  if (!listen || !advertise) throw new Error('--listen is required (or list this node in --peers)');
  if (isWildcard(advertise)) {
    throw new Error(`--listen ${listen} binds every interface: give --advertise host:port, the address other nodes and clients can reach this node at`);
  }
  for (const [flag, v] of [['--listen', listen], ['--advertise', advertise], ['--peer-listen', peerListen], ['--advertise-peer', advertisePeer]] as const) {
    if (v !== undefined && !/^[^/\s]+:\d+$/.test(v)) throw new Error(`${flag} "${v}" is not host:port`);
  }
  if (join !== undefined) {
    if (peerList.size > 0) throw new Error('give either --join (to join a cluster) or --peers (to create one), not both');
    if (!/^.+:\d+$/.test(join)) throw new Error(`--join "${join}" is not host:port`);
  } else {
    if (peerList.size === 0) peerList.set(id, { client: advertise, ...(advertisePeer !== undefined ? { peer: advertisePeer } : {}) });
    const self = peerList.get(id);
    if (!self) throw new Error(`node ${id} must be listed in --peers`);
    if (self.client !== advertise) {
      throw new Error(`this node's client address in --peers (${self.client}) differs from ${advertiseFlag !== undefined ? '--advertise' : '--listen'} ${advertise}`);
    }
    if (advertisePeer !== undefined && self.peer !== undefined && self.peer !== advertisePeer) {
      throw new Error(`this node's peer address in --peers (${self.peer}) differs from --advertise-peer/--peer-listen (${advertisePeer})`);
    }
  }
  const multiNode = join !== undefined || peerList.size > 1;
  if (multiNode) {
    if (peerListen === undefined) throw new Error('--peer-listen is required when the cluster has other members: Raft traffic has its own listener, never the client port');
    for (const [pid, p] of peerList) {
      if (p.peer === undefined) throw new Error(`member ${pid} in --peers has no peer address: write ${pid}=${p.client}/PEER_HOST:PORT`);
    }
  }
  if (peerListen !== undefined && (peerListen === listen || advertisePeer === advertise)) {
    throw new Error('the peer listener must not be the client port: give --peer-listen its own host:port');
  }
  const peers = new Map([...peerList].map(([k, v]) => [k, v.client] as [number, string]));
  const peerAddresses = new Map([...peerList].filter(([, v]) => v.peer !== undefined).map(([k, v]) => [k, v.peer!] as [number, string]));
  const defaultShards = Number(pick('defaultShards', 1));
  const indexDropColdRaw = pick<unknown>('indexDropCold', undefined);
  if (indexDropColdRaw !== undefined && typeof indexDropColdRaw !== 'boolean') {
    throw new Error(`indexDropCold must be true or false (the config file's ${JSON.stringify(indexDropColdRaw)} is neither)`);
  }
  const indexDropCold = indexDropColdRaw;
  const windowRaw = pick<unknown>('snapshotChunksInFlight', undefined);
  const snapshotChunksInFlight = windowRaw === undefined ? undefined : Number(windowRaw);
  if (snapshotChunksInFlight !== undefined && (!Number.isSafeInteger(snapshotChunksInFlight) || snapshotChunksInFlight < 1 || snapshotChunksInFlight > 64)) {
    throw new Error('--snapshot-chunks-in-flight must be an integer from 1 to 64');
  }
  const chunkRaw = pick<unknown>('snapshotChunkKib', undefined);
  const snapshotChunkKib = chunkRaw === undefined ? undefined : Number(chunkRaw);
  if (snapshotChunkKib !== undefined && (!Number.isSafeInteger(snapshotChunkKib) || snapshotChunkKib < 64 || snapshotChunkKib > 16384)) {
    throw new Error('--snapshot-chunk-kib must be an integer from 64 to 16384');
  }
  if (!Number.isSafeInteger(defaultShards) || defaultShards < 1 || defaultShards > 64) throw new Error('--default-shards must be an integer from 1 to 64');
  const warnings: string[] = [];
  const cfg: KvdConfig = {
    id,
    listen,
    advertise,
    peers,
    peerAddresses,
    ...(peerListen !== undefined ? { peerListen } : {}),
    ...(advertisePeer !== undefined && peerListen !== undefined ? { advertisePeer } : {}),
    insecurePeers,
    warnings,
    testFaultInjection: o.testFaultInjection === true,
    dataDir: resolve(pick('dataDir', `./data/node-${id}`)),
    metricsPort: Number(pick('metricsPort', 0)),
    metricsHost: String(pick('metricsHost', '127.0.0.1')),
    tickMs: Number(pick('tickMs', 100)),
    electionTicks: Number(pick('electionTicks', 10)),
    snapshotEveryEntries: Number(pick('snapshotEvery', 20000)),
    snapshotKeepEntries: Number(pick('snapshotKeepEntries', 5000)),
    retentionMs: Number(pick('retentionMs', 3_600_000)),
    valueCacheMib: Number(pick('valueCacheMib', 64)),
    ...(pick<unknown>('leveldbMaxOpenFiles', undefined) !== undefined ? { leveldbMaxOpenFiles: Number(pick('leveldbMaxOpenFiles', 0)) } : {}),
    ...(pick<unknown>('leveldbCacheMib', undefined) !== undefined ? { leveldbCacheMib: Number(pick('leveldbCacheMib', 0)) } : {}),
    indexCacheMib: Number(pick('indexCacheMib', 32)),
    ...(indexDropCold !== undefined ? { indexDropCold } : {}),
    ...(snapshotChunksInFlight !== undefined ? { snapshotChunksInFlight } : {}),
    ...(snapshotChunkKib !== undefined ? { snapshotChunkKib } : {}),
    snapshotChunkFiles: pick<unknown>('snapshotChunkFiles', true) !== false,
    ...(pick('sweepVersions', false) ? { sweepVersions: true } : {}),
    ...(pick('legacyConditionalPuts', false) ? { legacyConditionalPuts: true } : {}),
    ...(pick<unknown>('overlapRounds', undefined) !== undefined ? { overlapRounds: pick<unknown>('overlapRounds', undefined) === true } : {}),
    ...(pick<unknown>('gatherTurn', undefined) !== undefined ? { gatherTurn: pick<unknown>('gatherTurn', undefined) === true } : {}),
    ...(pick<unknown>('syncBeforeApply', undefined) !== undefined ? { syncBeforeApply: pick<unknown>('syncBeforeApply', undefined) === true } : {}),
    defaultShards,
    ...(join !== undefined ? { join } : {}),
    ...(pick('joinAutoAdd', false) ? { joinAutoAdd: true } : {}),
    extensions: parseExtensions(o.extension, file.extensions),
    loopBlockWarnMs: Number(pick('loopBlockWarnMs', 1000)),
    loopBlockKillMs: Number(pick('loopBlockKillMs', 5000)),
  };
  const pace = pick<unknown>('syncPaceMs', undefined);
  if (pace !== undefined) {
    if (typeof pace !== 'number' || !Number.isSafeInteger(pace) || pace < 0) throw new Error(`--sync-pace-ms must be a non-negative integer (got ${String(pace)})`);
    cfg.syncPaceMs = pace;
  }
  const stateDelay = pick<unknown>('stateWriteDelayMs', undefined);
  if (stateDelay !== undefined) {
    if (typeof stateDelay !== 'number' || !Number.isSafeInteger(stateDelay) || stateDelay < 0) throw new Error(`--state-write-delay-ms must be a non-negative integer (got ${String(stateDelay)})`);
    cfg.stateWriteDelayMs = stateDelay;
  }
  const turns = pick<unknown>('gatherTurns', undefined);
  if (turns !== undefined) {
    if (typeof turns !== 'number' || !Number.isSafeInteger(turns) || turns < 1) throw new Error(`--gather-turns must be a positive integer (got ${String(turns)})`);
    cfg.gatherTurns = turns;
  }
  const trimMib = pick<unknown>('mallocTrimMib', undefined);
  if (trimMib !== undefined) {
    if (typeof trimMib !== 'number' || !Number.isSafeInteger(trimMib) || trimMib < 0 || trimMib > 65_536) {
      throw new Error(`--malloc-trim-mib must be an integer from 0 (never trim) to 65536 (got ${String(trimMib)})`);
    }
    cfg.mallocTrimMib = trimMib;
  }
  const trimMs = pick<unknown>('mallocTrimIntervalMs', undefined);
  if (trimMs !== undefined) {
    if (typeof trimMs !== 'number' || !Number.isSafeInteger(trimMs) || trimMs < 1000) {
      throw new Error(`--malloc-trim-interval-ms must be an integer >= 1000: a trim walks every free chunk of the allocator (got ${String(trimMs)})`);
    }
    cfg.mallocTrimIntervalMs = trimMs;
  }
  const budget = pick<unknown>('memoryBudgetMib', undefined);
  if (budget !== undefined) {
    if (typeof budget !== 'number' || !Number.isSafeInteger(budget) || budget < 0) throw new Error(`--memory-budget-mib must be a non-negative integer (got ${String(budget)})`);
    cfg.memoryBudgetMib = budget;
  }
  const ttl = pick<unknown>('authTokenTtlMs', undefined);
  if (ttl !== undefined) {
    if (typeof ttl !== 'number' || !Number.isSafeInteger(ttl) || ttl < 1000) throw new Error(`--auth-token-ttl-ms must be an integer >= 1000 (got ${String(ttl)})`);
    cfg.authTokenTtlMs = ttl;
  }
  for (const [k, min] of [['leaseGraceMs', 0], ['maxLeases', 1], ['leaseMinTtl', 1]] as const) {
    const v = pick<unknown>(k, undefined);
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw new Error(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} must be an integer >= ${min} (got ${String(v)})`);
    cfg[k] = v;
  }
  for (const k of ['extMaxRestartsPerMinute', 'extPoisonAttempts'] as const) {
    const v = pick<number | undefined>(k, undefined);
    if (v !== undefined) cfg[k] = Number(v);
  }
  if (cfg.loopBlockKillMs !== 0 && cfg.loopBlockKillMs < cfg.loopBlockWarnMs) throw new Error('--loop-block-kill-ms must be 0 or at least --loop-block-warn-ms');
  const isolation = pick<unknown>('extensionIsolation', undefined);
  if (isolation !== undefined) {
    if (isolation !== 'worker' && isolation !== 'process' && isolation !== 'in-process') throw new Error(`--extension-isolation must be process, worker or in-process (got ${String(isolation)})`);
    cfg.extensionIsolation = isolation;
  }
  const memoryMb = pick<unknown>('extensionMemoryMb', undefined);
  if (memoryMb !== undefined) {
    if (typeof memoryMb !== 'number' || !Number.isSafeInteger(memoryMb) || memoryMb < 16) throw new Error(`--extension-memory-mb must be an integer >= 16 (got ${String(memoryMb)})`);
    cfg.extensionMemoryMb = memoryMb;
  }
  const heapMb = pick<unknown>('extensionHeapMb', undefined);
  if (heapMb !== undefined) {
    if (typeof heapMb !== 'number' || !Number.isSafeInteger(heapMb) || heapMb < 8) throw new Error(`--extension-heap-mb must be an integer >= 8 (got ${String(heapMb)})`);
    cfg.extensionHeapMb = heapMb;
  }
  const tokenFile = pick<string | undefined>('adminTokenFile', undefined);
  if (typeof o.adminToken === 'string') {
    warnings.push('--admin-token puts the admin token in the process list, where any local user can read it: use --admin-token-file (mode 600) or KVCASCADE_ADMIN_TOKEN');
  }
  const token = pick<string | undefined>('adminToken', undefined) ?? (tokenFile ? readTokenFile(tokenFile) : undefined) ?? process.env.KVCASCADE_ADMIN_TOKEN;
  if (token !== undefined) {
    if (token.length < 16) throw new Error('the admin token must be at least 16 characters');
    cfg.adminToken = token;
  }
  if (cfg.joinAutoAdd && (cfg.join === undefined || cfg.adminToken === undefined)) {
    throw new Error('--join-auto-add needs --join (the cluster to join) and the admin token (--admin-token-file or KVCASCADE_ADMIN_TOKEN): adding a member is an admin operation');
  }
  for (const k of ['tlsCert', 'tlsKey', 'tlsCa', 'peerTlsCert', 'peerTlsKey', 'peerTlsCa'] as const) {
    const v = pick<string | undefined>(k, undefined);
    if (v) cfg[k] = v;
  }
  if (Boolean(cfg.tlsCert) !== Boolean(cfg.tlsKey)) throw new Error('give both --tls-cert and --tls-key (or neither)');
  if (cfg.tlsCa && !cfg.tlsCert) throw new Error('--tls-ca needs --tls-cert and --tls-key (client certificates are checked by a TLS server)');
  cfg.peerTlsCert ??= cfg.tlsCert;
  cfg.peerTlsKey ??= cfg.tlsKey;
  cfg.peerTlsCa ??= cfg.tlsCa;
  const peerTls = Boolean(cfg.peerTlsCert && cfg.peerTlsKey && cfg.peerTlsCa);
  if (cfg.peerListen !== undefined) {
    if (peerTls && insecurePeers) throw new Error('give either peer TLS (--peer-tls-* or --tls-*) or --insecure-peers, not both');
    if (!peerTls && !insecurePeers) {
      throw new Error(
        'refusing to start: the peer listener would accept unauthenticated Raft traffic (any process reaching it could rewrite the cluster). ' +
          'Give the node a certificate naming it and the cluster CA (--peer-tls-cert, --peer-tls-key, --peer-tls-ca, or --tls-cert/--tls-key/--tls-ca), ' +
          'or --insecure-peers for local development',
      );
    }
    if (insecurePeers) warnings.push('--insecure-peers: peer traffic is neither encrypted nor authenticated; any process that reaches the peer port can act as a node. Local development only');
  }
  return cfg;
}


function parseExtensions(flags: unknown, fromFile: unknown): ConfiguredExtension[] {
  const out: ConfiguredExtension[] = [];
  for (const f of (flags as string[] | undefined) ?? []) out.push({ path: resolve(f) });
  if (fromFile !== undefined) {
    if (!Array.isArray(fromFile)) throw new Error('"extensions" in the config file must be a list');
    for (const e of fromFile as unknown[]) {
      if (typeof e === 'string') out.push({ path: resolve(e) });
      else if (e && typeof e === 'object' && typeof (e as { path?: unknown }).path === 'string') {
        const x = e as { path: string; name?: unknown; config?: unknown };
        out.push({
          path: resolve(x.path),
          ...(typeof x.name === 'string' ? { name: x.name } : {}),
          ...(x.config && typeof x.config === 'object' ? { config: x.config as Record<string, unknown> } : {}),
        });
      } else throw new Error('each entry of "extensions" needs a "path"');
    }
  }
  return out;
}

/** Whether a host:port binds every interface (0.0.0.0, [::]), so it cannot be advertised. */
function isWildcard(address: string): boolean {
  const host = address.slice(0, address.lastIndexOf(':'));
  return host === '0.0.0.0' || host === '[::]' || host === '::' || host === '';
}
