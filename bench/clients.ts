/** Plain grpc-js stubs for kvcascade and etcd (unary KV calls, Pipeline and Watch streams), and the per-system operations (put, get, rmw) the load generator drives identically on both. */
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { repoRoot } from './util.js';

/** A system under test. */
export type SystemName = 'kvd' | 'etcd';

/**
 * proto-loader options used for BOTH systems: camelCase fields, 64-bit integers as JS numbers,
 * enums as names, no default-filling on decode (less work per response), oneof names set.
 */
const LOADER_OPTIONS: protoLoader.Options = { keepCase: false, longs: Number, enums: String, defaults: false, oneofs: true };

/** The callback shape of a unary stub method. */
type UnaryCb<Res> = (err: grpc.ServiceError | null, res?: Res) => void;
/** A unary stub method as proto-loader generates it. */
type Unary<Req, Res> = (req: Req, md: grpc.Metadata, opts: grpc.CallOptions, cb: UnaryCb<Res>) => grpc.ClientUnaryCall;

// ---- kvcascade.v1 messages (only the fields the benchmark touches) ----

/** kvcascade.v1.PutRequest. */
export interface KvPutReq { key: string; value: Uint8Array; expectedVersion?: number; returnCurrentValue?: boolean }
/** kvcascade.v1.PutResponse. */
export interface KvPutRes { succeeded?: boolean; version?: number; currentVersion?: number; currentValue?: Uint8Array; revision?: number }
/** kvcascade.v1.GetRequest. */
export interface KvGetReq { key: string; consistency?: 'LINEARIZABLE' | 'SERIALIZABLE' }
/** kvcascade.v1.GetResponse. */
export interface KvGetRes { found?: boolean; value?: Uint8Array; version?: number; revision?: number }
/** kvcascade.v1.PipelineRequest. */
export interface KvPipelineReq { id: number; put?: KvPutReq; get?: KvGetReq }
/** kvcascade.v1.PipelineResponse. */
export interface KvPipelineRes {
  id?: number;
  put?: KvPutRes;
  get?: KvGetRes;
  error?: { code?: number; message?: string };
  result?: 'put' | 'get' | 'delete' | 'error';
}
/** kvcascade.v1.GroupStatus (subset). */
export interface KvGroupStatus {
  group?: number;
  leader?: number;
  term?: number;
  /** 'Leader', 'Follower', 'Candidate', … */
  role?: string;
  revision?: number;
  lastIndex?: number;
  /** Pool and shard index (unset for the metadata group 0). */
  pool?: string;
  shardIndex?: number;
}
/** kvcascade.v1.StatusResponse (subset). */
export interface KvStatusRes {
  nodeId?: number;
  version?: string;
  groups?: KvGroupStatus[];
  members?: { id?: number; address?: string }[];
  mapEpoch?: number;
}
/** kvcascade.v1.GetShardMapResponse: the cluster map as JSON (`{epoch, members, metaVoters, pools, shards, nextGroup}`). */
export interface KvShardMapRes { epoch?: number; mapJson?: string }
/** kvcascade.v1.WatchRequest. */
export interface KvWatchReq { prefix: string; fromRevision?: number; progressIntervalMs?: number }
/** kvcascade.v1.Event. */
export interface KvEvent { type?: 'PUT' | 'DELETE' | 'TRIGGER'; key?: string; value?: Uint8Array; revision?: number; timestampMs?: number }
/** kvcascade.v1.WatchResponse. */
export interface KvWatchRes {
  events?: KvEvent[];
  revision?: number;
  progressNotify?: boolean;
  canceled?: boolean;
  cancelReason?: string;
  compactRevision?: number;
}

