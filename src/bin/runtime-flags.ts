/** The Node.js flags kvd runs with (its shebang, `npm start`'s cluster and the bench pass them): a larger young generation, so a loaded node spends less CPU collecting garbage. */

/**
 * V8 flags for a kvd process. `--max-semi-space-size=32` (MiB; Node 20's default is 16 on 64-bit)
 * lets short-lived per-request and per-entry objects die young: under the bench's put load it cut
 * the servers' CPU per put by about 16 % (two interleaved A/B series on a shared machine; for gets
 * one series showed -19 %, the other nothing clear). V8's GC helper threads, which a main-thread
 * profile does not show, took ~20 % of a loaded node's CPU. Costs up to ~64 MiB more resident
 * memory per node under load.
 */
export const KVD_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=32'];
