import { type MetricLine } from '../../lib/report';

/**
 * A short run's metrics.jsonl, as the report reads it: four training steps of falling loss, and the
 * eval and retain losses at step 0 and step 4 (eval falls by 0.7, retain rises by 0.1).
 */
export const RUN_METRICS: MetricLine[] = [
  ...[3, 2.5, 2.2, 2.0].map((loss, i) => ({ type: 'step' as const, step: i + 1, loss, lr: 1e-3 })),
  { type: 'eval', step: 0, split: 'eval', loss: 3.1 },
  { type: 'eval', step: 4, split: 'eval', loss: 2.4 },
  { type: 'eval', step: 0, split: 'retain', loss: 2.0 },
  { type: 'eval', step: 4, split: 'retain', loss: 2.1 },
];
