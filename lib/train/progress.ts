/**
 * Progress output: a one-line bar redrawn in place on a terminal, plain lines otherwise (CI logs, files),
 * and nothing when quiet. Everything goes to stderr so stdout stays for results.
 */
export type ProgressMode = 'auto' | 'bar' | 'lines' | 'none';

export interface StepInfo {
  step: number;
  total: number;
  /** Steps this process has run: a resumed run's clock started at its checkpoint, not at step 0. */
  stepsThisRun: number;
  loss: number;
  lr: number;
  /** Loss tokens (those the loss is computed on) per second. */
  tokensPerSec: number;
  elapsedSec: number;
}

function clock(sec: number): string {
  if (!Number.isFinite(sec)) return '--:--';
  const s = Math.round(sec);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${String(r).padStart(2, '0')}` : `${m}:${String(r).padStart(2, '0')}`;
}

export class Progress {
  readonly #mode: 'bar' | 'lines' | 'none';
  readonly #stream: NodeJS.WriteStream;
  #barShown = false;

  constructor(mode: ProgressMode = 'auto', stream: NodeJS.WriteStream = process.stderr) {
    this.#stream = stream;
    this.#mode = mode === 'auto' ? (stream.isTTY ? 'bar' : 'lines') : mode;
  }

  step(i: StepInfo): void {
    if (this.#mode === 'none') return;
    const eta = ((i.total - i.step) * i.elapsedSec) / Math.max(i.stepsThisRun, 1);
    const text = `step ${i.step}/${i.total}  loss ${i.loss.toFixed(4)}  lr ${i.lr.toExponential(2)}  ${Math.round(i.tokensPerSec)} loss tok/s  ETA ${clock(eta)}`;
    if (this.#mode === 'bar') {
      const width = 24, done = Math.round((width * i.step) / Math.max(i.total, 1));
      this.#stream.write(`\r[${'#'.repeat(done)}${'.'.repeat(width - done)}] ${text}\x1b[K`);
      this.#barShown = true;
      return;
    }
    // Plain lines: about 50 per run, plus the first and the last step.
    const every = Math.max(1, Math.floor(i.total / 50));
    if (i.step === 1 || i.step === i.total || i.step % every === 0) this.#stream.write(`${text}\n`);
  }

  /** A message on its own line (evals, checkpoints), never tangled with the bar. */
  line(text: string): void {
    if (this.#mode === 'none') return;
    if (this.#barShown) {
      this.#stream.write('\n');
      this.#barShown = false;
    }
    this.#stream.write(`${text}\n`);
  }

  end(): void {
    if (this.#barShown) this.#stream.write('\n');
    this.#barShown = false;
  }
}
