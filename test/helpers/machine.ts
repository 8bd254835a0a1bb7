import { backend } from '../../lib';

/**
 * What this machine has, so tests assert it instead of assuming a CPU-only box: a test that checked
 * "device 'cuda' is not available" would fail on the first machine with a card.
 */
export const gpuCount = (): number => (backend().active === 'cpu' ? 0 : backend().gpus.length);

/** A device one past the last that exists: never available, on any machine. */
export const missingDevice = (): string => `cuda:${gpuCount()}`;

/** The CPU kernels this machine can run, and a loud line for each it cannot (their tests are skipped). */
export function cpuKernels(suite: string): string[] {
  const f = backend().cpu.features;
  const wide = ['avx2', 'avx512'] as const;
  const run = ['generic', ...wide.filter((k) => f[k])];
  const skipped = wide.filter((k) => !f[k]);
  if (skipped.length) console.warn(`${suite}: this CPU lacks ${skipped.join(' and ')}: those kernels' tests are SKIPPED here (${run.join(' and ')} tested)`);
  return run;
}

/** The error a tensor op gives for missingDevice(), on this machine. */
export const missingDeviceError = (): RegExp =>
  gpuCount() === 0 ? /device 'cuda:0' is not available: no GPU backend is active/ : new RegExp(`device 'cuda:${gpuCount()}' does not exist: ${gpuCount()} GPU\\(s\\) visible`);
