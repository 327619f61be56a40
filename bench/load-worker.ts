/** Entry point of one forked client process of the load generator: receives its spec over IPC, connects, runs on "go", and sends back its counters and histogram. */
import { prepareLoadPart, type LoadPart, type LoadPartSpec } from './load.js';

/** A message from the parent (bench/load.ts). */
export type ParentMessage =
  | { type: 'spec'; spec: LoadPartSpec }
  | { type: 'go'; warmupMs: number; durationMs: number };

if (process.send === undefined) {
  console.error('load-worker: must be started by bench/load.ts with an IPC channel');
  process.exit(2);
}

let part: LoadPart | undefined;

function reply(msg: object): Promise<void> {
  return new Promise((resolve) => process.send!(msg, undefined, {}, () => resolve()));
}

process.on('message', (msg: ParentMessage) => {
  void (async () => {
    try {
      if (msg.type === 'spec') {
        part = await prepareLoadPart(msg.spec);
        await reply({ type: 'ready' });
      } else if (msg.type === 'go') {
        if (!part) throw new Error('go before spec');
        const result = await part.run(msg.warmupMs, msg.durationMs);
        part.close();
        await reply({ type: 'result', result });
        process.disconnect();
      }
    } catch (err) {
      await reply({ type: 'error', message: (err as Error).stack ?? String(err) });
      part?.close();
      process.exit(1);
    }
  })();
});

// The parent going away (for example Ctrl-C) must not leave this process behind.
process.on('disconnect', () => {
  part?.close();
  setTimeout(() => process.exit(0), 100).unref();
});
