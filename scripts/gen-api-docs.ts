/**
 * Generates the extension API reference (docs/extension-api.md) from the types and doc comments of
 * the package's extension entry points, `kvcascade/extension` (src/extensions/api.ts) and
 * `kvcascade/testing` (src/extensions/testing/index.ts), with the TypeScript compiler API.
 * `npm run docs:api` writes the file; test/docs/extension-api.test.ts fails when the committed
 * file differs from what this generates (the types changed and the reference was not regenerated).
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

/** One documented entry point: the package export and its source file (relative to the repository root). */
export interface ApiEntry {
  readonly specifier: string;
  readonly file: string;
  /** What the entry point is for, above its declarations. */
  readonly intro: string;
}

/** The entry points the reference covers, in order. */
export const API_ENTRIES: readonly ApiEntry[] = [
  {
    specifier: 'kvcascade/extension',
    file: 'src/extensions/api.ts',
    intro: 'What an extension module exports and what its lambdas receive: `import type { ExtensionContext, ExtensionEvent } from \'kvcascade/extension\'`.',
  },
  {
    specifier: 'kvcascade/testing',
    file: 'src/extensions/testing/index.ts',
    intro: 'Unit-testing an extension without a cluster: `import { testExtension } from \'kvcascade/testing\'`.',
  },
];

/** Where the reference is written, relative to the repository root. */
export const API_DOC_PATH = 'docs/extension-api.md';

/** The repository root: the nearest folder above this file whose package.json is kvcascade's. */
export function repoRoot(from = dirname(fileURLToPath(import.meta.url))): string {
  for (let dir = from; ; dir = dirname(dir)) {
    const pkg = join(dir, 'package.json');
    if (existsSync(pkg) && (JSON.parse(readFileSync(pkg, 'utf8')) as { name?: string }).name === 'kvcascade') return dir;
    if (dirname(dir) === dir) throw new Error(`no kvcascade package.json above ${from}`);
  }
}

/** Renders doc comment parts as Markdown: `{@link X}` becomes `X` in code. */
function docText(parts: readonly ts.SymbolDisplayPart[]): string {
  let out = '';
  for (const p of parts) {
    if (p.kind === 'link') continue; // the `{@link ` and `}` around a link
    if (p.kind === 'linkName') out += `\`${p.text}\``;
    else out += p.text;
  }
  return out.trim();
}

/** A symbol's doc comment (and its tags other than `@internal`), as Markdown. */
function docOf(symbol: ts.Symbol, checker: ts.TypeChecker): string {
  const text = docText(symbol.getDocumentationComment(checker));
  const tags = symbol
    .getJsDocTags(checker)
    .filter((t) => t.name !== 'internal')
    .map((t) => `*@${t.name}* ${docText(t.text ?? [])}`.trim());
  return [text, ...tags].filter((s) => s !== '').join('\n\n');
}

/** Source text on one line (runs of whitespace collapsed). */
const oneLine = (s: string): string => s.replace(/\s+/g, ' ').trim();

/** Text for a Markdown table cell: one line, pipes escaped. */
const cell = (s: string): string => oneLine(s).replace(/\|/g, '\\|');

/** The text of `node` without its body (functions) or members (interfaces, classes). */
function signatureOf(node: ts.Node): string {
  const text = node.getText();
  const start = node.getStart();
  if ((ts.isFunctionDeclaration(node) || ts.isMethodDeclaration(node)) && node.body) return text.slice(0, node.body.getStart() - start).trim() + ';';
  return text;
}

/** The members of an interface or class, as a table (each with its doc comment). */
function membersTable(node: ts.InterfaceDeclaration | ts.ClassDeclaration, checker: ts.TypeChecker): string {
  const rows: string[] = [];
  for (const m of node.members) {
    if (ts.isClassDeclaration(node) && (ts.getCombinedModifierFlags(m as ts.Declaration) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) !== 0) continue;
    if (m.name && ts.isPrivateIdentifier(m.name)) continue;
    const symbol = m.name ? checker.getSymbolAtLocation(m.name) : undefined;
    const doc = symbol ? docOf(symbol, checker) : '';
    rows.push(`| \`${cell(signatureOf(m).replace(/;$/, ''))}\` | ${cell(doc.replace(/\n\n/g, ' '))} |`);
  }
  if (rows.length === 0) return '';
  return ['| Member | Description |', '| --- | --- |', ...rows].join('\n');
}

