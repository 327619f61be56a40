/** The public surface of the pure Raft core. */
export * from './types.js';
export { MAX_RAFT_TERM, MAX_RAFT_INDEX, MAX_SNAPSHOT_BYTES, isBoundedUint } from './bounds.js';
export { RaftLog } from './log.js';
export { MemoryStorage, LogCompactedError, LogUnavailableError, type Storage, type InitialState } from './storage.js';
export { Raft, ProposalDroppedError, type ProposalDropKind, encodeConfChange, decodeConfChange, nextConfState, type RaftConfig, DEFAULT_SNAPSHOT_CHUNKS_IN_FLIGHT } from './raft.js';
export { RawNode, type RaftStatus } from './raw-node.js';
export { SeededRandom } from './rand.js';
export { bootstrapState, type BootstrapState } from './bootstrap.js';
export { Progress, ProgressState, Inflights } from './progress.js';
export { majority, committedIndex, voteResult, VoteResult } from './quorum.js';
