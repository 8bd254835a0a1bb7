import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { io, loadTokenizer, tensor } from '../lib';
import { ENDOFTEXT, byteLevelJson } from './helpers/tokenizers';
import { loadModel } from '../lib/models';
import { readSafetensors, relErr } from './helpers/reference';

const CLI = path.resolve(__dirname, '../dist/cli/index.js');
const FIX = path.join(__dirname, 'fixtures/peft');
const run = (...args: string[]) => {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout, err: r.stderr };
};
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-cli-'));

beforeAll(() => {
  if (!fs.existsSync(CLI)) throw new Error('dist/ is missing: run `npm run build` (npm test does) first');
});

/** The fixture's input_ids as a JSONL file, one row per line. */
function idsFile(model: string): string {
  const e = readSafetensors(path.join(FIX, model, 'expected.safetensors')).get('input_ids')!;
  const ids = Array.from(e.data as BigInt64Array, Number);
  const f = path.join(tmp(), 'ids.jsonl');
  fs.writeFileSync(f, `${JSON.stringify({ input_ids: ids.slice(0, 24) })}\n\n${JSON.stringify({ input_ids: ids.slice(24) })}\n`);
  return f;
}

describe.each(['tiny-gpt2', 'tiny-llama'])('lorakit on %s', (name) => {
  const dir = path.join(FIX, name);
  const expected = readSafetensors(path.join(dir, 'expected.safetensors'));
  const ex = (k: string) => (expected.get(k)!.data as Float64Array)[0]!;

  test('eval --json gives the transformers loss with and without the adapter', () => {
    const data = idsFile(name);
    const base = run('eval', '--model', dir, '--data', data, '--json');
    expect(base.code).toBe(0);
    const b = JSON.parse(base.out);
    expect(b.tokens).toBe(46);
    expect(Math.abs(b.loss - ex('base_loss')) / ex('base_loss')).toBeLessThan(1e-5);
    expect(b.perplexity).toBeCloseTo(Math.exp(b.loss), 8);
    const lora = JSON.parse(run('eval', '--model', dir, '--adapter', dir, '--data', data, '--json').out);
    expect(Math.abs(lora.loss - ex('lora_loss')) / ex('lora_loss')).toBeLessThan(1e-5);
  });

  test('merge writes a checkpoint whose logits are PEFT merge_and_unload logits', () => {
    const out = tmp();
    const r = run('merge', '--model', dir, '--adapter', dir, '--out', out);
    expect(r.code).toBe(0);
    const m = /max \|Δlogit\| ([\d.e+-]+), relative ([\d.e+-]+)/.exec(r.out)!;
    expect(Number(m[2])).toBeLessThan(1e-5);
    expect(fs.existsSync(path.join(out, 'config.json'))).toBe(true);
    using model = loadModel(out);
    const e = expected.get('input_ids')!;
    const res = model.forward(tensor(e.data as BigInt64Array, e.shape), { returnLogits: true });
    expect(relErr(res.logits!.toFloat32Array(), expected.get('merged_logits')!.data as Float64Array)).toBeLessThan(1e-5);
    // Same tensor names and shapes as the base checkpoint (a tied head is not written twice).
    const base = io.readSafetensorsHeader(path.join(dir, 'model.safetensors')).tensors;
    const mine = io.readSafetensorsHeader(path.join(out, 'model.safetensors')).tensors;
    const norm = (k: string) => (name === 'tiny-gpt2' && !k.startsWith('transformer.') ? `transformer.${k}` : k);
    expect([...mine.keys()].sort()).toEqual([...base.keys()].map(norm).sort());
    for (const [k, v] of base) expect(mine.get(norm(k))!.shape).toEqual(v.shape);
  });

  test('inspect --json counts the parameters the checkpoint holds', () => {
    const r = run('inspect', dir, '--json');
    expect(r.code).toBe(0);
    const info = JSON.parse(r.out);
    const stored = [...io.readSafetensorsHeader(path.join(dir, 'model.safetensors')).tensors.values()].reduce((s, t) => s + t.shape.reduce((a, b) => a * b, 1), 0);
    expect(info.parameters).toBe(stored);
    expect(info.modelType).toBe(name === 'tiny-gpt2' ? 'gpt2' : 'llama');
    expect(info.modules.length).toBe(name === 'tiny-gpt2' ? 4 : 7);
  });
});

