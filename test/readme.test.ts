/**
 * The README, as a new user follows it. Its TypeScript examples are compiled with this repository's
 * TypeScript and the tsconfig.json the README gives, against the package ('lorakit' resolves to this
 * repository, as if installed), and run with node, exactly as printed but for one replacement: the model
 * folder './SmolLM-135M', which a test cannot download, becomes the tiny Llama of test/fixtures/peft. The
 * set-up instructions must name every system package that CI's clean-machine script installs for the
 * README's commands, and that the tests ask for when one is missing.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const root = path.resolve(__dirname, '..');
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
const model = path.join(root, 'test', 'fixtures', 'peft', 'tiny-llama');
const shipped = path.join(root, 'assets', 'default');

interface Block { lang: string; code: string; before: string }

/** Every fenced block, with the prose between it and the block before it. */
function blocks(): Block[] {
  const out: Block[] = [];
  const fence = /^```(\w*)\n([\s\S]*?)^```$/gm;
  let last = 0;
  for (let m; (m = fence.exec(readme)); last = fence.lastIndex) out.push({ lang: m[1]!, code: m[2]!, before: readme.slice(last, m.index) });
  return out;
}

/** The packages of every `apt-get install` in a shell text (options dropped). */
const aptPackages = (sh: string): string[] =>
  [...sh.matchAll(/apt-get install ([^\n;&|`]*)/g)].flatMap((m) => m[1]!.split(/\s+/).filter((w) => w && !w.startsWith('-') && !w.startsWith('>')));

describe('the TypeScript examples, compiled with the tsconfig.json the README gives and run with node', () => {
  let work: string;
  const examples = blocks().filter((b) => b.lang === 'ts');
  const run = (i: number) => execFileSync(process.execPath, [path.join(work, `example-${i}.js`)], { cwd: work, encoding: 'utf8', timeout: 60000 });

  beforeAll(() => {
    const config = blocks().find((b) => b.lang === 'json' && b.before.includes('tsconfig.json'));
    if (!config) throw new Error('README.md: no ```json block after a mention of tsconfig.json (the settings its examples compile with)');
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-readme-'));
    fs.writeFileSync(path.join(work, 'tsconfig.json'), config.code);
    // An installed package, as far as TypeScript and node can tell: node_modules/lorakit is this repository.
    fs.mkdirSync(path.join(work, 'node_modules'));
    fs.symlinkSync(root, path.join(work, 'node_modules', 'lorakit'), 'junction');
    // And the Node typings the README has the user install beside TypeScript.
    fs.mkdirSync(path.join(work, 'node_modules', '@types'));
    fs.symlinkSync(path.join(root, 'node_modules', '@types', 'node'), path.join(work, 'node_modules', '@types', 'node'), 'junction');
    examples.forEach((b, i) => {
      const uses = b.code.split("'./SmolLM-135M'").length - 1;
      expect(uses).toBeLessThanOrEqual(1);
      // Generation needs a tokenizer, which the tiny fixture lacks: that example runs on the shipped model.
      fs.writeFileSync(path.join(work, `example-${i}.ts`), b.code.replace("'./SmolLM-135M'", JSON.stringify(i === 2 ? shipped : model)));
    });
    const compiled = spawnSync(process.execPath, [tsc, '-p', work], { cwd: work, encoding: 'utf8' });
    if (compiled.status !== 0) throw new Error(`the README's examples do not compile with its tsconfig.json:\n${compiled.stdout}${compiled.stderr}`);
  }, 120000);

  afterAll(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  test('there are three examples: tensors and kernels, a model and an adapter, generation', () => {
    expect(examples).toHaveLength(3);
    expect(examples[0]!.code).toContain('nf4.quantize');
    expect(examples[1]!.code).toContain("loadModel('./SmolLM-135M'");
    expect(examples[2]!.code).toContain('model.generate(');
  });

  test('the generation example streams what lorakit generate prints, then a greedy and a sampled completion', () => {
    const out = run(2).split('\n');
    const cli = spawnSync(process.execPath, [path.join(root, 'dist', 'cli', 'index.js'), 'generate', '--model', shipped, '--prompt', 'Once upon a time', '--max-tokens', '24', '--json'], { encoding: 'utf8' });
    const want = JSON.parse(cli.stdout) as { text: string };
    expect(want.text.length).toBeGreaterThan(0);
    expect(out[0]).toBe(want.text);
    const last = JSON.parse(out[1]!) as { greedy: string; sampled: string; finish: string };
    expect(last.greedy).toBe(want.text);
    expect(last.sampled).not.toBe(want.text);
    expect(['stop', 'length']).toContain(last.finish);
  });

  test('the tensor, QLoRA layer and AdamW example runs on Node 20 and prints the backend it used', () => {
    expect(run(0)).toMatch(/active: 'cpu'/);
  });

  test('the model example runs and writes a PEFT adapter of the rank, alpha and modules it asked for', () => {
    run(1);
    const config = JSON.parse(fs.readFileSync(path.join(work, 'my-adapter', 'adapter_config.json'), 'utf8'));
    expect(config).toMatchObject({ peft_type: 'LORA', r: 16, lora_alpha: 32 });
    // 'all-linear' on a Llama: every projection of attention and MLP (PEFT's expansion, the head excluded).
    expect([...config.target_modules].sort()).toEqual(['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);
    expect(fs.statSync(path.join(work, 'my-adapter', 'adapter_model.safetensors')).size).toBeGreaterThan(0);
  });
});

describe('the set-up instructions', () => {
  const setUp = readme.slice(readme.indexOf('## Set up'), readme.indexOf('\n## ', readme.indexOf('## Set up') + 1));
  const named = new Set(aptPackages(setUp));

  test('name every system package that CI installs on a clean machine before the README commands', () => {
    const ci = aptPackages(fs.readFileSync(path.join(root, '.ci', 'run'), 'utf8'));
    expect(ci).toEqual(expect.arrayContaining(['cmake', 'g++', 'make', 'python3', 'chromium']));
    expect(ci.filter((p) => !named.has(p))).toEqual([]);
  });

  test('name every package a test asks for when it is missing', () => {
    const asked = fs.readdirSync(path.join(root, 'test')).filter((f) => f.endsWith('.test.ts') && f !== path.basename(__filename))
      .flatMap((f) => aptPackages(fs.readFileSync(path.join(root, 'test', f), 'utf8')))
      .filter((p) => /^[a-z0-9][a-z0-9+.-]*$/.test(p));
    expect(asked).toContain('chromium');
    expect(asked.filter((p) => !named.has(p))).toEqual([]);
  });
});

describe('the command lines', () => {
  const cli = path.join(root, 'dist', 'cli', 'index.js');
  const lorakit = (args: string[]) => execFileSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 60000 });
  // Each `lorakit ...` line of the shell blocks, continuation lines joined and comments dropped.
  const lines = blocks()
    .filter((b) => b.lang === 'sh')
    .flatMap((b) => b.code.replace(/\\\n\s*/g, ' ').split('\n'))
    .map((l) => l.replace(/\s+#.*$/, '').trim())
    .filter((l) => l.startsWith('lorakit '));

  test('every `lorakit` line names a subcommand whose --help lists each option the line uses', () => {
    expect(lines.length).toBeGreaterThanOrEqual(10);
    const unknown: string[] = [];
    for (const line of lines) {
      const words = line.match(/"[^"]*"|\S+/g)!.slice(1);
      const firstOption = words.findIndex((w) => w.startsWith('-'));
      const command = firstOption < 0 ? words : words.slice(0, firstOption);
      const help = lorakit([...command, '--help']);
      expect(help).toMatch(new RegExp(`^lorakit ${command[0]}\\b`, 'm'));
      for (const option of words.filter((w) => w.startsWith('--'))) {
        const name = option.slice(2).replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
        // yargs lists a one-letter option as -r.
        const listed = new RegExp(name.length === 1 ? `(^|\\s)-${name}[,\\s]` : `--${name}(?![\\w-])`, 'm');
        if (!listed.test(help)) unknown.push(`${line}: ${option}`);
      }
    }
    expect(unknown).toEqual([]);
  });

  test('`lorakit inspect` on a model folder prints the architecture its config.json gives', () => {
    const line = lines.find((l) => l.startsWith('lorakit inspect '))!;
    const out = lorakit(line.split(/\s+/).slice(1).map((w) => (w === './SmolLM-135M' ? model : w)));
    const config = JSON.parse(fs.readFileSync(path.join(model, 'config.json'), 'utf8'));
    expect(out).toContain(`llama: ${config.num_hidden_layers} layers, hidden ${config.hidden_size}`);
    expect(out).toContain(`vocab ${config.vocab_size}`);
  });
});
