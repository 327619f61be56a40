/** Runs the KvBackend conformance suite against a single-node KvNode (loopback transport, in-memory engine) and the in-memory MemoryBackend twin. */
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
