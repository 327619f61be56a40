/** The kvcascade package: the client library (and, under `kvcascade/raft`, the pure Raft core). */
export * from './client/index.js';
