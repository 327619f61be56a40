/**
 * Loads the kvcascade client-API protos with @grpc/proto-loader and exports typed service definitions, client constructors and message types.
 *
 * Size: just over 500 lines, mostly one TypeScript interface per proto message: it mirrors the
 * .proto files one to one, so it stays one file beside them.
 */
import { isUtf8 } from 'node:buffer';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { pipelineCodec } from './pipeline-codec.js';

/** The options every kvcascade proto is loaded with (camelCase fields, uint64 as number, enums as names, defaults filled, oneof names set). */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

export { findProtoRoot } from '../proto-files.js';
import { protoDir } from '../proto-files.js';

/** Loads proto files (paths relative to the proto root) with {@link PROTO_LOADER_OPTIONS}. */
export function loadProtos(files: readonly string[], root: string = protoDir()): protoLoader.PackageDefinition {
  return protoLoader.loadSync(
    files.map((f) => join(root, f)),
    { ...PROTO_LOADER_OPTIONS, includeDirs: [root] },
  );
}

// ---------------------------------------------------------------------------------------------
// Message types, as @grpc/proto-loader produces them with PROTO_LOADER_OPTIONS. Fields are
// optional so the same types describe outgoing messages (partial objects are fine to encode);
// decoded messages have every non-oneof, non-`optional` field set to its default.
// ---------------------------------------------------------------------------------------------

/** Read consistency as an enum name (unknown wire values decode to their number). */
export type ConsistencyName = 'LINEARIZABLE' | 'SERIALIZABLE';

/** kvcascade.v1.WriteSession: identifies a write for deduplication (a retry with the same id and seq gets the first result). */
export interface WriteSessionMsg {
  id?: string;
  seq?: number;
  ackedBelow?: number;
}

/** kvcascade.v1.PutRequest. */
export interface PutRequestMsg {
  key?: string;
  value?: Uint8Array;
  expectedVersion?: number;
  returnCurrentValue?: boolean;
  /** Unset: null when decoded. */
  session?: WriteSessionMsg | null;
}

/** kvcascade.v1.PutResponse. */
export interface PutResponseMsg {
  succeeded?: boolean;
  version?: number;
  timestampMs?: number;
  currentVersion?: number;
  currentValue?: Uint8Array;
  revision?: number;
}

/** kvcascade.v1.GetRequest (`at` is the name of the set member of the oneof, if any). */
export interface GetRequestMsg {
  key?: string;
  atVersion?: number;
  atTimeMs?: number;
  at?: 'atVersion' | 'atTimeMs';
  consistency?: ConsistencyName | number;
}

/** kvcascade.v1.GetResponse. */
export interface GetResponseMsg {
  found?: boolean;
  value?: Uint8Array;
  version?: number;
  timestampMs?: number;
  revision?: number;
}

/** kvcascade.v1.DeleteRequest. */
export interface DeleteRequestMsg {
  key?: string;
  expectedVersion?: number;
  session?: WriteSessionMsg | null;
}

/** kvcascade.v1.DeleteResponse. */
export interface DeleteResponseMsg {
  succeeded?: boolean;
  deleted?: boolean;
  revision?: number;
  currentVersion?: number;
}

/** kvcascade.v1.TriggerRequest. */
export interface TriggerRequestMsg {
  key?: string;
  value?: Uint8Array;
  session?: WriteSessionMsg | null;
}

/** kvcascade.v1.TriggerResponse. */
export interface TriggerResponseMsg {
  revision?: number;
  timestampMs?: number;
}

/** kvcascade.v1.ListRequest. */
export interface ListRequestMsg {
  prefix?: string;
  limit?: number;
  pageToken?: string;
  keysOnly?: boolean;
  consistency?: ConsistencyName | number;
  /** List exactly this shard (unset: every shard the prefix spans, merged). */
  shard?: number | null;
}

/** kvcascade.v1.KeyValue. */
export interface KeyValueMsg {
  key?: string;
  value?: Uint8Array;
  version?: number;
  timestampMs?: number;
}

