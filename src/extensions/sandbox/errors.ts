/** The errors the extension runner reports: load failures (ExtensionLoadError) and failed invocations (LambdaError). */
import type { LambdaErrorKind, LoadErrorCode } from './types.js';

/** An extension could not be loaded; `code` says which step failed and the message includes the underlying error. */
export class ExtensionLoadError extends Error {
  constructor(
    readonly code: LoadErrorCode,
    readonly extension: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`extension "${extension}": ${message}`, options);
    this.name = 'ExtensionLoadError';
  }
}

/**
 * An invocation did not complete; `kind` says why (see `LambdaErrorKind`). For `threw`, `cause`
 * is the lambda's error (rebuilt from the worker: same name, message, code and stack). For an
 * `out-of-memory` of a child process killed past its memory budget, `rssBytes` is the RSS seen.
 */
export class LambdaError extends Error {
  /** The resident memory (bytes) the node saw when it killed the extension's process (`out-of-memory` past the budget). */
  readonly rssBytes?: number;

  constructor(
    readonly kind: LambdaErrorKind,
    message: string,
    options?: { cause?: unknown; rssBytes?: number },
  ) {
    super(message, options);
    this.name = 'LambdaError';
    if (options?.rssBytes !== undefined) this.rssBytes = options.rssBytes;
  }
}
