/**
 * Fuzzing the peer boundary: random and adversarial wire messages (garbage, crafted messages
 * with huge terms, local-only types and forged senders, and mutated copies of real messages
 * captured from the running group) go through `decodePeerMessage`, attributed to a real member
 * as the transport would, into a group running in the deterministic simulator, whose own
 * traffic also goes through the wire codec all along.
 *
 * Two properties:
 * - against a network adversary (it may replay anything, and send anything the decoder accepts
 *   as long as it makes no claim about a member's log, votes or acknowledgements), every
 *   safety invariant holds, no persisted term exceeds MAX_RAFT_TERM, and once the forging
 *   stops a leader is elected and a write commits within the bound;
 * - against a Byzantine member (everything the decoder accepts is delivered, including forged
 *   appends, votes and acknowledgements, which Raft does not defend against), no exception
 *   escapes the Raft core and no term exceeds the bound.
 *
 * Replay a failure: FUZZ_SEED=<seed> FUZZ_PATH=<path> npx vitest run test/node/peer-fuzz.test.ts
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodePeerMessage, MAX_PEER_CONTEXT_LENGTH, PeerMessageError, toWire, type WireMessage } from '../../src/node/peer-codec.js';
import {
  ConfChangeType,
  encodeConfChange,
  EntryType,
  MAX_RAFT_INDEX,
  MAX_RAFT_TERM,
  MAX_SNAPSHOT_BYTES,
  MessageType,
  type Message,
  type NodeId,
} from '../../src/raft/index.js';
import { checkKvLinearizable } from '../sim/linearizability.js';
import { Simulator, type Fault, type ScheduleStep, type SimConfig, type SimView } from '../sim/simulator.js';

const RUNS = Number(process.env.FUZZ_RUNS ?? 150);
const SPARES = 1;
/** Forged terms the network-adversary property delivers stay this far below the bound (so the group can still elect). */
const HEADROOM = 2 ** 20;
const SAFE_TERM_LIMIT = MAX_RAFT_TERM - HEADROOM;
/** Real messages remembered for replay and mutation. */
const CAPTURE = 256;

// ------------------------------------------------------------------ what the adversary sends

/** A term relative to the receiver's, or an absolute (often absurd) value. */
type TermSpec = { readonly rel: number } | { readonly abs: unknown };
/** An index relative to the receiver's last index, or an absolute value. */
type IndexSpec = { readonly relIndex: number } | { readonly abs: unknown };

type Mutation =
  | { readonly op: 'term'; readonly term: TermSpec }
  | { readonly op: 'set'; readonly field: string; readonly value: IndexSpec }
  | { readonly op: 'delete'; readonly field: string }
  | { readonly op: 'type'; readonly type: unknown }
  | { readonly op: 'entries'; readonly how: EntryMutation }
  | { readonly op: 'snapshot'; readonly how: 'term-up' | 'dup-voter' | 'zero-voter' | 'huge-index' | 'no-conf' }
  | { readonly op: 'chunk'; readonly how: 'grow' | 'past-end' | 'done' | 'huge-total' };

type EntryMutation = 'shift' | 'gap' | 'term-up' | 'term-down' | 'bad-type' | 'bad-conf' | 'conf-change' | 'reverse' | 'drop-data';

/** How to pick a node: the original sender/recipient of the captured message, or a member by position. */
type Who = 'orig' | number;

type ForgeSpec =
  /** A captured real message, sent again as it was (a delayed duplicate). */
  | { readonly kind: 'replay'; readonly pick: number }
  /** A captured real message with some fields changed. */
  | { readonly kind: 'mutate'; readonly pick: number; readonly mutations: readonly Mutation[]; readonly sender: Who; readonly self: Who }
  /** A message built from scratch: `shaped` keeps only (and fills in) the fields its type carries. */
  | {
      readonly kind: 'craft';
      readonly shaped: boolean;
      readonly type: unknown;
      readonly sender: number;
      readonly self: number;
      readonly forgeFrom: number | undefined;
      readonly forgeTo: number | undefined;
      readonly term: TermSpec;
      readonly fields: Readonly<Record<string, IndexSpec | TermSpec | unknown>>;
    }
  /** Anything at all. */
  | { readonly kind: 'garbage'; readonly value: unknown; readonly sender: number; readonly self: number };

