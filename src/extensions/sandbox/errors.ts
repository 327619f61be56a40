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
  /**
   * For a failure that brought the runner down: whether this invocation caused it. `true`: it
   * did (it timed out, or was the only one running on the worker that died); `false`: it was
   * collateral (in flight on a worker terminated for another invocation's timeout), or it timed
   * out waiting on a store call that overran its own deadline (the node stalled); undefined:
   * unknown (several were running when the worker died: each of them is run alone next time).
   */
  culprit: boolean | undefined;
  /** The resident memory (bytes) the node saw when it killed the extension's process (`out-of-memory` past the budget). */
  readonly rssBytes?: number;

  constructor(
    readonly kind: LambdaErrorKind,
    message: string,
    options?: { cause?: unknown; culprit?: boolean; rssBytes?: number },
  ) {
    super(message, options);
    this.name = 'LambdaError';
    this.culprit = options?.culprit;
    if (options?.rssBytes !== undefined) this.rssBytes = options.rssBytes;
  }
}