/** What kind of declaration `node` is, for its heading. */
function kindOf(node: ts.Node): string {
  if (ts.isInterfaceDeclaration(node)) return 'interface';
  if (ts.isTypeAliasDeclaration(node)) return 'type';
  if (ts.isFunctionDeclaration(node)) return 'function';
  if (ts.isClassDeclaration(node)) return 'class';
  if (ts.isVariableDeclaration(node)) return 'const';
  if (ts.isEnumDeclaration(node)) return 'enum';
  return ts.SyntaxKind[node.kind];
}

/** One exported declaration as Markdown. */
function renderDeclaration(name: string, symbol: ts.Symbol, decl: ts.Declaration, checker: ts.TypeChecker): string {
  const parts = [`### \`${name}\` (${kindOf(decl)})`];
  const doc = docOf(symbol, checker);
  if (doc) parts.push(doc);
  if (ts.isInterfaceDeclaration(decl) || ts.isClassDeclaration(decl)) {
    const head = decl.getText().slice(0, decl.members.pos - decl.getStart()).replace(/\{\s*$/, '').trim();
    parts.push('```ts\n' + oneLine(head) + '\n```');
    const table = membersTable(decl, checker);
    if (table) parts.push(table);
  } else if (ts.isVariableDeclaration(decl)) {
    const list = decl.parent;
    const keyword = ts.isVariableDeclarationList(list) && list.flags & ts.NodeFlags.Const ? 'const' : 'let';
    parts.push('```ts\n' + `${keyword} ${decl.getText()}` + '\n```');
  } else {
    parts.push('```ts\n' + signatureOf(decl) + '\n```');
  }
  return parts.join('\n\n');
}

/** The Markdown of one entry point: its exports in source order; re-exports of another entry point are listed by name. */
function renderEntry(entry: ApiEntry, root: string, program: ts.Program, checker: ts.TypeChecker, documented: Map<ts.Symbol, string>): string {
  const source = program.getSourceFile(join(root, entry.file));
  if (!source) throw new Error(`${entry.file} is not part of the program`);
  const moduleSymbol = checker.getSymbolAtLocation(source);
  if (!moduleSymbol) throw new Error(`${entry.file} has no exports`);
  const own: { pos: number; text: string }[] = [];
  const reexported: string[] = [];
  for (const exported of checker.getExportsOfModule(moduleSymbol)) {
    const target = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported;
    const decl = target.declarations?.[0];
    if (!decl) continue;
    const elsewhere = documented.get(target);
    if (elsewhere) {
      reexported.push(`\`${exported.name}\` (see ${elsewhere})`);
      continue;
    }
    documented.set(target, `\`${entry.specifier}\``);
    const file = decl.getSourceFile();
    // Declarations from another file (re-exported) come after this file's, by file then position.
    const pos = file === source ? decl.getStart() : 1e9 + program.getSourceFiles().indexOf(file) * 1e7 + decl.getStart();
    own.push({ pos, text: renderDeclaration(exported.name, target, decl, checker) });
  }
  own.sort((a, b) => a.pos - b.pos);
  const out = [`## \`${entry.specifier}\``, `Source: \`${entry.file}\`. ${entry.intro}`];
  if (reexported.length > 0) out.push(`Also exports ${reexported.join(', ')}.`);
  out.push(...own.map((o) => o.text));
  return out.join('\n\n');
}

/** The reference's Markdown, generated from the sources under `root`. */
export function generateApiDocs(root = repoRoot()): string {
  const files = API_ENTRIES.map((e) => join(root, e.file));
  const config = ts.getParsedCommandLineOfConfigFile(join(root, 'tsconfig.json'), {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: (d) => { throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n')); } });
  const program = ts.createProgram(files, { ...(config?.options ?? {}), noEmit: true });
  const checker = program.getTypeChecker();
  const documented = new Map<ts.Symbol, string>();
  const sections = API_ENTRIES.map((e) => renderEntry(e, root, program, checker, documented));
  const header = [
    '<!-- Generated by scripts/gen-api-docs.ts from the types: do not edit. Run `npm run docs:api` after changing them (test/docs/extension-api.test.ts checks it is current). -->',
    '# Extension API reference',
    `The types an extension author uses, generated from their declarations and doc comments (${API_ENTRIES.map((e) => `\`${e.file}\``).join(', ')}). ` +
      'How extensions are loaded, delivered and retried is in the README ("Extensions: your code next to the data").',
  ];
  return [...header, ...sections].join('\n\n') + '\n';
}

/** Writes the reference to {@link API_DOC_PATH} under `root`; returns the path written. */
export function writeApiDocs(root = repoRoot()): string {
  const path = join(root, API_DOC_PATH);
  writeFileSync(path, generateApiDocs(root));
  return path;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const root = repoRoot();
  console.log(`wrote ${relative(root, writeApiDocs(root))}`);
}
