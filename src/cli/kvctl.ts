#!/usr/bin/env node
/**
 * kvctl, the kvcascade command-line client (put, get, cas, txn, del, trigger, ls, watch, cluster
 * status, pools, members, extensions), callable in-process through `main(argv, io)`.
 *
 * Size: about 550 lines of one command table (the data commands; ext, auth, user and role
 * commands live in their own files): each command is a short declaration and its action.
 */
import { isUtf8 } from 'node:buffer';
import { readFileSync, realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { pathToFileURL } from 'node:url';
import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { positive, uint } from './args.js';
import { registerClusterCommands } from './cluster-commands.js';
import { registerAuthCommands } from './auth-commands.js';
import { registerLeaseCommands } from './lease-commands.js';
import { registerExtCommands, resolveAdminToken } from './ext-commands.js';
import { KvClient, KvError, CompactedError, type KvItem, type KvClientTlsOptions } from '../client/index.js';
import { DEAD_LETTER_PREFIX } from '../sharding/index.js';

/** Endpoints used when neither `--endpoints` nor KVCASCADE_ENDPOINTS is given: the local cluster `npm start` runs. */
export const DEFAULT_ENDPOINTS = '127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003';

/** Timeout of cluster changes (pool create, member add/remove) unless --timeout is given: creating a pool waits until it serves. */
export const CHANGE_TIMEOUT_MS = 60_000;

/** kvctl's exit codes. */
export const EXIT = {
  /** Success. */
  OK: 0,
  /** A request failed, or no node was reachable. */
  ERROR: 1,
  /** A conditional write (cas, del --expected-version) found another version. */
  CONFLICT: 2,
  /** `get` found no such key (or no version at the time or revision asked). */
  NOT_FOUND: 3,
  /** Bad command line. */
  USAGE: 64,
} as const;

/** Where kvctl reads and writes; every field defaults to the process's own. */
export interface KvctlIo {
  readonly stdout?: { write(s: string): unknown };
  readonly stderr?: { write(s: string): unknown };
  /** Read for `put <key> -` (and `cas`, `trigger`). */
  readonly stdin?: AsyncIterable<Uint8Array | string>;
  /** Environment (for KVCASCADE_ENDPOINTS). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Ends `watch` (default: SIGINT). */
  readonly signal?: AbortSignal;
  /** Token files tried when no flag or variable gives the admin token (default: DEFAULT_TOKEN_FILES). */
  readonly adminTokenFiles?: readonly string[];
}

/** Commander helper for repeatable options. */
function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** A value as printed: UTF-8 text when valid, else base64. */
interface RenderedValue {
  readonly value: string;
  readonly valueEncoding: 'utf8' | 'base64';
}

function render(v: Uint8Array): RenderedValue {
  const b = Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  return isUtf8(b) ? { value: b.toString('utf8'), valueEncoding: 'utf8' } : { value: b.toString('base64'), valueEncoding: 'base64' };
}

/** A value for a table cell: control characters escaped, binary shown as `base64:...`. */
function cell(v: Uint8Array): string {
  const r = render(v);
  if (r.valueEncoding === 'base64') return `base64:${r.value}`;
  // eslint-disable-next-line no-control-regex
  return r.value.replace(/[\u0000-\u001f\u007f\\]/g, (c) => {
    const named: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t', '\\': '\\\\' };
    return named[c] ?? `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
  });
}

function time(ms: number): string {
  return ms > 0 ? new Date(ms).toISOString() : '-';
}

/** Formats rows as a plain-text table with aligned columns. */
export function formatTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: readonly string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

function timeArg(s: string): number {
  if (/^-?\d+$/.test(s)) return Number(s);
  const t = Date.parse(s);
  if (Number.isNaN(t)) throw new InvalidArgumentError('expected an ISO time (e.g. 2025-01-31T12:00:00Z) or ms since the epoch');
  return t;
}

class CliFailure extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly exitCode: number = EXIT.ERROR,
  ) {
    super(message);
  }
}

interface GlobalOptions {
  endpoints?: string;
  json?: boolean;
  timeout: number;
  adminToken?: string;
  user?: string;
  password?: string;
  token?: string;
  cacert?: string;
  cert?: string;
  key?: string;
}

async function readAll(source: AsyncIterable<Uint8Array | string>): Promise<Uint8Array> {
  const chunks: Buffer[] = [];
  for await (const c of source) chunks.push(typeof c === 'string' ? Buffer.from(c) : Buffer.from(c.buffer, c.byteOffset, c.byteLength));
  return Buffer.concat(chunks);
}

/**
 * Runs kvctl with `argv` (the arguments after the program name) and returns the exit code
 * ({@link EXIT}). Output goes to `io.stdout`; errors are one line `kvctl: <code>: <message>` on
 * `io.stderr`.
 */
export async function main(argv: readonly string[], io: KvctlIo = {}): Promise<number> {
  const out = io.stdout ?? process.stdout;
  const err = io.stderr ?? process.stderr;
  const env = io.env ?? process.env;
  let exitCode: number = EXIT.OK;
  let client: KvClient | undefined;

  const program = new Command('kvctl');
  const globals = (): GlobalOptions => program.opts<GlobalOptions>();
  const json = (): boolean => globals().json === true;
  const print = (doc: unknown): void => void out.write(`${JSON.stringify(doc)}\n`);
  /** The endpoints from --endpoints, $KVCASCADE_ENDPOINTS or the default. */
  const endpointList = (): string[] => {
    const list = (globals().endpoints ?? env.KVCASCADE_ENDPOINTS ?? DEFAULT_ENDPOINTS)
      .split(',')
      .map((s) => s.trim())
      .filter((s) => s.length > 0);
    if (list.length === 0) throw new CliFailure('USAGE', 'no endpoints given: pass --endpoints host:port[,host:port...]', EXIT.USAGE);
    return list;
  };
  /** The admin token from --admin-token, $KVCASCADE_ADMIN_TOKEN or ./.data/admin-token. */
  const adminToken = (): string => {
    // A root user's login token (--token, $KVCASCADE_TOKEN: `kvctl auth login`) works as well.
    const t = resolveAdminToken(globals().adminToken, env, io.adminTokenFiles) ?? (globals().token ?? env.KVCASCADE_TOKEN);
    if (!t) throw new CliFailure('UNAUTHENTICATED', 'admin token required: --admin-token, $KVCASCADE_ADMIN_TOKEN or ./.data/admin-token', EXIT.USAGE);
    return t;
  };
  /** TLS from --cacert/--cert/--key or $KVCASCADE_CACERT/_CERT/_KEY; undefined when none is given (plaintext). */
  const tls = (): KvClientTlsOptions | undefined => {
    const g = globals();
    const files = { cacert: g.cacert ?? env.KVCASCADE_CACERT, cert: g.cert ?? env.KVCASCADE_CERT, key: g.key ?? env.KVCASCADE_KEY };
    if (!files.cacert && !files.cert && !files.key) return undefined;
    if (Boolean(files.cert) !== Boolean(files.key)) throw new CliFailure('USAGE', 'give both --cert and --key (a client certificate and its key)', EXIT.USAGE);
    const read = (flag: string, file: string | undefined): Buffer | undefined => {
      if (!file) return undefined;
      try {
        return readFileSync(file);
      } catch (e) {
        throw new CliFailure('USAGE', `${flag} ${file}: ${(e as Error).message}`, EXIT.USAGE);
      }
    };
    const rootCert = read('--cacert', files.cacert);
    const certChain = read('--cert', files.cert);
    const privateKey = read('--key', files.key);
    return { ...(rootCert ? { rootCert } : {}), ...(certChain ? { certChain } : {}), ...(privateKey ? { privateKey } : {}) };
  };
  /**
   * The KV client. A command reading dead letters (`reading`, its key or prefix, under `/_dlq/`)
   * sends the admin token (--admin-token, $KVCASCADE_ADMIN_TOKEN or ./.data/admin-token) when
   * there is one: only an admin may read them. Other commands never send it.
   */
  const kv = (reading?: string): KvClient => {
    if (client) return client;
    const token = reading?.startsWith(DEAD_LETTER_PREFIX) ? resolveAdminToken(globals().adminToken, env, io.adminTokenFiles) : undefined;
    const t = tls();
    const login = loginCredentials();
    client = new KvClient({
      endpoints: endpointList(),
      defaultDeadlineMs: globals().timeout,
      failFastWhenNoNodeListens: true,
      ...(token ? { adminToken: token } : {}),
      ...(login.user !== undefined ? { user: login.user, password: login.password ?? '' } : login.token !== undefined ? { token: login.token } : {}),
      ...(t ? { tls: t } : {}),
    });
    return client;
  };
  /**
   * Who kvctl logs in as (access control): `--user name[:password]` and `--password`, else
   * $KVCASCADE_USER and $KVCASCADE_PASSWORD; or a token from `--token` / $KVCASCADE_TOKEN.
   */
  function loginCredentials(): { user?: string; password?: string; token?: string } {
    const g = globals();
    let user = g.user ?? env.KVCASCADE_USER;
    let password = g.password ?? env.KVCASCADE_PASSWORD;
    if (user !== undefined && user.includes(':') && password === undefined) {
      password = user.slice(user.indexOf(':') + 1);
      user = user.slice(0, user.indexOf(':'));
    }
    if (user) return { user, password: password ?? '' };
    const token = g.token ?? env.KVCASCADE_TOKEN;
    return token ? { token } : {};
  }
  /** A value argument: `-` reads stdin, `@file` reads a file, anything else is the value itself. */
  const valueArg = async (value: string): Promise<Uint8Array | string> =>
    value === '-' ? await readAll(io.stdin ?? process.stdin) : value.startsWith('@') ? await readValueFile(value.slice(1)) : value;
  const itemDoc = (it: KvItem, keysOnly: boolean) =>
    keysOnly
      ? { key: it.key, version: it.version, timestampMs: it.timestampMs }
      : { key: it.key, ...render(it.value), version: it.version, timestampMs: it.timestampMs };

  program
    .description('Command-line client of kvcascade.\nExit codes: 0 ok, 1 error, 2 conflict, 3 key not found, 64 usage.')
    .option('--endpoints <list>', `comma-separated host:port list (default: $KVCASCADE_ENDPOINTS, else ${DEFAULT_ENDPOINTS})`)
    .option('--json', 'print one JSON document per result')
    .option('--timeout <ms>', 'timeout of each request in ms, retries included (pool create and member add|remove: 60000 unless given)', positive('--timeout'), 10_000)
    .option('--cacert <file>', 'TLS: CA bundle to verify the nodes with (default: $KVCASCADE_CACERT; plaintext when no TLS option is given)')
    .option('--cert <file>', 'TLS: client certificate, for clusters that require one (kvd --tls-ca) (default: $KVCASCADE_CERT)')
    .option('--key <file>', 'TLS: private key of --cert (default: $KVCASCADE_KEY)')
    .option('--user <name[:password]>', 'access control: log in as this user (default: $KVCASCADE_USER); the password from here, --password or $KVCASCADE_PASSWORD')
    .option('--password <password>', 'access control: the password of --user (default: $KVCASCADE_PASSWORD; visible in the process list: prefer the variable)')
    .option('--token <token>', 'access control: a token from `kvctl auth login` (default: $KVCASCADE_TOKEN)')
    .option('--admin-token <token>', 'admin token for `ext`, `pool create`, `member add|remove` and reading dead letters (`ls /_dlq/<extension>/`) (default: $KVCASCADE_ADMIN_TOKEN, else ./.data/admin-token)')
    .exitOverride()
    .showSuggestionAfterError(false)
    .configureOutput({
      writeOut: (s) => void out.write(s),
      writeErr: (s) => void err.write(s),
      outputError: (s, write) => write(`kvctl: USAGE: ${s.replace(/^error: /, '').trim()}\n`),
    });

  program
    .command('put')
    .description('write a value (`@file` reads a file, `-` reads stdin)')
    .argument('<key>')
    .argument('<value>')
    .option('--lease <id>', 'attach the key to this lease (`kvctl lease grant`): it is deleted when the lease ends', positive('--lease'))
    .action(async (key: string, value: string, o: { lease?: number }) => {
      const bytes = await valueArg(value);
      const r = await kv().put(key, bytes, o.lease !== undefined ? { lease: o.lease } : {});
      if (json()) print({ key, succeeded: r.succeeded, version: r.version, revision: r.revision, timestampMs: r.timestampMs });
      else out.write(formatTable(['KEY', 'VERSION', 'REVISION', 'TIMESTAMP'], [[key, String(r.version), String(r.revision), time(r.timestampMs)]]));
    });

  program
    .command('get')
    .description('read a key (latest, or as of a version or time)')
    .argument('<key>')
    .option('--version <n>', 'read as of this revision', uint('--version'))
    .option('--time <t>', 'read as of this time (ISO 8601 or ms since the epoch)', timeArg)
    .option('--serializable', 'read from the local replica (may be stale)')
    .action(async (key: string, o: { version?: number; time?: number; serializable?: boolean }) => {
      if (o.version !== undefined && o.time !== undefined) throw new CliFailure('USAGE', 'give at most one of --version and --time', EXIT.USAGE);
      const r = await kv(key).get(key, {
        ...(o.version !== undefined ? { atVersion: o.version } : {}),
        ...(o.time !== undefined ? { atTimeMs: o.time } : {}),
        consistency: o.serializable ? 'serializable' : 'linearizable',
      });
      if (json()) {
        print(r.found ? { key, found: true, ...render(r.value), version: r.version, timestampMs: r.timestampMs, revision: r.revision } : { key, found: false, revision: r.revision });
      } else if (r.found) {
        out.write(formatTable(['KEY', 'VERSION', 'TIMESTAMP', 'VALUE'], [[key, String(r.version), time(r.timestampMs), cell(r.value)]]));
      }
      if (!r.found) {
        if (!json()) err.write(`kvctl: NOT_FOUND: key ${JSON.stringify(key)} not found\n`);
        exitCode = EXIT.NOT_FOUND;
      }
    });

  program
    .command('cas')
    .description('compare-and-set: write only if the key is at <expectedVersion> (0 = absent); exit code 2 on conflict')
    .argument('<key>')
    .argument('<expectedVersion>', 'the version the key must have', uint('expectedVersion'))
    .argument('<value>')
    .action(async (key: string, expected: number, value: string) => {
      const bytes = await valueArg(value);
      const r = await kv().put(key, bytes, { expectedVersion: expected, returnCurrentValue: true });
      if (r.succeeded) {
        if (json()) print({ key, succeeded: true, version: r.version, revision: r.revision, timestampMs: r.timestampMs });
        else out.write(formatTable(['KEY', 'RESULT', 'VERSION', 'REVISION'], [[key, 'ok', String(r.version), String(r.revision)]]));
        return;
      }
      exitCode = EXIT.CONFLICT;
      const current = r.currentValue !== undefined ? render(r.currentValue) : undefined;
      if (json()) {
        print({
          key,
          succeeded: false,
          expectedVersion: expected,
          currentVersion: r.currentVersion,
          ...(current ? { currentValue: current.value, currentValueEncoding: current.valueEncoding } : {}),
          revision: r.revision,
        });
      } else {
        out.write(
          formatTable(
            ['KEY', 'RESULT', 'EXPECTED', 'CURRENT_VERSION', 'CURRENT_VALUE'],
            [[key, 'conflict', String(expected), String(r.currentVersion), r.currentValue ? cell(r.currentValue) : '-']],
          ),
        );
      }
    });

  program
    .command('txn')
    .description(
      'atomic multi-key operation inside one shard: if every --compare holds, apply every --put and --delete at one revision, else nothing (exit code 2); keys in different shards are refused',
    )
    .option('--compare <key=version>', 'the key must be at this version (0 = absent); repeatable', collect, [])
    .option('--put <key=value>', 'write the key; repeatable', collect, [])
    .option('--delete <key>', 'delete the key; repeatable', collect, [])
    .action(async (o: { compare: string[]; put: string[]; delete: string[] }) => {
      const split = (s: string, what: string, form: string): [string, string] => {
        const i = s.indexOf('=');
        if (i <= 0) throw new CliFailure('USAGE', `${what} "${s}" is not ${form}`, EXIT.USAGE);
        return [s.slice(0, i), s.slice(i + 1)];
      };
      const compares = o.compare.map((c) => {
        const [key, v] = split(c, '--compare', 'key=version');
        const version = Number(v);
        if (!Number.isSafeInteger(version) || version < 0) throw new CliFailure('USAGE', `--compare ${c}: the version must be a non-negative integer`, EXIT.USAGE);
        return { key, version };
      });
      const writes = [
        ...o.put.map((p) => {
          const [key, value] = split(p, '--put', 'key=value');
          return { type: 'put' as const, key, value };
        }),
        ...o.delete.map((key) => ({ type: 'delete' as const, key })),
      ];
      if (compares.length + writes.length === 0) throw new CliFailure('USAGE', 'give at least one --compare, --put or --delete', EXIT.USAGE);
      const r = await kv().txn({ compares, writes });
      if (!r.succeeded) exitCode = EXIT.CONFLICT;
      if (json()) print({ succeeded: r.succeeded, revision: r.revision, shard: r.shard, failedCompares: r.failedCompares });
      else {
        out.write(
          formatTable(
            ['RESULT', 'REVISION', 'SHARD', 'FAILED_COMPARES'],
            [[r.succeeded ? 'ok' : 'conflict', String(r.revision), String(r.shard), r.failedCompares.map((i) => compares[i]!.key).join(',') || '-']],
          ),
        );
      }
    });

  program
    .command('del')
    .description('delete a key; with --expected-version only if it is at that version (exit code 2 on conflict)')
    .argument('<key>')
    .option('--expected-version <n>', 'delete only if the key is at this version', uint('--expected-version'))
    .action(async (key: string, o: { expectedVersion?: number }) => {
      const r = await kv().delete(key, o.expectedVersion !== undefined ? { expectedVersion: o.expectedVersion } : {});
      if (!r.succeeded) exitCode = EXIT.CONFLICT;
      if (json()) {
        print({ key, succeeded: r.succeeded, deleted: r.deleted, revision: r.revision, ...(r.succeeded ? {} : { currentVersion: r.currentVersion }) });
        return;
      }
      if (r.succeeded) out.write(formatTable(['KEY', 'RESULT', 'REVISION'], [[key, r.deleted ? 'deleted' : 'absent', String(r.revision)]]));
      else out.write(formatTable(['KEY', 'RESULT', 'EXPECTED', 'CURRENT_VERSION'], [[key, 'conflict', String(o.expectedVersion), String(r.currentVersion)]]));
    });

  program
    .command('trigger')
    .description('trigger put: fire the lambdas and watchers of a key with a value, without storing it (`@file` reads a file, `-` reads stdin)')
    .argument('<key>')
    .argument('<value>')
    .action(async (key: string, value: string) => {
      const r = await kv().trigger(key, await valueArg(value));
      if (json()) print({ key, revision: r.revision, timestampMs: r.timestampMs });
      else out.write(formatTable(['KEY', 'REVISION', 'TIMESTAMP'], [[key, String(r.revision), time(r.timestampMs)]]));
    });

  program
    .command('ls')
    .description('list keys under a prefix, in key order')
    .argument('[prefix]', 'key prefix', '')
    .option('--limit <n>', 'keys per page (default 1000)', positive('--limit'))
    .option('--keys-only', 'omit values')
    .option('--all', 'fetch every page')
    .option('--page-token <token>', 'continue a previous listing')
    .option('--shard <group>', 'list only this shard (its Raft group id: `kvctl pool describe`); shard-local system keys such as /_sys/ exist once per shard', positive('--shard'))
    .action(async (prefix: string, o: { limit?: number; keysOnly?: boolean; all?: boolean; pageToken?: string; shard?: number }) => {
      const keysOnly = o.keysOnly === true;
      const items: KvItem[] = [];
      let pageToken = o.pageToken ?? '';
      let revision = 0;
      let shardRevisions: Readonly<Record<number, number>> = {};
      do {
        const page = await kv(prefix).list(prefix, { ...(o.limit ? { limit: o.limit } : {}), keysOnly, pageToken, ...(o.shard !== undefined ? { shard: o.shard } : {}) });
        items.push(...page.items);
        revision = page.revision;
        shardRevisions = page.shardRevisions;
        pageToken = page.nextPageToken;
      } while (o.all && pageToken);
      if (json()) {
        // One shard: its revision; several: each shard's (revisions are per shard).
        const at = revision > 0 || Object.keys(shardRevisions).length === 0 ? { revision } : { shardRevisions };
        print({ prefix, items: items.map((it) => itemDoc(it, keysOnly)), ...(pageToken ? { nextPageToken: pageToken } : {}), ...at });
        return;
      }
      out.write(
        keysOnly
          ? formatTable(['KEY', 'VERSION', 'TIMESTAMP'], items.map((it) => [it.key, String(it.version), time(it.timestampMs)]))
          : formatTable(['KEY', 'VERSION', 'TIMESTAMP', 'VALUE'], items.map((it) => [it.key, String(it.version), time(it.timestampMs), cell(it.value)])),
      );
      if (pageToken) err.write(`kvctl: more keys remain: continue with --page-token ${pageToken} (or use --all)\n`);
    });

  program
    .command('watch')
    .description('print changes under a prefix until interrupted (Ctrl-C)')
    .argument('[prefix]', 'key prefix', '')
    .option('--from-revision <n>', 'start at this revision (default: changes from now on)', uint('--from-revision'))
    .action(async (prefix: string, o: { fromRevision?: number }) => {
      // Fixed columns (a stream cannot be aligned afterwards): revisions and shards are numbers.
      const row = (rev: string, shard: string, type: string, key: string, value: string | undefined) =>
        `${rev.padEnd(10)}  ${shard.padEnd(5)}  ${type.padEnd(7)}  ${key}${value !== undefined ? `  ${value}` : ''}\n`;
      if (!json()) out.write(row('REVISION', 'SHARD', 'TYPE', 'KEY', 'VALUE'));
      const ac = new AbortController();
      const onSigint = (): void => ac.abort();
      if (io.signal) {
        if (io.signal.aborted) ac.abort();
        io.signal.addEventListener('abort', onSigint, { once: true });
      } else process.once('SIGINT', onSigint);
      try {
        const w = kv(prefix).watch(prefix, { ...(o.fromRevision ? { fromRevision: o.fromRevision } : {}), signal: ac.signal });
        for await (const batch of w) {
          for (const e of batch.events) {
            if (json()) {
              print({ type: e.type, key: e.key, ...(e.type !== 'delete' ? render(e.value) : {}), revision: e.revision, shard: e.shard, timestampMs: e.timestampMs });
            } else {
              out.write(row(String(e.revision), String(e.shard), e.type.toUpperCase(), e.key, e.type !== 'delete' ? cell(e.value) : undefined));
            }
          }
        }
      } finally {
        io.signal?.removeEventListener('abort', onSigint);
        process.removeListener('SIGINT', onSigint);
      }
    });

  registerExtCommands(program, {
    out,
    json,
    print,
    formatTable,
    endpoints: endpointList,
    adminToken,
    adminTokenIfAny: () => resolveAdminToken(globals().adminToken, env, io.adminTokenFiles) ?? (globals().token ?? env.KVCASCADE_TOKEN),
    tls,
    timeoutMs: () => globals().timeout,
    fail: (code) => {
      exitCode = code;
    },
  });

  // What the auth and lease commands share: output, connection, credentials (a login, else the admin token as root).
  const credentialed = {
    out,
    json,
    print,
    formatTable,
    endpoints: endpointList,
    tls,
    timeoutMs: () => globals().timeout,
    fail: (code: number) => {
      exitCode = code;
    },
    credentials: () => {
      const c = loginCredentials();
      if (c.user !== undefined || c.token !== undefined) return c;
      const admin = resolveAdminToken(globals().adminToken, env, io.adminTokenFiles);
      return admin ? { token: admin } : {};
    },
  };
  registerAuthCommands(program, {
    ...credentialed,
    readStdin: async () => Buffer.from(await readAll(io.stdin ?? process.stdin)).toString('utf8'),
  });

  registerLeaseCommands(program, {
    ...credentialed,
    interrupted: () =>
      new Promise<void>((resolve) => {
        if (io.signal) io.signal.addEventListener('abort', () => resolve(), { once: true });
        else process.once('SIGINT', () => resolve());
      }),
  });

  registerClusterCommands(program, {
    out,
    err,
    json,
    print,
    formatTable,
    endpoints: endpointList,
    adminToken,
    tls,
    timeoutMs: () => globals().timeout,
    changeTimeoutMs: () => (program.getOptionValueSource('timeout') === 'default' ? CHANGE_TIMEOUT_MS : globals().timeout),
    fail: (code) => {
      exitCode = code;
    },
  });

  try {
    await program.parseAsync([...argv], { from: 'user' });
    return exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      return e.exitCode === 0 ? EXIT.OK : EXIT.USAGE; // commander already printed help or the usage error
    }
    // One line `kvctl: CODE: message`, or with --json one JSON object {"error": {code, message}}.
    const fail = (code: string, message: string, extra: Record<string, unknown> = {}): void =>
      void err.write(json() ? `${JSON.stringify({ error: { code, message, ...extra } })}\n` : `kvctl: ${code}: ${message}\n`);
    if (e instanceof CompactedError) {
      fail(e.code, json() ? e.message : `${e.message} (oldest available revision ${e.compactRevision})`, { compactRevision: e.compactRevision });
      return EXIT.ERROR;
    }
    if (e instanceof KvError || e instanceof CliFailure) {
      fail(e.code, e.message);
      return e instanceof CliFailure ? e.exitCode : EXIT.ERROR;
    }
    const code = typeof (e as { code?: unknown }).code === 'string' ? (e as { code: string }).code : 'ERROR';
    fail(code, (e as Error).message ?? String(e));
    return EXIT.ERROR;
  } finally {
    client?.close();
  }
}

async function readValueFile(path: string): Promise<Uint8Array> {
  try {
    return await readFile(path);
  } catch (e) {
    throw new CliFailure((e as { code?: string }).code ?? 'ERROR', `cannot read ${JSON.stringify(path)}: ${(e as Error).message}`);
  }
}

function invokedDirectly(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(script)).href;
  } catch {
    return false;
  }
}

if (invokedDirectly()) {
  void main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
  });
}
