// Tests for the key-value linearizability checker used by the simulation tests.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { checkKvLinearizable, type KvOperation } from './linearizability.js';
import { mulberry32 } from '../support/mulberry32.js';

function put(key: string, value: string, call: number, ret?: number, clientId = 0): KvOperation {
  return ret === undefined
    ? { clientId, kind: 'put', key, value, call }
    : { clientId, kind: 'put', key, value, call, ret };
}

function get(key: string, output: string | undefined, call: number, ret?: number, clientId = 0): KvOperation {
  const op: KvOperation = { clientId, kind: 'get', key, call };
  if (output !== undefined) op.output = output;
  if (ret !== undefined) op.ret = ret;
  return op;
}

function ok(history: KvOperation[]): boolean {
  const r = checkKvLinearizable(history);
  expect(r.unknown ?? false).toBe(false);
  return r.ok;
}

/**
 * Independent brute-force oracle: for every key, every subset of pending puts that took effect,
 * try every ordering consistent with real time (A before B iff A.ret < B.call) against a sequential register.
 */
function bruteForceLinearizable(history: KvOperation[]): boolean {
  const keys = [...new Set(history.map((o) => o.key))];
  return keys.every((key) => {
    const ops = history.filter((o) => o.key === key);
    const completed = ops.filter((o) => o.ret !== undefined);
    const pendingPuts = ops.filter((o) => o.ret === undefined && o.kind === 'put');
    for (let mask = 0; mask < 1 << pendingPuts.length; mask++) {
      const chosen = [...completed, ...pendingPuts.filter((_, i) => mask & (1 << i))];
      if (search(chosen, undefined)) return true;
    }
    return false;
  });

  function search(remaining: KvOperation[], state: string | undefined): boolean {
    if (remaining.length === 0) return true;
    for (const op of remaining) {
      const mustWait = remaining.some((o) => o !== op && o.ret !== undefined && o.ret < op.call);
      if (mustWait) continue;
      if (op.kind === 'get' && op.output !== state) continue;
      const next = op.kind === 'put' ? op.value : state;
      if (search(remaining.filter((o) => o !== op), next)) return true;
    }
    return false;
  }
}

/** Spec for one generated op; its timing is derived from a linearization point. */
interface OpSpec {
  clientId: number;
  kind: 'put' | 'get';
  key: string;
  value: string;
  before: number;
  after: number;
  /** done: completed; pending: took effect but no answer; lost: no answer and never took effect. */
  fate: 'done' | 'pending' | 'lost';
}

/**
 * Runs the specs, in order, against a real sequential map. Op i linearizes at time `spacing * i`; its
 * interval is widened by `before`/`after`, clipped so each client's ops never overlap.
 */
function buildHistory(specs: OpSpec[], spacing = 2): KvOperation[] {
  const lin = specs.map((_, i) => spacing * i);
  const byClient = new Map<number, number[]>();
  specs.forEach((s, i) => byClient.set(s.clientId, [...(byClient.get(s.clientId) ?? []), i]));
  const prevLin = new Array<number>(specs.length).fill(Number.NEGATIVE_INFINITY);
  const nextLin = new Array<number>(specs.length).fill(Number.POSITIVE_INFINITY);
  for (const idxs of byClient.values()) {
    for (let j = 0; j < idxs.length; j++) {
      if (j > 0) prevLin[idxs[j]!] = lin[idxs[j - 1]!]!;
      if (j + 1 < idxs.length) nextLin[idxs[j]!] = lin[idxs[j + 1]!]!;
    }
  }
  const map = new Map<string, string>();
  return specs.map((s, i) => {
    const p = lin[i]!;
    // Previous op of the client returns at most at prev + ceil(gap/2) - 1 < this call.
    const call = p - Math.min(s.before, Math.floor((p - prevLin[i]!) / 2));
    const ret = p + Math.min(s.after, Math.ceil((nextLin[i]! - p) / 2) - 1);
    const op: KvOperation = { clientId: s.clientId, kind: s.kind, key: s.key, call };
    if (s.kind === 'put') {
      op.value = s.value;
      if (s.fate !== 'lost') map.set(s.key, s.value);
    } else if (s.fate === 'done') {
      const v = map.get(s.key);
      if (v !== undefined) op.output = v;
    } else {
      op.output = 'garbage-from-pending-get';
    }
    if (s.fate === 'done') op.ret = ret;
    return op;
  });
}