/** Client stub of kvcascade.v1.KV. */
export interface KvStub extends grpc.Client {
  put: Unary<KvPutReq, KvPutRes>;
  get: Unary<KvGetReq, KvGetRes>;
  pipeline(md?: grpc.Metadata, opts?: grpc.CallOptions): grpc.ClientDuplexStream<KvPipelineReq, KvPipelineRes>;
  watch(req: KvWatchReq, md?: grpc.Metadata, opts?: grpc.CallOptions): grpc.ClientReadableStream<KvWatchRes>;
}
/** Client stub of kvcascade.v1.Cluster. */
export interface KvClusterStub extends grpc.Client {
  status: Unary<Record<string, never>, KvStatusRes>;
  getShardMap: Unary<Record<string, never>, KvShardMapRes>;
}

// ---- etcdserverpb messages (only the fields the benchmark touches) ----

/** etcd mvccpb.KeyValue. */
export interface EtcdKeyValue { key?: Uint8Array; createRevision?: number; modRevision?: number; version?: number; value?: Uint8Array }
/** etcdserverpb.RangeRequest. */
export interface EtcdRangeReq { key: Uint8Array; serializable?: boolean }
/** etcdserverpb.RangeResponse. */
export interface EtcdRangeRes { header?: { revision?: number }; kvs?: EtcdKeyValue[]; count?: number }
/** etcdserverpb.PutRequest. */
export interface EtcdPutReq { key: Uint8Array; value: Uint8Array }
/** etcdserverpb.PutResponse. */
export interface EtcdPutRes { header?: { revision?: number } }
/** etcdserverpb.Compare. */
export interface EtcdCompare { result: 'EQUAL'; target: 'MOD'; key: Uint8Array; modRevision: number }
/** etcdserverpb.RequestOp. */
export interface EtcdRequestOp { requestRange?: EtcdRangeReq; requestPut?: EtcdPutReq }
/** etcdserverpb.TxnRequest. */
export interface EtcdTxnReq { compare: EtcdCompare[]; success: EtcdRequestOp[]; failure: EtcdRequestOp[] }
/** etcdserverpb.TxnResponse. */
export interface EtcdTxnRes { succeeded?: boolean; responses?: { responseRange?: EtcdRangeRes; responsePut?: EtcdPutRes }[] }

/** etcdserverpb.WatchCreateRequest (subset). */
export interface EtcdWatchCreateReq { key: Uint8Array; rangeEnd?: Uint8Array; startRevision?: number; progressNotify?: boolean; prevKv?: boolean }
/** etcdserverpb.WatchRequest. */
export interface EtcdWatchReq { createRequest?: EtcdWatchCreateReq; cancelRequest?: { watchId: number } }
/** etcd mvccpb.Event. */
export interface EtcdEvent { type?: 'PUT' | 'DELETE'; kv?: EtcdKeyValue }
/** etcdserverpb.WatchResponse. */
export interface EtcdWatchRes {
  header?: { revision?: number };
  watchId?: number;
  created?: boolean;
  canceled?: boolean;
  compactRevision?: number;
  cancelReason?: string;
  events?: EtcdEvent[];
}
/** etcdserverpb.StatusResponse (subset; ids as decimal strings: they are random 64-bit numbers). */
export interface EtcdStatusRes { header?: { memberId?: string }; leader?: string; version?: string }

/** Client stub of etcdserverpb.KV. */
export interface EtcdStub extends grpc.Client {
  range: Unary<EtcdRangeReq, EtcdRangeRes>;
  put: Unary<EtcdPutReq, EtcdPutRes>;
  txn: Unary<EtcdTxnReq, EtcdTxnRes>;
}

/** Client stub of etcdserverpb.Watch. */
export interface EtcdWatchStub extends grpc.Client {
  watch(md?: grpc.Metadata, opts?: grpc.CallOptions): grpc.ClientDuplexStream<EtcdWatchReq, EtcdWatchRes>;
}
/** Client stub of etcdserverpb.Maintenance (Status only). */
export interface EtcdMaintenanceStub extends grpc.Client {
  status: Unary<Record<string, never>, EtcdStatusRes>;
}

