/** The Lease API's generated pieces (proto/kvcascade/v1/lease.proto): the service definition servers register and the client stub constructor. */
import * as grpc from '@grpc/grpc-js';
import { loadProtos } from './proto.js';

const leasePackage = loadProtos(['kvcascade/v1/lease.proto']);
/** Service definition of kvcascade.v1.Lease. */
export const leaseServiceDefinition = leasePackage['kvcascade.v1.Lease'] as grpc.ServiceDefinition;
/** Client constructor of kvcascade.v1.Lease. */
export const LeaseStubClient = (grpc.loadPackageDefinition(leasePackage) as unknown as {
  kvcascade: { v1: { Lease: grpc.ServiceClientConstructor } };
}).kvcascade.v1.Lease;

/** Metadata key of the key's shard leader's client address on a redirected LeasePut. */
export const SHARD_LEADER_METADATA = 'kv-leader';
