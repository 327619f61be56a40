/**
 * The put flag `currentOnConflict` (a conditional put whose success carries no previous value) and
 * mixed versions: entries using it travel in envelope V5, which a node from before it stops on
 * instead of applying the put as a no-op; `legacyConditionalPuts` keeps writing entries those
 * nodes decode (`returnPrevious`) during a rolling upgrade.
 */
import { describe, expect, it } from 'vitest';
import { DATA_GROUP, type KvNode, type NodeOptions } from '../../src/node/kv-node.js';
import { decodeProposal, encodeProposal, PROPOSAL_NEWER_COMMAND_ENVELOPE_VERSION } from '../../src/node/envelope.js';
import { LoopbackHub } from '../../src/node/transport.js';
import { MessageType, type Message } from '../../src/raft/index.js';
import { encodeCommand, type Command } from '../../src/statemachine/index.js';
import { MemoryEngine } from '../../src/storage/kv-engine.js';
import { converged, leaderOf, nodeTrio } from '../support/node-trio.js';

const enc = (s: string) => new TextEncoder().encode(s);
const deadline = () => ({ deadlineMs: Date.now() + 5000 });

/**
 * What a node from before V5 (kvcascade at main 4e9e464) does with committed entry data, by its
 * rules: an envelope version other than 1-4 stops the replica (UnknownEnvelopeVersionError); a
 * put whose flags have a bit besides 0 (expected version) and 1 (returnPrevious) fails its command
 * decoder, and the entry is applied as a no-op (skipped: that replica would diverge).
 */
function preV5Outcome(data: Uint8Array): 'stops' | 'skips' | 'applies' {
  const version = data[0]!;
  if (version < 1 || version > 4) return 'stops';
  let at = version === 1 ? 9 : version === 2 ? 10 : 11;
  if (version === 4) {
    at += 1 + data[11]!; // session id
    while (data[at]! & 0x80) at++; // seq
    at++;
    while (data[at]! & 0x80) at++; // ackedBelow
    at++;
  }
  const tag = data[at + 1];
  if (tag === 1 && (data[at + 2]! & ~3) !== 0) return 'skips';
  return 'applies';
}

describe('envelope V5 for puts with currentOnConflict', () => {
  const put: Command = { type: 'put', key: '/k', value: enc('v'), expectedVersion: 4, currentOnConflict: true };

  it('round-trips with and without a session; other commands keep V3/V4', () => {
    const plain = encodeProposal(1_700_000_000_001, put, 'client', 1);
    expect(plain[0]).toBe(PROPOSAL_NEWER_COMMAND_ENVELOPE_VERSION);
    expect(plain[0]).toBe(5);
    expect(decodeProposal(plain)).toEqual({ timestampMs: 1_700_000_000_001, hops: 1, origin: 'client', command: put });
    const session = { id: 'session-A-0123456789', seq: 300, ackedBelow: 299 };
    const withSession = encodeProposal(7, put, 'client', 0, session);
    expect(withSession[0]).toBe(5);
    expect(decodeProposal(withSession)).toEqual({ timestampMs: 7, hops: 0, origin: 'client', command: put, session });
    const legacy: Command = { type: 'put', key: '/k', value: enc('v'), expectedVersion: 4, returnPrevious: true };
    expect(encodeProposal(7, legacy, 'client')[0]).toBe(3);
    expect(encodeProposal(7, legacy, 'client', 0, session)[0]).toBe(4);
  });

  it('a node from before V5 stops on it, where the same command in V3 would be silently skipped', () => {
    expect(preV5Outcome(encodeProposal(7, put, 'client'))).toBe('stops');
    expect(preV5Outcome(encodeProposal(7, put, 'client', 0, { id: 'session-B-0123456789', seq: 1, ackedBelow: 1 }))).toBe('stops');
    // The counterfactual V3 wrapping of the same command (what V5 prevents):
    const body = encodeCommand(put);
    const v3 = encodeProposal(7, { type: 'noop' }, 'client');
    const forged = new Uint8Array(11 + body.length);
    forged.set(v3.subarray(0, 11));
    forged.set(body, 11);
    expect(decodeProposal(forged).command).toEqual(put); // this version reads it
    expect(preV5Outcome(forged)).toBe('skips'); // the old one would diverge
    // What old nodes always read: returnPrevious puts, with or without a session.
    const old: Command = { type: 'put', key: '/k', value: enc('v'), expectedVersion: 4, returnPrevious: true };
    expect(preV5Outcome(encodeProposal(7, old, 'client'))).toBe('applies');
    expect(preV5Outcome(encodeProposal(7, old, 'client', 0, { id: 'session-C-0123456789', seq: 200, ackedBelow: 130 }))).toBe('applies');
  });
});

