/**
 * What combining adapters costs each of them: for each combination method, every adapter's eval loss on
 * its own data, alone against combined. A workflow over lib/adapters/combine.ts (the combination itself),
 * loading models, data and tokenizers and evaluating.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitTypeError } from '../errors';
import { checkOptions, show } from '../check';
import { type CausalLM } from '../models/causal-lm';
import { loadModel } from '../models';
import { evaluate } from '../train/evaluate';
import { loadExamples } from '../data/load';
import { type Example } from '../data/example';
import { loadTokenizer } from '../tokenizer/hub';
import { type Tokenizer } from '../tokenizer/tokenizer';
import { loadAdapter } from '../adapters/adapter';
import { METHODS, checkAdapters, checkUnmerged, clearAdapters, combineAdapters, deltaError, type CombineMethod, type WeightedAdapter } from '../adapters/combine';

export interface InterferenceAdapter extends WeightedAdapter {
  /** The adapter's own evaluation data: a .jsonl / .txt file (see loadExamples), or examples. */
  evalData: string | readonly Example[];
}

export interface InterferenceOptions {
  /** Default: all three. */
  methods?: CombineMethod[];
  /** The rank of 'svd'. */
  rank?: number;
  /** Tokenizes file evalData; by default the base folder's tokenizer when it has one. */
  tokenizer?: Tokenizer | null;
}

export interface AdapterInterference {
  dir: string;
  /** Eval loss on its own data with only this adapter (at weight 1, as trained). */
  alone: number;
  /** Eval loss on the same data with the combined adapter. */
  combined: number;
  /** combined - alone: the interference. */
  rise: number;
}

export interface MethodInterference {
  method: CombineMethod;
  /** The combined update's relative error against the exact weighted sum (DeltaError.relative). */
  deltaError: number;
  adapters: AdapterInterference[];
}

/**
 * For each method, combines the adapters and measures each adapter's own eval loss rise against using
 * it alone. `base` is a model folder (loaded and freed here) or a model, which is left without adapters.
 */
export function interference(base: string | CausalLM, adapters: InterferenceAdapter[], options: InterferenceOptions = {}): MethodInterference[] {
  const op = 'interference';
  const o = checkOptions<InterferenceOptions>(op, options);
  const methods = o.methods ?? [...METHODS];
  if (!Array.isArray(methods) || methods.length === 0 || methods.some((m) => !METHODS.includes(m)))
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'methods' must be a non-empty list of ${METHODS.map((m) => `'${m}'`).join(', ')}, got ${show(methods)}`);
  const weighted = checkAdapters(op, adapters);
  let tokenizer: Tokenizer | null = o.tokenizer ?? null;
  if (o.tokenizer === undefined && typeof base === 'string' && fs.existsSync(path.join(base, 'tokenizer.json'))) tokenizer = loadTokenizer(base);
  const data = adapters.map((a, i) => {
    if (typeof a.evalData === 'string') return loadExamples(a.evalData, tokenizer);
    if (Array.isArray(a.evalData)) return a.evalData;
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: adapters[${i}].evalData must be a file path or an array of examples, got ${show(a.evalData)}`);
  });
  const model = typeof base === 'string' ? loadModel(base) : base;
  checkUnmerged(op, model);
  try {
    const alone = weighted.map(({ dir }, i) => {
      clearAdapters(model);
      loadAdapter(model, dir);
      return evaluate(model, data[i]!).loss;
    });
    return methods.map((method) => {
      combineAdapters(model, weighted, { method, rank: method === 'svd' ? o.rank : undefined });
      const err = deltaError(model, weighted).relative;
      return {
        method,
        deltaError: err,
        adapters: weighted.map(({ dir }, i) => {
          const combined = evaluate(model, data[i]!).loss;
          return { dir, alone: alone[i]!, combined, rise: combined - alone[i]! };
        }),
      };
    });
  } finally {
    if (typeof base === 'string') model.dispose();
    else clearAdapters(model);
  }
}
