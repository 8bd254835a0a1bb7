/**
 * The dependency rule of ARCHITECTURE.md, enforced: lib/ is in tiers that import only downward, with no cycle
 * between files or packages. The tier table is read from ARCHITECTURE.md itself, so the page and the rule
 * cannot drift apart. Type-only imports count: a type that crosses a tier upward is the same coupling.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

const ROOT = path.join(__dirname, '..');
const LIB = path.join(ROOT, 'lib');

interface Placement {
  tier: number;
  /** A path relative to lib/: a folder ends in '/'. */
  path: string;
}

/** The tier table of ARCHITECTURE.md: `| tier | paths |` rows, lowest tier first. */
export function readTiers(markdown: string): { names: string[]; placements: Placement[] } {
  const names: string[] = [];
  const placements: Placement[] = [];
  for (const line of markdown.split('\n')) {
    const m = /^\|\s*([a-z]+)\s*\|\s*([^|]*\.ts[^|]*|[^|]*\/[^|]*)\|\s*$/.exec(line);
    if (!m || m[1] === 'tier') continue;
    names.push(m[1]!);
    for (const p of m[2]!.split(',').map((s) => s.trim()).filter(Boolean)) placements.push({ tier: names.length - 1, path: p });
  }
  return { names, placements };
}

/** The tier of a file (relative to lib/): an exact file placement wins over its folder's. */
export function tierOf(file: string, placements: readonly Placement[]): Placement | undefined {
  return placements.find((p) => p.path === file) ?? placements.filter((p) => p.path.endsWith('/') && file.startsWith(p.path)).sort((a, b) => b.path.length - a.path.length)[0];
}

/** Every relative module a TypeScript file names: import/export ... from, side-effect and dynamic imports, require. */
export function importsOf(source: string): string[] {
  const out: string[] = [];
  const re = /\b(?:from|import)\s*\(?\s*['"](\.{1,2}\/[^'"]*)['"]|\brequire\(\s*['"](\.{1,2}\/[^'"]*)['"]\s*\)/g;
  for (let m = re.exec(source); m; m = re.exec(source)) out.push((m[1] ?? m[2])!);
  return out;
}

function resolve(from: string, spec: string): string | undefined {
  const base = path.join(path.dirname(from), spec).replace(/\.js$/, '');
  for (const c of [`${base}.ts`, path.join(base, 'index.ts')]) if (fs.existsSync(path.join(LIB, c))) return c;
  return undefined;
}

function libFiles(dir = ''): string[] {
  return fs.readdirSync(path.join(LIB, dir), { withFileTypes: true }).flatMap((e) => {
    const rel = path.posix.join(dir, e.name);
    return e.isDirectory() ? libFiles(rel) : rel.endsWith('.ts') ? [rel] : [];
  });
}

/** Strongly connected components of more than one node, or a node importing itself (Tarjan). */
export function cycles(edges: ReadonlyMap<string, ReadonlySet<string>>): string[][] {
  let index = 0;
  const idx = new Map<string, number>(), low = new Map<string, number>(), stack: string[] = [], on = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index++);
    stack.push(v);
    on.add(v);
    for (const w of edges.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (on.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const c: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        on.delete(w);
        c.push(w);
      } while (w !== v);
      if (c.length > 1 || edges.get(v)?.has(v)) out.push(c.sort());
    }
  };
  for (const v of [...edges.keys()].sort()) if (!idx.has(v)) visit(v);
  return out;
}

/** The package of a file: its top folder under lib/, or the file itself at the top. */
function packageOf(file: string): string {
  const dir = path.posix.dirname(file);
  return dir === '.' ? file : `${dir.split('/')[0]}/`;
}

interface Graph {
  unplaced: string[];
  upward: string[];
  fileCycles: string[][];
  packageCycles: string[][];
}

