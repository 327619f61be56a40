/** A kvcascade.v1.Lease service for fake servers in client tests: every method UNIMPLEMENTED but the LeasePut handler given. */
import * as grpc from '@grpc/grpc-js';

/** Handlers of the Lease service where only `leasePut` does anything (keep-alive streams end at once). */
export function leasePutOnly<Req>(leasePut: (call: grpc.ServerUnaryCall<Req, unknown>, cb: grpc.sendUnaryData<unknown>) => void): grpc.UntypedServiceImplementation {
  const notImplemented = (_call: unknown, cb: grpc.sendUnaryData<unknown>): void => cb({ code: grpc.status.UNIMPLEMENTED, details: 'fake' } as grpc.ServiceError);
  return {
    leaseGrant: notImplemented,
    leaseRevoke: notImplemented,
    leaseTimeToLive: notImplemented,
    leaseLeases: notImplemented,
    leaseKeepAlive: (call: grpc.ServerDuplexStream<unknown, unknown>) => call.end(),
    leasePut: leasePut as grpc.handleUnaryCall<unknown, unknown>,
  };
}
