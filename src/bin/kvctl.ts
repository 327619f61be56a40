#!/usr/bin/env node
/** `kvctl`: the kvcascade command-line client (see src/cli/kvctl.ts). */
import { main } from '../cli/kvctl.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`kvctl: ${(e as Error).message}\n`);
    process.exitCode = 1;
  },
);
