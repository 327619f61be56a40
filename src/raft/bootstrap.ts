/** Creating a brand-new group: the initial members written as the first log entries, as etcd does. */
import { encodeConfChange } from './raft.js';
import { ConfChangeType, EntryType, type Entry, type HardState, type NodeId } from './types.js';

/** The log entries and hard state every initial member of a new group starts with. */
export interface BootstrapState {
  readonly entries: readonly Entry[];
  readonly hardState: HardState;
}

/**
 * The first entries of a new group: one AddVoter per initial member, at term 1, committed.
 * Writing them (rather than only a configuration) lets a node that joins later learn the
 * initial membership by replaying the log from index 1.
 */
export function bootstrapState(voters: readonly NodeId[]): BootstrapState {
  if (voters.length === 0) throw new Error('bootstrap: a group needs at least one voter');
  const unique = [...new Set(voters)].sort((a, b) => a - b);
  if (unique.length !== voters.length) throw new Error('bootstrap: duplicate voter ids');
  const entries = unique.map((nodeId, i) => ({
    term: 1,
    index: i + 1,
    type: EntryType.ConfChange,
    data: encodeConfChange({ type: ConfChangeType.AddVoter, nodeId }),
  }));
  return { entries, hardState: { term: 1, vote: 0, commit: entries.length } };
}
