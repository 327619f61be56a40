/** Structured logging for every kvcascade process (pino, JSON lines on stderr). */
import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

/** A logger named after its component; the level comes from `KVCASCADE_LOG_LEVEL` (default info). */
export function createLogger(name: string, bindings: Record<string, unknown> = {}): Logger {
  return pino(
    { name, level: process.env.KVCASCADE_LOG_LEVEL ?? 'info', base: { pid: process.pid, ...bindings } },
    pino.destination({ dest: 2, sync: false }),
  );
}

/** A logger that drops everything (tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