const absurdNumbers = [0, 1, -1, 1.5, 10 ** 12, SAFE_TERM_LIMIT, MAX_RAFT_TERM - 1, MAX_RAFT_TERM, MAX_RAFT_TERM + 1, 2 ** 53 - 1, 2 ** 53, 2 ** 64, Number.NaN, Number.POSITIVE_INFINITY];

const termSpecArb: fc.Arbitrary<TermSpec> = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: -2, max: 3 }).map((rel) => ({ rel })) },
  { weight: 3, arbitrary: fc.constantFrom<unknown>(...absurdNumbers, '7', null).map((abs) => ({ abs })) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }).map((abs) => ({ abs })) },
);

const indexSpecArb: fc.Arbitrary<IndexSpec> = fc.oneof(
  { weight: 6, arbitrary: fc.integer({ min: -5, max: 5 }).map((relIndex) => ({ relIndex })) },
  { weight: 2, arbitrary: fc.constantFrom<unknown>(...absurdNumbers, MAX_RAFT_INDEX + 1, MAX_SNAPSHOT_BYTES + 1, null, true, '', 'x'.repeat(MAX_PEER_CONTEXT_LENGTH + 1)).map((abs) => ({ abs })) },
  { weight: 1, arbitrary: fc.anything().map((abs) => ({ abs })) },
);

const wireFields = ['group', 'from', 'to', 'index', 'logTerm', 'entries', 'commit', 'reject', 'rejectHint', 'snapshot', 'offset', 'chunk', 'done', 'total', 'context', 'transferee'];
const allTypes = [...Object.values(MessageType)];

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  { weight: 4, arbitrary: termSpecArb.map((term): Mutation => ({ op: 'term', term })) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('set' as const), field: fc.constantFrom(...wireFields), value: indexSpecArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('delete' as const), field: fc.constantFrom(...wireFields, 'type', 'term') }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('type' as const), type: fc.oneof(fc.constantFrom<unknown>(...allTypes), fc.string({ maxLength: 8 })) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('entries' as const),
      how: fc.constantFrom<EntryMutation>('shift', 'gap', 'term-up', 'term-down', 'bad-type', 'bad-conf', 'conf-change', 'reverse', 'drop-data'),
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('snapshot' as const), how: fc.constantFrom('term-up' as const, 'dup-voter' as const, 'zero-voter' as const, 'huge-index' as const, 'no-conf' as const) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('chunk' as const), how: fc.constantFrom('grow' as const, 'past-end' as const, 'done' as const, 'huge-total' as const) }) },
);

const whoArb: fc.Arbitrary<Who> = fc.oneof({ weight: 4, arbitrary: fc.constant('orig' as const) }, { weight: 1, arbitrary: fc.nat(7) });

const craftFieldsArb = fc.record(
  {
    index: indexSpecArb,
    logTerm: termSpecArb,
    commit: indexSpecArb,
    reject: fc.boolean(),
    rejectHint: indexSpecArb,
    context: fc.oneof(fc.constant('transfer'), fc.string({ maxLength: 12 }), fc.constant('y'.repeat(MAX_PEER_CONTEXT_LENGTH + 1))),
    entries: fc.record({ count: fc.integer({ min: 1, max: 3 }), term: termSpecArb, conf: fc.boolean() }),
    snapshot: fc.record({ index: indexSpecArb, term: termSpecArb }),
    offset: indexSpecArb,
    total: indexSpecArb,
    chunk: fc.uint8Array({ maxLength: 8 }),
    done: fc.boolean(),
    transferee: fc.nat(7),
  },
  { requiredKeys: [] },
);

const forgeSpecArb: fc.Arbitrary<ForgeSpec> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('replay' as const), pick: fc.nat() }) },
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('mutate' as const),
      pick: fc.nat(),
      mutations: fc.array(mutationArb, { minLength: 1, maxLength: 3 }),
      sender: whoArb,
      self: whoArb,
    }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('craft' as const),
      shaped: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
      type: fc.oneof({ weight: 9, arbitrary: fc.constantFrom<unknown>(...allTypes) }, { weight: 1, arbitrary: fc.anything() }),
      sender: fc.nat(7),
      self: fc.nat(7),
      forgeFrom: fc.option(fc.nat(7), { nil: undefined, freq: 8 }),
      forgeTo: fc.option(fc.nat(7), { nil: undefined, freq: 8 }),
      term: termSpecArb,
      fields: craftFieldsArb,
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('garbage' as const), value: fc.anything(), sender: fc.nat(7), self: fc.nat(7) }) },
);

