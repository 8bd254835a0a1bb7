import { type LabReport } from '../../lib/lab';

/** A mean over `n` seeds with its 95% half-width, as the lab's tables print it (sd is not shown). */
export const summary = (mean: number, ci95: number, n = 3) => ({ n, mean, sd: 0, ci95 });

/** One arm of a lab report: an r 8, alpha 16 adapter on every linear layer unless `fields` say otherwise. */
export const labArm = (fields: Record<string, unknown>) => ({
  target: 'all-linear', r: 8, alpha: 16, rslora: false, scale: 2, trainableParameters: 125952, ...fields,
});

/**
 * A --quick lab's report with one task, knowledge (2000 training and 150 held-out questions, answers of
 * 9 tokens), trained with the quick settings; `lab` gives the seeds, the retain losses and the run
 * counts, `knowledge` the base scores, the quantization tax and the arms.
 */
export function quickLab(lab: Record<string, unknown>, knowledge: Record<string, unknown>): LabReport {
  const base = knowledge.base as object, nf4Base = knowledge.nf4Base as object;
  return {
    version: 1, quick: true, base: 'b', runs: [],
    settings: { steps: 40, batchSize: 8, seqLen: 64, evalExamples: 64, retainDocs: 64, loraLr: 0.002, fullLr: 0.0005 },
    ...lab,
    tasks: { knowledge: { train: 2000, eval: 150, ...knowledge, base: { ...base, tokens: 9 }, nf4Base: { ...nf4Base, tokens: 9 } } },
  } as unknown as LabReport;
}
