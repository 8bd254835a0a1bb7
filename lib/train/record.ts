/** The training record beside an adapter: which method (lora, qlora, full) trained it, and where that is said. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isObject } from '../check';
import { readJsonFile } from '../io/config';

/**
 * The method of the lorakit run that trained the adapter in `dir`: its checkpoint's trainer_state.json,
 * or for a last/ or best/ folder the run's run.json. Null when there is no such record.
 */
export function trainingRecord(dir: string): { method: string; file: string } | null {
  const candidates = [path.join(dir, 'trainer_state.json')];
  if (['last', 'best'].includes(path.basename(path.resolve(dir)))) candidates.push(path.join(dir, '..', 'run.json'));
  for (const file of candidates) {
    if (!fs.existsSync(file)) continue;
    const raw = readJsonFile('inspect', file, 'ERR_CONFIG');
    const method = isObject(raw) && isObject(raw.options) ? raw.options.method : undefined;
    if (typeof method === 'string') return { method, file };
  }
  return null;
}
