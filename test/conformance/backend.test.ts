/** Runs the KvBackend conformance suite against the in-memory MemoryBackend twin and KvNode (single node, and the leader of three) over a loopback transport and in-memory engines. */
import { KvNode, DATA_GROUP } from '../../src/node/kv-node.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { silentLogger } from '../../src/log.js';
import { MemoryBackend } from '../server/memory-backend.js';
import { backendConformance } from './backend.js';

backendConformance('MemoryBackend', async () => ({ backend: new MemoryBackend(), close: async () => {} }));

backendConformance('KvNode (single node)', async () => {
  const hub = new LoopbackHub();
  const node = await KvNode.open(
    { id: 1, members: new Map([[1, '127.0.0.1:7101']]), tickMs: 10, log: silentLogger(), onFatal: (e) => { throw e; } },
    new MemoryEngine(),
    hub.transport(1),
  );
  node.start();
  const deadline = Date.now() + 10_000;
  while (!node.replica(DATA_GROUP)?.isLeader) {
    if (Date.now() > deadline) throw new Error('no leader within 10 s');
    await new Promise((r) => setTimeout(r, 5));
  }
  return { backend: node, close: () => node.stop() };
});

backendConformance('KvNode (leader of a 3-node cluster)', async () => {
  const hub = new LoopbackHub();
  const members = new Map([1, 2, 3].map((id) => [id, `127.0.0.1:${7200 + id}`] as [number, string]));
  const nodes: KvNode[] = [];
  for (const id of [1, 2, 3]) {
    const node = await KvNode.open({ id, members, tickMs: 20, log: silentLogger(), onFatal: (e) => { throw e; } }, new MemoryEngine(), hub.transport(id));
    node.start();
    nodes.push(node);
  }
  const deadline = Date.now() + 15_000;
  let leader: KvNode | undefined;
  while (!(leader = nodes.find((n) => n.replica(DATA_GROUP)?.isLeader))) {
    if (Date.now() > deadline) throw new Error('no leader within 15 s');
    await new Promise((r) => setTimeout(r, 5));
  }
  return {
    backend: leader,
    close: async () => {
      for (const n of nodes) await n.stop();
    },
  };
});