// ------------------------------------------------------------------ turning specs into wire objects

/** The fields each message type carries (required first), as the decoder expects them. */
const SHAPES: Readonly<Record<string, { readonly required: readonly string[]; readonly optional: readonly string[]; readonly forwarded?: true }>> = {
  [MessageType.Prop]: { required: ['entries'], optional: [], forwarded: true },
  [MessageType.App]: { required: ['index', 'logTerm', 'commit'], optional: ['entries'] },
  [MessageType.AppResp]: { required: [], optional: ['index', 'reject', 'rejectHint', 'logTerm'] },
  [MessageType.Vote]: { required: ['index', 'logTerm'], optional: ['context'] },
  [MessageType.PreVote]: { required: ['index', 'logTerm'], optional: ['context'] },
  [MessageType.VoteResp]: { required: [], optional: ['reject'] },
  [MessageType.PreVoteResp]: { required: [], optional: ['reject'] },
  [MessageType.Snap]: { required: ['snapshot', 'offset', 'total'], optional: ['chunk', 'done'] },
  [MessageType.SnapChunkResp]: { required: ['snapshot', 'offset'], optional: ['reject'] },
  [MessageType.Heartbeat]: { required: ['commit'], optional: ['context'] },
  [MessageType.HeartbeatResp]: { required: [], optional: ['context'] },
  [MessageType.ReadIndex]: { required: ['context'], optional: [], forwarded: true },
  [MessageType.ReadIndexResp]: { required: ['index', 'context'], optional: [] },
  [MessageType.TransferLeader]: { required: [], optional: ['transferee'], forwarded: true },
  [MessageType.TimeoutNow]: { required: [], optional: [] },
};

/** Evaluates specs against the live cluster; collects what the decoder said. */
class Adversary {
  /** Wire forms of real messages, most recent last. */
  readonly captured: WireMessage[] = [];
  readonly refusals = new Map<string, number>();
  accepted = 0;
  delivered = 0;
  withheld = 0;

  constructor(
    private readonly batches: readonly (readonly ForgeSpec[])[],
    /** Which accepted forgeries to deliver: all (Byzantine member) or only claim-free ones. */
    private readonly deliverAll: boolean,
  ) {}

  /** The codec every real message goes through: captured, encoded, decoded as the receiver would. */
  codec = (m: Message): Message => {
    const w = toWire(m);
    this.captured.push(w);
    if (this.captured.length > CAPTURE) this.captured.shift();
    // Honest traffic must always pass: a refusal here fails the run.
    return decodePeerMessage(w, { sender: m.from, self: m.to });
  };

  forge = (batch: number, view: SimView): Message[] => {
    checkTerms(view);
    const out: Message[] = [];
    for (const spec of this.batches[batch] ?? []) {
      const made = this.make(spec, view);
      if (!made) continue;
      const { wire, sender, self } = made;
      let m: Message;
      try {
        m = decodePeerMessage(wire, { sender, self });
      } catch (e) {
        if (!(e instanceof PeerMessageError)) throw e;
        this.refusals.set(e.code, (this.refusals.get(e.code) ?? 0) + 1);
        continue;
      }
      this.accepted++;
      // What the decoder accepts is attributed to the authenticated sender and within bounds.
      if (m.from !== sender || m.to !== self || m.term > MAX_RAFT_TERM || m.type === MessageType.Hup || m.type === MessageType.Beat) {
        throw new Error(`decoder accepted an impossible message: ${JSON.stringify(toWire(m))}`);
      }
      if (this.deliverAll || spec.kind === 'replay' || (claimFree(m) && m.term <= SAFE_TERM_LIMIT)) {
        this.delivered++;
        out.push(m);
      } else {
        this.withheld++;
      }
    }
    return out;
  };

