// loadExamples, splitExample and the chunked line reader (lib/data/load.ts, lines.ts) against expectations built by
// hand: ByteTokenizer ids are the UTF-8 bytes, so every expected example is written out from the text itself.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadExamples, splitExample, type Example } from '../lib/data';
import { readLines } from '../lib/data/lines';
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../lib/errors';
import { ByteTokenizer } from '../lib/tokenizer';
import { expectError } from './helpers/errors';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-data-mutation-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let count = 0;
function dataFile(name: string, text: string | Buffer): string {
  const dir = path.join(tmp, `d${count++}`);
  fs.mkdirSync(dir);
  const file = path.join(dir, name);
  fs.writeFileSync(file, text);
  return file;
}

const bytes = (s: string): number[] => [...Buffer.from(s, 'utf8')];
const ids = (...xs: number[][]) => xs.map((x) => JSON.stringify({ input_ids: x })).join('\n') + '\n';

describe('splitExample', () => {
  const ex: Example = { inputIds: [1, 2, 3, 4, 5, 6, 7], labels: [-100, 2, 3, -100, 5, 6, 7] };
  test('pieces of at most max tokens, labels cut at the same places', () => {
    expect(splitExample(ex, 3)).toEqual([
      { inputIds: [1, 2, 3], labels: [-100, 2, 3] },
      { inputIds: [4, 5, 6], labels: [-100, 5, 6] },
      { inputIds: [7], labels: [7] },
    ]);
    expect(splitExample(ex, 6)).toEqual([
      { inputIds: [1, 2, 3, 4, 5, 6], labels: [-100, 2, 3, -100, 5, 6] },
      { inputIds: [7], labels: [7] },
    ]);
    expect(splitExample(ex, 1)).toHaveLength(7);
  });
  test('an example of max tokens or fewer is itself', () => {
    expect(splitExample(ex, 7)[0]).toBe(ex);
    expect(splitExample(ex, 8)).toEqual([ex]);
  });
});

describe('loadExamples with maxLength', () => {
  test('one long example: split, and the warning says "it was" with the count of pieces', () => {
    const file = dataFile('d.jsonl', ids([1, 2, 3, 4, 5], [6, 7], [8, 9, 10]));
    const warnings: string[] = [];
    expect(loadExamples(file, null, { maxLength: 3, onWarning: (m) => warnings.push(m) })).toEqual([
      { inputIds: [1, 2, 3], labels: [1, 2, 3] },
      { inputIds: [4, 5], labels: [4, 5] },
      { inputIds: [6, 7], labels: [6, 7] },
      { inputIds: [8, 9, 10], labels: [8, 9, 10] },
    ]);
    expect(warnings).toEqual([
      `${file}: 1 of 3 examples had more than 3 tokens, the longest sequence allowed; it was split into pieces of at most 3 tokens (2 pieces), each read as its own sequence`,
    ]);
  });

  test('two long examples: "each was", pieces counted over both', () => {
    const file = dataFile('d.jsonl', ids([1, 2, 3, 4, 5], [6], [7, 8, 9, 10, 11, 12, 13]));
    const warnings: string[] = [];
    const out = loadExamples(file, null, { maxLength: 2, onWarning: (m) => warnings.push(m) });
    // 5 tokens make 3 pieces, 7 make 4.
    expect(out.map((e) => e.inputIds)).toEqual([[1, 2], [3, 4], [5], [6], [7, 8], [9, 10], [11, 12], [13]]);
    expect(warnings).toEqual([
      `${file}: 2 of 3 examples had more than 2 tokens, the longest sequence allowed; each was split into pieces of at most 2 tokens (7 pieces), each read as its own sequence`,
    ]);
  });

  test('examples of exactly maxLength are not split and raise no warning; no onWarning is fine', () => {
    const file = dataFile('d.jsonl', ids([1, 2, 3], [4, 5, 6]));
    const warnings: string[] = [];
    expect(loadExamples(file, null, { maxLength: 3, onWarning: (m) => warnings.push(m) })).toHaveLength(2);
    expect(warnings).toEqual([]);
    expect(loadExamples(file, null, { maxLength: 2 })).toHaveLength(4);
  });

  test('text documents are split too', () => {
    const file = dataFile('doc.txt', 'abcde\n\nxy\n');
    const warnings: string[] = [];
    const out = loadExamples(file, new ByteTokenizer(), { maxLength: 2, onWarning: (m) => warnings.push(m) });
    expect(out.map((e) => e.inputIds)).toEqual([bytes('ab'), bytes('cd'), bytes('e'), bytes('xy')]);
    expect(warnings).toEqual([
      `${file}: 1 of 2 examples had more than 2 tokens, the longest sequence allowed; it was split into pieces of at most 2 tokens (3 pieces), each read as its own sequence`,
    ]);
  });

  test('bad options are named', () => {
    const file = dataFile('d.jsonl', ids([1]));
    expectError(() => loadExamples(file, null, { maxLength: 0 }), LorakitRangeError, 'ERR_OUT_OF_RANGE', `'maxLength' must be >= 1, got 0`);
    expectError(() => loadExamples(file, null, { maxLength: 1.5 }), LorakitRangeError, 'ERR_OUT_OF_RANGE', `'maxLength' must be an integer`);
    expectError(() => loadExamples(file, null, { chunkBytes: 0 }), LorakitRangeError, 'ERR_OUT_OF_RANGE', `'chunkBytes' must be >= 1, got 0`);
    expectError(() => loadExamples(file, null, { maxLineBytes: 0 }), LorakitRangeError, 'ERR_OUT_OF_RANGE', `'maxLineBytes' must be >= 1, got 0`);
    expectError(() => loadExamples(file, null, { onWarning: 'x' as never }), LorakitTypeError, 'ERR_INVALID_ARG', `loadExamples: option 'onWarning' must be a function, got`);
    // Given options are used: a one-byte line limit refuses the line.
    expectError(() => loadExamples(file, null, { maxLineBytes: 5 }), LorakitError, 'ERR_INVALID_ARG', `${file}:1: the line is longer than 5 bytes`);
  });
});

