/** The in-memory ExtensionHost twin, now in src/extensions/testing/ (kvcascade/testing builds on it); re-exported for the tests. */
export { MemoryExtensionHost, MemoryShard } from '../../src/extensions/testing/memory-host.js';
