/**
 * Reading examples from JSONL files: one JSON object per line, `{"text": ...}`,
 * `{"prompt": ..., "completion": ...}` (loss on the completion only), `{"input_ids": [...]}` (with optional
 * `"labels"`) or `{"messages": [{"role", "content"}, ...]}` (loss on the assistant messages only).
 * Every malformed line is an error naming the file and the line number.
 */
import { LorakitError } from '../errors';
import { isObject, show } from '../check';
import { type Tokenizer } from '../tokenizer/tokenizer';
import { parseMessages, tokenizeChat, type ChatMessage } from './chat';
import { readLines, type ReadOptions } from './lines';
import { type Example } from './example';

/** One line's content before tokenization. */
export type DataRecord =
  | { kind: 'text'; text: string }
  | { kind: 'prompt'; prompt: string; completion: string }
  | { kind: 'ids'; inputIds: number[]; labels?: number[] }
  | { kind: 'chat'; messages: ChatMessage[] };

function lineError(file: string, line: number, msg: string): LorakitError {
  return new LorakitError('ERR_INVALID_ARG', `${file}:${line}: ${msg}`);
}

/** @internal A record with the line it came from. */
export interface LineRecord {
  line: number;
  record: DataRecord;
}

function isTokenIds(x: unknown): x is number[] {
  return Array.isArray(x) && x.every((v) => Number.isSafeInteger(v) && v >= 0);
}

/**
 * @internal The records of a JSONL file with their line numbers (blank lines are skipped), read line by line:
 * the file is never in memory whole.
 */
export function* jsonlRecords(file: string, options: ReadOptions = {}): Generator<LineRecord> {
  let any = false;
  for (const { text: raw, number: line } of readLines('readJsonl', file, options)) {
    if (raw.trim() === '') continue;
    let j: unknown;
    try {
      j = JSON.parse(raw);
    } catch (e) {
      throw lineError(file, line, `not valid JSON (${(e as Error).message})`);
    }
    if (!isObject(j)) throw lineError(file, line, `expected a JSON object, got ${show(j)}`);
    any = true;
    yield { line, record: parseRecord(j, (msg) => lineError(file, line, msg)) };
  }
  if (!any) throw new LorakitError('ERR_INVALID_ARG', `${file}: the file holds no examples`);
}

/** @internal Parses a JSONL file into records with their line numbers (blank lines are skipped). */
export function parseJsonl(file: string): LineRecord[] {
  return [...jsonlRecords(file)];
}

function parseRecord(j: Record<string, unknown>, fail: (msg: string) => LorakitError): DataRecord {
  if ('input_ids' in j) {
    const ids = j.input_ids;
    if (!isTokenIds(ids) || ids.length === 0) throw fail(`'input_ids' must be a non-empty array of non-negative integers, got ${show(ids)}`);
    if (!('labels' in j)) return { kind: 'ids', inputIds: ids };
    const labels = j.labels;
    if (!Array.isArray(labels) || labels.length !== ids.length || !labels.every((x) => x === -100 || (Number.isSafeInteger(x) && x >= 0)))
      throw fail(`'labels' must be an array as long as 'input_ids' (${ids.length}) of token ids or -100, got ${show(labels)}`);
    return { kind: 'ids', inputIds: ids, labels: labels as number[] };
  }
  if ('prompt' in j || 'completion' in j) {
    if (typeof j.prompt !== 'string' || typeof j.completion !== 'string')
      throw fail(`'prompt' and 'completion' must both be strings, got ${show(j.prompt)} and ${show(j.completion)}`);
    return { kind: 'prompt', prompt: j.prompt, completion: j.completion };
  }
  if ('text' in j) {
    if (typeof j.text !== 'string') throw fail(`'text' must be a string, got ${show(j.text)}`);
    return { kind: 'text', text: j.text };
  }
  if ('messages' in j) return { kind: 'chat', messages: parseMessages(j.messages, fail) };
  throw fail(`expected "text", "prompt"/"completion", "input_ids" or "messages", got keys ${show(Object.keys(j))}`);
}

/** Parses a JSONL file into records (blank lines are skipped). */
export function readJsonl(file: string): DataRecord[] {
  return parseJsonl(file).map((r) => r.record);
}

/** Tokenizes records; the tokenizer is needed only for text. */
export function tokenize(records: readonly DataRecord[], tokenizer: Tokenizer | null, file = 'data'): Example[] {
  return records.map((r, i) => tokenizeRecord(r, tokenizer, `${file}: example ${i + 1}`));
}

/** @internal One record's example; `where` names it in errors ("file:line" or "file: example n"). */
export function tokenizeRecord(r: DataRecord, tokenizer: Tokenizer | null, where: string): Example {
  if (r.kind === 'ids') return { inputIds: r.inputIds, labels: r.labels ?? r.inputIds.slice() };
  if (!tokenizer) throw new LorakitError('ERR_INVALID_ARG', `${where} is text, and no tokenizer was given`);
  if (r.kind === 'text') {
    const ids = tokenizer.encode(r.text);
    return { inputIds: ids, labels: ids.slice() };
  }
  if (r.kind === 'chat') return tokenizeChat(r.messages, tokenizer, where);
  // The completion is encoded after the prompt without its own special tokens, so the loss covers
  // exactly the completion (and any end-of-sequence token the tokenizer appends to the whole).
  const p = tokenizer.encode(r.prompt);
  const c = tokenizer.encode(r.completion, { addSpecialTokens: false });
  const eos = tokenizer.eosTokenId;
  const ids = [...p, ...c, ...(eos !== null ? [eos] : [])];
  return { inputIds: ids, labels: [...p.map(() => -100), ...c, ...(eos !== null ? [eos] : [])] };
}
