/** The error type of the sharding model, with a machine-readable code. */

/** Machine-readable reason of a {@link ShardingError}. */
export type ShardingErrorCode =
  /** A pool name or pool spec is malformed, out of limits, or a pool operation is not allowed in its state. */
  | 'INVALID_POOL'
  /** A pool with that name already exists (in any state). */
  | 'POOL_EXISTS'
  /** No pool has that name. */
  | 'POOL_NOT_FOUND'
  /** The pool is active and may hold keys: it must be set to `deleting` (and emptied) before it is removed. */
  | 'POOL_NOT_EMPTY'
  /** Too few active members for the requested replication (or for the remaining pools after a removal). */
  | 'NOT_ENOUGH_MEMBERS'
  /** A member with that id or address already exists. */
  | 'MEMBER_EXISTS'
  /** No member has that id. */
  | 'MEMBER_NOT_FOUND'
  /** A member id or address is malformed, or a member operation is not allowed in its state. */
  | 'INVALID_MEMBER'
  /** The operation must wait for work in progress (a removing member still hosts replicas). */
  | 'BUSY'
  /** A stored cluster map record or shard descriptor is malformed or inconsistent. */
  | 'INVALID_MAP';

/** Thrown by validation, placement and the map codec. */
export class ShardingError extends Error {
  /** The machine-readable reason. */
  readonly code: ShardingErrorCode;

  /** `message` should say what was wrong and with which input. */
  constructor(code: ShardingErrorCode, message: string) {
    super(message);
    this.name = 'ShardingError';
    this.code = code;
  }
}
