/** The end of a layer stack, the same in every architecture. */
import { type NormSaved } from '../ops/nn';
import { type Tensor } from '../tensor/tensor';
import { type Scope, type Trunk } from './causal-lm';

/**
 * The trunk whose hidden state is the final norm's output (kept, with the statistics its backward
 * reads), and whose backward pass runs back through that norm, then through each layer from the last,
 * then into the embeddings.
 */
export function endTrunk(
  scope: Scope,
  finalNorm: { y: Tensor; saved: NormSaved },
  backward: {
    norm: (dHidden: Tensor) => Tensor;
    layers: number;
    /** Layer `l`'s backward: d(its output) in, d(its input) out. */
    layer: (l: number, dh: Tensor) => Tensor;
    embeddings: (dh: Tensor) => void;
  },
): Trunk {
  if (finalNorm.saved.mean) scope.keep(finalNorm.saved.mean);
  scope.keep(finalNorm.saved.rstd);
  return {
    hidden: scope.keep(finalNorm.y),
    backward: (dHidden: Tensor) => {
      let dh = scope.keep(backward.norm(dHidden));
      for (let l = backward.layers - 1; l >= 0; l--) dh = backward.layer(l, dh);
      backward.embeddings(dh);
    },
  };
}