  private make(spec: ForgeSpec, view: SimView): { wire: unknown; sender: NodeId; self: NodeId } | undefined {
    const ids = view.ids;
    const member = (i: number): NodeId => ids[i % ids.length]!;
    const pair = (s: NodeId, r: NodeId): [NodeId, NodeId] => (s === r ? [s, member(ids.indexOf(r) + 1)] : [s, r]);
    switch (spec.kind) {
      case 'garbage': {
        const [sender, self] = pair(member(spec.sender), member(spec.self));
        return { wire: spec.value, sender, self };
      }
      case 'replay': {
        if (this.captured.length === 0) return undefined;
        const w = this.captured[spec.pick % this.captured.length]!;
        return { wire: w, sender: w.from, self: w.to };
      }
      case 'mutate': {
        if (this.captured.length === 0) return undefined;
        const orig = this.captured[spec.pick % this.captured.length]!;
        const [sender, self] = pair(spec.sender === 'orig' ? orig.from : member(spec.sender), spec.self === 'orig' ? orig.to : member(spec.self));
        const w = structuredClone(orig) as unknown as Record<string, unknown>;
        for (const mu of spec.mutations) mutate(w, mu, view, self);
        return { wire: w, sender, self };
      }
      case 'craft': {
        const [sender, self] = pair(member(spec.sender), member(spec.self));
        const r = view.raft(self);
        const shape = spec.shaped && typeof spec.type === 'string' ? SHAPES[spec.type] : undefined;
        const term = shape?.forwarded ? 0 : termOf(spec.term, r.term);
        const w: Record<string, unknown> = {
          type: spec.type,
          group: 1,
          from: spec.forgeFrom === undefined ? sender : member(spec.forgeFrom),
          to: spec.forgeTo === undefined ? self : member(spec.forgeTo),
          term,
        };
        let f = spec.fields as Record<string, unknown>;
        const last = r.log.lastIndex();
        if (shape) {
          // Keep what the type carries; fill in what it needs with plausible values.
          const defaults: Record<string, unknown> = {
            index: { relIndex: 0 },
            logTerm: { abs: Math.min(r.log.lastTerm(), typeof term === 'number' ? term : 0) },
            commit: { abs: 0 },
            snapshot: { index: { relIndex: 1 }, term: { abs: Math.min(r.log.lastTerm(), typeof term === 'number' ? term : 0) } },
            offset: { abs: 0 },
            total: { abs: 0 },
            context: 'c',
            entries: { count: 1, term: { rel: 0 }, conf: false },
          };
          const kept: Record<string, unknown> = {};
          for (const k of shape.required) kept[k] = k in f ? f[k] : defaults[k];
          for (const k of shape.optional) if (k in f) kept[k] = f[k];
          f = kept;
        }
        if ('index' in f) w['index'] = indexOf(f['index'] as IndexSpec, last);
        if ('logTerm' in f) w['logTerm'] = termOf(f['logTerm'] as TermSpec, r.term);
        if ('commit' in f) w['commit'] = indexOf(f['commit'] as IndexSpec, r.log.committed);
        if ('reject' in f) w['reject'] = f['reject'];
        if ('rejectHint' in f) w['rejectHint'] = indexOf(f['rejectHint'] as IndexSpec, last);
        if ('context' in f) w['context'] = f['context'];
        if ('entries' in f) {
          const e = f['entries'] as { count: number; term: TermSpec; conf: boolean };
          const base = typeof w['index'] === 'number' ? (w['index'] as number) : last;
          const et = termOf(e.term, r.term);
          w['entries'] = Array.from({ length: e.count }, (_, i) => ({
            term: et,
            index: base + 1 + i,
            type: e.conf ? EntryType.ConfChange : EntryType.Normal,
            data: e.conf ? encodeConfChange({ type: ConfChangeType.AddLearner, nodeId: member(i) }) : new Uint8Array([i]),
          }));
        }
        if ('snapshot' in f) {
          const s = f['snapshot'] as { index: IndexSpec; term: TermSpec };
          w['snapshot'] = { index: indexOf(s.index, last), term: termOf(s.term, r.term), conf: r.confState() };
        }
        if ('offset' in f) w['offset'] = indexOf(f['offset'] as IndexSpec, 0);
        if ('total' in f) w['total'] = indexOf(f['total'] as IndexSpec, 8);
        if ('chunk' in f) w['chunk'] = f['chunk'];
        if ('done' in f) w['done'] = f['done'];
        if ('transferee' in f) w['transferee'] = member(f['transferee'] as number);
        return { wire: w, sender, self };
      }
    }
  }
}

