/**
 * The committed extension API reference (docs/extension-api.md) is what scripts/gen-api-docs.ts
 * generates from the types now: a change to src/extensions/api.ts or the testing entry point
 * without `npm run docs:api` fails here. Also: every declaration and member in it is documented.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { API_DOC_PATH, generateApiDocs, repoRoot } from '../../scripts/gen-api-docs.js';

const root = repoRoot();
const generated = generateApiDocs(root);

describe('docs/extension-api.md', () => {
  it('is up to date with the types (run `npm run docs:api` to regenerate it)', () => {
    const committed = readFileSync(join(root, API_DOC_PATH), 'utf8');
    expect(committed === generated, `${API_DOC_PATH} is out of date: run \`npm run docs:api\` and commit the result`).toBe(true);
  });

  it('covers both entry points and documents every declaration and member', () => {
    expect(generated).toContain('## `kvcascade/extension`');
    expect(generated).toContain('## `kvcascade/testing`');
    for (const name of ['ExtensionEvent', 'ExtensionContext', 'ExtensionKv', 'WatchOptions', 'testExtension', 'ExtensionTest']) expect(generated).toContain(`### \`${name}\``);
    // A table row with an empty description: a member without a doc comment.
    const undocumented = generated.split('\n').filter((l) => l.startsWith('| `') && l.endsWith('|  |'));
    expect(undocumented).toEqual([]);
    // A heading followed directly by its code block: a declaration without a doc comment.
    const bare = [...generated.matchAll(/^### (.+)\n\n```/gm)].map((m) => m[1]);
    expect(bare).toEqual([]);
  });
});
