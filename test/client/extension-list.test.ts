/**
 * AdminClient's listing of extensions leaves no node out: a node that answered without a status
 * of a registered extension, or with an older generation than the registry's, is listed as
 * `loading` that generation (its registry lags), never dropped.
 */
import { describe, expect, it } from 'vitest';
import { withPendingNodes, type ExtensionNodeInfo, type ExtensionRecordInfo } from '../../src/client/admin-client.js';

const record = (name: string, generation: number): ExtensionRecordInfo => ({
  name,
  version: `1.0.${generation}`,
  generation,
  sha256: 'x',
  size: 1,
  config: {},
  native: '',
  inProcess: false,
  maxRestartsPerMinute: 0,
  pauseMs: 0,
  isolation: '',
  loadedAtMs: 0,
});

const status = (nodeId: number, name: string, generation: number, state = 'running'): ExtensionNodeInfo => ({
  nodeId,
  name,
  version: `1.0.${generation}`,
  generation,
  state,
  error: '',
  delivering: nodeId === 1,
  watches: [],
  workerRestarts: 0,
  invocations: 7,
  errors: 0,
  timeouts: 0,
  retryAtMs: 0,
  deadLettered: 0,
  runsIn: 'process',
});

describe('withPendingNodes', () => {
  it('lists every registered extension for every node that sent its id: missing or older ones as loading the registered generation', () => {
    const records = [record('a', 2), record('b', 1)];
    const out = withPendingNodes(records, [
      { nodeId: 1, statuses: [status(1, 'a', 2), status(1, 'b', 1)] },
      { nodeId: 2, statuses: [status(2, 'a', 1)] }, // runs generation 1 of a, has not seen b
      { nodeId: 3, statuses: [] }, // has seen neither
    ]);
    const key = (s: ExtensionNodeInfo) => `${s.name}@${s.nodeId} g${s.generation} ${s.state}`;
    expect(out.map(key).sort()).toEqual(['a@1 g2 running', 'a@2 g2 loading', 'a@3 g2 loading', 'b@1 g1 running', 'b@2 g1 loading', 'b@3 g1 loading']);
    // The older generation's counters stay, and the entry says what runs meanwhile.
    expect(out.find((s) => s.name === 'a' && s.nodeId === 2)).toMatchObject({ invocations: 7, version: '1.0.2', error: expect.stringMatching(/generation 1 runs on node 2 until generation 2/) });
    expect(out.find((s) => s.name === 'b' && s.nodeId === 3)?.error).toMatch(/node 3 has not seen generation 1 yet/);
  });

  it('keeps what a node without an id reports as it is (it cannot be told apart), and a node ahead of the registry read', () => {
    const out = withPendingNodes([record('a', 2)], [
      { nodeId: 0, statuses: [status(5, 'a', 1)] },
      { nodeId: 4, statuses: [status(4, 'a', 3)] },
    ]);
    expect(out.map((s) => [s.nodeId, s.generation, s.state])).toEqual([
      [5, 1, 'running'],
      [4, 3, 'running'],
    ]);
  });
});
