/** The lines of a trainer's metrics.jsonl (lib/train/loop.ts, evaluator.ts and checkpointer.ts write them). */
import * as fs from 'node:fs';
import { LorakitError } from '../errors';

export interface StepLine {
  type: 'step';
  step: number;
  loss: number;
  lr: number;
  gradNorm?: number;
  tokens?: number;
  tokensPerSec?: number;
  elapsed?: number;
}

export interface EvalLine {
  type: 'eval';
  step: number;
  split: string;
  loss: number;
  perplexity?: number;
  tokens?: number;
}

export type MetricLine = StepLine | EvalLine;

const isNumber = (v: unknown): v is number => typeof v === 'number';

/**
 * The step and eval lines of a metrics.jsonl. Lines of other types are passed over, so that a report
 * still reads the files of a trainer that logs more; a line that is not JSON, or a step or eval line
 * without its numbers, is an error naming the line.
 */
export function readMetrics(file: string): MetricLine[] {
  const out: MetricLine[] = [];
  fs.readFileSync(file, 'utf8').split(/\r?\n/).forEach((text, i) => {
    if (text.trim() === '') return;
    const where = `${file}:${i + 1}`;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new LorakitError('ERR_INVALID_ARG', `${where}: not a JSON line`);
    }
    if (typeof value !== 'object' || value === null) throw new LorakitError('ERR_INVALID_ARG', `${where}: not a JSON object`);
    const m = value as Record<string, unknown>;
    // null is how JSON.stringify writes a NaN loss; it is kept as NaN so the plot shows the gap.
    const loss = m.loss === null ? NaN : m.loss;
    if (m.type === 'step') {
      if (!isNumber(m.step) || !isNumber(loss)) throw new LorakitError('ERR_INVALID_ARG', `${where}: a step line needs numbers 'step' and 'loss'`);
      out.push({ ...(m as Omit<StepLine, 'loss'>), type: 'step', loss, lr: isNumber(m.lr) ? m.lr : NaN });
    } else if (m.type === 'eval') {
      if (!isNumber(m.step) || !isNumber(loss) || typeof m.split !== 'string')
        throw new LorakitError('ERR_INVALID_ARG', `${where}: an eval line needs 'step', 'split' and 'loss'`);
      out.push({ ...(m as Omit<EvalLine, 'loss'>), type: 'eval', loss });
    }
  });
  return out;
}
