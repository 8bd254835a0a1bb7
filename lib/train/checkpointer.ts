/** A run's checkpoint step: saving checkpoint-N, keeping only the newest of this run's, and saying where the last one is. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ioError } from '../io/config';
import { saveCheckpoint, type TrainerState } from './checkpoint';
import { runCheckpoints } from './outdir';
import { type BuiltModel, type Resume } from './build';
import { type RunIO } from './run-io';
import type { Resolved } from './options';

export class Checkpointer {
  /** The newest checkpoint on disk for this run, for the stop messages. */
  lastSaved: { step: number; dir: string } | null;
  /** This run's checkpoints, oldest first: only these are pruned, never another run's. */
  readonly #kept: number[];

  constructor(
    private readonly op: string,
    private readonly o: Pick<Resolved, 'out' | 'saveTotalLimit' | 'model'>,
    private readonly built: BuiltModel,
    runId: string,
    resume: Resume | null,
    private readonly io: RunIO,
  ) {
    this.#kept = resume ? runCheckpoints(op, o.out, runId).filter((s) => s <= resume.state.step) : [];
    this.lastSaved = resume ? { step: resume.state.step, dir: resume.dir } : null;
  }

  dir(step: number): string {
    return path.join(this.o.out, `checkpoint-${step}`);
  }

  /** Saves checkpoint-`state.step`, then removes this run's oldest beyond the limit. */
  save(state: TrainerState): void {
    const step = state.step, dir = this.dir(step);
    saveCheckpoint(dir, this.built.model, this.built.optimizer, this.built.names, state, this.o.model);
    this.lastSaved = { step, dir };
    this.io.metric({ type: 'checkpoint', step, dir });
    this.io.emitter.emit('checkpoint', { step, dir });
    this.io.log(`checkpoint: ${dir}`);
    if (!this.#kept.includes(step)) this.#kept.push(step);
    while (this.#kept.length > this.o.saveTotalLimit) {
      const p = this.dir(this.#kept.shift()!);
      try {
        fs.rmSync(p, { recursive: true, force: true });
      } catch (e) {
        throw ioError(this.op, 'remove old checkpoint', p, e);
      }
    }
  }

  /** Where a stopped run can be resumed from. */
  savedNote(): string {
    return this.lastSaved === null
      ? 'nothing was saved: this run has written no checkpoint yet'
      : `the last checkpoint is ${this.lastSaved.dir} (step ${this.lastSaved.step}); resume with: lorakit train --resume ${this.lastSaved.dir}`;
  }
}
