/** The child process's main module (process isolation): runs one extension's Guest and speaks the protocol in protocol.ts with the runner over the IPC channel `child_process.fork` opened. */
import { serveGuest } from './guest-port.js';
import { IpcBatcher, unbatch } from './ipc-batch.js';
import type { FromWorker, ToWorker } from './protocol.js';

const send = process.send?.bind(process);
if (!send) throw new Error('process-entry must run in a child process forked with an IPC channel');

// The node closed the channel (it stopped or died): nothing is left to do here.
process.on('disconnect', () => process.exit(0));

// Messages go out in batches, one IPC write per event-loop turn (see IpcBatcher).
const out = new IpcBatcher<FromWorker>((wire) => {
  send(wire);
});

serveGuest({
  post: (msg: FromWorker, _transfer: ArrayBuffer[], onFail?: (e: unknown) => void) => out.push(msg, onFail),
  onMessage: (handler: (msg: ToWorker) => void) => {
    process.on('message', (wire) => {
      for (const m of unbatch<ToWorker>(wire)) handler(m);
    });
  },
  cpuMeter: () => {
    const start = process.cpuUsage();
    return () => {
      const d = process.cpuUsage(start);
      return d.user + d.system;
    };
  },
});
