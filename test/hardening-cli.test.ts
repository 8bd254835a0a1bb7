/**
 * Issue #11, the command-line part: no command writes over what it reads, every file-system failure is
 * one lorakit line (no hang, no stack), pipes closed early are quiet, unknown flags get a suggestion,
 * and the rough edges of inspect, merge, eval, plan and sweep.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tensor } from '../lib';
import { runLab } from '../lib/lab';
import { loadExamples } from '../lib/data/load';
import { loadAdapter } from '../lib/adapters/adapter';
import { loadModel } from '../lib/models';
import { evaluate } from '../lib/train/evaluate';
import { configurations, parseSpec } from '../lib/sweep/spec';
import { readSafetensors } from './helpers/reference';
import { tempDirs } from './helpers/tmp';

const CLI = path.resolve(__dirname, '../dist/cli/index.js');
const FIX = path.join(__dirname, 'fixtures/peft');
const LLAMA = path.join(FIX, 'tiny-llama');
const tmp = tempDirs('lorakit-hcli-');
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr, signal: r.signal };
};
const STACK = /\n\s+at /;

beforeAll(() => {
  if (!fs.existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does) first');
});
/** A copy of the tiny Llama fixture (model and adapter in one folder), so a test may try to damage it. */
function fixtureCopy(): string {
  const dir = path.join(tmp(), 'model');
  fs.cpSync(LLAMA, dir, { recursive: true });
  return dir;
}

/** ‖got − ref‖ / ‖ref‖ (Frobenius), as merge reports its relative error. */
function frobeniusError(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    num += (got[i]! - ref[i]!) ** 2;
    den += ref[i]! ** 2;
  }
  return Math.sqrt(num / den);
}

function snapshot(dir: string): Record<string, string> {
  return Object.fromEntries(fs.readdirSync(dir).map((f) => [f, fs.readFileSync(path.join(dir, f)).toString('base64')]));
}

