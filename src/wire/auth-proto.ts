/** The Auth API's generated pieces (proto/kvcascade/v1/auth.proto): the service definition servers register and the client stub constructor. */
import * as grpc from '@grpc/grpc-js';
import { loadProtos } from './proto.js';

const authPackage = loadProtos(['kvcascade/v1/auth.proto']);
/** Service definition of kvcascade.v1.Auth. */
export const authServiceDefinition = authPackage['kvcascade.v1.Auth'] as grpc.ServiceDefinition;
/** Client constructor of kvcascade.v1.Auth. */
export const AuthStubClient = (grpc.loadPackageDefinition(authPackage) as unknown as {
  kvcascade: { v1: { Auth: grpc.ServiceClientConstructor } };
}).kvcascade.v1.Auth;

/** Metadata key of the metadata leader's client address on redirects (the Admin service's too). */
export const META_LEADER_METADATA = 'kv-meta-leader';
