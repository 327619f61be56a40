/** The peer stream's direct RaftBatch codec gives what proto-loader's generic codec gives (presence included), and leaves object-form batches to it. */
import { describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { loadPeerProto } from '../../src/node/grpc-transport.js';
import { withPeerBatchCodec } from '../../src/node/peer-batch-codec.js';

const generic = (loadPeerProto() as unknown as { kvcascade: { v1: { peer: { Peer: grpc.ServiceClientConstructor } } } }).kvcascade.v1.peer.Peer.service['Raft'] as grpc.MethodDefinition<object, object>;
const fast = withPeerBatchCodec(generic);

describe('peer batch codec', () => {
  it('encodes and decodes packed batches and acks exactly as the generic codec (presence of zero fields included)', () => {
    const packed = Buffer.from(Array.from({ length: 300 }, (_, i) => i & 0xff));
    const batches: object[] = [
      { fromNode: 1, seq: 1, packed },
      { fromNode: 3, seq: 2 ** 40 + 5, packed: packed.subarray(0, 1) },
      { fromNode: 0, seq: 0, packed: Buffer.alloc(0) },
      { fromNode: 2, seq: 7 },
      { seq: 9, packed, messages: [] },
      {},
    ];
    for (const b of batches) {
      const g = generic.requestSerialize(b);
      expect(fast.requestSerialize(b)).toEqual(g);
      expect(fast.requestDeserialize(g)).toStrictEqual(generic.requestDeserialize(g));
    }
    for (const a of [{ seq: 0 }, { seq: 1 }, { seq: 2 ** 50 }, {}]) {
      const g = generic.responseSerialize(a);
      expect(fast.responseSerialize(a)).toEqual(g);
      expect(fast.responseDeserialize(g)).toStrictEqual(generic.responseDeserialize(g));
    }
  });

  it('leaves batches with messages, out-of-range numbers and malformed bytes to the generic codec', () => {
    const withMessages = { fromNode: 1, seq: 2, messages: [{ type: 'MsgApp', to: 2, from: 1, term: 3 }] };
    const g = generic.requestSerialize(withMessages);
    expect(fast.requestSerialize(withMessages)).toEqual(g);
    expect(fast.requestDeserialize(g)).toStrictEqual(generic.requestDeserialize(g));
    const big = Buffer.from([0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]); // fromNode = 2^64 - 1
    expect(fast.requestDeserialize(big)).toStrictEqual(generic.requestDeserialize(big));
    const cut = generic.requestSerialize({ fromNode: 1, seq: 2, packed: Buffer.alloc(10, 1) }).subarray(0, 8);
    expect(() => generic.requestDeserialize(cut)).toThrow();
    expect(() => fast.requestDeserialize(cut)).toThrow();
  });
});
