// Covers src/raft/progress.ts: the Inflights window (examples + fast-check model test) and Progress state transitions, acks, rejections and pausing.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Inflights, Progress, ProgressState } from '../../src/raft/progress.js';

describe('Inflights', () => {
  it('fills up to its capacity and refuses more', () => {
    const inf = new Inflights(3);
    expect(inf.capacity).toBe(3);
    expect(inf.full).toBe(false);
    inf.add(1);
    inf.add(2);
    expect(inf.full).toBe(false);
    inf.add(3);
    expect(inf.count).toBe(3);
    expect(inf.full).toBe(true);
    expect(() => inf.add(4)).toThrow(/full/);
    expect(inf.count).toBe(3);
  });

  it('freeLE frees every message up to and including the index', () => {
    const inf = new Inflights(10);
    for (const i of [2, 4, 6, 8, 10]) inf.add(i);
    inf.freeLE(1);
    expect(inf.count).toBe(5);
    inf.freeLE(4);
    expect(inf.count).toBe(3);
    inf.freeLE(5);
    expect(inf.count).toBe(3);
    inf.freeLE(6);
    expect(inf.count).toBe(2);
    inf.freeLE(100);
    expect(inf.count).toBe(0);
    inf.freeLE(200); // nothing left: no-op
    expect(inf.count).toBe(0);
  });

  it('freeLE makes room in a full window', () => {
    const inf = new Inflights(2);
    inf.add(5);
    inf.add(9);
    expect(inf.full).toBe(true);
    inf.freeLE(5);
    expect(inf.full).toBe(false);
    inf.add(12);
    expect(inf.full).toBe(true);
  });

  it('freeFirstOne frees exactly the oldest message', () => {
    const inf = new Inflights(3);
    inf.add(10);
    inf.add(20);
    inf.add(30);
    inf.freeFirstOne();
    expect(inf.count).toBe(2);
    expect(inf.full).toBe(false);
    // The oldest (10) is gone: freeing <= 10 now frees nothing, <= 20 frees one.
    inf.freeLE(10);
    expect(inf.count).toBe(2);
    inf.freeLE(20);
    expect(inf.count).toBe(1);
    inf.freeFirstOne();
    expect(inf.count).toBe(0);
    inf.freeFirstOne(); // empty: no-op
    expect(inf.count).toBe(0);
  });

  it('reset forgets everything', () => {
    const inf = new Inflights(2);
    inf.add(1);
    inf.add(2);
    inf.reset();
    expect(inf.count).toBe(0);
    expect(inf.full).toBe(false);
  });

  it('a zero-capacity window is always full', () => {
    const inf = new Inflights(0);
    expect(inf.full).toBe(true);
    expect(() => inf.add(1)).toThrow();
  });

  type Cmd =
    | { kind: 'add'; step: number }
    | { kind: 'freeLE'; delta: number }
    | { kind: 'freeFirstOne' }
    | { kind: 'reset' };

  const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('add' as const), step: fc.integer({ min: 1, max: 5 }) }) },
    { weight: 3, arbitrary: fc.record({ kind: fc.constant('freeLE' as const), delta: fc.integer({ min: -12, max: 3 }) }) },
    { weight: 1, arbitrary: fc.constant<Cmd>({ kind: 'freeFirstOne' }) },
    { weight: 1, arbitrary: fc.constant<Cmd>({ kind: 'reset' }) },
  );

  it('behaves like a simple array model', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 8 }), fc.array(cmdArb, { maxLength: 200 }), (capacity, cmds) => {
        const inf = new Inflights(capacity);
        let model: number[] = [];
        let last = 0; // appends are sent with increasing last indexes
        for (const c of cmds) {
          switch (c.kind) {
            case 'add': {
              const idx = last + c.step;
              if (model.length >= capacity) {
                expect(() => inf.add(idx)).toThrow();
              } else {
                inf.add(idx);
                model.push(idx);
                last = idx;
              }
              break;
            }
            case 'freeLE': {
              const to = last + c.delta;
              inf.freeLE(to);
              model = model.filter((i) => i > to);
              break;
            }
            case 'freeFirstOne':
              inf.freeFirstOne();
              model = model.slice(1);
              break;
            case 'reset':
              inf.reset();
              model = [];
              break;
          }
          expect(inf.count).toBe(model.length);
          expect(inf.full).toBe(model.length >= capacity);
        }
        // Drain one index at a time and check each freeLE frees exactly what the model says.
        for (const idx of [...model]) {
          const before = inf.count;
          inf.freeLE(idx);
          expect(inf.count).toBe(before - 1);
        }
        expect(inf.count).toBe(0);
      }),
      { numRuns: 300 },
    );
  });
});