/** kvcascade.v1.ListResponse. */
export interface ListResponseMsg {
  items?: KeyValueMsg[];
  nextPageToken?: string;
  revision?: number;
  /** Each listed shard's revision, keyed by the shard id in decimal. */
  shardRevisions?: Record<string, number>;
}

/** kvcascade.v1.WatchRequest. */
export interface WatchRequestMsg {
  prefix?: string;
  fromRevision?: number;
  progressIntervalMs?: number;
  /** Watch exactly this shard (unset: every shard the prefix spans, merged). */
  shard?: number | null;
  /** Resume from a previous response's resume_token. */
  resumeToken?: string;
}

/** kvcascade.v1.EventType as an enum name. */
export type EventTypeName = 'PUT' | 'DELETE' | 'TRIGGER';

/** kvcascade.v1.Event. */
export interface EventMsg {
  type?: EventTypeName | number;
  key?: string;
  value?: Uint8Array;
  revision?: number;
  timestampMs?: number;
  /** The shard (group) of the change. */
  shard?: number;
}

/** kvcascade.v1.WatchResponse. */
export interface WatchResponseMsg {
  events?: EventMsg[];
  revision?: number;
  progressNotify?: boolean;
  canceled?: boolean;
  cancelReason?: string;
  compactRevision?: number;
  /** Every shard's revision seen so far (opaque; resume with it). */
  resumeToken?: string;
}

/** kvcascade.v1.TxnCompare. */
export interface TxnCompareMsg {
  key?: string;
  version?: number;
}

/** kvcascade.v1.TxnWrite (`op` names the set member of the oneof). */
export interface TxnWriteMsg {
  put?: PutRequestMsg;
  delete?: DeleteRequestMsg;
  op?: 'put' | 'delete';
}

/** kvcascade.v1.TxnRequest. */
export interface TxnRequestMsg {
  compares?: TxnCompareMsg[];
  writes?: TxnWriteMsg[];
  session?: WriteSessionMsg | null;
}

/** kvcascade.v1.TxnResponse. */
export interface TxnResponseMsg {
  succeeded?: boolean;
  revision?: number;
  timestampMs?: number;
  failedCompares?: number[];
  shard?: number;
}

/** kvcascade.v1.GetShardMapRequest. */
export type GetShardMapRequestMsg = Record<string, never>;

/** kvcascade.v1.GetShardMapResponse. */
export interface GetShardMapResponseMsg {
  epoch?: number;
  mapJson?: string;
}

/** kvcascade.v1.PipelineRequest (`op` names the set member of the oneof). */
export interface PipelineRequestMsg {
  id?: number;
  put?: PutRequestMsg;
  get?: GetRequestMsg;
  delete?: DeleteRequestMsg;
  trigger?: TriggerRequestMsg;
  /** Only on streams whose server advertised `kv-pipeline-txn: 1`. */
  txn?: TxnRequestMsg;
  op?: 'put' | 'get' | 'delete' | 'trigger' | 'txn';
  /** The op's remaining time in ms when sent (0/absent: the server's default). */
  timeoutMs?: number;
  /** Several ops in one message (each handled as its own message, in order); see kv.proto. */
  batch?: PipelineRequestMsg[];
}

/** The most ops one `PipelineRequest.batch` may carry (a server refuses a larger batch, op by op). */
export const MAX_PIPELINE_BATCH = 256;

/** kvcascade.v1.PipelineError. */
export interface PipelineErrorMsg {
  code?: number;
  message?: string;
  /** The op was definitely not executed (as the `kv-retry-safe` trailer of a unary call). */
  retrySafe?: boolean;
  /** The shard's leader, if known (as `kv-leader`). */
  leader?: string;
  /** Why the op failed (as the `kv-reason` trailer; '' or absent: not given). */
  reason?: string;
  /** The shard the error concerns (as `kv-shard`; 0 or absent: not given). */
  shard?: number;
}

