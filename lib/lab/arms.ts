/**
 * The lab's arms: where the adapter goes at a matched budget, how rank interacts with α/r against rsLoRA's
 * α/√r, a quantized base, and full fine-tuning.
 */
import { addAdapter } from '../adapters/adapter';
import { resolveTarget } from '../lora/config';
import { loadModel } from '../models';
import { type Method } from '../train/trainer';

export interface Arm {
  id: string;
  method: Method;
  /** The trainer's target preset; full fine-tuning trains every weight. */
  target: 'attention' | 'all-linear';
  r: number;
  alpha: number;
  rslora: boolean;
  what: string;
}

/**
 * On the default Llama (hidden 192, 2 of 4 heads for keys and values, MLP 672) one rank costs 1,344
 * parameters a layer on attention and 3,936 on every linear, so attention at r=32 and all-linear at r=11
 * train within 1% of the same number. The rank arms hold α at 16, the usual way of sweeping rank,
 * so α/r shrinks the update scale eightfold from r=8 to r=64 while α/√r shrinks it less.
 */
export const ARMS: readonly Arm[] = [
  { id: 'attn-r32', method: 'lora', target: 'attention', r: 32, alpha: 64, rslora: false, what: 'LoRA on attention, budget-matched to all-r11' },
  { id: 'all-r11', method: 'lora', target: 'all-linear', r: 11, alpha: 22, rslora: false, what: 'LoRA on all linears, budget-matched to attn-r32' },
  { id: 'r8', method: 'lora', target: 'all-linear', r: 8, alpha: 16, rslora: false, what: 'LoRA r=8, alpha/r' },
  { id: 'r8-rs', method: 'lora', target: 'all-linear', r: 8, alpha: 16, rslora: true, what: 'LoRA r=8, alpha/sqrt(r) (rsLoRA)' },
  { id: 'r64', method: 'lora', target: 'all-linear', r: 64, alpha: 16, rslora: false, what: 'LoRA r=64, alpha/r' },
  { id: 'r64-rs', method: 'lora', target: 'all-linear', r: 64, alpha: 16, rslora: true, what: 'LoRA r=64, alpha/sqrt(r) (rsLoRA)' },
  { id: 'qlora-r8', method: 'qlora', target: 'all-linear', r: 8, alpha: 16, rslora: false, what: 'QLoRA r=8 on the NF4 base (block 64, double quant)' },
  { id: 'full', method: 'full', target: 'all-linear', r: 0, alpha: 0, rslora: false, what: 'full fine-tuning of every weight' },
];

/** The scale an adapter's update is multiplied by. */
export function armScale(arm: Arm): number | null {
  if (arm.method === 'full') return null;
  return arm.rslora ? arm.alpha / Math.sqrt(arm.r) : arm.alpha / arm.r;
}

/** What the trainer will train for this arm, counted on the model itself rather than by formula. */
export function trainableParameters(base: string, arm: Arm): number {
  using model = loadModel(base);
  if (arm.method === 'full') model.requireFullGrad();
  else addAdapter(model, { r: arm.r, loraAlpha: arm.alpha, useRslora: arm.rslora, targetModules: resolveTarget(arm.target, model.linears.keys()) });
  return model.parameters().reduce((s, p) => s + p.param.numel, 0);
}
