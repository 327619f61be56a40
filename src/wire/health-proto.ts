/** The client side of the standard gRPC health service (grpc.health.v1.Health), built from the definition the `grpc-health-check` package ships, so clients ask a node whether it is SERVING. */
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';

/** What a node's health service answers for a service name: SERVING, NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN. */
export type HealthStatus = 'SERVING' | 'NOT_SERVING' | 'UNKNOWN' | 'SERVICE_UNKNOWN';

/** A grpc.health.v1.Health stub (check only). */
export type HealthStub = grpc.Client & {
  check(req: { service: string }, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: HealthStatus }) => void): grpc.ClientUnaryCall;
};

/** The constructor of {@link HealthStub}s: `new HealthStubClient(address, credentials)`. */
export const HealthStubClient = grpc.makeGenericClientConstructor(healthService, 'Health') as unknown as new (address: string, credentials: grpc.ChannelCredentials) => HealthStub;