describe('conditional puts returning the current value, three nodes', () => {
  const trio = nodeTrio(7460);

  /** Opens three nodes with `extra` and records every data-group entry the leader sends to followers. */
  async function cluster(extra: Partial<NodeOptions>): Promise<{ nodes: KvNode[]; sent: Uint8Array[] }> {
    const hub = new LoopbackHub();
    const sent: Uint8Array[] = [];
    const deliver = hub.deliver.bind(hub);
    hub.deliver = (from: number, messages: readonly Message[]) => {
      for (const m of messages) {
        if (m.group === DATA_GROUP && m.type === MessageType.App) for (const e of m.entries ?? []) if (e.data.length > 0) sent.push(e.data);
      }
      deliver(from, messages);
    };
    const nodes: KvNode[] = [];
    for (const id of [1, 2, 3]) nodes.push(await trio.open(id, new MemoryEngine(), hub, extra));
    for (const n of nodes) n.start();
    return { nodes, sent };
  }

  /** The entries sent for puts of `key`, decoded, with what a pre-V5 follower would do with each. */
  function putsOf(sent: readonly Uint8Array[], key: string): { cmd: Command; version: number; old: string }[] {
    const out: { cmd: Command; version: number; old: string }[] = [];
    const seen = new Set<string>();
    for (const data of sent) {
      const p = decodeProposal(data);
      if (p.command.type !== 'put' || p.command.key !== key) continue;
      const id = Array.from(data).join(',');
      if (seen.has(id)) continue; // a retransmitted append
      seen.add(id);
      out.push({ cmd: p.command, version: data[0]!, old: preV5Outcome(data) });
    }
    return out;
  }

  it('by default: success carries nothing, conflict carries the current value; entries are V5', async () => {
    const { nodes, sent } = await cluster({});
    const l = await leaderOf(nodes);
    const first = await l.put({ key: '/rmw', value: enc('1') }, deadline());
    const ok = await l.put({ key: '/rmw', value: enc('2'), expectedVersion: first.version, returnCurrentValue: true }, deadline());
    expect(ok.succeeded).toBe(true);
    expect(ok).not.toHaveProperty('previous');
    expect(ok).not.toHaveProperty('current');
    const conflict = await l.put({ key: '/rmw', value: enc('3'), expectedVersion: first.version, returnCurrentValue: true }, deadline());
    expect(conflict.succeeded).toBe(false);
    expect(conflict.current).toEqual({ version: ok.version, value: enc('2') });
    await converged(nodes);
    const puts = putsOf(sent, '/rmw');
    expect(puts.map((p) => [p.version, p.old])).toEqual([[3, 'applies'], [5, 'stops'], [5, 'stops']]);
    expect(puts[1]!.cmd).toMatchObject({ currentOnConflict: true });
    expect(puts[1]!.cmd).not.toHaveProperty('returnPrevious');
    // Every replica applied the same: the value and version of the successful conditional put.
    for (const n of nodes) expect(n.replica(DATA_GROUP)!.readValue('/rmw')).toMatchObject({ version: ok.version, value: enc('2') });
  });

  it('with legacyConditionalPuts: entries a pre-V5 node applies (returnPrevious, V3), the conflict still carries the current value', async () => {
    const { nodes, sent } = await cluster({ legacyConditionalPuts: true });
    const l = await leaderOf(nodes);
    const first = await l.put({ key: '/rmw', value: enc('1') }, deadline());
    const ok = await l.put({ key: '/rmw', value: enc('2'), expectedVersion: first.version, returnCurrentValue: true }, deadline());
    expect(ok.succeeded).toBe(true);
    const conflict = await l.put({ key: '/rmw', value: enc('3'), expectedVersion: first.version, returnCurrentValue: true }, deadline());
    expect(conflict.current).toEqual({ version: ok.version, value: enc('2') });
    await converged(nodes);
    const puts = putsOf(sent, '/rmw');
    expect(puts.map((p) => [p.version, p.old])).toEqual([[3, 'applies'], [3, 'applies'], [3, 'applies']]);
    expect(puts[1]!.cmd).toMatchObject({ returnPrevious: true });
    expect(puts[1]!.cmd).not.toHaveProperty('currentOnConflict');
  });
});