describe('Progress', () => {
  const mk = (next = 1, maxInflight = 4, isLearner = false): Progress => new Progress(2, next, maxInflight, isLearner);

  it('starts in Probe with match 0 and the given next', () => {
    const p = mk(6, 4, true);
    expect(p.state).toBe(ProgressState.Probe);
    expect(p.match).toBe(0);
    expect(p.next).toBe(6);
    expect(p.isLearner).toBe(true);
    expect(p.inflights.capacity).toBe(4);
    expect(p.isPaused()).toBe(false);
  });

  it('probe -> replicate -> snapshot -> probe', () => {
    const p = mk(6);
    p.sentEntries(6, 1); // probe sent
    expect(p.probeSent).toBe(true);
    expect(p.maybeUpdate(5)).toBe(true);
    expect(p.probeSent).toBe(false);
    expect(p.match).toBe(5);
    expect(p.next).toBe(6);

    p.becomeReplicate();
    expect(p.state).toBe(ProgressState.Replicate);
    expect(p.next).toBe(6);
    p.sentEntries(8, 3);
    p.sentEntries(10, 2);
    expect(p.next).toBe(11);
    expect(p.inflights.count).toBe(2);

    p.becomeSnapshot(20);
    expect(p.state).toBe(ProgressState.Snapshot);
    expect(p.pendingSnapshot).toBe(20);
    expect(p.inflights.count).toBe(0);
    expect(p.snapshotOffset).toBe(0);
    expect(p.snapshotChunksInFlight).toBe(0);

    p.becomeProbe();
    expect(p.state).toBe(ProgressState.Probe);
    expect(p.pendingSnapshot).toBe(0);
    // After a snapshot, probing resumes after the snapshot index.
    expect(p.next).toBe(21);
    expect(p.probeSent).toBe(false);
  });

  it('becomeProbe from Snapshot uses match+1 when the peer is already past the snapshot', () => {
    const p = mk(1);
    p.becomeSnapshot(10);
    p.maybeUpdate(15);
    p.becomeProbe();
    expect(p.next).toBe(16);
  });

  it('becomeProbe from Replicate restarts at match+1 and clears inflights', () => {
    const p = mk(1);
    p.maybeUpdate(3);
    p.becomeReplicate();
    p.sentEntries(7, 4);
    expect(p.next).toBe(8);
    p.becomeProbe();
    expect(p.state).toBe(ProgressState.Probe);
    expect(p.next).toBe(4);
    expect(p.inflights.count).toBe(0);
  });

  it('becomeSnapshot clears snapshot transfer state from a previous snapshot', () => {
    const p = mk(1);
    p.becomeSnapshot(5);
    p.snapshotChunkSent(100, false);
    p.snapshotAcked(100);
    p.snapshotChunkSent(200, true);
    p.snapshotReadAt = 200;
    p.becomeSnapshot(9);
    expect(p.pendingSnapshot).toBe(9);
    expect(p.snapshotOffset).toBe(0);
    expect(p.snapshotNext).toBe(0);
    expect(p.snapshotChunksInFlight).toBe(0);
    expect(p.snapshotLastSent).toBe(false);
  });

  it('a window of snapshot chunks: acknowledgements free the chunks they cover, stale ones change nothing, a rewind forgets the window', () => {
    const p = mk(1);
    p.becomeSnapshot(5);
    for (const end of [10, 20, 30]) p.snapshotChunkSent(end, false);
    p.snapshotReadAt = 30;
    expect(p.snapshotChunksInFlight).toBe(4);
    expect(p.snapshotAcked(20)).toBe(true);
    expect(p.snapshotChunksOut).toEqual([30]);
    expect(p.snapshotAcked(10)).toBe(false); // stale
    expect(p.snapshotAcked(20)).toBe(false); // duplicate
    expect(p.snapshotChunksInFlight).toBe(2);
    p.rewindSnapshot(20);
    expect([p.snapshotOffset, p.snapshotNext, p.snapshotChunksInFlight, p.snapshotRewoundAt]).toEqual([20, 20, 0, 20]);
    // An acknowledgement past what was sent (the peer had it before the rewind) moves the transfer there.
    p.snapshotChunkSent(30, false);
    expect(p.snapshotAcked(50)).toBe(true);
    expect([p.snapshotOffset, p.snapshotNext, p.snapshotChunksInFlight]).toEqual([50, 50, 0]);
  });

  describe('maybeUpdate', () => {
    it('advances match and next, and reports stale acks', () => {
      const p = mk(1);
      expect(p.maybeUpdate(4)).toBe(true);
      expect(p.match).toBe(4);
      expect(p.next).toBe(5);
      expect(p.maybeUpdate(4)).toBe(false);
      expect(p.maybeUpdate(2)).toBe(false);
      expect(p.match).toBe(4);
      expect(p.next).toBe(5);
    });

    it('never moves next backwards', () => {
      const p = mk(1);
      p.maybeUpdate(2);
      p.becomeReplicate();
      p.sentEntries(10, 8);
      expect(p.next).toBe(11);
      expect(p.maybeUpdate(5)).toBe(true);
      expect(p.match).toBe(5);
      expect(p.next).toBe(11);
    });

    it('a stale ack does not clear probeSent', () => {
      const p = mk(1);
      p.maybeUpdate(3);
      p.sentEntries(4, 1);
      expect(p.probeSent).toBe(true);
      expect(p.maybeUpdate(2)).toBe(false);
      expect(p.probeSent).toBe(true);
    });

    it('keeps match <= next - 1 for any sequence of acks', () => {
      fc.assert(
        fc.property(fc.array(fc.integer({ min: 0, max: 100 }), { maxLength: 30 }), (acks) => {
          const p = mk(1);
          let maxSeen = 0;
          for (const a of acks) {
            const updated = p.maybeUpdate(a);
            expect(updated).toBe(a > maxSeen);
            maxSeen = Math.max(maxSeen, a);
            expect(p.match).toBe(maxSeen);
            expect(p.next).toBeGreaterThan(p.match);
          }
        }),
      );
    });
  });

  describe('maybeDecrTo', () => {
    it('Replicate: stale rejections (<= match) are ignored', () => {
      const p = mk(1);
      p.maybeUpdate(5);
      p.becomeReplicate();
      p.sentEntries(10, 5);
      expect(p.maybeDecrTo(5, 5)).toBe(false);
      expect(p.maybeDecrTo(3, 0)).toBe(false);
      expect(p.next).toBe(11);
      expect(p.match).toBe(5);
    });

    it('Replicate: a fresh rejection falls back to match+1 (hint ignored)', () => {
      const p = mk(1);
      p.maybeUpdate(5);
      p.becomeReplicate();
      p.sentEntries(10, 5);
      expect(p.maybeDecrTo(8, 7)).toBe(true);
      expect(p.next).toBe(6);
      expect(p.match).toBe(5);
    });

    it('Probe: rejections of something other than next-1 are stale', () => {
      const p = mk(10);
      expect(p.maybeDecrTo(5, 3)).toBe(false);
      expect(p.maybeDecrTo(10, 3)).toBe(false);
      expect(p.next).toBe(10);
    });

    it('Probe: honours the hint and resumes sending', () => {
      const p = mk(10);
      p.sentEntries(9, 0);
      expect(p.probeSent).toBe(true);
      expect(p.isPaused()).toBe(true);
      expect(p.maybeDecrTo(9, 4)).toBe(true);
      expect(p.next).toBe(5);
      expect(p.probeSent).toBe(false);
      expect(p.isPaused()).toBe(false);
    });

    it('Probe: a hint beyond the rejected index only steps back to the rejected index', () => {
      const p = mk(10);
      expect(p.maybeDecrTo(9, 50)).toBe(true);
      expect(p.next).toBe(9);
    });

    it('Probe: never goes below match+1', () => {
      const p = mk(1);
      p.maybeUpdate(6); // next = 7
      p.becomeProbe(); // next = 7
      p.next = 10;
      expect(p.maybeDecrTo(9, 2)).toBe(true);
      expect(p.next).toBe(7);
    });

    it('Probe: never goes below 1', () => {
      const p = mk(1);
      p.next = 2;
      expect(p.maybeDecrTo(1, 0)).toBe(true);
      expect(p.next).toBe(1);
    });

    it('property: next stays in [match+1, old next] and stale probes change nothing', () => {
      fc.assert(
        fc.property(
          fc.integer({ min: 0, max: 50 }),
          fc.integer({ min: 1, max: 50 }),
          fc.integer({ min: 0, max: 120 }),
          fc.integer({ min: 0, max: 120 }),
          fc.boolean(),
          (match, gap, rejected, hint, replicate) => {
            const p = mk(1);
            p.maybeUpdate(match);
            if (replicate) p.becomeReplicate();
            p.next = match + gap;
            const oldNext = p.next;
            const changed = p.maybeDecrTo(rejected, hint);
            if (replicate) {
              expect(changed).toBe(rejected > match);
              expect(p.next).toBe(changed ? match + 1 : oldNext);
            } else {
              expect(changed).toBe(rejected === oldNext - 1);
              if (changed) {
                expect(p.next).toBe(Math.max(Math.min(rejected, hint + 1), match + 1, 1));
              } else {
                expect(p.next).toBe(oldNext);
              }
            }
            expect(p.next).toBeGreaterThanOrEqual(match + 1);
            expect(p.next).toBeLessThanOrEqual(oldNext);
            expect(p.match).toBe(match);
          },
        ),
      );
    });
  });

  describe('isPaused', () => {
    it('Probe: paused only while a probe is outstanding', () => {
      const p = mk(1);
      expect(p.isPaused()).toBe(false);
      p.sentEntries(1, 1);
      expect(p.isPaused()).toBe(true);
      p.maybeUpdate(1);
      expect(p.isPaused()).toBe(false);
    });

    it('Replicate: paused only when the inflight window is full', () => {
      const p = mk(1, 2);
      p.becomeReplicate();
      expect(p.isPaused()).toBe(false);
      p.sentEntries(1, 1);
      expect(p.isPaused()).toBe(false);
      p.sentEntries(3, 2);
      expect(p.isPaused()).toBe(true);
      p.sentEntries(3, 0); // an empty append does not take a slot
      expect(p.inflights.count).toBe(2);
      p.inflights.freeLE(1);
      expect(p.isPaused()).toBe(false);
    });

    it('Snapshot: always paused', () => {
      const p = mk(1);
      p.becomeSnapshot(5);
      expect(p.isPaused()).toBe(true);
      p.maybeUpdate(5);
      expect(p.isPaused()).toBe(true);
      p.sentEntries(7, 2); // ignored in Snapshot state
      expect(p.inflights.count).toBe(0);
      expect(p.next).toBe(6);
    });
  });
});
