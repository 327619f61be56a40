/**
 * A vote is a promise: once a node has told a candidate "yes", a crash must not make it forget,
 * or it could vote again in the same term and two leaders could share it. Each round starts a
 * three-node cluster whose engines model machine crashes (MemoryEngine: whatever is not synced
 * is lost), crashes a node the instant its first granted vote leaves, and checks that the vote
 * (or a later term) is on its disk and is what the node comes back with.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { KvNode } from '../../src/node/kv-node.js';
import { LoopbackHub, type Transport } from '../../src/node/transport.js';
import { MessageType, type Message, type NodeId } from '../../src/raft/index.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { RaftLogStore } from '../../src/storage/raft-log-store.js';
import { silentLogger } from '../../src/log.js';

const members = new Map([1, 2, 3].map((i) => [i, `127.0.0.1:${7200 + i}`] as [number, string]));

let open: KvNode[] = [];
afterEach(async () => {
  for (const n of open) await n.stop().catch(() => {});
  open = [];
});

interface Vote {
  readonly voter: NodeId;
  readonly group: number;
  readonly term: number;
  readonly candidate: NodeId;
}

/**
 * A transport that watches what its node sends: the first granted vote goes out, then the
 * machine dies on the spot (`onVote` crashes the engine); nothing is sent after that.
 */
class VoteWatchingTransport implements Transport {
  dead = false;

  constructor(
    private readonly inner: Transport,
    private readonly id: NodeId,
    private readonly onVote: (v: Vote) => boolean,
  ) {}

  send(messages: readonly Message[]): void {
    if (this.dead) return;
    const out: Message[] = [];
    for (const m of messages) {
      out.push(m);
      if (m.type === MessageType.VoteResp && !m.reject && this.onVote({ voter: this.id, group: m.group, term: m.term, candidate: m.to })) {
        this.dead = true;
        break;
      }
    }
    this.inner.send(out);
  }

  onMessages(handler: (messages: readonly Message[]) => void): void {
    this.inner.onMessages((ms) => {
      if (!this.dead) handler(ms);
    });
  }

  onUnreachable(handler: (peer: NodeId) => void): void {
    this.inner.onUnreachable(handler);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

describe('a vote survives a crash right after it is sent', () => {
  for (const round of [1, 2, 3, 4, 5]) {
    it(`the crashed voter's disk holds its vote, and it restarts with it (round ${round})`, async () => {
      const hub = new LoopbackHub();
      const engines = [1, 2, 3].map(() => new MemoryEngine({ latencyMs: 1 + (round % 3) }));
      let vote: Vote | undefined;
      let crashedEngine: MemoryEngine | undefined;
      let crashed: KvNode | undefined;
      const nodes: KvNode[] = [];
      for (let i = 0; i < 3; i++) {
        const id = i + 1;
        const transport = new VoteWatchingTransport(hub.transport(id), id, (v) => {
          if (vote) return false;
          vote = v;
          crashedEngine = engines[i]!.crash(0); // power cut: every write not yet synced is gone
          crashed = nodes[i];
          return true;
        });
        const node = await KvNode.open(
          { id, members, tickMs: 5, electionTicks: 10 + 2 * round, log: silentLogger(), onFatal: () => {} },
          engines[i]!,
          transport,
        );
        open.push(node);
        nodes.push(node);
      }
      for (const n of nodes) n.start();
      const until = Date.now() + 10_000;
      while (!vote && Date.now() < until) await new Promise((r) => setTimeout(r, 2));
      expect(vote, 'some node granted a vote').toBeDefined();
      const v = vote!;
      await crashed!.stop().catch(() => {}); // its engine is gone: the stop fails part way

      // What survived on the crashed machine's disk.
      const store = await RaftLogStore.open(crashedEngine!);
      const hs = store.storageFor(v.group).initialState().hardState;
      expect(hs.term, `term on disk after voting in term ${v.term}`).toBeGreaterThanOrEqual(v.term);
      if (hs.term === v.term) expect(hs.vote, `vote on disk in term ${v.term}`).toBe(v.candidate);

      // And the node comes back with it: it cannot vote for anyone else in that term.
      const reopened = await KvNode.open(
        { id: v.voter, members, tickMs: 5, log: silentLogger(), onFatal: () => {} },
        crashedEngine!,
        hub.transport(100 + round), // not attached as a member: nothing reaches it
      );
      open.push(reopened);
      const st = reopened.replica(v.group)!.status();
      expect(st.term).toBeGreaterThanOrEqual(v.term);
      if (st.term === v.term) expect(st.vote).toBe(v.candidate);
    });
  }
});