/** kvcascade.v1.PipelineResponse (`result` names the set member of the oneof). */
export interface PipelineResponseMsg {
  id?: number;
  put?: PutResponseMsg;
  get?: GetResponseMsg;
  delete?: DeleteResponseMsg;
  trigger?: TriggerResponseMsg;
  txn?: TxnResponseMsg;
  error?: PipelineErrorMsg;
  result?: 'put' | 'get' | 'delete' | 'trigger' | 'txn' | 'error';
  /** The node that served the op when it is not the one the stream is on (it was forwarded there). */
  leader?: string;
  /** The shard that served the op, with `leader`. */
  shard?: number;
  /** Several responses in one message (each as its own message); see kv.proto. */
  batch?: PipelineResponseMsg[];
  /** The serving node's cluster map epoch (0/absent: not given). */
  mapEpoch?: number;
}

/** kvcascade.v1.StatusRequest. */
export type StatusRequestMsg = Record<string, never>;

/** kvcascade.v1.GroupStatus. */
export interface GroupStatusMsg {
  group?: number;
  leader?: number;
  term?: number;
  role?: string;
  commitIndex?: number;
  appliedIndex?: number;
  firstIndex?: number;
  lastIndex?: number;
  voters?: number[];
  learners?: number[];
  revision?: number;
  /** The shard's pool ('' = default pool); unset for the metadata group. */
  pool?: string | null;
  shardIndex?: number;
  descriptorEpoch?: number;
  /**
   * On the leader: node id → acknowledged log index. Encode with decimal keys; protobufjs decodes
   * uint64 map keys as 8-character little-endian "long hash" strings, not decimal.
   */
  matched?: Record<string, number>;
  /** Live keys in the shard. */
  keys?: number;
}

/** kvcascade.v1.Member. */
export interface MemberMsg {
  id?: number;
  address?: string;
}

/** kvcascade.v1.StatusResponse. */
export interface StatusResponseMsg {
  nodeId?: number;
  version?: string;
  groups?: GroupStatusMsg[];
  members?: MemberMsg[];
  mapEpoch?: number;
}

// ---------------------------------------------------------------------------------------------
// Services.
// ---------------------------------------------------------------------------------------------

/** Server-side handlers of kvcascade.v1.KV. */
export interface KvServiceHandlers extends grpc.UntypedServiceImplementation {
  put: grpc.handleUnaryCall<PutRequestMsg, PutResponseMsg>;
  get: grpc.handleUnaryCall<GetRequestMsg, GetResponseMsg>;
  delete: grpc.handleUnaryCall<DeleteRequestMsg, DeleteResponseMsg>;
  trigger: grpc.handleUnaryCall<TriggerRequestMsg, TriggerResponseMsg>;
  list: grpc.handleUnaryCall<ListRequestMsg, ListResponseMsg>;
  watch: grpc.handleServerStreamingCall<WatchRequestMsg, WatchResponseMsg>;
  pipeline: grpc.handleBidiStreamingCall<PipelineRequestMsg, PipelineResponseMsg>;
  txn: grpc.handleUnaryCall<TxnRequestMsg, TxnResponseMsg>;
}

/** Server-side handlers of kvcascade.v1.Cluster. */
export interface ClusterServiceHandlers extends grpc.UntypedServiceImplementation {
  status: grpc.handleUnaryCall<StatusRequestMsg, StatusResponseMsg>;
  getShardMap: grpc.handleUnaryCall<GetShardMapRequestMsg, GetShardMapResponseMsg>;
}

/** A unary client method of a generated stub. */
export interface UnaryMethod<Req, Res> {
  (
    request: Req,
    metadata: grpc.Metadata,
    options: Partial<grpc.CallOptions>,
    callback: (err: grpc.ServiceError | null, response?: Res) => void,
  ): grpc.ClientUnaryCall;
}

/** Client stub of kvcascade.v1.KV (as generated by proto-loader). */
export interface KvStub extends grpc.Client {
  put: UnaryMethod<PutRequestMsg, PutResponseMsg>;
  get: UnaryMethod<GetRequestMsg, GetResponseMsg>;
  delete: UnaryMethod<DeleteRequestMsg, DeleteResponseMsg>;
  trigger: UnaryMethod<TriggerRequestMsg, TriggerResponseMsg>;
  list: UnaryMethod<ListRequestMsg, ListResponseMsg>;
  txn: UnaryMethod<TxnRequestMsg, TxnResponseMsg>;
  watch(
    request: WatchRequestMsg,
    metadata?: grpc.Metadata,
    options?: Partial<grpc.CallOptions>,
  ): grpc.ClientReadableStream<WatchResponseMsg>;
  pipeline(
    metadata?: grpc.Metadata,
    options?: Partial<grpc.CallOptions>,
  ): grpc.ClientDuplexStream<PipelineRequestMsg, PipelineResponseMsg>;
}

