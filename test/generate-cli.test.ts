/**
 * `lorakit generate`: what it prints against the model's own full forward pass (greedy argmax at every step),
 * for a plain model, an adapter unmerged and merged, an NF4 base, and JSONL prompts; and its refusals.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModel } from '../lib/models';
import { type CausalLM } from '../lib/models/causal-lm';
import { addAdapter, loadAdapter, saveAdapter } from '../lib/adapters/adapter';
import { loadTokenizer } from '../lib/tokenizer/hub';
import { tempDirs } from './helpers/tmp';
import { fullArgmax } from './helpers/greedy';

const CLI = path.resolve(__dirname, '../dist/cli/index.js');
const MODEL = path.resolve(__dirname, '../assets/default');
const tokenizer = loadTokenizer(MODEL);
const tmp = tempDirs('lorakit-generate-cli-');

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, 'generate', ...args], { encoding: 'utf8', timeout: 120_000 });
}

function jsonLines(out: string): { prompt: string; text: string; tokens: number[]; finish_reason: string }[] {
  return out.trim().split('\n').map((l) => JSON.parse(l));
}

/** Greedy continuation by the full forward pass: no cache, no engine; it ends at end-of-sequence as generate does. */
function reference(m: CausalLM, prompt: string, n: number): number[] {
  const ids = tokenizer.encode(prompt);
  const out: number[] = [];
  for (let t = 0; t < n; t++) {
    const { token } = fullArgmax(m, [...ids, ...out]);
    if (m.config.eosTokenId.includes(token)) break;
    out.push(token);
  }
  return out;
}

const PROMPTS = ['Once upon a time', 'Q: Where does Nell keep the yellow mirror?\nA:'];

let adapterDir = '';
beforeAll(() => {
  using m = loadModel(MODEL);
  addAdapter(m, { r: 8, loraAlpha: 16, targetModules: 'all-linear', initLoraWeights: false, seed: 4 });
  adapterDir = tmp();
  saveAdapter(m, adapterDir);
});

test('greedy --json output equals the full forward argmax, token by token', () => {
  const r = cli('--model', MODEL, ...PROMPTS.flatMap((p) => ['--prompt', p]), '--max-tokens', '16', '--json');
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
  const rows = jsonLines(r.stdout);
  using m = loadModel(MODEL);
  rows.forEach((row, i) => {
    expect(row.prompt).toBe(PROMPTS[i]);
    expect(row.tokens).toEqual(reference(m, PROMPTS[i]!, 16));
    expect(row.text).toBe(tokenizer.decode(row.tokens, { skipSpecialTokens: true }));
  });
});

test('an adapter, unmerged and --merge, each as the model with it attached computes', () => {
  const unmerged = jsonLines(cli('--model', MODEL, '--adapter', adapterDir, '--prompt', PROMPTS[0]!, '--max-tokens', '12', '--json').stdout);
  const merged = jsonLines(cli('--model', MODEL, '--adapter', adapterDir, '--merge', '--prompt', PROMPTS[0]!, '--max-tokens', '12', '--json').stdout);
  using m = loadModel(MODEL);
  const base = reference(m, PROMPTS[0]!, 12);
  loadAdapter(m, adapterDir);
  const want = reference(m, PROMPTS[0]!, 12);
  expect(want).not.toEqual(base); // the adapter changes the output, or this test proves nothing
  expect(unmerged[0]!.tokens).toEqual(want);
  expect(merged[0]!.tokens).toEqual(want);
});

test('--quantize generates on the NF4 base QLoRA trains', () => {
  const r = jsonLines(cli('--model', MODEL, '--quantize', '--prompt', PROMPTS[1]!, '--max-tokens', '10', '--json').stdout);
  using m = loadModel(MODEL, { quantize: true });
  expect(r[0]!.tokens).toEqual(reference(m, PROMPTS[1]!, 10));
});

test('--data reads prompts from a JSONL file (prompt/completion and text rows), in order', () => {
  const file = path.join(tmp(), 'p.jsonl');
  fs.writeFileSync(file, `${JSON.stringify({ prompt: PROMPTS[1], completion: ' In the kitchen.' })}\n\n${JSON.stringify({ text: PROMPTS[0] })}\n`);
  const rows = jsonLines(cli('--model', MODEL, '--data', file, '--max-tokens', '8', '--json').stdout);
  expect(rows.map((r) => r.prompt)).toEqual([PROMPTS[1], PROMPTS[0]]);
  using m = loadModel(MODEL);
  expect(rows[0]!.tokens).toEqual(reference(m, PROMPTS[1]!, 8));
  expect(rows[1]!.tokens).toEqual(reference(m, PROMPTS[0]!, 8));
});

test('plain output streams the text; a stop string ends it', () => {
  const full = jsonLines(cli('--model', MODEL, '--prompt', PROMPTS[0]!, '--max-tokens', '20', '--json').stdout)[0]!;
  expect(cli('--model', MODEL, '--prompt', PROMPTS[0]!, '--max-tokens', '20').stdout).toBe(`${full.text}\n`);
  const cut = full.text.slice(5, 9);
  const stopped = jsonLines(cli('--model', MODEL, '--prompt', PROMPTS[0]!, '--max-tokens', '20', '--stop', cut, '--json').stdout)[0]!;
  expect(stopped.text).toBe(full.text.slice(0, full.text.indexOf(cut)));
  expect(stopped.finish_reason).toBe('stop');
});

test('refusals name what is wrong', () => {
  const none = cli('--model', MODEL);
  expect(none.status).not.toBe(0);
  expect(none.stderr).toMatch(/--prompt .* or --data/);
  const merge = cli('--model', MODEL, '--merge', '--prompt', 'x');
  expect(merge.stderr).toMatch(/--merge needs --adapter/);
  const bad = cli('--model', MODEL, '--prompt', 'x', '--temperature', '-1');
  expect(bad.status).not.toBe(0);
  expect(bad.stderr).toMatch(/temperature.*-1/);
  const missing = cli('--model', path.join(tmp(), 'nope'), '--prompt', 'x');
  expect(missing.status).not.toBe(0);
  expect(missing.stderr).toMatch(/nope/);
});
