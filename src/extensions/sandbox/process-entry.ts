/** The child process's main module (process isolation): runs one extension's Guest and speaks the protocol in protocol.ts with the runner over the IPC channel `child_process.fork` opened. */
import { serveGuest } from './guest-port.js';
import type { FromWorker, ToWorker } from './protocol.js';

const send = process.send?.bind(process);
if (!send) throw new Error('process-entry must run in a child process forked with an IPC channel');

// The node closed the channel (it stopped or died): nothing is left to do here.
process.on('disconnect', () => process.exit(0));

serveGuest({
  // Messages are serialized on the spot ('advanced' serialization: structured clone), so a value
  // that cannot be cloned throws here, as postMessage does in a worker.
  post: (msg: FromWorker) => {
    send(msg);
  },
  onMessage: (handler: (msg: ToWorker) => void) => {
    process.on('message', (m) => handler(m as ToWorker));
  },
  cpuMeter: () => {
    const start = process.cpuUsage();
    return () => {
      const d = process.cpuUsage(start);
      return d.user + d.system;
    };
  },
});
