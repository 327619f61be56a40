/** A small seeded pseudo-random generator (SplitMix32-style) for deterministic election timeouts. */
import type { RandomSource } from './types.js';

/** A deterministic `RandomSource`: the same seed gives the same sequence on every machine. */
export class SeededRandom implements RandomSource {
  private state: number;

  /** Creates a generator from any 32-bit integer seed. */
  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** The next 32-bit unsigned value. */
  nextU32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    let z = this.state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  }

  nextInt(n: number): number {
    if (!Number.isInteger(n) || n <= 0 || n > 0x1_0000_0000) {
      throw new RangeError(`nextInt bound must be an integer in [1, 2^32], got ${n}`);
    }
    return this.nextU32() % n;
  }

  /** A float uniformly drawn from [0, 1). */
  nextFloat(): number {
    return this.nextU32() / 4294967296;
  }
}