describe('lorakit errors and help', () => {
  test('every command has --help', () => {
    for (const c of ['inspect', 'eval', 'merge']) {
      const r = run(c, '--help');
      expect(r.code).toBe(0);
      expect(r.out).toMatch(new RegExp(`lorakit ${c}`));
    }
    expect(run('--help').out).toMatch(/inspect.*\n.*eval.*\n.*merge/s);
  });

  test('bad input is one clear line and a non-zero exit, never a stack trace', () => {
    const bad = path.join(tmp(), 'bad.jsonl');
    fs.writeFileSync(bad, '{"input_ids": [1, 2]}\n{"input_ids": [1, "x"]}\n');
    const r1 = run('eval', '--model', path.join(FIX, 'tiny-gpt2'), '--data', bad);
    expect(r1.code).toBe(1);
    expect(r1.err).toMatch(/bad\.jsonl:2: 'input_ids' must be a non-empty array of non-negative integers/);
    expect(r1.err).not.toMatch(/\n\s+at /);
    const r2 = run('eval', '--model', '/no/such/model', '--data', idsFile('tiny-gpt2'));
    expect(r2.code).toBe(1);
    expect(r2.err).toMatch(/no\/such\/model\/config\.json/);
    const text = path.join(tmp(), 'text.jsonl');
    fs.writeFileSync(text, '{"text": "hello"}\n');
    const r3 = run('eval', '--model', path.join(FIX, 'tiny-gpt2'), '--data', text);
    expect(r3.code).toBe(1);
    expect(r3.err).toMatch(/tokenizer\.json/);
    expect(run('frobnicate').code).toBe(2);
    expect(run('merge', '--model', path.join(FIX, 'tiny-gpt2')).code).toBe(2);
    const big = path.join(tmp(), 'big.jsonl');
    fs.writeFileSync(big, JSON.stringify({ input_ids: [1, 600] }) + '\n');
    const r4 = run('eval', '--model', path.join(FIX, 'tiny-gpt2'), '--data', big);
    expect(r4.code).toBe(1);
    expect(r4.err).toMatch(/example 1: .*token id 600 .*outside the vocabulary \[0, 512\)/);
  });
});

describe('lorakit eval on text', () => {
  // tiny-gpt2 (vocab 512) with a byte-level BPE tokenizer whose ids all fit in it.
  function modelWithTokenizer(): string {
    const dir = tmp();
    for (const f of ['config.json', 'model.safetensors']) fs.copyFileSync(path.join(FIX, 'tiny-gpt2', f), path.join(dir, f));
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(byteLevelJson()));
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|endoftext|>' }));
    return dir;
  }

  test('text lines are tokenized; prompt/completion takes loss on the completion (and eos) only', () => {
    const dir = modelWithTokenizer();
    const tok = loadTokenizer(dir);
    const data = path.join(tmp(), 'd.jsonl');
    fs.writeFileSync(data, [JSON.stringify({ text: 'hello world' }), JSON.stringify({ prompt: 'the world', completion: ' hello 1234' })].join('\n'));
    const r = JSON.parse(run('eval', '--model', dir, '--data', data, '--json').out);
    // The same numbers by hand: token sums of per-line losses with the prompt masked.
    using model = loadModel(dir);
    const lineLoss = (ids: number[], labels: number[]) => {
      const res = model.forward(tensor(BigInt64Array.from(ids, BigInt), [1, ids.length]), { labels: tensor(BigInt64Array.from(labels, BigInt), [1, labels.length]) });
      return { sum: res.loss * res.tokens, n: res.tokens };
    };
    const t = tok.encode('hello world');
    const p = tok.encode('the world'), c = tok.encode(' hello 1234', { addSpecialTokens: false });
    const eos = tok.eosTokenId!;
    expect(eos).toBe(ENDOFTEXT);
    const a = lineLoss(t, t);
    const b = lineLoss([...p, ...c, eos], [...p.map(() => -100), ...c, eos]);
    expect(r.tokens).toBe(a.n + b.n);
    expect(b.n).toBe(c.length + 1);
    expect(Math.abs(r.loss - (a.sum + b.sum) / (a.n + b.n))).toBeLessThan(1e-6);
  });
});
