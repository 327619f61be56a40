/**
 * `kvcascade/testing`: what an extension's author needs to unit-test it with vitest (or any test
 * runner) without a cluster: {@link testExtension} runs the module against an in-memory shard with
 * the node's real delivery. The extension's types are in `kvcascade/extension`.
 */
export { testExtension, type ExtensionTest, type TestDeadLetter, type TestExtensionOptions, type TestLogLine } from './test-extension.js';
export type { ExtensionContext, ExtensionEvent, ExtensionModule, Lambda, WatchOptions } from '../api.js';