const opSpecArb = (keys: string[], values: string[], fates: OpSpec['fate'][]): fc.Arbitrary<OpSpec> =>
  fc.record({
    clientId: fc.integer({ min: 0, max: 4 }),
    kind: fc.constantFrom<'put' | 'get'>('put', 'get'),
    key: fc.constantFrom(...keys),
    value: fc.constantFrom(...values),
    before: fc.nat(30),
    after: fc.nat(30),
    fate: fc.constantFrom(...fates),
  });

const validHistoryArb = fc
  .array(opSpecArb(['k1', 'k2', 'k3'], ['a', 'b', 'c', 'd'], ['done', 'done', 'done', 'done', 'pending', 'lost']), {
    minLength: 1,
    maxLength: 40,
  })
  .map((specs) => buildHistory(specs));


function perfSpecs(seed: number, n: number, clients: number, pendingRate: number): OpSpec[] {
  const r = mulberry32(seed);
  const specs: OpSpec[] = [];
  for (let i = 0; i < n; i++) {
    specs.push({
      clientId: i % clients,
      kind: r() < 0.5 ? 'put' : 'get',
      key: 'hot',
      value: ['a', 'b', 'c'][Math.floor(r() * 3)]!,
      before: Math.floor(r() * 20),
      after: Math.floor(r() * 20),
      fate: r() < pendingRate ? 'pending' : 'done',
    });
  }
  return specs;
}

describe('checkKvLinearizable: sequential histories', () => {
  it('accepts an empty history', () => {
    expect(checkKvLinearizable([])).toEqual({ ok: true });
  });

  it('accepts a valid sequential history', () => {
    expect(
      ok([get('k', undefined, 0, 1), put('k', 'a', 2, 3), get('k', 'a', 4, 5), put('k', 'b', 6, 7), get('k', 'b', 8, 9)]),
    ).toBe(true);
  });

  it('rejects a sequential read of an overwritten value', () => {
    expect(ok([put('k', 'a', 0, 1), put('k', 'b', 2, 3), get('k', 'a', 4, 5)])).toBe(false);
  });

  it('rejects a sequential read of "absent" after a put', () => {
    expect(ok([put('k', 'a', 0, 1), get('k', undefined, 2, 3)])).toBe(false);
  });

  it('rejects a read that precedes the only put but observes its value', () => {
    expect(ok([get('k', 'a', 0, 1), put('k', 'a', 2, 3)])).toBe(false);
  });
});

describe('checkKvLinearizable: concurrency', () => {
  it('a get concurrent with a put may see the old or the new value', () => {
    const base = [put('k', 'old', 0, 1, 0), put('k', 'new', 2, 10, 0)];
    expect(ok([...base, get('k', 'old', 3, 9, 1)])).toBe(true);
    expect(ok([...base, get('k', 'new', 3, 9, 1)])).toBe(true);
    expect(ok([...base, get('k', undefined, 3, 9, 1)])).toBe(false);
  });

  it('rejects a stale read after a completed put', () => {
    expect(ok([put('k', 'a', 0, 1, 0), put('k', 'b', 2, 3, 0), get('k', 'a', 4, 5, 1)])).toBe(false);
  });

  it('rejects a get reading a value never written', () => {
    expect(ok([put('k', 'a', 0, 10, 0), get('k', 'zzz', 1, 9, 1)])).toBe(false);
  });

  it('rejects two reads that see the concurrent writes in contradictory orders', () => {
    // Writes a and b overlap; after both finish, readers agree on nothing consistent.
    const h = [
      put('k', 'a', 0, 10, 0),
      put('k', 'b', 0, 10, 1),
      get('k', 'b', 11, 12, 2),
      get('k', 'a', 13, 14, 2),
    ];
    expect(ok(h)).toBe(false);
  });

  it('needs backtracking to find the order of two concurrent writes', () => {
    // Must linearize put a, get(a), put b, get(b); trying put b first fails.
    const h = [
      put('k', 'b', 0, 10, 0),
      put('k', 'a', 0, 10, 1),
      get('k', 'a', 1, 11, 2),
      get('k', 'b', 12, 13, 2),
    ];
    expect(ok(h)).toBe(true);
    expect(ok([...h, get('k', 'a', 14, 15, 3)])).toBe(false);
  });

  it('treats an op returning at t and an op called at t as concurrent', () => {
    expect(ok([put('k', 'a', 0, 5, 0), get('k', undefined, 5, 6, 1)])).toBe(true);
    expect(ok([put('k', 'a', 0, 5, 0), get('k', undefined, 6, 7, 1)])).toBe(false);
    // Zero-length intervals at the same instant are concurrent too.
    expect(ok([put('k', 'a', 5, 5, 0), get('k', undefined, 5, 5, 1)])).toBe(true);
  });
});