function termOf(t: TermSpec, current: number): unknown {
  return 'rel' in t ? Math.max(0, current + t.rel) : t.abs;
}

function indexOf(t: IndexSpec, base: number): unknown {
  return 'relIndex' in t ? Math.max(0, base + t.relIndex) : t.abs;
}

function mutate(w: Record<string, unknown>, mu: Mutation, view: SimView, self: NodeId): void {
  const r = view.raft(self);
  const ents =
    Array.isArray(w['entries']) && w['entries'].every((e) => typeof e === 'object' && e !== null)
      ? (w['entries'] as Record<string, unknown>[])
      : undefined;
  const snap = typeof w['snapshot'] === 'object' && w['snapshot'] !== null ? (w['snapshot'] as Record<string, unknown>) : undefined;
  switch (mu.op) {
    case 'term':
      w['term'] = termOf(mu.term, r.term);
      return;
    case 'set':
      w[mu.field] = indexOf(mu.value, mu.field === 'commit' ? r.log.committed : r.log.lastIndex());
      return;
    case 'delete':
      delete w[mu.field];
      return;
    case 'type':
      w['type'] = mu.type;
      return;
    case 'entries': {
      if (!ents || ents.length === 0) return;
      const e0 = ents[0]!;
      switch (mu.how) {
        case 'shift':
          for (const e of ents) e['index'] = (e['index'] as number) + 1;
          return;
        case 'gap':
          ents.push({ ...ents[ents.length - 1]!, index: (ents[ents.length - 1]!['index'] as number) + 2 });
          return;
        case 'term-up':
          e0['term'] = (w['term'] as number) + 1;
          return;
        case 'term-down':
          ents.push({ ...ents[ents.length - 1]!, index: (ents[ents.length - 1]!['index'] as number) + 1, term: 0 });
          return;
        case 'bad-type':
          e0['type'] = 7;
          return;
        case 'bad-conf':
          e0['type'] = EntryType.ConfChange;
          e0['data'] = new TextEncoder().encode('{"type":"AddVoter","nodeId":"x"}');
          return;
        case 'conf-change':
          e0['type'] = EntryType.ConfChange;
          e0['data'] = encodeConfChange({ type: ConfChangeType.RemoveNode, nodeId: self });
          return;
        case 'reverse':
          ents.reverse();
          return;
        case 'drop-data':
          e0['data'] = 'not bytes';
          return;
      }
      return;
    }
    case 'snapshot': {
      if (!snap) return;
      const conf = (snap['conf'] ?? {}) as Record<string, unknown>;
      const voters = Array.isArray(conf['voters']) ? (conf['voters'] as unknown[]) : [];
      switch (mu.how) {
        case 'term-up':
          snap['term'] = (w['term'] as number) + 1;
          return;
        case 'dup-voter':
          snap['conf'] = { ...conf, voters: [...voters, voters[0] ?? 1, voters[0] ?? 1] };
          return;
        case 'zero-voter':
          snap['conf'] = { ...conf, voters: [...voters, 0] };
          return;
        case 'huge-index':
          snap['index'] = 2 ** 53 - 1;
          return;
        case 'no-conf':
          delete snap['conf'];
          return;
      }
      return;
    }
    case 'chunk': {
      switch (mu.how) {
        case 'grow': {
          const c = w['chunk'] instanceof Uint8Array ? w['chunk'] : new Uint8Array(0);
          w['chunk'] = new Uint8Array(c.length + 5).fill(3);
          return;
        }
        case 'past-end':
          w['offset'] = typeof w['total'] === 'number' ? (w['total'] as number) + 1 : 1;
          return;
        case 'done':
          w['done'] = true;
          return;
        case 'huge-total':
          w['total'] = MAX_SNAPSHOT_BYTES + 1;
          return;
      }
    }
  }
}

