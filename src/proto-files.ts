/** Locates the package's `proto/` folder, from source (vitest) or from the compiled `dist/` tree. */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

/** The absolute path of the folder holding `kvcascade/v1/*.proto`. */
export function protoDir(): string {
  if (cached) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    const candidate = join(dir, 'proto');
    if (existsSync(join(candidate, 'kvcascade', 'v1', 'kv.proto'))) {
      cached = candidate;
      return candidate;
    }
    dir = dirname(dir);
  }
  throw new Error('kvcascade: cannot find the proto/ folder next to the package');
}