describe('checkKvLinearizable: pending operations', () => {
  it('a pending put may take effect (a later get sees it)', () => {
    expect(ok([put('k', 'a', 0, undefined, 0), get('k', 'a', 5, 6, 1)])).toBe(true);
  });

  it('a pending put may never take effect (a later get does not see it)', () => {
    expect(ok([put('k', 'a', 0, undefined, 0), get('k', undefined, 5, 6, 1), get('k', undefined, 100, 101, 1)])).toBe(
      true,
    );
  });

  it('a pending put may take effect long after its call', () => {
    const h = [put('k', 'a', 0, undefined, 0), get('k', undefined, 50, 51, 1), get('k', 'a', 100, 101, 1)];
    expect(ok(h)).toBe(true);
  });

  it('a pending put cannot take effect before its call time', () => {
    expect(ok([get('k', 'a', 0, 4, 1), put('k', 'a', 5, undefined, 0)])).toBe(false);
  });

  it('once a pending put is observed, a later read cannot un-see it', () => {
    const h = [put('k', 'a', 0, undefined, 0), get('k', 'a', 5, 6, 1), get('k', undefined, 7, 8, 1)];
    expect(ok(h)).toBe(false);
  });

  it('a pending put can be overwritten by a later completed put', () => {
    const h = [put('k', 'a', 0, undefined, 0), get('k', 'a', 2, 3, 1), put('k', 'b', 4, 5, 1), get('k', 'b', 6, 7, 1)];
    expect(ok(h)).toBe(true);
  });

  it('ignores pending gets whatever their output', () => {
    expect(ok([put('k', 'a', 0, 1), get('k', 'never-written', 2)])).toBe(true);
  });
});

describe('checkKvLinearizable: keys and reporting', () => {
  it('checks keys independently and reports the failing key with only its sub-history', () => {
    const h = [
      put('x', '1', 0, 1, 0),
      put('y', '1', 0, 1, 1),
      get('x', '1', 2, 3, 0),
      put('y', '2', 4, 5, 1),
      get('y', '1', 6, 7, 2), // stale
      get('z', undefined, 0, 10, 3),
    ];
    const r = checkKvLinearizable(h);
    expect(r.ok).toBe(false);
    expect(r.unknown).toBeUndefined();
    expect(r.key).toBe('y');
    expect(r.history).toEqual(h.filter((o) => o.key === 'y'));
  });

  it('a value written to one key is not visible on another', () => {
    expect(ok([put('x', 'v', 0, 1), get('y', 'v', 2, 3)])).toBe(false);
  });

  it('returns unknown (ok: true) when the step budget is exhausted', () => {
    const h = [put('k', 'a', 0, 10, 0), put('k', 'b', 0, 10, 1), get('k', 'b', 11, 12, 2), get('k', 'a', 13, 14, 2)];
    const r = checkKvLinearizable(h, { maxStepsPerKey: 2 });
    expect(r).toMatchObject({ ok: true, unknown: true, key: 'k' });
  });

  it('a definite failure on one key wins over an undecided key', () => {
    const undecided = [put('u', 'a', 0, 10, 0), put('u', 'b', 0, 10, 1), get('u', 'b', 11, 12, 2), get('u', 'a', 13, 14, 2)];
    // Refuted without search (the read value was never written), so within any budget.
    const failing = [put('f', 'a', 0, 1), get('f', 'ghost', 2, 3)];
    expect(checkKvLinearizable(undecided, { maxStepsPerKey: 3 }).unknown).toBe(true);
    const r = checkKvLinearizable([...undecided, ...failing], { maxStepsPerKey: 3 });
    expect(r.ok).toBe(false);
    expect(r.key).toBe('f');
  });

  it('rejects malformed operations', () => {
    expect(() => checkKvLinearizable([put('k', 'a', 5, 4)])).toThrow(RangeError);
    expect(() => checkKvLinearizable([{ clientId: 0, kind: 'put', key: 'k', call: 0, ret: 1 }])).toThrow(RangeError);
  });
});

