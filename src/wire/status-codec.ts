/** The Cluster.Status wire message and the node's status shape, both ways: the service encodes, the cluster probe and the client decode. */
import type { GroupStatusInfo, NodeStatusInfo } from '../node/backend.js';
import type { GroupStatusMsg, StatusResponseMsg } from './proto.js';

/** Encodes a node's status for Cluster.Status. */
export function statusToMsg(s: NodeStatusInfo): StatusResponseMsg {
  return {
    nodeId: s.nodeId,
    version: s.version,
    mapEpoch: s.mapEpoch ?? 0,
    groups: s.groups.map((g) => {
      const out: GroupStatusMsg = {
        group: g.group,
        leader: g.leader,
        term: g.term,
        role: g.role,
        commitIndex: g.commitIndex,
        appliedIndex: g.appliedIndex,
        firstIndex: g.firstIndex,
        lastIndex: g.lastIndex,
        voters: [...g.voters],
        learners: [...g.learners],
        revision: g.revision,
        shardIndex: g.shardIndex ?? 0,
        descriptorEpoch: g.descriptorEpoch ?? 0,
        matched: Object.fromEntries([...(g.matched ?? new Map<number, number>())].map(([id, index]) => [String(id), index])),
        keys: g.keys ?? 0,
      };
      if (g.pool !== undefined) out.pool = g.pool;
      return out;
    }),
    members: s.members.map((m) => ({ id: m.id, address: m.address })),
  };
}

function toGroup(g: GroupStatusMsg): GroupStatusInfo {
  return {
    group: g.group ?? 0,
    leader: g.leader ?? 0,
    term: g.term ?? 0,
    role: g.role ?? '',
    commitIndex: g.commitIndex ?? 0,
    appliedIndex: g.appliedIndex ?? 0,
    firstIndex: g.firstIndex ?? 0,
    lastIndex: g.lastIndex ?? 0,
    voters: g.voters ?? [],
    learners: g.learners ?? [],
    revision: g.revision ?? 0,
    ...(g.pool !== undefined && g.pool !== null ? { pool: g.pool } : {}),
    shardIndex: g.shardIndex ?? 0,
    descriptorEpoch: g.descriptorEpoch ?? 0,
    matched: new Map(Object.entries(g.matched ?? {}).map(([k, v]) => [Number(k), Number(v)])),
    keys: g.keys ?? 0,
  };
}

/** Converts a Status response to the backend's status shape. */
export function statusFromMsg(m: StatusResponseMsg): NodeStatusInfo {
  return {
    nodeId: m.nodeId ?? 0,
    version: m.version ?? '',
    groups: (m.groups ?? []).map(toGroup),
    members: (m.members ?? []).map((x) => ({ id: x.id ?? 0, address: x.address ?? '' })),
    mapEpoch: m.mapEpoch ?? 0,
  };
}
