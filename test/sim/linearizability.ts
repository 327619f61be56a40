// Linearizability checker (Wing–Gong search with Lowe's memoization) for simulated key-value register histories.

/** One operation observed by a client: invoked at `call`, returned at `ret` (virtual time). */
export interface KvOperation {
  clientId: number;
  kind: 'put' | 'get' | 'cas' | 'delete';
  key: string;
  /** For put and cas: the value written. */
  value?: string;
  /** For cas: the value the register must hold for the write to happen (undefined = key absent). */
  expected?: string;
  /** For a completed cas: whether it wrote (the register held `expected`) or not (it held something else). */
  casOk?: boolean;
  /** For get: the value observed (undefined = key absent). Only meaningful when `ret` is defined. */
  output?: string;
  call: number;
  /** Undefined when the client never got an answer (timeout/crash): the op may or may not have taken effect, at any time after `call`. */
  ret?: number;
}

/** Outcome of {@link checkKvLinearizable}. */
export interface LinearizabilityResult {
  /** false only when some key's sub-history is definitely not linearizable. */
  ok: boolean;
  /** When not ok: the key whose sub-history failed, and that sub-history, for printing. (When `unknown`: the first key whose search gave up.) */
  key?: string;
  /** The failing (or undecided) key's operations, in input order. */
  history?: KvOperation[];
  /** true when the search gave up (budget exhausted) instead of deciding. */
  unknown?: boolean;
}

/** Default search budget (loop iterations) per key; see {@link checkKvLinearizable}. */
export const DEFAULT_MAX_STEPS_PER_KEY = 2_000_000;

/**
 * Checks that a history of puts/gets over a map of independent registers (all initially absent)
 * is linearizable. Each key is checked on its own (linearizability is compositional).
 *
 * - A completed get must observe the register value at its linearization point (undefined = absent).
 * - A delete makes the register absent (like a put of "absent").
 * - A cas (compare-and-set, e.g. a put with an expected version whose value is known) writes
 *   `value` when the register holds `expected`; a completed cas says whether it did (`casOk`).
 * - An operation with `ret === undefined` is pending: a pending get is ignored; a pending put (or a
 *   pending cas whose condition holds) may take effect at any point after its `call`, or never.
 * - Real-time order: op A precedes op B only when `A.ret < B.call` strictly; equal times are concurrent.
 * - `clientId` is not used by the check.
 *
 * The search is bounded by `opts.maxStepsPerKey` (default {@link DEFAULT_MAX_STEPS_PER_KEY}) per key.
 * If a key exhausts its budget, that key counts as undecided: the result is `{ ok: true, unknown: true }`
 * (unless another key definitely fails, which takes precedence) — callers that need a verdict must
 * check `unknown`.
 *
 * @throws RangeError on malformed input (non-finite `call`, `ret < call`, NaN `ret`, put without `value`).
 */
export function checkKvLinearizable(
  history: KvOperation[],
  opts?: { maxStepsPerKey?: number },
): LinearizabilityResult {
  const maxSteps = opts?.maxStepsPerKey ?? DEFAULT_MAX_STEPS_PER_KEY;
  const byKey = new Map<string, KvOperation[]>();
  for (const op of history) {
    validate(op);
    let list = byKey.get(op.key);
    if (list === undefined) {
      list = [];
      byKey.set(op.key, list);
    }
    list.push(op);
  }

  let firstUnknown: string | undefined;
  for (const [key, ops] of byKey) {
    const verdict = checkRegister(ops, maxSteps);
    if (verdict === 'fail') return { ok: false, key, history: ops };
    if (verdict === 'unknown' && firstUnknown === undefined) firstUnknown = key;
  }
  if (firstUnknown !== undefined) {
    return { ok: true, unknown: true, key: firstUnknown, history: byKey.get(firstUnknown) };
  }
  return { ok: true };
}

function validate(op: KvOperation): void {
  if (!Number.isFinite(op.call)) throw new RangeError(`operation call time must be finite: ${JSON.stringify(op)}`);
  if (op.ret !== undefined && (Number.isNaN(op.ret) || op.ret < op.call)) {
    throw new RangeError(`operation returns before it is called: ${JSON.stringify(op)}`);
  }
  if ((op.kind === 'put' || op.kind === 'cas') && op.value === undefined) {
    throw new RangeError(`${op.kind} without a value: ${JSON.stringify(op)}`);
  }
  if (op.kind === 'cas' && op.ret !== undefined && op.casOk === undefined) {
    throw new RangeError(`completed cas without an outcome: ${JSON.stringify(op)}`);
  }
}

/** A call or return event in the doubly linked event list. */
interface EventNode {
  /** Index into the register's op array; -1 for the list head. */
  op: number;
  isCall: boolean;
  /** For a call event: its matching return event. */
  match: EventNode | null;
  prev: EventNode | null;
  next: EventNode | null;
}

type Verdict = 'ok' | 'fail' | 'unknown';