describe('checkKvLinearizable: properties', () => {
  it('accepts every history generated from a real sequential map', () => {
    fc.assert(
      fc.property(validHistoryArb, (h) => {
        const r = checkKvLinearizable(h);
        expect(r).toEqual({ ok: true });
      }),
      { numRuns: 500 },
    );
  });

  it('rejects a generated history once one completed get observes a never-written value', () => {
    fc.assert(
      fc.property(validHistoryArb, fc.nat(), (h, pick) => {
        const gets = h.map((o, i) => [o, i] as const).filter(([o]) => o.kind === 'get' && o.ret !== undefined);
        fc.pre(gets.length > 0);
        const [target, idx] = gets[pick % gets.length]!;
        const mutated = h.map((o, i) => (i === idx ? { ...o, output: 'never-written' } : o));
        const r = checkKvLinearizable(mutated);
        expect(r.ok).toBe(false);
        expect(r.unknown).toBeUndefined();
        expect(r.key).toBe(target.key);
      }),
      { numRuns: 300 },
    );
  });

  it('rejects a sequential history once one get observes any other (even previously written) value', () => {
    const seqArb = fc
      .array(opSpecArb(['k'], ['a', 'b', 'c'], ['done']), { minLength: 1, maxLength: 30 })
      .map((specs) => buildHistory(specs.map((s) => ({ ...s, clientId: 0 }))));
    fc.assert(
      fc.property(seqArb, fc.nat(), fc.constantFrom(undefined, 'a', 'b', 'c'), (h, pick, wrong) => {
        const gets = h.map((o, i) => [o, i] as const).filter(([o]) => o.kind === 'get');
        fc.pre(gets.length > 0);
        const [target, idx] = gets[pick % gets.length]!;
        fc.pre(target.output !== wrong);
        const mutated = h.map((o, i) => {
          if (i !== idx) return o;
          const { output: _dropped, ...rest } = o;
          return wrong === undefined ? rest : { ...rest, output: wrong };
        });
        expect(checkKvLinearizable(mutated).ok).toBe(false);
      }),
      { numRuns: 300 },
    );
  });

  it('agrees with a brute-force oracle on small arbitrary histories', () => {
    let accepted = 0;
    let rejected = 0;
    const opArb: fc.Arbitrary<KvOperation> = fc
      .record({
        clientId: fc.integer({ min: 0, max: 3 }),
        kind: fc.constantFrom<'put' | 'get'>('put', 'get'),
        key: fc.constantFrom('a', 'b'),
        value: fc.constantFrom('x', 'y', 'z'),
        output: fc.constantFrom(undefined, 'x', 'y', 'z'),
        call: fc.nat(12),
        duration: fc.nat(6),
        pending: fc.integer({ min: 0, max: 4 }).map((n) => n === 0),
      })
      .map((r) => {
        const op: KvOperation = { clientId: r.clientId, kind: r.kind, key: r.key, call: r.call };
        if (r.kind === 'put') op.value = r.value;
        else if (r.output !== undefined) op.output = r.output;
        if (!r.pending) op.ret = r.call + r.duration;
        return op;
      });
    fc.assert(
      fc.property(fc.array(opArb, { minLength: 1, maxLength: 7 }), (h) => {
        const expected = bruteForceLinearizable(h);
        const r = checkKvLinearizable(h);
        expect(r.unknown).toBeUndefined();
        expect(r.ok).toBe(expected);
        if (expected) accepted++;
        else rejected++;
      }),
      { numRuns: 1000 },
    );
    // Make sure the comparison exercised both verdicts.
    expect(accepted).toBeGreaterThan(50);
    expect(rejected).toBeGreaterThan(50);
  });
});

