/** Training data from a file: the examples of a JSONL file, or the documents of a plain text file. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LorakitError } from '../errors';
import { ioError } from '../io/config';
import { type Tokenizer } from '../tokenizer/tokenizer';
import { parseJsonl, tokenizeRecord, type Example } from './jsonl';

// A run of two or more line breaks, with nothing but spaces and tabs between them, ends a document.
const DOCUMENT_BREAK = /\r?\n(?:[ \t]*\r?\n)+/;

/** The documents of a text file, without the line breaks around them; whitespace-only ones are dropped. */
function readDocuments(file: string): string[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw ioError('loadExamples', 'read', file, e);
  }
  return text
    .split(DOCUMENT_BREAK)
    .map((d) => d.replace(/^(?:[ \t]*\r?\n)+|(?:\r?\n[ \t]*)+$/g, ''))
    .filter((d) => d.trim() !== '');
}

/**
 * Reads and tokenizes training examples. `.jsonl`: one example a line, as readJsonl describes; `.txt`: each
 * document (documents are separated by blank lines) is one example with the loss on every token, tokenized as
 * a `{"text"}` line is. The tokenizer is needed for everything but `{"input_ids"}` lines.
 */
export function loadExamples(file: string, tokenizer: Tokenizer | null): Example[] {
  const ext = path.extname(file).toLowerCase();
  if (ext === '.jsonl') return parseJsonl(file).map(({ line, record }) => tokenizeRecord(record, tokenizer, `${file}:${line}`));
  if (ext !== '.txt')
    throw new LorakitError('ERR_INVALID_ARG', `${file}: unknown data format ${ext === '' ? '(no extension)' : `'${ext}'`}; expected a .jsonl or a .txt file`);
  const docs = readDocuments(file);
  if (docs.length === 0) throw new LorakitError('ERR_INVALID_ARG', `${file}: the file holds no examples`);
  if (tokenizer === null) throw new LorakitError('ERR_INVALID_ARG', `${file} is text, and no tokenizer was given`);
  return docs.map((text) => tokenizeRecord({ kind: 'text', text }, tokenizer, file));
}
