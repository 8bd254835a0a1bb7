/**
 * Reading examples from JSONL files: one JSON object per line, `{"text": ...}`,
 * `{"prompt": ..., "completion": ...}` (loss on the completion only) or `{"input_ids": [...]}`.
 * Every malformed line is an error naming the file and the line number.
 */
import * as fs from 'node:fs';
import { LorakitError } from '../errors';
import { ioError, isObject, show } from '../io/config';
import { type Tokenizer } from '../tokenizer/tokenizer';

/** A tokenized sequence; labels are aligned with the ids (-100 where no loss is taken). */
export interface Example {
  inputIds: number[];
  labels: number[];
}

/** One line's content before tokenization. */
export type DataRecord =
  | { kind: 'text'; text: string }
  | { kind: 'prompt'; prompt: string; completion: string }
  | { kind: 'ids'; inputIds: number[] };

function lineError(file: string, line: number, msg: string): LorakitError {
  return new LorakitError('ERR_INVALID_ARG', `${file}:${line}: ${msg}`);
}

/** Parses a JSONL file into records (blank lines are skipped). */
export function readJsonl(file: string): DataRecord[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw ioError('readJsonl', 'read', file, e);
  }
  const out: DataRecord[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = i + 1;
    if (raw.trim() === '') return;
    let j: unknown;
    try {
      j = JSON.parse(raw);
    } catch (e) {
      throw lineError(file, line, `not valid JSON (${(e as Error).message})`);
    }
    if (!isObject(j)) throw lineError(file, line, `expected a JSON object, got ${show(j)}`);
    if ('input_ids' in j) {
      const ids = j.input_ids;
      if (!Array.isArray(ids) || ids.length === 0 || !ids.every((x) => Number.isInteger(x) && x >= 0))
        throw lineError(file, line, `'input_ids' must be a non-empty array of non-negative integers, got ${show(ids)}`);
      out.push({ kind: 'ids', inputIds: ids as number[] });
    } else if ('prompt' in j || 'completion' in j) {
      if (typeof j.prompt !== 'string' || typeof j.completion !== 'string')
        throw lineError(file, line, `'prompt' and 'completion' must both be strings, got ${show(j.prompt)} and ${show(j.completion)}`);
      out.push({ kind: 'prompt', prompt: j.prompt, completion: j.completion });
    } else if ('text' in j) {
      if (typeof j.text !== 'string') throw lineError(file, line, `'text' must be a string, got ${show(j.text)}`);
      out.push({ kind: 'text', text: j.text });
    } else {
      throw lineError(file, line, `expected "text", "prompt"/"completion" or "input_ids", got keys ${show(Object.keys(j))}`);
    }
  });
  if (out.length === 0) throw new LorakitError('ERR_INVALID_ARG', `${file}: the file holds no examples`);
  return out;
}

/** Tokenizes records; the tokenizer is needed only for text. */
export function tokenize(records: readonly DataRecord[], tokenizer: Tokenizer | null, file = 'data'): Example[] {
  return records.map((r, i) => {
    if (r.kind === 'ids') return { inputIds: r.inputIds, labels: r.inputIds.slice() };
    if (!tokenizer) throw new LorakitError('ERR_INVALID_ARG', `${file}: example ${i + 1} is text, and no tokenizer was given`);
    if (r.kind === 'text') {
      const ids = tokenizer.encode(r.text);
      return { inputIds: ids, labels: ids.slice() };
    }
    // The completion is encoded after the prompt without its own special tokens, so the loss covers
    // exactly the completion (and any end-of-sequence token the tokenizer appends to the whole).
    const p = tokenizer.encode(r.prompt);
    const c = tokenizer.encode(r.completion, { addSpecialTokens: false });
    const eos = tokenizer.eosTokenId;
    const ids = [...p, ...c, ...(eos !== null ? [eos] : [])];
    return { inputIds: ids, labels: [...p.map(() => -100), ...c, ...(eos !== null ? [eos] : [])] };
  });
}