describe('the dispatcher', () => {
  test('a closed stdout pipe (lorakit ... | head) ends quietly with code 0', () => {
    // `true` exits without reading, so every write of lorakit meets a closed pipe.
    const r = spawnSync('bash', ['-c', `set -o pipefail; "${process.execPath}" "${CLI}" inspect "${LLAMA}" | true`], { encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  test('a lorakit error is one line and exit code 1; any other error is a bug and keeps its stack', async () => {
    const { runCommand } = await import('../lib/cli/run');
    const { LorakitError } = await import('../lib');
    const writes: string[] = [];
    const write = jest.spyOn(process.stderr, 'write').mockImplementation((s: string | Uint8Array) => (writes.push(String(s)), true));
    const code = process.exitCode;
    try {
      runCommand('merge', () => {
        throw new LorakitError('ERR_IO', "cannot write '/x'");
      });
      expect(writes).toEqual(["lorakit merge: cannot write '/x'\n"]);
      expect(process.exitCode).toBe(1);
      const bug = new TypeError('undefined is not a function');
      expect(() => runCommand('merge', () => { throw bug; })).toThrow(bug);
      expect(bug.stack).toMatch(/^TypeError: undefined is not a function\n +at /);
      expect(writes).toHaveLength(1);
    } finally {
      write.mockRestore();
      process.exitCode = code;
    }
  });

  test('an unknown option names the nearest one and the command help', () => {
    const r = run('merge', '--model', LLAMA, '--adpter', LLAMA, '--out', path.join(tmp(), 'o'));
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/^lorakit merge: unknown option --adpter \(did you mean --adapter\?\)\nRun `lorakit merge --help` for usage\.\n$/);
    // Before the positional: yargs alone would take the folder as the flag's value and say a positional is missing.
    const i = run('inspect', '--jsn', LLAMA);
    expect(i.err).toMatch(/unknown option --jsn \(did you mean --json\?\)/);
    expect(i.err).toMatch(/lorakit inspect --help/);
    // camelCase spellings and --no- negations of known options are not unknown.
    expect(run('inspect', LLAMA, '--no-json').code).toBe(0);
    expect(run('plan', '--params', '1B', '--seqLen', '128', '--json').code).toBe(0);
    const far = run('plan', '--params', '1B', '--frobnicate');
    expect(far.err).toMatch(/unknown option --frobnicate\n/);
  });

  test('file-system failures are one ERR_IO line naming the path, never a hang or a stack', () => {
    const file = path.join(tmp(), 'a-file');
    fs.writeFileSync(file, 'x');
    const cases: [string, RegExp][] = [
      ['/proc/lorakit-test/x', /cannot create folder '\/proc\/lorakit-test\/x'/],
      ['/dev/null', /cannot create folder '\/dev\/null': '\/dev\/null' exists and is not a folder/],
      [path.join(file, 'x'), /cannot create folder '.*a-file\/x'.*\(ENOTDIR\)|'.*a-file' exists and is not a folder/],
    ];
    if (fs.existsSync('/sys/kernel')) cases.push(['/sys/kernel/lorakit-test', /cannot create folder '\/sys\/kernel\/lorakit-test'/]);
    for (const [out, message] of cases) {
      const r = run('merge', '--model', LLAMA, '--adapter', LLAMA, '--out', out);
      expect(r.signal).toBeNull();
      expect(r.code).toBe(1);
      expect(r.err).toMatch(/^lorakit merge: /);
      expect(r.err).toMatch(message);
      expect(r.err).not.toMatch(STACK);
      expect(r.err.trim().split('\n')).toHaveLength(1);
    }
  });
});

describe('merge never writes over its inputs', () => {
  test('--out a symlink to --model is refused and the model is unchanged', () => {
    const model = fixtureCopy();
    const before = snapshot(model);
    const link = path.join(path.dirname(model), 'link');
    fs.symlinkSync(model, link);
    const r = run('merge', '--model', model, '--adapter', model, '--out', link);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/--out '.*link' resolves to '.*model', which overlaps --model/);
    expect(snapshot(model)).toEqual(before);
    // A folder inside the model, and the adapter's folder, are refused too.
    expect(run('merge', '--model', model, '--adapter', model, '--out', path.join(model, 'merged')).err).toMatch(/overlaps --model/);
    const adapter = path.join(tmp(), 'adapter');
    fs.mkdirSync(adapter);
    for (const f of ['adapter_config.json', 'adapter_model.safetensors']) fs.copyFileSync(path.join(model, f), path.join(adapter, f));
    const adapterLink = path.join(tmp(), 'a');
    fs.symlinkSync(adapter, adapterLink);
    const ra = run('merge', '--model', model, '--adapter', adapter, '--out', adapterLink);
    expect(ra.code).toBe(1);
    expect(ra.err).toMatch(/overlaps --adapter/);
    expect(fs.existsSync(path.join(model, 'merged'))).toBe(false);
  });

  test('a file in --out that links to a model file is refused before anything is written', () => {
    const model = fixtureCopy();
    const before = snapshot(model);
    const out = path.join(tmp(), 'out');
    fs.mkdirSync(out);
    fs.symlinkSync(path.join(model, 'generation_config.json'), path.join(out, 'generation_config.json'));
    const r = run('merge', '--model', model, '--adapter', model, '--out', out);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/output file '.*generation_config\.json' resolves to '.*model\/generation_config\.json', which overlaps --model/);
    expect(fs.readdirSync(out)).toEqual(['generation_config.json']);
    expect(snapshot(model)).toEqual(before);
  });

  test('--dtype bfloat16 reports the error of the bf16 checkpoint it wrote, against PEFT', () => {
    const expected = readSafetensors(path.join(LLAMA, 'expected.safetensors'));
    const ids = Array.from(expected.get('input_ids')!.data as BigInt64Array, Number).slice(0, 24);
    const data = path.join(tmp(), 'probe.jsonl');
    fs.writeFileSync(data, `${JSON.stringify({ input_ids: ids })}\n`);
    // PEFT's unmerged logits of the first row: the exact W + s·B·A reference.
    const peft = (expected.get('lora_logits')!.data as Float64Array).subarray(0, 24 * 512);
    const relative = (dtype: string) => {
      const out = path.join(tmp(), dtype);
      const r = run('merge', '--model', LLAMA, '--adapter', LLAMA, '--out', out, '--dtype', dtype, '--data', data);
      expect(r.code).toBe(0);
      const m = /merge error of the written (\w+) checkpoint on .*: max \|Δlogit\| ([\d.e+-]+), relative ([\d.e+-]+)/.exec(r.out)!;
      expect(m[1]).toBe(dtype);
      using written = loadModel(out);
      using logits = written.forward(tensor(BigInt64Array.from(ids, BigInt), [1, 24]), { returnLogits: true }).logits!;
      return { reported: Number(m[3]), actual: frobeniusError(logits.toFloat32Array(), peft) };
    };
    const bf16 = relative('bfloat16');
    // bf16 has 8 significant bits: the written model is ~1e-3 off, which float32's figure (~1e-7) hid.
    expect(bf16.actual).toBeGreaterThan(1e-4);
    expect(Math.abs(bf16.reported - bf16.actual) / bf16.actual).toBeLessThan(0.01);
    const f32 = relative('float32');
    expect(f32.reported).toBeLessThan(1e-5);
    expect(f32.actual).toBeLessThan(1e-5);
  });
});

describe('the other writers never write over their inputs', () => {
  /** A tiny input_ids data file (vocab 512). */
  function idsData(dir: string, rows = 8): string {
    const f = path.join(dir, 'train.jsonl');
    fs.writeFileSync(f, Array.from({ length: rows }, (_, i) => JSON.stringify({ input_ids: Array.from({ length: 12 }, (_, j) => (7 * i + 3 * j) % 512) })).join('\n') + '\n');
    return f;
  }

  test('analyze --report onto the data file (through a symlink) or into the base is refused before the analysis', () => {
    const dir = tmp();
    const data = idsData(dir);
    const before = fs.readFileSync(data, 'utf8');
    const link = path.join(dir, 'report.html');
    fs.symlinkSync(data, link);
    const r = run('analyze', '--base', LLAMA, '--adapter', LLAMA, '--data', data, '--report', link);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^lorakit analyze: --report '.*report\.html' resolves to '.*train\.jsonl', which overlaps --data/);
    expect(fs.readFileSync(data, 'utf8')).toBe(before);
    const model = fixtureCopy();
    const inside = run('analyze', '--base', model, '--adapter', model, '--report', path.join(model, 'report.html'));
    expect(inside.err).toMatch(/overlaps --base/);
    expect(fs.existsSync(path.join(model, 'report.html'))).toBe(false);
  });

  test('a report that cannot be written is one ERR_IO line', () => {
    const r = run('analyze', '--base', LLAMA, '--adapter', LLAMA, '--report', '/proc/lorakit-test/report.html', '--k', '2');
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/^lorakit analyze: report: cannot create folder '\/proc\/lorakit-test'/);
    expect(r.err).not.toMatch(STACK);
  });

  test("sweep: an out that resolves to the model, and a --report onto the spec, are refused before any run", () => {
    const dir = tmp();
    const model = fixtureCopy();
    const before = snapshot(model);
    idsData(dir);
    fs.symlinkSync(model, path.join(dir, 'runs-link'));
    const spec = path.join(dir, 'spec.json');
    fs.writeFileSync(spec, JSON.stringify({ base: { model, data: 'train.jsonl', steps: 1, batchSize: 2, seqLen: 12, evalSplit: 0 }, seeds: [1], out: 'runs-link' }));
    const r = run('sweep', spec);
    expect(r.code).toBe(1);
    expect(r.err).toMatch(/sweep: the spec's out '.*runs-link' resolves to '.*model', which overlaps base\.model/);
    expect(snapshot(model)).toEqual(before);
    fs.writeFileSync(spec, JSON.stringify({ base: { model, data: 'train.jsonl', steps: 1, batchSize: 2, seqLen: 12, evalSplit: 0 }, seeds: [1], out: 'sweep-out' }));
    const specText = fs.readFileSync(spec, 'utf8');
    const onSpec = run('sweep', spec, '--report', spec);
    expect(onSpec.code).toBe(1);
    expect(onSpec.err).toMatch(/--report '.*spec\.json' resolves to '.*spec\.json', which overlaps the spec/);
    expect(fs.readFileSync(spec, 'utf8')).toBe(specText);
    expect(fs.existsSync(path.join(dir, 'sweep-out'))).toBe(false);
    const onResults = run('sweep', spec, '--report', path.join(dir, 'sweep-out', 'sweep.json'));
    expect(onResults.err).toMatch(/overlaps the sweep's sweep\.json/);
  });

  test('lab: an out inside the model it tunes, and a --report onto lab.json, are refused before any run', async () => {
    const model = fixtureCopy();
    const before = snapshot(model);
    await expect(runLab({ out: path.join(model, 'lab'), base: model, tasks: [], arms: [] })).rejects.toThrow(/lab: --out '.*model\/lab' resolves to .*which overlaps the lab model/);
    expect(snapshot(model)).toEqual(before);
    const out = tmp();
    const r = spawnSync(process.execPath, [CLI, 'lab', '--quick', '--out', out, '--report', path.join(out, 'lab.json')], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^lorakit lab: --report '.*lab\.json' resolves to .*which overlaps lab\.json/);
    expect(fs.readdirSync(out)).toEqual([]);
  });
});

describe('inspect and eval', () => {
  /** The fixture's adapter alone in a folder, as a training run's last/ would hold it. */
  function adapterOnly(parent = tmp(), name = 'adapter'): string {
    const dir = path.join(parent, name);
    fs.mkdirSync(dir, { recursive: true });
    for (const f of ['adapter_config.json', 'adapter_model.safetensors']) fs.copyFileSync(path.join(LLAMA, f), path.join(dir, f));
    return dir;
  }

  test('inspect describes an adapter folder: base, r, alpha, targets, rsLoRA, trainable parameters, tensors', () => {
    const dir = adapterOnly();
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    const tensors = readSafetensors(path.join(dir, 'adapter_model.safetensors'));
    const r = run('inspect', dir, '--json');
    expect(r.code).toBe(0);
    const a = JSON.parse(r.out).adapter;
    expect(a).toMatchObject({ baseModel: null, r: config.r, alpha: config.lora_alpha, rslora: config.use_rslora, tensors: tensors.size });
    expect(a.scale).toBeCloseTo(config.lora_alpha / Math.sqrt(config.r), 12);
    expect([...a.targetModules].sort()).toEqual([...config.target_modules].sort());
    expect(a.trainableParameters).toBe([...tensors.values()].reduce((s, t) => s + t.shape.reduce((x, y) => x * y, 1), 0));
    const text = run('inspect', dir);
    expect(text.code).toBe(0);
    expect(text.out).toMatch(/LoRA adapter: r=8, alpha 16, rsLoRA/);
    expect(text.out).toMatch(/trainable parameters: 18,688 in 28 tensors/);
    expect(run('inspect', tmp()).err).toMatch(/holds neither config\.json .* nor adapter_config\.json/);
  });

  /**
   * One-token completions after prefixes of the fixture's first row: PEFT's logits at the prefix's last
   * position (which see only the prefix) give the exact reference for the loss and for the argmax.
   */
  function completions(): { file: string; loss: number; exact: number; n: number } {
    const expected = readSafetensors(path.join(LLAMA, 'expected.safetensors'));
    const ids = Array.from(expected.get('input_ids')!.data as BigInt64Array, Number).slice(0, 24);
    const logits = expected.get('lora_logits')!.data as Float64Array;
    const lines: string[] = [];
    let nll = 0, hits = 0;
    const rowAt = (m: number) => Array.from(logits.subarray(m * 512, (m + 1) * 512));
    const ranked = (row: number[]) => row.map((v, i) => [v, i] as const).sort((x, y) => y[0] - x[0]);
    const gap = (m: number) => {
      const o = ranked(rowAt(m));
      return o[0]![0] - o[1]![0];
    };
    // The four prefixes whose top two logits are farthest apart: no near-tie that float rounding could flip.
    const prefixes = Array.from({ length: 22 }, (_, i) => i + 1).sort((a, b) => gap(b) - gap(a)).slice(0, 4);
    for (const m of prefixes) {
      const row = rowAt(m);
      const order = ranked(row);
      expect(order[0]![0] - order[1]![0]).toBeGreaterThan(1e-3);
      const lse = Math.log(row.reduce((s, v) => s + Math.exp(v - order[0]![0]), 0)) + order[0]![0];
      for (const [k, token] of [[0, order[0]![1]], [1, order[1]![1]]] as const) {
        const input = [...ids.slice(0, m + 1), token];
        lines.push(JSON.stringify({ input_ids: input, labels: input.map((t, j) => (j <= m ? -100 : t)) }));
        nll += lse - row[token]!;
        if (k === 0) hits++;
      }
    }
    const file = path.join(tmp(), 'completions.jsonl');
    fs.writeFileSync(file, lines.join('\n') + '\n');
    return { file, loss: nll / lines.length, exact: hits / lines.length, n: lines.length };
  }

  test('eval reports teacher-forced exact match and honours --max-examples', () => {
    const c = completions();
    const r = run('eval', '--model', LLAMA, '--adapter', LLAMA, '--data', c.file, '--json');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.out);
    expect(j.examples).toBe(c.n);
    expect(j.tokens).toBe(c.n);
    expect(j.exactMatch).toBe(c.exact);
    expect(Math.abs(j.loss - c.loss) / c.loss).toBeLessThan(1e-5);
    expect(j.quantized).toBe(false);
    // The first two examples: the argmax completion and the runner-up.
    const two = JSON.parse(run('eval', '--model', LLAMA, '--adapter', LLAMA, '--data', c.file, '--max-examples', '2', '--json').out);
    expect(two.examples).toBe(2);
    expect(two.exactMatch).toBe(0.5);
    const text = run('eval', '--model', LLAMA, '--adapter', LLAMA, '--data', c.file, '--max-examples', '3');
    expect(text.out).toMatch(/in 3 examples \(the first 3 of 8\)/);
    expect(text.out).toMatch(/exact match .*: 66\.7% \(2 of 3\)/);
    expect(run('eval', '--help').out).toMatch(/teacher-forced/);
    expect(run('eval', '--model', LLAMA, '--data', c.file, '--max-examples', '0').err).toMatch(/--max-examples must be an integer >= 1, got 0/);
  });

  test('eval runs on the NF4 base with --quantize, and by itself for an adapter a qlora run trained', () => {
    const c = completions();
    const evalLoss = (...extra: string[]) => {
      const r = run('eval', '--model', LLAMA, '--data', c.file, '--json', ...extra);
      expect(r.code).toBe(0);
      return { ...JSON.parse(r.out), err: r.err };
    };
    // The reference: the same examples through the NF4 base that QLoRA trains against, loaded by the library.
    using nf4 = loadModel(LLAMA, { quantize: true });
    loadAdapter(nf4, LLAMA);
    const reference = evaluate(nf4, loadExamples(c.file, null)).loss;
    const q = evalLoss('--adapter', LLAMA, '--quantize');
    expect(q.quantized).toBe(true);
    expect(Math.abs(q.loss - reference) / reference).toBeLessThan(1e-6);
    const float = evalLoss('--adapter', LLAMA);
    expect(Math.abs(float.loss - q.loss)).toBeGreaterThan(1e-4);
    // A run folder whose run.json says qlora: its last/ is evaluated on the NF4 base unless --no-quantize.
    const runDir = tmp();
    const last = adapterOnly(runDir, 'last');
    fs.writeFileSync(path.join(runDir, 'run.json'), JSON.stringify({ options: { method: 'qlora' } }));
    const auto = evalLoss('--adapter', last);
    expect(auto.quantized).toBe(true);
    expect(auto.loss).toBe(q.loss);
    expect(auto.err).toMatch(/run\.json says the adapter was trained with qlora: evaluating on the NF4 base/);
    expect(evalLoss('--adapter', last, '--no-quantize').loss).toBe(float.loss);
  });
});

