// kvcascade benchmark probe (bench/reactions.ts loads it through the Admin service).
//
// Watches ctx.config.prefix (default /bench/lambda/). The lambda's first action is to send one
// UDP datagram "<version> <timestamp> <key>" to 127.0.0.1:ctx.config.port, where the benchmark
// process timestamps its arrival; then it returns without waiting for the send to complete, so
// the lambda itself costs next to nothing and the measured time is the platform's: commit ->
// dispatch on the shard leader -> hand-off to the extension's worker thread -> lambda start.
import dgram from 'node:dgram';

/** @type {import('node:dgram').Socket | undefined} */
let socket;

/** @param {import('kvcascade/extension').ExtensionContext} ctx */
export function initialize(ctx) {
  const port = Number(ctx.config.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`lambda-probe: config.port must be the benchmark's UDP port (got ${JSON.stringify(ctx.config.port)})`);
  }
  const prefix = typeof ctx.config.prefix === 'string' && ctx.config.prefix !== '' ? ctx.config.prefix : '/bench/lambda/';
  const host = '127.0.0.1';
  const s = dgram.createSocket('udp4');
  socket = s;
  s.on('error', (err) => ctx.log.warn('lambda-probe: socket error', { error: String(err) }));
  s.unref(); // never keep the worker alive
  const sent = (err) => {
    if (err) ctx.log.warn('lambda-probe: send failed', { error: String(err) });
  };
  ctx.watch(
    prefix,
    (event) => {
      s.send(`${event.version} ${event.timestamp} ${event.key}`, port, host, sent);
    },
    { mode: 'stateless', concurrency: 64 },
  );
}

export function shutdown() {
  try {
    socket?.close();
  } catch {
    // already closed
  }
  socket = undefined;
}
