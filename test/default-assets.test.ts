/**
 * The assets `lorakit train` uses with no arguments (assets/default, written by scripts/build-default.mjs):
 * they load, agree with each other, and the task's eval set is held out.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { evaluate, io, loadModel, loadTokenizer, readJsonl, tensor, tokenize, type DataRecord } from '../lib';

const DIR = path.join(__dirname, '../assets/default');
const ROOMS = new Set(['cellar', 'attic', 'barn', 'kitchen', 'pantry', 'workshop', 'garden shed', 'hallway']);

/** Documents of a corpus-style text file: separated by blank lines. */
function documents(file: string): string[] {
  return fs.readFileSync(path.join(DIR, file), 'utf8').split('\n\n').map((d) => d.trim()).filter((d) => d !== '');
}

function prompts(records: DataRecord[]): { prompt: string; completion: string }[] {
  return records.map((r) => {
    if (r.kind !== 'prompt') throw new Error(`expected prompt/completion records, got ${r.kind}`);
    return r;
  });
}

test('every file is there, and the folder stays small', () => {
  const files = ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors', 'corpus.txt', 'retain.txt', 'train.jsonl', 'eval.jsonl', 'README.md'];
  for (const f of files) expect(fs.existsSync(path.join(DIR, f))).toBe(true);
  const total = fs.readdirSync(DIR).reduce((s, f) => s + fs.statSync(path.join(DIR, f)).size, 0);
  expect(total).toBeLessThan(8e6);
});

test('config.json is a tiny llama whose vocabulary covers the tokenizer', () => {
  const config = io.readModelConfig(DIR);
  const tok = loadTokenizer(DIR);
  expect(config.modelType).toBe('llama');
  expect(config.tieWordEmbeddings).toBe(true);
  expect(config.numKvHeads).toBeLessThan(config.numHeads);
  expect(config.vocabSize % 64).toBe(0);
  expect(config.vocabSize).toBeGreaterThanOrEqual(tok.vocabSize);
  expect(config.eosTokenId).toEqual([tok.eosTokenId]);
  expect(tok.modelMaxLength).toBe(config.maxPositions);
});

test('the tokenizer round-trips corpus and held-out text, with <|endoftext|> as bos, eos and pad', () => {
  const tok = loadTokenizer(DIR);
  const eot = tok.tokenToId('<|endoftext|>');
  expect(eot).toBeDefined();
  expect([tok.bosTokenId, tok.eosTokenId, tok.padTokenId]).toEqual([eot, eot, eot]);
  const docs = [...documents('corpus.txt').slice(0, 40), ...documents('retain.txt').slice(0, 20)];
  let tokens = 0, bytes = 0;
  for (const doc of docs) {
    const ids = tok.encode(doc);
    expect(ids[0]).toBe(eot);
    expect(ids.slice(1)).not.toContain(eot);
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe(doc);
    tokens += ids.length;
    bytes += Buffer.byteLength(doc);
  }
  // The merges cover most words of the corpus: far fewer tokens than bytes.
  expect(tokens).toBeLessThan(bytes / 3);
});

test('train and eval are the same task, and no eval prompt is in train', () => {
  const train = prompts(readJsonl(path.join(DIR, 'train.jsonl')));
  const evalSet = prompts(readJsonl(path.join(DIR, 'eval.jsonl')));
  expect(train.length).toBeGreaterThanOrEqual(1000);
  expect(evalSet.length).toBeGreaterThanOrEqual(100);
  const form = /^Q: Where does [A-Z][a-z]+ keep the [a-z]+ [a-z]+\?\nA:$/;
  for (const r of [...train, ...evalSet]) {
    expect(r.prompt).toMatch(form);
    const room = /^ In the ([a-z ]+)\.$/.exec(r.completion)?.[1];
    expect(ROOMS.has(room!)).toBe(true);
  }
  const trainPrompts = new Set(train.map((r) => r.prompt));
  expect(trainPrompts.size).toBe(train.length);
  expect(evalSet.filter((r) => trainPrompts.has(r.prompt))).toEqual([]);
  // The answer is a function of the colour, the same in both sets.
  const rule = new Map<string, string>();
  for (const r of [...train, ...evalSet]) {
    const colour = / the ([a-z]+) [a-z]+\?/.exec(r.prompt)![1]!;
    expect(rule.get(colour) ?? r.completion).toBe(r.completion);
    rule.set(colour, r.completion);
  }
  expect(rule.size).toBe(8);
});

test('the model loads, its corpus loss is far below chance, and the task is not already solved', () => {
  using model = loadModel(DIR);
  const tok = loadTokenizer(DIR);
  const ids = documents('retain.txt').slice(0, 30).flatMap((d) => tok.encode(d)).slice(0, 2 * 128);
  expect(ids.length).toBe(256);
  using x = tensor(BigInt64Array.from(ids, BigInt), [2, 128]);
  const { loss } = model.forward(x);
  expect(Number.isFinite(loss)).toBe(true);
  expect(loss).toBeLessThan(0.5 * Math.log(model.config.vocabSize));

  const evalEx = tokenize(readJsonl(path.join(DIR, 'eval.jsonl')), tok).slice(0, 40);
  for (const ex of evalEx) expect(ex.inputIds.length).toBeLessThanOrEqual(model.config.maxPositions);
  const r = evaluate(model, evalEx);
  expect(Number.isFinite(r.loss)).toBe(true);
  // Fine-tuning has something to learn: the base model does not know the colour-to-room rule.
  expect(r.loss).toBeGreaterThan(0.3);
});