/**
 * Whether a forged message makes no claim about the sender's log, votes or acknowledgements, so
 * a correct member could have sent it in some state: Raft's safety does not depend on it being
 * true. Appends, snapshots, granted votes, append acknowledgements, commit indexes and read
 * confirmations are claims; a member forging those is Byzantine, outside Raft's fault model.
 */
function claimFree(m: Message): boolean {
  switch (m.type) {
    case MessageType.PreVote:
    case MessageType.Vote:
    case MessageType.PreVoteResp:
    case MessageType.TimeoutNow:
    case MessageType.TransferLeader:
    case MessageType.SnapChunkResp:
      return true;
    case MessageType.ReadIndex:
      return !/^\d+:\d+$/.test(m.context ?? ''); // not a simulated client's read id
    case MessageType.VoteResp:
      return m.reject === true;
    case MessageType.AppResp:
      return m.reject === true || m.index === undefined;
    case MessageType.Heartbeat:
      return m.commit === 0 && m.context === undefined;
    case MessageType.HeartbeatResp:
      return m.context === undefined;
    default:
      return false;
  }
}

/** No replica holds or persisted a term above the bound. */
function checkTerms(view: { ids: readonly NodeId[]; raft(id: NodeId): { term: number }; disk(id: NodeId): { initialState(): { hardState: { term: number } } } }): void {
  for (const id of view.ids) {
    const t = view.raft(id).term;
    const persisted = view.disk(id).initialState().hardState.term;
    if (!(t <= MAX_RAFT_TERM) || !(persisted <= MAX_RAFT_TERM)) {
      throw new Error(`node ${id} reached term ${t} (persisted ${persisted}), above MAX_RAFT_TERM`);
    }
  }
}

// ------------------------------------------------------------------ configurations

const faultArb = (nodes: number): fc.Arbitrary<Fault> => {
  const node = fc.integer({ min: 0, max: nodes - 1 });
  return fc.oneof(
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('crash' as const), node, unsyncedSurvives: fc.boolean() }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('restart' as const), node }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('pause' as const), node, forMs: fc.integer({ min: 50, max: 400 }) }) },
    {
      weight: 2,
      arbitrary: fc
        .shuffledSubarray(
          Array.from({ length: nodes }, (_, i) => i),
          { minLength: 1, maxLength: nodes - 1 },
        )
        .map((side): Fault => ({ kind: 'partition', sides: [side, Array.from({ length: nodes }, (_, i) => i).filter((i) => !side.includes(i))] })),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('lossy' as const), dropRate: fc.double({ min: 0, max: 0.2, noNaN: true }), duplicateRate: fc.double({ min: 0, max: 0.2, noNaN: true }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('transfer' as const), to: node }) },
    {
      weight: 1,
      arbitrary: fc.record({
        kind: fc.constant('membership' as const),
        op: fc.constantFrom('addLearner' as const, 'addVoter' as const, 'remove' as const),
        node: fc.integer({ min: 0, max: nodes + SPARES - 1 }),
      }),
    },
    { weight: 2, arbitrary: fc.constant<Fault>({ kind: 'heal' }) },
  );
};

interface FuzzCase {
  readonly cfg: Omit<SimConfig, 'codec' | 'forge'>;
  readonly batches: readonly (readonly ForgeSpec[])[];
}

const caseArb = (byzantine: boolean): fc.Arbitrary<FuzzCase> =>
  fc
    .record({
      seed: fc.integer({ min: 1, max: 0x7fffffff }),
      nodes: fc.constantFrom(3, 5),
      snapshotEvery: fc.constantFrom(0, 8),
      preVote: fc.boolean(),
      checkQuorum: fc.boolean(),
    })
    .chain((base) =>
      fc
        .array(
          fc.record({
            afterMs: fc.integer({ min: 0, max: 200 }),
            step: fc.oneof(
              { weight: 3, arbitrary: fc.array(forgeSpecArb, { minLength: 1, maxLength: 12 }).map((specs) => ({ specs })) },
              { weight: 1, arbitrary: faultArb(base.nodes).map((fault) => ({ fault })) },
            ),
          }),
          { minLength: 3, maxLength: 14 },
        )
        .map((steps): FuzzCase => {
          const batches: ForgeSpec[][] = [];
          const schedule: ScheduleStep[] = steps.map(({ afterMs, step }) => {
            if ('fault' in step) return { afterMs, fault: step.fault };
            batches.push(step.specs);
            return { afterMs, fault: { kind: 'forge', batch: batches.length - 1 } };
          });
          return {
            cfg: {
              seed: base.seed,
              nodes: base.nodes,
              spareNodes: SPARES,
              schedule,
              clients: 2,
              keys: ['x', 'y'],
              host: {
                snapshotEvery: base.snapshotEvery,
                compactionLag: 3,
                electionTicks: 10,
                heartbeatTicks: 2,
                snapshotChunkBytes: 128,
                preVote: base.preVote,
                checkQuorum: base.checkQuorum,
                tolerateBadData: byzantine,
              },
              livenessBoundMs: 4000,
              checkSafety: !byzantine,
              checkLiveness: !byzantine,
            },
            batches,
          };
        }),
    );