type Ctor<T> = new (address: string, creds: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => T;

let kvCtors: { KV: Ctor<KvStub>; Cluster: Ctor<KvClusterStub> } | undefined;
let etcdCtor: Ctor<EtcdStub> | undefined;
let etcdWatchCtor: Ctor<EtcdWatchStub> | undefined;
let etcdMaintenanceCtor: Ctor<EtcdMaintenanceStub> | undefined;

function kvConstructors(): { KV: Ctor<KvStub>; Cluster: Ctor<KvClusterStub> } {
  if (kvCtors) return kvCtors;
  const root = join(repoRoot(), 'proto');
  const def = protoLoader.loadSync(join(root, 'kvcascade', 'v1', 'kv.proto'), { ...LOADER_OPTIONS, includeDirs: [root] });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { kvcascade: { v1: { KV: Ctor<KvStub>; Cluster: Ctor<KvClusterStub> } } };
  kvCtors = pkg.kvcascade.v1;
  return kvCtors;
}

function etcdConstructor(): Ctor<EtcdStub> {
  if (etcdCtor) return etcdCtor;
  const def = protoLoader.loadSync(join(repoRoot(), 'bench', 'etcd-proto', 'rpc.proto'), LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as unknown as { etcdserverpb: { KV: Ctor<EtcdStub> } };
  etcdCtor = pkg.etcdserverpb.KV;
  return etcdCtor;
}

function etcdWatchConstructor(): Ctor<EtcdWatchStub> {
  if (etcdWatchCtor) return etcdWatchCtor;
  const def = protoLoader.loadSync(join(repoRoot(), 'bench', 'etcd-proto', 'rpc.proto'), LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as unknown as { etcdserverpb: { Watch: Ctor<EtcdWatchStub> } };
  etcdWatchCtor = pkg.etcdserverpb.Watch;
  return etcdWatchCtor;
}

function etcdMaintenanceConstructor(): Ctor<EtcdMaintenanceStub> {
  if (etcdMaintenanceCtor) return etcdMaintenanceCtor;
  // 64-bit member ids as strings (not on any hot path, so the loader options may differ here).
  const def = protoLoader.loadSync(join(repoRoot(), 'bench', 'etcd-proto', 'rpc.proto'), { ...LOADER_OPTIONS, longs: String });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { etcdserverpb: { Maintenance: Ctor<EtcdMaintenanceStub> } };
  etcdMaintenanceCtor = pkg.etcdserverpb.Maintenance;
  return etcdMaintenanceCtor;
}

/**
 * Channel options for every benchmark channel: a local subchannel pool so that each stub really
 * owns its own HTTP/2 connection (grpc-js otherwise shares one connection between channels with
 * equal options), and no message-size surprises.
 */
export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.use_local_subchannel_pool': 1,
  'grpc.max_receive_message_length': 16 * 1024 * 1024,
};

/** A new kvcascade.v1.KV stub with its own connection to `address` (host:port). */
export function kvStub(address: string): KvStub {
  return new (kvConstructors().KV)(address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
}

/** A new kvcascade.v1.Cluster stub for `address`. */
export function kvClusterStub(address: string): KvClusterStub {
  return new (kvConstructors().Cluster)(address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
}

/** A new etcdserverpb.KV stub with its own connection to `address` (host:port). */
export function etcdStub(address: string): EtcdStub {
  return new (etcdConstructor())(address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
}

/** A new etcdserverpb.Watch stub with its own connection to `address`. */
export function etcdWatchStub(address: string): EtcdWatchStub {
  return new (etcdWatchConstructor())(address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
}

/** A new etcdserverpb.Maintenance stub for `address`. */
export function etcdMaintenanceStub(address: string): EtcdMaintenanceStub {
  return new (etcdMaintenanceConstructor())(address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
}

/** Calls a unary stub method as a promise, with a deadline `timeoutMs` from now. */
export function call<Req, Res>(client: grpc.Client, method: Unary<Req, Res>, req: Req, timeoutMs: number): Promise<Res> {
  return new Promise<Res>((resolve, reject) => {
    method.call(client, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => {
      if (err) reject(err);
      else resolve(res as Res);
    });
  });
}

/** Waits until a stub's channel is connected (or rejects after `timeoutMs`). */
export function waitReady(client: grpc.Client, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    client.waitForReady(Date.now() + timeoutMs, (err) => (err ? reject(err) : resolve()));
  });
}

/**
 * The benchmark's key for index `i` (fixed width so every key has the same size on both systems):
 * `bench/k00000042`, or `<keyPrefix>k00000042` when a prefix is given (the extension workloads
 * write under a watched prefix such as `/bench/lambda/…/`).
 */
export function keyName(i: number, keyPrefix?: string): string {
  return `${keyPrefix ?? 'bench/'}k${String(i).padStart(8, '0')}`;
}

/** Outcome counters of one read-modify-write. */
export interface RmwOutcome {
  /** Conditional writes rejected because the key changed since it was read. */
  conflicts: number;
  /** True if the RMW gave up after the attempt limit. */
  abandoned: boolean;
}

/** One system's operations over one connection; every method issues exactly the RPCs described in bench/README.md. */
export interface Driver {
  /** Unconditional write of `value` to key `i`. */
  put(i: number, value: Uint8Array): Promise<void>;
  /** Linearizable read of key `i`; resolves whether it was found. */
  get(i: number): Promise<boolean>;
  /**
   * Read key `i`, then write a modified value conditional on the version read; on a conflict the
   * conditional write's failure branch returns the current value and version and the write is retried.
   */
  rmw(i: number, maxAttempts: number): Promise<RmwOutcome>;
  /** Waits until the connection is up. */
  ready(timeoutMs: number): Promise<void>;
  /** Closes the connection. */
  close(): void;
}

/** A new value derived from `old`: the same bytes with a little-endian counter in the first 4 bytes incremented. */
function modify(old: Uint8Array | undefined, size: number): Buffer {
  const out = Buffer.alloc(size);
  if (old) out.set(old.subarray(0, size));
  out.writeUInt32LE((out.readUInt32LE(0) + 1) >>> 0, 0);
  return out;
}

/** The size of values written by rmw when the key had no value yet. */
const RMW_VALUE_BYTES = 256;

/** A {@link Driver} for kvcascade over one kvcascade.v1.KV connection. */
export class KvDriver implements Driver {
  /** The underlying stub (also used for the Pipeline stream). */
  readonly stub: KvStub;
  private readonly keys: string[] = [];

  /** Connects (lazily) to `address` (kept as {@link address}); `timeoutMs` is the per-call deadline; keys are `keyName(i, keyPrefix)`. */
  constructor(readonly address: string, private readonly timeoutMs: number, private readonly keyPrefix?: string) {
    this.stub = kvStub(address);
  }

  /**
   * Unconditional write of `value` to key `i`, resolving with the response trailers (where kvd
   * puts `kv-leader`/`kv-shard`); a failure rejects with the ServiceError, whose `metadata` has them too.
   * The same single Put RPC as {@link put}, plus one `status` listener.
   */
  putWithTrailers(i: number, value: Uint8Array): Promise<grpc.Metadata> {
    return new Promise<grpc.Metadata>((resolve, reject) => {
      let failure: grpc.ServiceError | null = null;
      const c = this.stub.put({ key: this.key(i), value }, new grpc.Metadata(), { deadline: Date.now() + this.timeoutMs }, (err) => {
        failure = err;
      });
      c.on('status', (st: grpc.StatusObject) => (failure ? reject(failure) : resolve(st.metadata)));
    });
  }

  /** The key string of index `i` (cached). */
  key(i: number): string {
    return (this.keys[i] ??= keyName(i, this.keyPrefix));
  }

  async put(i: number, value: Uint8Array): Promise<void> {
    await call(this.stub, this.stub.put, { key: this.key(i), value }, this.timeoutMs);
  }

  async get(i: number): Promise<boolean> {
    const res = await call(this.stub, this.stub.get, { key: this.key(i), consistency: 'LINEARIZABLE' }, this.timeoutMs);
    return res.found === true;
  }

  async rmw(i: number, maxAttempts: number): Promise<RmwOutcome> {
    const key = this.key(i);
    const cur = await call(this.stub, this.stub.get, { key, consistency: 'LINEARIZABLE' }, this.timeoutMs);
    let version = cur.found === true ? (cur.version ?? 0) : 0;
    let value = cur.found === true ? cur.value : undefined;
    let conflicts = 0;
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      const res = await call(
        this.stub,
        this.stub.put,
        { key, value: modify(value, RMW_VALUE_BYTES), expectedVersion: version, returnCurrentValue: true },
        this.timeoutMs,
      );
      if (res.succeeded === true) return { conflicts, abandoned: false };
      conflicts++;
      version = res.currentVersion ?? 0;
      value = res.currentValue;
    }
    return { conflicts, abandoned: true };
  }

  ready(timeoutMs: number): Promise<void> {
    return waitReady(this.stub, timeoutMs);
  }

  close(): void {
    this.stub.close();
  }
}

/** A {@link Driver} for etcd over one etcdserverpb.KV connection. */
export class EtcdDriver implements Driver {
  private readonly stub: EtcdStub;
  private readonly keys: Buffer[] = [];

  /** Connects (lazily) to `address`; `timeoutMs` is the per-call deadline; keys are `keyName(i, keyPrefix)`. */
  constructor(address: string, private readonly timeoutMs: number, private readonly keyPrefix?: string) {
    this.stub = etcdStub(address);
  }

  private key(i: number): Buffer {
    return (this.keys[i] ??= Buffer.from(keyName(i, this.keyPrefix)));
  }

  async put(i: number, value: Uint8Array): Promise<void> {
    await call(this.stub, this.stub.put, { key: this.key(i), value }, this.timeoutMs);
  }

  async get(i: number): Promise<boolean> {
    // serializable = false (the default): a linearizable read through etcd's ReadIndex.
    const res = await call(this.stub, this.stub.range, { key: this.key(i) }, this.timeoutMs);
    return (res.kvs?.length ?? 0) > 0;
  }

  async rmw(i: number, maxAttempts: number): Promise<RmwOutcome> {
    const key = this.key(i);
    const cur = await call(this.stub, this.stub.range, { key }, this.timeoutMs);
    let kv = cur.kvs?.[0];
    let conflicts = 0;
    for (let attempt = 0; attempt < maxAttempts; attempt++) {
      const res = await call(
        this.stub,
        this.stub.txn,
        {
          compare: [{ result: 'EQUAL', target: 'MOD', key, modRevision: kv?.modRevision ?? 0 }],
          success: [{ requestPut: { key, value: modify(kv?.value, RMW_VALUE_BYTES) } }],
          failure: [{ requestRange: { key } }],
        },
        this.timeoutMs,
      );
      if (res.succeeded === true) return { conflicts, abandoned: false };
      conflicts++;
      kv = res.responses?.[0]?.responseRange?.kvs?.[0];
    }
    return { conflicts, abandoned: true };
  }

  ready(timeoutMs: number): Promise<void> {
    return waitReady(this.stub, timeoutMs);
  }

  close(): void {
    this.stub.close();
  }
}

/** A new driver for `system` connected to `address` (keys `keyName(i, keyPrefix)`). */
export function makeDriver(system: SystemName, address: string, timeoutMs: number, keyPrefix?: string): Driver {
  return system === 'kvd' ? new KvDriver(address, timeoutMs, keyPrefix) : new EtcdDriver(address, timeoutMs, keyPrefix);
}
