/** Test helpers shared by the server, client and CLI tests: loopback servers over a MemoryBackend (whose map then names the server), raw stubs, unary calls with trailers, a capturing logger. */
import * as grpc from '@grpc/grpc-js';
import { afterEach, expect } from 'vitest';
import type { KvBackend } from '../../src/node/backend.js';
import { startKvServer, type KvServiceLogger, type KvServiceOptions, type RunningKvServer } from '../../src/server/kv-service.js';
import { ClusterStubClient, KvStubClient, type ClusterStub, type KvStub } from '../../src/wire/proto.js';
import { MemoryBackend } from './memory-backend.js';

/** A logger that records every line (level, fields, message). */
export interface CapturingLogger extends KvServiceLogger {
  readonly lines: Array<{ level: string; obj: object; msg: string }>;
}

/** Creates a {@link CapturingLogger}. */
export function captureLog(): CapturingLogger {
  const lines: CapturingLogger['lines'] = [];
  return {
    lines,
    error: (obj, msg) => lines.push({ level: 'error', obj, msg }),
    warn: (obj, msg) => lines.push({ level: 'warn', obj, msg }),
    debug: (obj, msg) => lines.push({ level: 'debug', obj, msg }),
  };
}

/**
 * Starts a server over `backend` on 127.0.0.1 (ephemeral port unless `port` is given). A
 * MemoryBackend whose map member has no address yet gets this server's (so map-routing clients
 * reach it).
 */
export async function serve(
  backend: KvBackend,
  service: Omit<KvServiceOptions, 'selfAddress'> = {},
  port = 0,
): Promise<RunningKvServer> {
  const srv = await startKvServer(backend, { bind: `127.0.0.1:${port}`, service: { log: captureLog(), ...service } });
  if (backend instanceof MemoryBackend && !backend.addressSet) backend.setAddress(srv.address);
  return srv;
}

/** Raw stubs for one address. */
export function stubs(address: string): { kv: KvStub; cluster: ClusterStub; close(): void } {
  const kv = new KvStubClient(address, grpc.credentials.createInsecure());
  const cluster = new ClusterStubClient(address, grpc.credentials.createInsecure());
  return {
    kv,
    cluster,
    close: () => {
      kv.close();
      cluster.close();
    },
  };
}

/** The outcome of a raw unary call, with trailers. */
export type UnaryOutcome<R> =
  | { ok: true; response: R; trailers: grpc.Metadata }
  | { ok: false; error: grpc.ServiceError; trailers: grpc.Metadata };

/** Calls a unary method and resolves (never rejects) once the status, with trailers, has arrived. */
export function unary<Req, Res>(
  stub: grpc.Client,
  method: string,
  req: Req,
  opts: { metadata?: grpc.Metadata; deadlineMs?: number } = {},
): Promise<UnaryOutcome<Res>> {
  return new Promise((resolve) => {
    let response: Res | undefined;
    let error: grpc.ServiceError | null = null;
    const fn = (stub as unknown as Record<string, Function>)[method]!;
    const call = fn.call(
      stub,
      req,
      opts.metadata ?? new grpc.Metadata(),
      opts.deadlineMs === undefined ? {} : { deadline: new Date(Date.now() + opts.deadlineMs) },
      (err: grpc.ServiceError | null, res?: Res) => {
        error = err;
        response = res;
      },
    ) as grpc.ClientUnaryCall;
    call.on('status', (s: grpc.StatusObject) => {
      if (error) resolve({ ok: false, error, trailers: s.metadata });
      else resolve({ ok: true, response: response as Res, trailers: s.metadata });
    });
  });
}

/** Sends raw, already-encoded request bytes to a unary method (for malformed input such as invalid UTF-8). */
export function rawUnary(address: string, path: string, body: Buffer): Promise<grpc.ServiceError | null> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      body,
      (err) => {
        client.close();
        resolve(err);
      },
    );
  });
}

/** A promise with its resolve function exposed. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void; reject: (e: unknown) => void } {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** UTF-8 bytes of a string. */
export function utf8(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

/** Decodes UTF-8 bytes. */
export function text(b: Uint8Array | undefined): string {
  return b === undefined ? '' : new TextDecoder().decode(b);
}

/**
 * Per-test loopback servers (call once at the top of a test file): `start` serves `backend` and
 * returns raw stubs; `defer` registers more cleanup. Everything is closed after each test, last first.
 */
export function serviceFixture(): {
  start(backend?: KvBackend, opts?: Parameters<typeof serve>[1]): Promise<{ srv: RunningKvServer; kv: KvStub; cluster: ClusterStub; close(): void }>;
  defer(fn: () => unknown): void;
} {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    while (cleanups.length > 0) await cleanups.pop()!();
  });
  return {
    start: async (backend = new MemoryBackend(), opts = {}) => {
      const srv = await serve(backend, opts);
      const s = stubs(srv.address);
      cleanups.push(() => srv.close(100));
      cleanups.push(() => s.close());
      return { srv, ...s };
    },
    defer: (fn) => cleanups.push(fn),
  };
}

/** Asserts a unary outcome failed with `code` and returns the error. */
export function expectError<R>(out: UnaryOutcome<R>, code: grpc.status): grpc.ServiceError {
  if (out.ok) throw new Error(`expected ${grpc.status[code]}, got a response`);
  expect(grpc.status[out.error.code]).toBe(grpc.status[code]);
  return out.error;
}

/** The response of a unary outcome that must have succeeded. */
export function ok<R>(out: UnaryOutcome<R>): R {
  if (!out.ok) throw new Error(`unexpected error ${grpc.status[out.error.code]}: ${out.error.details}`);
  return out.response;
}
