/** The options of a training run (what train() and run.json take), and the same resolved. */
import { type Device } from '../check';
import { type LoraInit } from '../lora/config';
import { type ProgressMode } from './progress';
import { type ScheduleKind } from './schedule';

export type Method = 'lora' | 'qlora' | 'full';
export const METHODS: readonly Method[] = ['lora', 'qlora', 'full'];

export interface TrainOptions {
  /** Model folder (config.json + safetensors + tokenizer.json). */
  model: string;
  /** Training data: .jsonl (text, prompt/completion, messages, input_ids) or .txt. */
  data: string;
  method?: Method;
  /** LoRA rank (default 16). */
  r?: number;
  /** LoRA alpha (default 2r). */
  alpha?: number;
  /** 'all-linear' (default), 'attention', 'mlp', or module names. */
  target?: string | string[];
  rslora?: boolean;
  /** PEFT's init_lora_weights: true (A Kaiming-uniform, B zero; default), 'gaussian', 'pissa', or false. */
  init?: LoraInit;
  /** LoRA dropout (default 0.05). */
  dropout?: number;
  /** Peak learning rate (default 2e-4 for LoRA/QLoRA, 2e-5 for full fine-tuning). */
  lr?: number;
  /** Optimizer steps; or give epochs. */
  steps?: number;
  epochs?: number;
  batchSize?: number;
  gradAccum?: number;
  seqLen?: number;
  /** Warmup steps (default 3% of the run). */
  warmup?: number;
  schedule?: ScheduleKind;
  /** Decoupled weight decay on matrices (default 0 for LoRA/QLoRA, 0.01 for full). */
  weightDecay?: number;
  maxGradNorm?: number;
  /** Pack examples into full rows (default true). */
  pack?: boolean;
  /** Share of the training examples held out for evaluation when no evalData is given (default 0.05). */
  evalSplit?: number;
  evalData?: string;
  /** Text from the base model's own distribution; the rise of its loss measures forgetting. */
  retainData?: string;
  /** Evaluate every N steps (default: 5 times per run), and always at the end. */
  evalEvery?: number;
  /** Checkpoint every N steps (default 100; 0: only at the end and on a stop). */
  saveEvery?: number;
  /** How many of this run's checkpoints to keep, newest first (default 2). */
  saveTotalLimit?: number;
  out?: string;
  /** Replace the run an existing `out` holds (its checkpoints, last/, best/, metrics and run.json). */
  overwrite?: boolean;
  seed?: number;
  /** A checkpoint folder to continue from. */
  resume?: string;
  device?: Device;
  progress?: ProgressMode;
}

export interface EvalRecord {
  step: number;
  split: string;
  loss: number;
  perplexity: number;
  tokens: number;
}

/** The options of a run with every default filled in and checked. */
export interface Resolved extends Required<Omit<TrainOptions, 'steps' | 'epochs' | 'evalData' | 'retainData' | 'resume' | 'evalEvery' | 'warmup'>> {
  steps: number | null;
  epochs: number | null;
  evalData: string | null;
  retainData: string | null;
  evalEvery: number | null;
  warmup: number | null;
}
