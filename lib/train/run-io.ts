/** Where the steps of a run report: the log, metrics.jsonl, the handle's events and the progress display. */
import { type EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import { ioError } from '../io/config';
import { type Progress } from './progress';

export interface RunIO {
  /** A line for the terminal and the handle's 'log' event. */
  log(line: string): void;
  /** One line of metrics.jsonl. */
  metric(m: Record<string, unknown>): void;
  /** The handle: 'step', 'eval' and 'checkpoint' events. */
  emitter: EventEmitter;
  progress: Progress;
}

/** Appends lines to a run's metrics file; a fresh run creates it (empty) now, so that a run that has begun has one. */
export function metricsWriter(op: string, file: string, fresh: boolean): (m: Record<string, unknown>) => void {
  const append = (text: string) => {
    try {
      fs.appendFileSync(file, text);
    } catch (e) {
      throw ioError(op, 'write', file, e);
    }
  };
  if (fresh) append('');
  return (m) => append(`${JSON.stringify(m)}\n`);
}