/** Client stub of kvcascade.v1.Cluster. */
export interface ClusterStub extends grpc.Client {
  status: UnaryMethod<StatusRequestMsg, StatusResponseMsg>;
  getShardMap: UnaryMethod<GetShardMapRequestMsg, GetShardMapResponseMsg>;
}

/** Constructs a stub for one address. */
export interface StubConstructor<T extends grpc.Client> {
  new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions): T;
  service: grpc.ServiceDefinition;
}

/** The loaded kv.proto package definition. */
export const kvPackageDefinition: protoLoader.PackageDefinition = loadProtos(['kvcascade/v1/kv.proto']);

// ---------------------------------------------------------------------------------------------
// Strict UTF-8: protobufjs decodes invalid UTF-8 in `string` fields lossily (to U+FFFD), so the
// request deserializers are wrapped to check the raw bytes of every string field and mark the
// decoded object. Services reject marked requests with INVALID_ARGUMENT.
// ---------------------------------------------------------------------------------------------

const INVALID_UTF8 = Symbol('kvcascade.invalidUtf8');

interface FieldInfo {
  readonly kind: 'string' | 'message';
  readonly name: string;
  readonly type?: string;
}

interface DescriptorField {
  readonly name: string;
  readonly number: number;
  readonly type: string;
  readonly typeName: string;
}

const fieldTables = new Map<string, Map<number, FieldInfo>>();

function fieldTable(typeName: string): Map<number, FieldInfo> {
  let table = fieldTables.get(typeName);
  if (table) return table;
  table = new Map();
  fieldTables.set(typeName, table);
  const def = kvPackageDefinition[typeName] as protoLoader.MessageTypeDefinition<object, object> | undefined;
  const fields = ((def?.type as { field?: DescriptorField[] } | undefined)?.field ?? []) as DescriptorField[];
  const pkg = typeName.slice(0, typeName.lastIndexOf('.'));
  for (const f of fields) {
    if (f.type === 'TYPE_STRING') table.set(f.number, { kind: 'string', name: f.name });
    else if (f.type === 'TYPE_MESSAGE') {
      const t = f.typeName.startsWith('.') ? f.typeName.slice(1) : `${pkg}.${f.typeName}`;
      table.set(f.number, { kind: 'message', name: f.name, type: t });
    }
  }
  return table;
}

function readVarint(buf: Uint8Array, pos: number): [value: number, next: number] {
  let result = 0;
  let shift = 0;
  for (;;) {
    if (pos >= buf.length) throw new RangeError('truncated varint');
    const b = buf[pos++]!;
    if (shift < 49) result += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7;
    if (shift > 70) throw new RangeError('varint too long');
  }
}

/** Returns the dotted path of the first string field of `buf` (a `typeName` message) that is not valid UTF-8, or undefined. */
export function findInvalidUtf8(typeName: string, buf: Uint8Array, path = ''): string | undefined {
  const table = fieldTable(typeName);
  let pos = 0;
  while (pos < buf.length) {
    const [tag, p] = readVarint(buf, pos);
    pos = p;
    const wire = tag & 7;
    const num = Math.floor(tag / 8);
    switch (wire) {
      case 0:
        pos = readVarint(buf, pos)[1];
        break;
      case 1:
        pos += 8;
        break;
      case 5:
        pos += 4;
        break;
      case 2: {
        const [len, start] = readVarint(buf, pos);
        const end = start + len;
        if (end > buf.length) throw new RangeError('truncated field');
        const info = table.get(num);
        if (info?.kind === 'string' && !isUtf8(buf.subarray(start, end))) return path + info.name;
        if (info?.kind === 'message') {
          const bad = findInvalidUtf8(info.type!, buf.subarray(start, end), `${path}${info.name}.`);
          if (bad !== undefined) return bad;
        }
        pos = end;
        break;
      }
      default:
        return undefined; // groups or garbage: protobufjs has already accepted or rejected the message
    }
  }
  return undefined;
}

