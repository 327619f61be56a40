/** Tests of IpcBatcher: messages of one event-loop turn go out in one send, a lone message alone, and a message that cannot be sent fails alone. */
import { describe, expect, it } from 'vitest';
import { IpcBatcher, unbatch } from '../../../src/extensions/sandbox/ipc-batch.js';

const turn = () => new Promise((r) => setImmediate(r));

describe('IpcBatcher', () => {
  it('sends the messages queued in one turn as one array, and a lone message alone', async () => {
    const sent: unknown[] = [];
    const b = new IpcBatcher<{ n: number }>((w) => sent.push(w));
    b.push({ n: 1 });
    b.push({ n: 2 });
    b.push({ n: 3 });
    expect(sent).toEqual([]);
    await turn();
    expect(sent).toEqual([[{ n: 1 }, { n: 2 }, { n: 3 }]]);
    b.push({ n: 4 });
    await turn();
    expect(sent[1]).toEqual({ n: 4 });
    expect(unbatch(sent[0])).toHaveLength(3);
    expect(unbatch(sent[1])).toEqual([{ n: 4 }]);
  });

  it('when a batch cannot be sent, resends one by one and fails only the bad message', async () => {
    const sent: unknown[] = [];
    const b = new IpcBatcher<{ n: number; bad?: boolean }>((w) => {
      if (unbatch<{ bad?: boolean }>(w).some((m) => m.bad)) throw new Error('could not be cloned');
      sent.push(w);
    });
    const failed: unknown[] = [];
    b.push({ n: 1 }, (e) => failed.push(['1', e]));
    b.push({ n: 2, bad: true }, (e) => failed.push(['2', (e as Error).message]));
    b.push({ n: 3 });
    await turn();
    expect(sent).toEqual([{ n: 1 }, { n: 3 }]);
    expect(failed).toEqual([['2', 'could not be cloned']]);
  });
});
