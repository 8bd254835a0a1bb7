/** Training data from a file: the examples of a JSONL file, or the documents of a plain text file. */
import * as path from 'node:path';
import { LorakitError, LorakitTypeError } from '../errors';
import { checkNumber, checkOptions, describe } from '../check';
import { type Tokenizer } from '../tokenizer/tokenizer';
import { jsonlRecords, tokenizeRecord } from './jsonl';
import { type Example } from './example';
import { MAX_LINE_BYTES, readLines, type ReadOptions } from './lines';

const OP = 'loadExamples';

export interface LoadOptions extends ReadOptions {
  /**
   * The most tokens an example may have: the model's context (or less). A longer example is split into
   * consecutive pieces of at most this many tokens, each its own sequence, as attention over the whole would
   * cost memory quadratic in its length.
   */
  maxLength?: number;
  /** Told once, after reading, how many examples were split, when any was. */
  onWarning?: (message: string) => void;
}

// A line with nothing but spaces and tabs (and the '\r' of a '\r\n') ends a document.
const BLANK = /^[ \t]*\r?$/;

/**
 * The documents of a text file, read line by line: documents are separated by blank lines; the line breaks
 * inside one are kept as written, those around it are not, and whitespace-only ones are dropped. A document
 * is held whole, so it is bounded as a line is.
 */
function* readDocuments(file: string, options: ReadOptions): Generator<string> {
  let doc: string[] = [];
  let bytes = 0;
  let first = 0;
  const maxBytes = options.maxLineBytes ?? MAX_LINE_BYTES;
  function* end(lastEnded: boolean): Generator<string> {
    if (doc.length === 0) return;
    // The '\r' of the line break after the document goes with it.
    if (lastEnded) doc[doc.length - 1] = doc.at(-1)!.replace(/\r$/, '');
    const text = doc.join('\n');
    doc = [];
    bytes = 0;
    if (text.trim() !== '') yield text;
  }
  let ended = true;
  for (const line of readLines(OP, file, options)) {
    ended = line.ended;
    if (BLANK.test(line.text)) {
      yield* end(true);
      continue;
    }
    if (doc.length === 0) first = line.number;
    bytes += Buffer.byteLength(line.text) + 1;
    if (bytes > maxBytes)
      throw new LorakitError('ERR_INVALID_ARG', `${file}:${first}: the document starting at this line is longer than ${maxBytes} bytes; separate documents with a blank line`);
    doc.push(line.text);
  }
  yield* end(ended);
}

/**
 * An example cut into consecutive pieces of at most `max` tokens, each its own sequence (labels cut at the
 * same places): how an example longer than the model's context is read, in training and evaluation alike.
 */
export function splitExample(ex: Example, max: number): Example[] {
  if (ex.inputIds.length <= max) return [ex];
  const pieces: Example[] = [];
  for (let k = 0; k < ex.inputIds.length; k += max) pieces.push({ inputIds: ex.inputIds.slice(k, k + max), labels: ex.labels.slice(k, k + max) });
  return pieces;
}

/**
 * Reads and tokenizes training examples. `.jsonl`: one example a line, as readJsonl describes; `.txt`: each
 * document (documents are separated by blank lines) is one example with the loss on every token, tokenized as
 * a `{"text"}` line is. The tokenizer is needed for everything but `{"input_ids"}` lines. The file is read a
 * chunk at a time, so its size is bounded by the memory of its tokens, not by the longest string V8 makes.
 */
export function loadExamples(file: string, tokenizer: Tokenizer | null, options: LoadOptions = {}): Example[] {
  const o = checkOptions<LoadOptions>(OP, options);
  const max = o.maxLength === undefined ? Infinity : checkNumber(OP, 'maxLength', o.maxLength, { integer: true, min: 1 });
  if (o.onWarning !== undefined && typeof o.onWarning !== 'function')
    throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: option 'onWarning' must be a function, got ${describe(o.onWarning)}`);
  const read: ReadOptions = {
    ...(o.chunkBytes !== undefined && { chunkBytes: checkNumber(OP, 'chunkBytes', o.chunkBytes, { integer: true, min: 1 }) }),
    ...(o.maxLineBytes !== undefined && { maxLineBytes: checkNumber(OP, 'maxLineBytes', o.maxLineBytes, { integer: true, min: 1 }) }),
  };
  const ext = path.extname(file).toLowerCase();
  if (ext !== '.jsonl' && ext !== '.txt')
    throw new LorakitError('ERR_INVALID_ARG', `${file}: unknown data format ${ext === '' ? '(no extension)' : `'${ext}'`}; expected a .jsonl or a .txt file`);
  const out: Example[] = [];
  let long = 0;
  let examples = 0;
  const add = (ex: Example) => {
    examples++;
    if (ex.inputIds.length <= max) return void out.push(ex);
    long++;
    out.push(...splitExample(ex, max));
  };
  if (ext === '.jsonl') {
    for (const { line, record } of jsonlRecords(file, read)) add(tokenizeRecord(record, tokenizer, `${file}:${line}`));
  } else {
    // Without a tokenizer, tokenizeRecord refuses the first document, naming the file.
    for (const text of readDocuments(file, read)) add(tokenizeRecord({ kind: 'text', text }, tokenizer, file));
    if (examples === 0) throw new LorakitError('ERR_INVALID_ARG', `${file}: the file holds no examples`);
  }
  if (long > 0)
    o.onWarning?.(
      `${file}: ${long} of ${examples} examples had more than ${max} tokens, the longest sequence allowed; ` +
        `${long === 1 ? 'it was' : 'each was'} split into pieces of at most ${max} tokens (${out.length - (examples - long)} pieces), each read as its own sequence`,
    );
  return out;
}