function params(): fc.Parameters<[FuzzCase]> {
  const seed = process.env.FUZZ_SEED;
  const path = process.env.FUZZ_PATH;
  return { numRuns: RUNS, ...(seed ? { seed: Number(seed) } : {}), ...(path ? { path } : {}), endOnFailure: false };
}

function run(c: FuzzCase, byzantine: boolean): { adversary: Adversary; sim: Simulator; result: ReturnType<Simulator['run']> } {
  const adversary = new Adversary(c.batches, byzantine);
  const sim = new Simulator({ ...c.cfg, codec: adversary.codec, forge: adversary.forge });
  const result = sim.run();
  checkTerms({ ids: sim.nodeIds, raft: (id) => sim.raft(id), disk: (id) => sim.disk(id) });
  return { adversary, sim, result };
}

// ------------------------------------------------------------------ the properties

describe('peer messages from the network, fuzzed into a running group', () => {
  it(`a network adversary breaks no safety invariant, no term passes the bound, and the group recovers (${RUNS} runs)`, () => {
    let accepted = 0;
    let delivered = 0;
    let withheld = 0;
    let maxTerm = 0;
    const refusals = new Map<string, number>();
    const pass = (p: fc.Parameters<[FuzzCase]>): void =>
      fc.assert(
        fc.property(caseArb(false), (c) => {
          const { adversary, sim, result } = run(c, false);
          accepted += adversary.accepted;
          delivered += adversary.delivered;
          withheld += adversary.withheld;
          for (const [k, n] of adversary.refusals) refusals.set(k, (refusals.get(k) ?? 0) + n);
          for (const id of sim.nodeIds) maxTerm = Math.max(maxTerm, sim.raft(id).term);
          expect(result.recovered).toBe(true);
          expect(result.recoveryMs).toBeLessThanOrEqual(4000);
          expect(result.safetyViolations).toBe(0);
          const lin = checkKvLinearizable(result.history);
          if (!lin.ok) throw new Error(`history not linearizable on key ${lin.key}: ${JSON.stringify(lin.history)}`);
        }),
        p,
      );
    pass(params());
    // A random seed's runs push a term far up nearly always, but not always (one CI run of session
    // 33: max term 11 over 150 runs, every property held). The coverage below must not hang on that
    // chance: when it happened, a second pass with a seed known to push terms up (seed 1: max term
    // 2.8e14) runs the same properties before the coverage is asserted.
    if (maxTerm <= 10 ** 12 && process.env.FUZZ_SEED === undefined) pass({ ...params(), seed: 1 });
    // The runs exercised the decoder both ways and pushed terms far up.
    expect(delivered).toBeGreaterThan(RUNS);
    expect(withheld).toBeGreaterThan(0);
    for (const code of ['out-of-bounds', 'forged-sender', 'wrong-recipient', 'local-only', 'bad-entries', 'malformed']) {
      expect(refusals.get(code) ?? 0, code).toBeGreaterThan(0);
    }
    expect(maxTerm).toBeGreaterThan(10 ** 12);
    console.log(`peer fuzz (network adversary): accepted=${accepted} delivered=${delivered} withheld=${withheld} maxTerm=${maxTerm} refusals=${JSON.stringify(Object.fromEntries(refusals))}`);
  });

  it(`a Byzantine member cannot make a replica throw or pass the term bound (${RUNS} runs)`, () => {
    let delivered = 0;
    let violations = 0;
    fc.assert(
      fc.property(caseArb(true), (c) => {
        const { adversary, result } = run(c, true);
        delivered += adversary.delivered;
        violations += result.safetyViolations;
      }),
      params(),
    );
    expect(delivered).toBeGreaterThan(RUNS);
    // Not an assertion of Raft's: forged appends and votes do break safety, which is why the
    // decoder insists that `from` is the authenticated sender.
    console.log(`peer fuzz (Byzantine member): delivered=${delivered} safetyViolations=${violations}`);
  });
});

