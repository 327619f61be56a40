/**
 * Import rules of src/ (run by `npm test` through `npm run lint:imports`): layers import
 * downward only, the Raft core and the sharding model stay pure, the client stands on the wire
 * layer and never on the server or the node, and there are no cycles.
 *
 *   bin, cli  →  client | server  →  wire  →  coordinator  →  extensions  →  node
 *             →  statemachine | storage  →  sharding  →  raft          (log, proto-files: anywhere)
 *
 * Inside node: kv-node.ts (the KvNode facade) → node-backend.ts → driver.ts → replica-set.ts →
 * replica.ts (each part below also uses node-options.ts and scheduler.ts).
 */
const layer = (name) => `^src/${name}/`;
module.exports = {
  forbidden: [
    { name: 'no-circular', severity: 'error', comment: 'a cycle ties modules that should be separable', from: { path: '^src/' }, to: { circular: true } },
    { name: 'raft-is-pure', severity: 'error', comment: 'the Raft core imports nothing outside itself (no I/O, no clocks)', from: { path: layer('raft') }, to: { path: '^src/', pathNot: layer('raft') } },
    { name: 'sharding-is-pure', severity: 'error', comment: 'the sharding model is pure', from: { path: layer('sharding') }, to: { path: '^src/', pathNot: [layer('sharding'), layer('raft')] } },
    { name: 'client-on-wire', severity: 'error', comment: 'the client library stands on src/wire, never on the server, the node or anything below', from: { path: layer('client') }, to: { path: [layer('server'), layer('node'), layer('coordinator'), layer('extensions'), layer('storage'), layer('bin'), layer('cli')] } },
    { name: 'wire-below-client-and-server', severity: 'error', from: { path: layer('wire') }, to: { path: [layer('server'), layer('client'), layer('cli'), layer('bin'), layer('coordinator'), layer('extensions')] } },
    { name: 'server-not-on-client', severity: 'error', from: { path: layer('server') }, to: { path: [layer('client'), layer('cli'), layer('bin')] } },
    { name: 'coordinator-below-server', severity: 'error', from: { path: layer('coordinator') }, to: { path: [layer('server'), layer('client'), layer('cli'), layer('bin')] } },
    { name: 'extensions-below-coordinator', severity: 'error', from: { path: layer('extensions') }, to: { path: [layer('server'), layer('client'), layer('cli'), layer('bin'), layer('coordinator'), layer('wire')] } },
    { name: 'node-below-extensions', severity: 'error', from: { path: layer('node') }, to: { path: [layer('extensions'), layer('server'), layer('client'), layer('cli'), layer('bin'), layer('coordinator'), layer('wire')] } },
    { name: 'state-below-node', severity: 'error', from: { path: [layer('statemachine'), layer('storage')] }, to: { path: [layer('node'), layer('extensions'), layer('server'), layer('client'), layer('cli'), layer('bin'), layer('coordinator'), layer('wire')] } },
    { name: 'console-from-bin', severity: 'error', comment: 'the web console is mounted by kvd only', from: { path: '^src/', pathNot: [layer('bin'), layer('console')] }, to: { path: layer('console') } },
    { name: 'node-facade-on-top', severity: 'error', comment: 'inside src/node: KvNode (kv-node.ts) composes the backend, the driver and the replica set; none of its parts imports the facade or the backend', from: { path: '^src/node/(driver|replica-set|replica|replica-records|recovery|leadership|waiters|node-options|scheduler)[.]ts$' }, to: { path: '^src/node/(kv-node|node-backend)[.]ts$' } },
    { name: 'node-driver-over-replica-set', severity: 'error', comment: 'the driver runs the replica set; the replica set reaches the driver only through the hooks it is given', from: { path: '^src/node/(replica-set|replica|replica-records|recovery|leadership|waiters|node-options|scheduler)[.]ts$' }, to: { path: '^src/node/driver[.]ts$' } },
    { name: 'cli-through-client', severity: 'error', comment: 'kvctl talks to the cluster through the client library', from: { path: layer('cli') }, to: { path: [layer('server'), layer('node'), layer('coordinator'), layer('storage'), layer('raft')] } },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
