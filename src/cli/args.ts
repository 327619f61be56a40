/** What kvctl's command groups share: the context main gives them, and argument parsers (they throw commander's InvalidArgumentError, which kvctl reports as a usage error, exit code 64). */
import { InvalidArgumentError } from 'commander';
import type { KvClientTlsOptions } from '../client/index.js';

/** A parser of non-negative safe integers; `what` names the argument in the error. */
export function uint(what: string): (s: string) => number {
  return (s) => {
    if (!/^\d+$/.test(s) || !Number.isSafeInteger(Number(s))) throw new InvalidArgumentError(`${what} must be a non-negative integer`);
    return Number(s);
  };
}

/** A parser of positive safe integers; `what` names the argument in the error. */
export function positive(what: string): (s: string) => number {
  return (s) => {
    const n = uint(what)(s);
    if (n === 0) throw new InvalidArgumentError(`${what} must be positive`);
    return n;
  };
}

/** A parser of integers from `min` to `max`; `what` names the argument in the error. */
export function intIn(what: string, min: number, max: number): (s: string) => number {
  return (s) => {
    const n = /^\d+$/.test(s) ? Number(s) : NaN;
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${what} must be an integer from ${min} to ${max}`);
    return n;
  };
}

/** What a group of kvctl commands needs from kvctl's main (output, options, the admin token). */
export interface CommandContext {
  readonly out: { write(s: string): unknown };
  json(): boolean;
  print(doc: unknown): void;
  endpoints(): string[];
  /** The admin token from --admin-token, $KVCASCADE_ADMIN_TOKEN or ./.data/admin-token (throws when there is none). */
  adminToken(): string;
  /** The admin token when one is given or found, else undefined (for calls that work without it). */
  adminTokenIfAny?(): string | undefined;
  /** TLS settings from --cacert/--cert/--key (or $KVCASCADE_CACERT/_CERT/_KEY); undefined for plaintext. */
  tls(): KvClientTlsOptions | undefined;
  formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string;
  /** Timeout of a call (--timeout). */
  timeoutMs(): number;
  /** Sets the process exit code. */
  fail(code: number): void;
}

/** The `tls` option of a client built for `ctx` (absent for plaintext). */
export function tlsOf(ctx: Pick<CommandContext, 'tls'>): { tls?: KvClientTlsOptions } {
  const t = ctx.tls();
  return t ? { tls: t } : {};
}