// ------------------------------------------------------------------ pinned cases

/** A fuzz case from the parts fast-check printed (defaults as in `caseArb`). */
function pinned(
  byzantine: boolean,
  base: { seed: number; nodes: number; preVote: boolean; checkQuorum: boolean },
  schedule: ScheduleStep[],
  batches: ForgeSpec[][],
): FuzzCase {
  return {
    cfg: {
      seed: base.seed,
      nodes: base.nodes,
      spareNodes: SPARES,
      schedule,
      clients: 2,
      keys: ['x', 'y'],
      host: { snapshotEvery: 0, compactionLag: 3, electionTicks: 10, heartbeatTicks: 2, snapshotChunkBytes: 128, preVote: base.preVote, checkQuorum: base.checkQuorum, tolerateBadData: byzantine },
      livenessBoundMs: 4000,
      checkSafety: !byzantine,
      checkLiveness: !byzantine,
    },
    batches,
  };
}

const hup = (sender: number, self: number): ForgeSpec => ({ kind: 'craft', shaped: true, type: 'Hup', sender, self, forgeFrom: undefined, forgeTo: undefined, term: { rel: 0 }, fields: {} });

describe('peer fuzz: cases that once failed', () => {
  it('a forged group id (a replayed append re-addressed to group 5) is routed nowhere, not stepped into group 1', () => {
    const c = pinned(
      true,
      { seed: 2, nodes: 5, preVote: false, checkQuorum: false },
      [
        { afterMs: 0, fault: { kind: 'forge', batch: 0 } },
        { afterMs: 101, fault: { kind: 'forge', batch: 1 } },
        { afterMs: 0, fault: { kind: 'transfer', to: 0 } },
      ],
      [
        [{ kind: 'mutate', pick: 0, mutations: [{ op: 'entries', how: 'shift' }], sender: 'orig', self: 'orig' }],
        [{ kind: 'mutate', pick: 0, mutations: [{ op: 'set', field: 'group', value: { relIndex: 0 } }], sender: 'orig', self: 'orig' }, hup(0, 0)],
      ],
    );
    const { adversary } = run(c, true);
    expect(adversary.refusals.get('local-only')).toBe(1);
  });

  for (const byzantine of [false, true]) {
    it(`entries that are not objects, garbage and Hup are refused, not thrown on (${byzantine ? 'Byzantine member' : 'network adversary'})`, () => {
      const c = pinned(
        byzantine,
        { seed: 1, nodes: 3, preVote: false, checkQuorum: false },
        [0, 1, 2, 3].map((batch) => ({ afterMs: batch === 0 ? 108 : 0, fault: { kind: 'forge', batch } })),
        [
          [{ kind: 'mutate', pick: 0, mutations: [{ op: 'set', field: 'entries', value: { abs: [false] } }, { op: 'entries', how: 'shift' }], sender: 'orig', self: 'orig' }, hup(0, 0)],
          [{ kind: 'garbage', value: {}, sender: 0, self: 0 }],
          [{ kind: 'mutate', pick: 0, mutations: [{ op: 'entries', how: 'shift' }], sender: 0, self: 0 }],
          [{ kind: 'craft', shaped: true, type: '', sender: 0, self: 0, forgeFrom: undefined, forgeTo: undefined, term: { abs: 0 }, fields: {} }],
        ],
      );
      const { adversary, result } = run(c, byzantine);
      expect(adversary.refusals.get('malformed')).toBeGreaterThanOrEqual(1);
      expect([...adversary.refusals.values()].reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(3);
      if (!byzantine) expect(result.recovered).toBe(true);
    });
  }
});
