/** Learning-rate schedules: linear warmup, then cosine or linear decay to zero (or constant). */
export type ScheduleKind = 'cosine' | 'linear' | 'constant';

/** The learning rate for 0-based optimizer step `step` of `total`. */
export function learningRate(step: number, total: number, peak: number, warmup: number, kind: ScheduleKind): number {
  // Steps count from 0, so a warmup of 0 steps never takes this branch.
  if (step < warmup) return (peak * (step + 1)) / warmup;
  if (kind === 'constant') return peak;
  const span = Math.max(1, total - warmup);
  const progress = Math.min(1, (step - warmup) / span);
  return kind === 'cosine' ? peak * 0.5 * (1 + Math.cos(Math.PI * progress)) : peak * (1 - progress);
}