describe('text files', () => {
  test('an upper-case extension, a document without a final line break, a lone \\r kept inside', () => {
    const file = dataFile('D.TXT', 'one\rtwo\n\nthree');
    const tok = new ByteTokenizer();
    expect(loadExamples(file, tok)).toEqual([
      { inputIds: bytes('one\rtwo'), labels: bytes('one\rtwo') },
      { inputIds: bytes('three'), labels: bytes('three') },
    ]);
  });

  test('a whitespace-only document is dropped; a file of only blank lines holds no examples even without a tokenizer', () => {
    const tok = new ByteTokenizer();
    expect(loadExamples(dataFile('d.txt', 'a\n\n \t \n\nb\n'), tok).map((e) => e.inputIds)).toEqual([bytes('a'), bytes('b')]);
    const blank = dataFile('blank.txt', '\n\n');
    expectError(() => loadExamples(blank, null), LorakitError, 'ERR_INVALID_ARG', `${blank}: the file holds no examples`);
    const empty = dataFile('empty.txt', '');
    expectError(() => loadExamples(empty, tok), LorakitError, 'ERR_INVALID_ARG', `${empty}: the file holds no examples`);
  });

  test('the document bound counts every line with its break, and names the first line of the document', () => {
    // Document 2 starts at line 3: 'abcd' + '\n' + 'efgh' + '\n' = 10 bytes.
    const file = dataFile('d.txt', 'x\n\nabcd\nefgh\n');
    expect(loadExamples(file, new ByteTokenizer(), { maxLineBytes: 10 }).map((e) => e.inputIds)).toEqual([bytes('x'), bytes('abcd\nefgh')]);
    expectError(() => loadExamples(file, new ByteTokenizer(), { maxLineBytes: 9 }), LorakitError, 'ERR_INVALID_ARG', `${file}:3: the document starting at this line is longer than 9 bytes`);
  });
});

describe('readLines', () => {
  const lines = (file: string, o: { chunkBytes?: number; maxLineBytes?: number } = {}) => [...readLines('op', file, o)].map((l) => [l.text, l.number, l.ended]);

  test('numbers from 1, ended says whether a line break followed, for every chunk size', () => {
    const text = 'ab\n\nc☃d\r\nlast';
    const file = dataFile('l.txt', text);
    for (const chunkBytes of [1, 2, 3, 4, 5, 100])
      expect(lines(file, { chunkBytes })).toEqual([['ab', 1, true], ['', 2, true], ['c☃d\r', 3, true], ['last', 4, false]]);
    expect(lines(dataFile('e.txt', ''))).toEqual([]);
    expect(lines(dataFile('n.txt', 'a\n'))).toEqual([['a', 1, true]]);
  });

  test('a line of exactly maxLineBytes reads; one byte more is refused, whether it ends in a chunk or at end of file', () => {
    const file = dataFile('l.txt', 'abcd\nabcde\n');
    for (const chunkBytes of [2, 3, 64]) {
      expect(lines(dataFile('ok.txt', 'abcd\nabcd'), { chunkBytes, maxLineBytes: 4 })).toEqual([['abcd', 1, true], ['abcd', 2, false]]);
      expectError(() => lines(file, { chunkBytes, maxLineBytes: 4 }), LorakitError, 'ERR_INVALID_ARG', `${file}:2: the line is longer than 4 bytes, more than any example a model can take`);
      const tail = dataFile('tail.txt', 'abcd\nabcde');
      expectError(() => lines(tail, { chunkBytes, maxLineBytes: 4 }), LorakitError, 'ERR_INVALID_ARG', `${tail}:2: the line is longer than 4 bytes`);
    }
  });

  test('a missing file is an I/O error naming the operation', () => {
    const missing = path.join(tmp, 'none.txt');
    expectError(() => lines(missing), LorakitError, 'ERR_IO', `op: cannot read '${missing}'`);
  });
});
