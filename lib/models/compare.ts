/** How far one model's logits are from another's: the merge error that merge and export report. */

/** Largest absolute difference, and the Frobenius norm of the difference over the reference's. */
export function logitsError(reference: Float32Array, got: Float32Array): { maxAbs: number; relative: number } {
  let maxAbs = 0, num = 0, den = 0;
  for (let i = 0; i < reference.length; i++) {
    const d = Math.abs(reference[i]! - got[i]!);
    maxAbs = Math.max(maxAbs, d);
    num += d * d;
    den += reference[i]! * reference[i]!;
  }
  return { maxAbs, relative: Math.sqrt(num / (den || 1)) };
}
