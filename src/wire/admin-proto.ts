/** The Admin API's generated pieces (proto/kvcascade/v1/admin.proto): the service definition servers register and the client stub constructor. */
import * as grpc from '@grpc/grpc-js';
import { loadProtos } from './proto.js';

const adminPackage = loadProtos(['kvcascade/v1/admin.proto']);
/** Service definition of kvcascade.v1.Admin. */
export const adminServiceDefinition = adminPackage['kvcascade.v1.Admin'] as grpc.ServiceDefinition;
/** Client constructor of kvcascade.v1.Admin. */
export const AdminStubClient = (grpc.loadPackageDefinition(adminPackage) as unknown as {
  kvcascade: { v1: { Admin: grpc.ServiceClientConstructor } };
}).kvcascade.v1.Admin;
