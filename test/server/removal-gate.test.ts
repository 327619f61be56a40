/**
 * The removal gate on a real loopback gRPC server: calls pass while the node is a member; once
 * closed, new calls and the calls still open (a server stream) end with UNAVAILABLE, `kv-reason:
 * NODE_REMOVED` and `kv-retry-safe: 1`, while the health service still answers.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath } from 'grpc-health-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RemovalGate } from '../../src/server/removal-gate.js';
import { addHealthService } from '../../src/server/health.js';

const bytes = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };
const def = {
  echo: { path: '/test.Echo/Echo', requestStream: false, responseStream: false, requestSerialize: bytes.serialize, requestDeserialize: bytes.deserialize, responseSerialize: bytes.serialize, responseDeserialize: bytes.deserialize },
  follow: { path: '/test.Echo/Follow', requestStream: false, responseStream: true, requestSerialize: bytes.serialize, requestDeserialize: bytes.deserialize, responseSerialize: bytes.serialize, responseDeserialize: bytes.deserialize },
} as const;
type EchoClient = grpc.Client & {
  echo(req: Buffer, cb: (e: grpc.ServiceError | null, r?: Buffer) => void): void;
  follow(req: Buffer): grpc.ClientReadableStream<Buffer>;
};
const Echo = grpc.makeGenericClientConstructor(def as unknown as grpc.ServiceDefinition, 'Echo') as unknown as new (a: string, c: grpc.ChannelCredentials) => EchoClient;
const healthPkg = grpc.loadPackageDefinition(protoLoader.loadSync(protoPath, { enums: String })) as unknown as {
  grpc: { health: { v1: { Health: new (a: string, c: grpc.ChannelCredentials) => grpc.Client & { check(req: { service: string }, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void): void } } } };
};

const MESSAGE = 'node 3 was removed from the cluster at map epoch 17';
let server: grpc.Server;
let gate: RemovalGate;
let address: string;
const closers: (() => void)[] = [];

beforeEach(async () => {
  gate = new RemovalGate();
  server = new grpc.Server({ interceptors: [gate.interceptor] });
  server.addService(def as unknown as grpc.ServiceDefinition, {
    echo: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => cb(null, call.request),
    follow: (call: grpc.ServerWritableStream<Buffer, Buffer>) => call.write(Buffer.from('first')), // stays open, as a watch does
  });
  const health = addHealthService(server, () => ({ ready: false, reason: 'removed' }));
  closers.push(() => health.close());
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  address = `127.0.0.1:${port}`;
});

afterEach(() => {
  for (const c of closers.splice(0)) c();
  server.forceShutdown();
});

function client(): EchoClient {
  const c = new Echo(address, grpc.credentials.createInsecure());
  closers.push(() => c.close());
  return c;
}

const echo = (c: EchoClient, s: string) =>
  new Promise<{ value?: string; err?: grpc.ServiceError }>((res) => c.echo(Buffer.from(s), (err, r) => res(err ? { err } : { value: r!.toString() })));

describe('removal gate', () => {
  it('lets calls through until closed, then refuses new and open calls with NODE_REMOVED; health still answers', async () => {
    const c = client();
    expect(await echo(c, 'hi')).toEqual({ value: 'hi' });
    const stream = c.follow(Buffer.from('x'));
    const first = new Promise<string>((res) => stream.once('data', (d: Buffer) => res(d.toString())));
    const streamEnd = new Promise<grpc.ServiceError>((res) => stream.on('error', res));
    expect(await first).toBe('first');
    expect(gate.closed).toBe(false);

    gate.close(MESSAGE);
    expect(gate.closed).toBe(true);
    const ended = await streamEnd;
    expect(ended.code).toBe(grpc.status.UNAVAILABLE);
    expect(ended.details).toBe(MESSAGE);
    expect(ended.metadata.get('kv-reason')).toEqual(['NODE_REMOVED']);

    const refused = await echo(c, 'again');
    expect(refused.err?.code).toBe(grpc.status.UNAVAILABLE);
    expect(refused.err?.details).toBe(MESSAGE);
    expect(refused.err?.metadata.get('kv-reason')).toEqual(['NODE_REMOVED']);
    expect(refused.err?.metadata.get('kv-retry-safe')).toEqual(['1']);

    const h = new healthPkg.grpc.health.v1.Health(address, grpc.credentials.createInsecure());
    closers.push(() => h.close());
    const status = await new Promise<string>((res, rej) => h.check({ service: '' }, (e, r) => (e ? rej(e) : res(r!.status))));
    expect(status).toBe('NOT_SERVING');
  });
});
