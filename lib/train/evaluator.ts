/** A run's evaluation step: every eval set's loss, logged against its value before training. */
import { type CausalLM } from '../models/causal-lm';
import { type Example } from '../data';
import { evaluateAsync } from './evaluate';
import { type RunIO } from './run-io';
import type { EvalRecord, Resolved } from './options';

export class Evaluator {
  /** Every evaluation of this process, in order. */
  readonly evals: EvalRecord[] = [];
  /** Each eval set's loss before training began (a resumed run's come from its checkpoint). */
  readonly baseline: Map<string, number>;
  #retainWarned = false;

  constructor(
    private readonly model: CausalLM,
    private readonly evalSets: readonly [string, Example[]][],
    private readonly o: Pick<Resolved, 'lr' | 'method'>,
    baselines: Record<string, number>,
    private readonly io: RunIO,
  ) {
    this.baseline = new Map(Object.entries(baselines));
  }

  /**
   * Evaluates every set at `step`: the first non-retain set's loss, the one the best weights are chosen
   * by (null when there is none, or when `stopping` cut the evaluation short).
   */
  async run(step: number, stopping: () => boolean): Promise<number | null> {
    let primary: number | null = null;
    for (const [name, ex] of this.evalSets) {
      const r = await evaluateAsync(this.model, ex, stopping);
      if (r === null) return null;
      const rec: EvalRecord = { step, split: name, loss: r.loss, perplexity: r.perplexity, tokens: r.tokens };
      this.evals.push(rec);
      this.io.metric({ type: 'eval', ...rec });
      this.io.emitter.emit('eval', rec);
      if (!this.baseline.has(name)) this.baseline.set(name, r.loss);
      const start = this.baseline.get(name)!, delta = r.loss - start;
      this.io.log(`eval ${name} @ step ${step}: loss ${r.loss.toFixed(4)} (ppl ${r.perplexity.toFixed(2)}, ${r.tokens} tokens)${step > 0 ? `, ${delta >= 0 ? '+' : ''}${delta.toFixed(4)} vs start${name === 'retain' ? ' (forgetting)' : ''}` : ''}`);
      if (name === 'retain') this.#warnForgetting(start, r.loss);
      if (name !== 'retain' && primary === null) primary = r.loss;
    }
    return primary;
  }

  /** Once per run, when the retain loss has doubled or risen by more than 1 nat. */
  #warnForgetting(start: number, loss: number): void {
    if (this.#retainWarned || !(loss > 2 * start || loss - start > 1)) return;
    this.#retainWarned = true;
    const { lr, method } = this.o;
    this.io.log(
      `warning: the retain loss rose from ${start.toFixed(4)} to ${loss.toFixed(4)}: the model is losing what it knew. ` +
        `The learning rate ${lr} is likely too high${method === 'full' ? ' for full fine-tuning, which needs rates about 10x below LoRA\'s (lorakit\'s default for full is 2e-5)' : ''}; lower --lr`,
    );
  }
}
