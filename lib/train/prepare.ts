/**
 * A run's data step: the tokenizer, the training examples and their batches, the eval sets, and the
 * step counts these give.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Batcher, loadExamples, seededPermutation, type Example } from '../data';
import { ByteTokenizer, loadTokenizer, type Tokenizer } from '../tokenizer';
import { readModelConfig } from '../io/config';
import type { Resolved } from './options';

export interface TrainData {
  /** The examples the batches hold (without the held-out ones). */
  train: Example[];
  /** Named eval sets in the order they are evaluated and logged: heldout, eval, retain. */
  evalSets: [string, Example[]][];
  batcher: Batcher;
  totalSteps: number;
  warmup: number;
  evalEvery: number;
}

/** Loads the model folder's tokenizer, or the byte tokenizer (said out loud) when it has none. */
function tokenizerFor(dir: string, log: (s: string) => void): Tokenizer {
  if (fs.existsSync(path.join(dir, 'tokenizer.json'))) return loadTokenizer(dir);
  log(`note: ${dir} has no tokenizer.json; using lorakit's byte tokenizer (ids 0-255 are UTF-8 bytes)`);
  return new ByteTokenizer();
}

/** Deterministic split of the training examples into train and held-out parts. */
function holdOut(examples: Example[], share: number, seed: number): { train: Example[]; heldOut: Example[] } {
  if (share === 0 || examples.length < 2) return { train: examples, heldOut: [] };
  const n = Math.max(1, Math.round(examples.length * share));
  // Stream -1: never an epoch number, so the split is independent of every epoch's order.
  const held = new Set(seededPermutation(examples.length, seed, -1).subarray(0, n));
  return { train: examples.filter((_, i) => !held.has(i)), heldOut: examples.filter((_, i) => held.has(i)) };
}

/** Reads and tokenizes every data file of the run, and works out its length in optimizer steps. */
export function prepareData(o: Resolved, log: (line: string) => void): TrainData {
  const tokenizer = tokenizerFor(o.model, log);
  // Every file's examples longer than the model's context are split there: evaluation takes a whole example
  // at a time, and its attention costs memory quadratic in the length.
  const reading = { maxLength: readModelConfig(o.model).maxPositions, onWarning: (m: string) => log(`warning: ${m}`) };
  const all = loadExamples(o.data, tokenizer, reading);
  const split = o.evalData ? { train: all, heldOut: [] } : holdOut(all, o.evalSplit, o.seed);
  const evalSets: [string, Example[]][] = [];
  if (split.heldOut.length) evalSets.push(['heldout', split.heldOut]);
  if (o.evalData) evalSets.push(['eval', loadExamples(o.evalData, tokenizer, reading)]);
  if (o.retainData) evalSets.push(['retain', loadExamples(o.retainData, tokenizer, reading)]);
  const padId = tokenizer.padTokenId ?? tokenizer.eosTokenId ?? 0;
  const batcher = new Batcher(split.train, { seqLen: o.seqLen, batchSize: o.batchSize, pack: o.pack, seed: o.seed, padId });
  const totalSteps = o.steps ?? Math.max(1, Math.ceil(((o.epochs ?? 1) * batcher.batchesPerEpoch) / o.gradAccum));
  return {
    train: split.train,
    evalSets,
    batcher,
    totalSteps,
    warmup: o.warmup ?? Math.floor(totalSteps * 0.03),
    evalEvery: o.evalEvery ?? Math.max(1, Math.ceil(totalSteps / 5)),
  };
}
