import { describe, expect, it } from 'vitest';
import { ScenarioNetwork } from '../sim/scenario.js';

describe('smoke', () => {
  it('elects and replicates', () => {
    const net = new ScenarioNetwork([1, 2, 3]);
    net.stabilize(); // apply bootstrap entries
    net.campaign(1);
    expect(net.leaders()).toEqual([1]);
    net.propose(1, 'a', 'x');
    for (const id of [1, 2, 3]) expect(net.value(id, 'a')).toBe('x');
    net.propose(2, 'b', 'y');
    for (const id of [1, 2, 3]) expect(net.value(id, 'b')).toBe('y');
  });
});
