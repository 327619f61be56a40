#!/bin/sh
# CI smoke of the shard benchmarks (no npm needed, after a build: tsc -p tsconfig.json): 1-second put-shards, pipelined-put-shards and lib-put-shards at 1 and 2 shards, and a 1-second idle-groups pass; fails if either produced no figures.
set -eu
cd "$(dirname "$0")/.."
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
systems=kvd
[ -n "${SMOKE_ETCD:-}" ] && systems=kvd,etcd
node dist/bench/run.js --workloads put-shards,pipelined-put-shards,lib-put-shards --shards 1,2 --duration 1 --warmup 0 \
  --clients 16 --systems "$systems" --settle-timeout 60 --out "$out/run.json"
node dist/bench/idle-groups.js --groups 1,2 --seconds 1 --pause 0 --settle-timeout 60 --out "$out/idle-groups.json"
node -e '
const fs = require("node:fs");
const run = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
const idle = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
// opsTotal (acknowledged puts, warm-up and drain included): a 1-second window on a busy machine may complete none inside it.
const shardRows = run.results.filter((r) => r.system === "kvd" && r.shards !== undefined && r.opsTotal > 0);
if (shardRows.length !== 6) { console.error(`smoke: expected 6 kvd shard rows with acknowledged puts, got ${shardRows.length}`); process.exit(1); }
if (idle.rows.length !== 2 || idle.rows.some((r) => r.cpuPct === null)) { console.error("smoke: idle-groups rows missing"); process.exit(1); }
console.log(`smoke ok (${process.argv[1]}, ${process.argv[2]})`);
' "$out/run.json" "$out/idle-groups.json"
