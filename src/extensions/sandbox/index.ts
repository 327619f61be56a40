/** Public entry of the extension sandbox: the ExtensionRunner and its types and errors. */
export { ExtensionRunner, ISOLATION_MODES, RUNNER_DEFAULTS, type IsolationMode, type RunnerOptions, type RunnerState, type RunnerStats } from './runner.js';
export { ExtensionLoadError, LambdaError } from './errors.js';
export { WATCH_DEFAULTS, InvalidWatchError, normalizeWatch } from './watch-options.js';
export { resolveExtension, resolveExtensionEntry, type ResolvedExtension } from './resolve.js';
export type { HostServices, KvOp, LambdaErrorKind, LoadErrorCode, LogLevel, MetricKind, MetricOp, RegisteredWatch } from './types.js';