/** Wing–Gong/Lowe search over the sub-history of one register. */
function checkRegister(all: KvOperation[], maxSteps: number): Verdict {
  // Pending gets have no observable effect: drop them. Pending puts get an infinite return time.
  const ops = all.filter((op) => op.kind !== 'get' || op.ret !== undefined);
  const completedCount = ops.filter((op) => op.ret !== undefined).length;
  if (completedCount === 0) return 'ok';

  // Fast rejection: a completed get observing a value no put on this key ever wrote.
  const written = new Set<string | undefined>([undefined]);
  for (const op of ops) if (op.kind === 'put' || op.kind === 'cas') written.add(op.value);
  for (const op of ops) if (op.kind === 'get' && op.ret !== undefined && !written.has(op.output)) return 'fail';

  // Build events sorted by time; on equal times calls come before returns, so an op returning at t
  // and an op called at t are concurrent.
  type Ev = { op: number; isCall: boolean; time: number };
  const evs: Ev[] = [];
  ops.forEach((op, i) => {
    evs.push({ op: i, isCall: true, time: op.call });
    evs.push({ op: i, isCall: false, time: op.ret ?? Number.POSITIVE_INFINITY });
  });
  evs.sort((a, b) => a.time - b.time || Number(b.isCall) - Number(a.isCall) || a.op - b.op);

  const head: EventNode = { op: -1, isCall: false, match: null, prev: null, next: null };
  const callNodes: EventNode[] = new Array(ops.length);
  const retNodes: EventNode[] = new Array(ops.length);
  let tail = head;
  for (const ev of evs) {
    const node: EventNode = { op: ev.op, isCall: ev.isCall, match: null, prev: tail, next: null };
    tail.next = node;
    tail = node;
    if (ev.isCall) callNodes[ev.op] = node;
    else retNodes[ev.op] = node;
  }
  for (let i = 0; i < ops.length; i++) callNodes[i]!.match = retNodes[i]!;

  // Register states are interned as small integers (0 = absent).
  const stateIds = new Map<string | undefined, number>();
  for (const v of written) stateIds.set(v, stateIds.size);
  const effect = ops.map((op) => stateIds.get(op.kind === 'get' ? op.output : op.kind === 'delete' ? undefined : op.value)!);
  // A cas expecting a value nothing wrote can never see it (-1 matches no state).
  const expected = ops.map((op) => (op.kind === 'cas' ? (stateIds.get(op.expected) ?? -1) : -1));

  // Set of linearized ops as a bitset; the cache key is its 16-bit words as a fixed-length string
  // plus the state id. (Exact keys: no hashing shortcuts that could wrongly prune the search.)
  const words = new Uint16Array(Math.ceil(ops.length / 16));
  // Lowe's cache: (set of linearized ops, register state) pairs already explored.
  const cache = new Set<string>();
  const stack: { node: EventNode; state: number }[] = [];

  let state = 0;
  let linearizedCompleted = 0;
  let entry: EventNode | null = head.next;
  let steps = 0;

  for (;;) {
    // Remaining ops are all pending puts: they can take effect after everything else (or never).
    if (linearizedCompleted === completedCount) return 'ok';
    if (++steps > maxSteps) return 'unknown';
    // A completed op is still in the list, so its return event is reached before running off the end.
    const node: EventNode = entry!;
    const i = node.op;
    const op = ops[i]!;
    if (node.isCall) {
      let allowed: boolean;
      let nextState: number;
      if (op.kind === 'put' || op.kind === 'delete') {
        allowed = true;
        nextState = effect[i]!;
      } else if (op.kind === 'get') {
        allowed = effect[i] === state;
        nextState = state;
      } else if (op.ret === undefined || op.casOk === true) {
        allowed = expected[i] === state;
        nextState = effect[i]!;
      } else {
        allowed = expected[i] !== state;
        nextState = state;
      }
      if (allowed) {
        words[i >> 4]! ^= 1 << (i & 15);
        const key = String.fromCharCode(...words) + nextState;
        if (!cache.has(key)) {
          cache.add(key);
          stack.push({ node, state });
          state = nextState;
          if (op.ret !== undefined) linearizedCompleted++;
          lift(node);
          entry = head.next;
          continue;
        }
        words[i >> 4]! ^= 1 << (i & 15);
      }
      entry = node.next;
    } else {
      // Reached a return whose op is not linearized yet: every extension of the current prefix failed.
      const top = stack.pop();
      if (top === undefined) return 'fail';
      const j = top.node.op;
      state = top.state;
      words[j >> 4]! ^= 1 << (j & 15);
      if (ops[j]!.ret !== undefined) linearizedCompleted--;
      unlift(top.node);
      entry = top.node.next;
    }
  }
}

/** Removes a call event and its return event from the list. */
function lift(call: EventNode): void {
  call.prev!.next = call.next;
  call.next!.prev = call.prev;
  const ret = call.match!;
  ret.prev!.next = ret.next;
  if (ret.next !== null) ret.next.prev = ret.prev;
}

/** Undoes {@link lift} (must be applied in reverse order of lifting). */
function unlift(call: EventNode): void {
  const ret = call.match!;
  ret.prev!.next = ret;
  if (ret.next !== null) ret.next.prev = ret;
  call.prev!.next = call;
  call.next!.prev = call;
}