/** The path of a string field that was not valid UTF-8 on the wire, if the request deserializer marked one. */
export function invalidUtf8Field(message: object): string | undefined {
  return (message as { [INVALID_UTF8]?: string })[INVALID_UTF8];
}

function markInvalidUtf8(message: object, path: string): void {
  Object.defineProperty(message, INVALID_UTF8, { value: path, enumerable: false });
}

function strictDeserializer<T extends object>(
  typeName: string,
  inner: grpc.deserialize<T>,
): grpc.deserialize<T> {
  return (buf: Buffer): T => {
    const msg = inner(buf);
    let bad: string | undefined;
    try {
      bad = findInvalidUtf8(typeName, buf);
    } catch {
      bad = undefined; // protobufjs decoded it, so any oddity here is ours; do not reject valid input
    }
    if (bad !== undefined) markInvalidUtf8(msg, bad);
    return msg;
  };
}

function strictService(def: grpc.ServiceDefinition, pkg: string): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<object, object>> = {};
  for (const [name, m] of Object.entries(def)) {
    const method = m as grpc.MethodDefinition<object, object>;
    const reqType = (method as unknown as { requestType?: { type?: { name?: string } } }).requestType;
    const typeName = reqType?.type?.name === undefined ? undefined : `${pkg}.${reqType.type.name}`;
    out[name] =
      typeName === undefined || kvPackageDefinition[typeName] === undefined
        ? method
        : { ...method, requestDeserialize: strictDeserializer(typeName, method.requestDeserialize) };
  }
  return out as grpc.ServiceDefinition;
}

const loaded = grpc.loadPackageDefinition(kvPackageDefinition) as unknown as {
  kvcascade: { v1: { KV: grpc.ServiceClientConstructor; Cluster: grpc.ServiceClientConstructor } };
};

/**
 * The KV service definition with the Pipeline method's messages through the direct codec
 * (wire/pipeline-codec.ts) instead of proto-loader's object conversion; the other methods as given.
 */
function withPipelineCodec(def: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const m = def['Pipeline'] as grpc.MethodDefinition<object, object>;
  const codec = pipelineCodec(
    {
      requestSerialize: m.requestSerialize,
      requestDeserialize: m.requestDeserialize,
      responseSerialize: m.responseSerialize,
      responseDeserialize: m.responseDeserialize,
    },
    markInvalidUtf8,
    invalidUtf8Field,
  );
  return { ...def, Pipeline: { ...m, ...codec } };
}

/** Service definition of kvcascade.v1.KV, keyed by RPC name (`Put`, ...; request deserializers mark invalid UTF-8, see {@link invalidUtf8Field}); implement it with {@link KvServiceHandlers}. */
export const kvServiceDefinition: grpc.ServiceDefinition = withPipelineCodec(
  strictService(kvPackageDefinition['kvcascade.v1.KV'] as grpc.ServiceDefinition, 'kvcascade.v1'),
);

/** Service definition of kvcascade.v1.Cluster; implement it with {@link ClusterServiceHandlers}. */
export const clusterServiceDefinition: grpc.ServiceDefinition = kvPackageDefinition[
  'kvcascade.v1.Cluster'
] as grpc.ServiceDefinition;

/** Client constructor of kvcascade.v1.KV. */
export const KvStubClient: StubConstructor<KvStub> = grpc.makeClientConstructor(
  withPipelineCodec(loaded.kvcascade.v1.KV.service),
  'KV',
) as unknown as StubConstructor<KvStub>;

/** Client constructor of kvcascade.v1.Cluster. */
export const ClusterStubClient: StubConstructor<ClusterStub> = loaded.kvcascade.v1
  .Cluster as unknown as StubConstructor<ClusterStub>;
