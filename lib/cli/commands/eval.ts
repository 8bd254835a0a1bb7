import * as path from 'node:path';
import { isLorakitError, LorakitError, LorakitTypeError } from '../../errors';
import { readJsonl } from '../../data/jsonl';
import { type Example } from '../../data/example';
import { loadExamples } from '../../data/load';
import { readModelConfig } from '../../io/config';
import { score } from '../../lab/lab';
import { loadAdapter } from '../../adapters/adapter';
import { loadModel } from '../../models';
import { loadTokenizer } from '../../tokenizer';
import { command, print } from '../run';
import { jsonOption } from '../options';
import { trainingRecord } from '../../train/record';

export interface EvalReport {
  /** Token-weighted mean next-token cross-entropy over every counted position (transformers' reduction). */
  loss: number;
  perplexity: number;
  /** Positions that counted. */
  tokens: number;
  examples: number;
  /**
   * Share of examples whose every counted token (the completion, for prompt/completion and chat examples)
   * is the model's top prediction given the true prefix: teacher-forced, not generated.
   */
  exactMatch: number;
  /** The base's linear weights were NF4, as QLoRA trains against. */
  quantized: boolean;
}

/** Loss and exact match over the examples, one sequence and one forward pass each; errors name the example. */
function evaluateExamples(model: Parameters<typeof score>[0], examples: readonly Example[], quantized: boolean): EvalReport {
  let sum = 0, tokens = 0, hits = 0;
  examples.forEach((ex, i) => {
    let s;
    try {
      s = score(model, [ex]);
    } catch (e) {
      if (isLorakitError(e)) throw new LorakitError(e.code, `eval: example ${i + 1}: ${e.message}`);
      throw e;
    }
    if (s.tokens > 0) {
      sum += s.loss * s.tokens;
      tokens += s.tokens;
    }
    hits += s.exactMatch;
  });
  const loss = tokens > 0 ? sum / tokens : NaN;
  return { loss, perplexity: Math.exp(loss), tokens, examples: examples.length, exactMatch: examples.length ? hits / examples.length : NaN, quantized };
}

export const evalCommand = command({
  usage: 'eval',
  describe: 'Loss, perplexity and exact match of a model (and adapter) on a data file, one sequence per example',
  options: (a) =>
    a
      .option('model', { type: 'string', demandOption: true, describe: 'model folder' })
      .option('adapter', { type: 'string', describe: 'PEFT adapter folder' })
      .option('data', { type: 'string', demandOption: true, describe: 'JSONL ({"text"}, {"prompt","completion"}, {"messages"} or {"input_ids"} per line) or .txt' })
      .option('max-examples', { type: 'number', describe: 'evaluate only the first N examples of the file' })
      .option('quantize', {
        type: 'boolean',
        describe:
          'load the base with NF4 linear weights, as QLoRA trained against them [default: on when the adapter\'s lorakit training record (run.json, trainer_state.json) says qlora; --no-quantize turns it off]',
      })
      .option('json', jsonOption('print one JSON object: loss, perplexity, tokens, examples, exactMatch, quantized'))
      .epilogue(
        'Exact match is teacher-forced: an example counts when the model\'s top (argmax) prediction at every position with a loss ' +
          '(the completion, for prompt/completion and chat examples; every token of a text example) is the true next token, given the true ' +
          'tokens before it. It is what greedy decoding would write when it holds, without generating.',
      ),
  run: (argv) => {
    const max = argv.maxExamples;
    if (max !== undefined && !(Number.isInteger(max) && max >= 1)) throw new LorakitTypeError('ERR_INVALID_ARG', `eval: --max-examples must be an integer >= 1, got ${max}`);
    // input_ids lines need no tokenizer; anything else loads the model's (which names what is missing).
    const idsOnly = path.extname(argv.data) === '.jsonl' && readJsonl(argv.data).every((r) => r.kind === 'ids');
    // Examples longer than the model's context are split: one forward pass over the whole would need memory
    // quadratic in its length.
    const all = loadExamples(argv.data, idsOnly ? null : loadTokenizer(argv.model), {
      maxLength: readModelConfig(argv.model).maxPositions,
      onWarning: (m) => process.stderr.write(`lorakit eval: warning: ${m}\n`),
    });
    const examples = max === undefined ? all : all.slice(0, max);
    const record = argv.adapter ? trainingRecord(argv.adapter) : null;
    const quantize = argv.quantize ?? record?.method === 'qlora';
    if (argv.quantize === undefined && quantize)
      process.stderr.write(`lorakit eval: ${record!.file} says the adapter was trained with qlora: evaluating on the NF4 base (--no-quantize for float)\n`);
    using model = loadModel(argv.model, { quantize });
    if (argv.adapter) loadAdapter(model, argv.adapter);
    const r = evaluateExamples(model, examples, quantize);
    if (argv.json) return print(JSON.stringify(r));
    const what = `${path.basename(argv.model)}${quantize ? ' (NF4)' : ''}${argv.adapter ? ` + ${path.basename(argv.adapter)}` : ''}`;
    const of = examples.length < all.length ? ` (the first ${examples.length} of ${all.length})` : '';
    print(`${what} on ${path.basename(argv.data)}: loss ${r.loss.toFixed(6)}, perplexity ${r.perplexity.toFixed(4)} over ${r.tokens} tokens in ${r.examples} examples${of}`);
    print(`exact match (teacher-forced argmax of every counted token): ${(100 * r.exactMatch).toFixed(1)}% (${Math.round(r.exactMatch * r.examples)} of ${r.examples})`);
  },
});