describe('checkKvLinearizable: performance', () => {
  it('decides a 200-op single-key history with 5 concurrent clients', () => {
    const h = buildHistory(perfSpecs(42, 200, 5, 0.05));
    const concurrent = h.filter((a) => h.some((b) => a !== b && a.call <= (b.ret ?? Infinity) && b.call <= (a.ret ?? Infinity)));
    expect(concurrent.length).toBeGreaterThan(100); // really concurrent, not accidentally sequential
    const r = checkKvLinearizable(h);
    expect(r.unknown).toBeUndefined();
    expect(r.ok).toBe(true);
  });

  it('decides a 200-op single-key violation that requires exhausting the search', () => {
    // No pending puts here: one could otherwise linearize after the final write and explain the read.
    const h = buildHistory(perfSpecs(7, 200, 5, 0));
    const end = Math.max(...h.map((o) => o.ret ?? o.call)) + 1;
    // A final sequential write then a read of a different, previously written value: only refutable by
    // trying every linearization of the 200 earlier ops.
    const written = h.find((o) => o.kind === 'put')!.value!;
    const other = written === 'zz' ? 'yy' : 'zz';
    const bad = [...h, put('hot', other, end, end + 1, 0), get('hot', written, end + 2, end + 3, 1)];
    const r = checkKvLinearizable(bad);
    expect(r.unknown).toBeUndefined();
    expect(r.ok).toBe(false);
    expect(r.key).toBe('hot');
  });
});

describe('checkKvLinearizable: compare-and-set', () => {
  const cas = (key: string, expected: string | undefined, value: string, call: number, ret?: number, casOk?: boolean): KvOperation => ({
    clientId: 9,
    kind: 'cas',
    key,
    value,
    call,
    ...(expected !== undefined ? { expected } : {}),
    ...(ret !== undefined ? { ret, casOk: casOk ?? false } : {}),
  });

  it('accepts a cas that wrote over what it expected, and one that failed on something else', () => {
    expect(ok([put('k', 'a', 0, 1), cas('k', 'a', 'b', 2, 3, true), get('k', 'b', 4, 5), cas('k', 'a', 'c', 6, 7, false), get('k', 'b', 8, 9)])).toBe(true);
  });

  it('rejects a cas that succeeded although the register held something else', () => {
    expect(ok([put('k', 'a', 0, 1), put('k', 'x', 2, 3), cas('k', 'a', 'b', 4, 5, true)])).toBe(false);
  });

  it('rejects a cas that failed although the register held what it expected', () => {
    expect(ok([put('k', 'a', 0, 1), cas('k', 'a', 'b', 2, 3, false)])).toBe(false);
  });

  it('a cas on "absent" succeeds only on an absent key', () => {
    expect(ok([cas('k', undefined, 'a', 0, 1, true), get('k', 'a', 2, 3)])).toBe(true);
    expect(ok([put('k', 'z', 0, 1), cas('k', undefined, 'a', 2, 3, true)])).toBe(false);
  });

  it('a pending cas may take effect only where its condition holds', () => {
    expect(ok([put('k', 'a', 0, 1), cas('k', 'a', 'b', 2), get('k', 'b', 10, 11)])).toBe(true);
    expect(ok([put('k', 'x', 0, 1), cas('k', 'a', 'b', 2), get('k', 'b', 10, 11)])).toBe(false);
  });
});

describe('checkKvLinearizable: delete', () => {
  const del = (key: string, call: number, ret?: number): KvOperation => ({ clientId: 8, kind: 'delete', key, call, ...(ret !== undefined ? { ret } : {}) });

  it('a delete makes the key absent', () => {
    expect(ok([put('k', 'a', 0, 1), del('k', 2, 3), get('k', undefined, 4, 5)])).toBe(true);
    expect(ok([put('k', 'a', 0, 1), del('k', 2, 3), get('k', 'a', 4, 5)])).toBe(false);
  });

  it('a pending delete may or may not have happened', () => {
    expect(ok([put('k', 'a', 0, 1), del('k', 2), get('k', 'a', 4, 5), get('k', undefined, 6, 7)])).toBe(true);
    expect(ok([put('k', 'a', 0, 1), del('k', 2), get('k', undefined, 4, 5), get('k', 'a', 6, 7)])).toBe(false);
  });
});