export function checkGraph(files: ReadonlyMap<string, string>, markdown: string): Graph {
  const { names, placements } = readTiers(markdown);
  const fileEdges = new Map<string, Set<string>>(), pkgEdges = new Map<string, Set<string>>();
  const unplaced: string[] = [], upward: string[] = [];
  for (const file of files.keys()) {
    fileEdges.set(file, new Set());
    if (!tierOf(file, placements)) unplaced.push(file);
  }
  for (const [file, source] of files) {
    const from = tierOf(file, placements);
    for (const spec of importsOf(source)) {
      const target = [`${path.posix.join(path.posix.dirname(file), spec)}.ts`, path.posix.join(path.posix.dirname(file), spec, 'index.ts')]
        .map((c) => path.posix.normalize(c.replace(/\.js\.ts$/, '.ts')))
        .find((c) => files.has(c));
      if (!target) continue;
      fileEdges.get(file)!.add(target);
      const to = tierOf(target, placements);
      if (!from || !to) continue;
      if (to.tier > from.tier) upward.push(`${file} (${names[from.tier]}) imports ${target} (${names[to.tier]})`);
      const a = packageOf(file), b = packageOf(target);
      if (a !== b) (pkgEdges.get(a) ?? pkgEdges.set(a, new Set()).get(a)!).add(b);
    }
  }
  return { unplaced, upward, fileCycles: cycles(fileEdges), packageCycles: cycles(pkgEdges) };
}

const markdown = fs.readFileSync(path.join(ROOT, 'ARCHITECTURE.md'), 'utf8');

describe('the dependency rule of ARCHITECTURE.md', () => {
  const files = new Map(libFiles().map((f) => [f, fs.readFileSync(path.join(LIB, f), 'utf8')] as const));
  const graph = checkGraph(files, markdown);

  test('the tier table names six tiers, lowest first', () => {
    expect(readTiers(markdown).names).toEqual(['core', 'kernels', 'models', 'workflows', 'presentation', 'api']);
  });

  test('every file under lib/ has a tier', () => {
    expect(graph.unplaced).toEqual([]);
  });

  test('no import goes up a tier (type-only imports included)', () => {
    expect(graph.upward).toEqual([]);
  });

  test('no two files import each other, directly or around a loop', () => {
    expect(graph.fileCycles).toEqual([]);
  });

  test('no two packages import each other, directly or around a loop', () => {
    expect(graph.packageCycles).toEqual([]);
  });

  test('every import under lib/ resolves, so none escapes the check', () => {
    const unresolved = [...files].flatMap(([f, src]) => importsOf(src).filter((s) => !resolve(f, s)).map((s) => `${f}: ${s}`));
    expect(unresolved).toEqual([]);
  });
});

describe('the rule fails where it should (a planted tree)', () => {
  const table = '| tier | paths (relative to lib/) |\n| --- | --- |\n| core | errors.ts, tensor/ |\n| kernels | ops/, lora/ |\n| models | models/, adapters/ |\n';
  const tree = (extra: Record<string, string>) =>
    new Map(Object.entries({
      'errors.ts': '',
      'tensor/tensor.ts': "import { LorakitError } from '../errors';",
      'ops/matmul.ts': "import { Tensor } from '../tensor/tensor';",
      'lora/linear.ts': "import { matmul } from '../ops/matmul';",
      'adapters/adapter.ts': "import { type CausalLM } from '../models/causal-lm';\nimport { linearForward } from '../lora/linear';",
      'models/causal-lm.ts': "import { linearForward } from '../lora/linear';",
      ...extra,
    }));

  test('the clean tree passes', () => {
    expect(checkGraph(tree({}), table)).toEqual({ unplaced: [], upward: [], fileCycles: [], packageCycles: [] });
  });

  test('a type-only import up a tier is caught', () => {
    const g = checkGraph(tree({ 'tensor/tensor.ts': "import type { Op } from '../ops/matmul';" }), table);
    expect(g.upward).toEqual(['tensor/tensor.ts (core) imports ops/matmul.ts (kernels)']);
  });

  test('a file cycle within one folder is caught', () => {
    const g = checkGraph(tree({ 'models/a.ts': "import { b } from './b';", 'models/b.ts': "export { a } from './a';" }), table);
    expect(g.fileCycles).toEqual([['models/a.ts', 'models/b.ts']]);
  });

  test('a package cycle is caught even where no file cycle is', () => {
    const g = checkGraph(tree({ 'models/a.ts': "import { x } from '../adapters/adapter';" }), table);
    expect(g.fileCycles).toEqual([]);
    expect(g.packageCycles).toEqual([['adapters/', 'models/']]);
  });

  test('a file the table does not place is named, and a dynamic import counts', () => {
    const g = checkGraph(tree({ 'sweep/run.ts': "const m = await import('../models/causal-lm');" }), table);
    expect(g.unplaced).toEqual(['sweep/run.ts']);
    const up = checkGraph(tree({ 'errors.ts': "const t = require('./tensor/tensor');" }), table);
    expect(up.fileCycles).toEqual([['errors.ts', 'tensor/tensor.ts']]);
  });
});
