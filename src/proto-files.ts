/** Locates the package's `proto/` folder, from source (vitest) or from the compiled `dist/` tree. */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

/** The nearest `proto/` folder holding `kvcascade/v1/kv.proto` at or above `from` (a file URL or path). */
export function findProtoRoot(from: string = import.meta.url): string {
  let dir = dirname(from.startsWith('file:') ? fileURLToPath(from) : from);
  for (;;) {
    const candidate = join(dir, 'proto');
    if (existsSync(join(candidate, 'kvcascade', 'v1', 'kv.proto'))) return candidate;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find proto/kvcascade/v1/kv.proto above ${from}`);
    dir = parent;
  }
}

/** The package's own proto folder (cached). */
export function protoDir(): string {
  cached ??= findProtoRoot(import.meta.url);
  return cached;
}
