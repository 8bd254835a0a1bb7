/**
 * Issue #11, the command-line part: no command writes over what it reads, every file-system failure is
 * one lorakit line (no hang, no stack), pipes closed early are quiet, unknown flags get a suggestion,
 * and the rough edges of inspect, merge, eval, plan and sweep.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { tensor } from '../lib';
import { loadModel } from '../lib/models';
import { readSafetensors } from './helpers/reference';

const CLI = path.resolve(__dirname, '../dist/cli/index.js');
const FIX = path.join(__dirname, 'fixtures/peft');
const LLAMA = path.join(FIX, 'tiny-llama');
const dirs: string[] = [];
const tmp = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-hcli-'));
  dirs.push(d);
  return d;
};
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr, signal: r.signal };
};
const STACK = /\n\s+at /;

beforeAll(() => {
  if (!fs.existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does) first');
});
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
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
    const { runLab } = await import('../lib/lab');
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