describe('plan says what fits', () => {
  test('7B on an RTX 4090: the largest batch and sequence per method, and the assumptions', () => {
    const r = run('plan', '--params', '7B', '--gpu', 'RTX 4090', '--json');
    expect(r.code).toBe(0);
    const p = JSON.parse(r.out);
    // Llama-2-7B as published, and the plan's documented byte counts worked out by hand.
    const [h, layers, inter, vocab, heads] = [4096, 32, 11008, 32000, 32];
    expect(p.params).toBe(6_738_415_616);
    const linear = layers * (4 * h * h + 3 * h * inter);
    const lora = layers * 16 * (4 * (h + h) + 2 * (h + inter) + (inter + h));
    const nf4 = 0.5 + 1 / 64 + 4 / (64 * 256);
    const state = { full: 16 * p.params, lora: 2 * p.params + 16 * lora, qlora: nf4 * linear + 2 * (p.params - linear) + 16 * lora };
    const perLayer = 2 * (4 * h + 2 * h + 2 * h + 4 * inter) + 4 * heads;
    const perToken = (ckpt: boolean) => (ckpt ? layers * 2 * h + perLayer : layers * perLayer) + 6 * vocab;
    const usable = 0.9 * 24 * 2 ** 30;
    expect(p.usableBytes).toBeCloseTo(usable, 0);
    expect(p.fits).toHaveLength(6);
    for (const f of p.fits as { method: 'full' | 'lora' | 'qlora'; checkpointing: boolean; maxBatchSize: number; maxSeqLen: number; maxSeqLenBatch1: number }[]) {
      const tokens = Math.max(0, Math.floor((usable - state[f.method]) / perToken(f.checkpointing)));
      expect(f.maxBatchSize).toBe(Math.floor(tokens / 2048));
      expect(f.maxSeqLenBatch1).toBe(Math.min(4096, tokens));
      expect(f.maxSeqLen).toBe(Math.min(4096, Math.floor(tokens / 8)));
    }
    const qlora = p.fits.find((f: { method: string; checkpointing: boolean }) => f.method === 'qlora' && f.checkpointing);
    expect(qlora.maxBatchSize).toBeGreaterThanOrEqual(8);
    expect(p.fits.find((f: { method: string }) => f.method === 'full').maxSeqLenBatch1).toBe(0);
    // The plan agrees with itself: the hinted batch fits, one more does not.
    const at = (batch: number) =>
      JSON.parse(run('plan', '--params', '7B', '--gpu', 'RTX 4090', '--gradient-checkpointing', '--batch-size', String(batch), '--json').out).methods.find((m: { method: string }) => m.method === 'qlora').fits;
    expect(at(qlora.maxBatchSize)).toBe(true);
    expect(at(qlora.maxBatchSize + 1)).toBe(false);
    expect(p.assumptions.bytesPerParameter).toMatch(/full 16 .*NF4/);
    const text = run('plan', '--params', '7B', '--gpu', 'RTX 4090').out;
    expect(text).toMatch(new RegExp(`qlora +with gradient checkpointing +batch up to ${qlora.maxBatchSize} at 2,048 tokens`));
    expect(text).toMatch(/full +with gradient checkpointing +nothing: weights\+grads\+optimizer alone exceed the memory/);
    expect(text).toMatch(/assumptions: bytes per parameter: full 16/);
  });
});

describe('the sweep spec is documented with an example that is a valid spec', () => {
  test('`lorakit sweep --help` and the README show the same example, and it parses', () => {
    const help = run('sweep', '--help');
    expect(help.code).toBe(0);
    const example = /\n(\{\n[\s\S]*?\n\})\n/.exec(help.out)![1]!;
    const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
    expect(readme).toContain(`\`\`\`json\n${example}\n\`\`\``);
    const spec = parseSpec(JSON.parse(example), '/data');
    expect(spec.seeds).toEqual([1, 2, 3]);
    expect(spec.base.data).toBe('/data/train.jsonl');
    expect(configurations(spec).map((c) => c.label)).toEqual(['r=8 lr=0.0001', 'r=8 lr=0.0003', 'r=32 lr=0.0001', 'r=32 lr=0.0003']);
    for (const field of ['base:', 'axes:', 'seeds:', 'out:', 'parallel:', 'mode "random"']) expect(help.out).toContain(field);
  });
});
