import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Batcher, loadExamples, readJsonl, tokenize, type Batch, type Example } from '../lib/data';
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../lib/errors';
import { loadModel } from '../lib/models';
import { tensor } from '../lib/tensor/tensor';
import { ByteTokenizer, loadTokenizer, type Tokenizer } from '../lib/tokenizer';
import { BEGIN, ENDOFTEXT, TOOL, byteLevelJson } from './helpers/tokenizers';
import { expectError } from './helpers/errors';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-data-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let fileCount = 0;
/** A data file named `name` (its extension decides the format) holding `text`. */
function dataFile(name: string, text: string): string {
  const dir = path.join(tmp, `data-${fileCount++}`);
  fs.mkdirSync(dir);
  const file = path.join(dir, name);
  fs.writeFileSync(file, text);
  return file;
}
const jsonl = (...lines: unknown[]): string => dataFile('d.jsonl', lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n');

/** A model folder with the byte-level BPE test tokenizer and this tokenizer_config.json. */
function hubTokenizer(config: Record<string, unknown>): Tokenizer {
  const dir = path.join(tmp, `model-${fileCount++}`);
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(byteLevelJson()));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return loadTokenizer(dir);
}

/** ByteTokenizer ids: the UTF-8 bytes. */
const bytes = (s: string): number[] => [...Buffer.from(s, 'utf8')];
const none = (n: number): number[] => new Array<number>(n).fill(-100);

// With bos and eos: bos is 256 and opens every encoded text, eos is 257.
const BOS = 256;
const EOS = 257;
const byteTok = () => new ByteTokenizer({ bos: true, eos: true });

describe('loadExamples: .jsonl', () => {
  test('text, prompt/completion and input_ids lines', () => {
    const file = jsonl(
      { text: 'hi' },
      '',
      { prompt: 'ab', completion: 'c' },
      { input_ids: [1, 2, 3] },
      { input_ids: [4, 5, 6], labels: [-100, 5, -100] },
    );
    expect(loadExamples(file, byteTok())).toEqual([
      { inputIds: [BOS, 104, 105], labels: [BOS, 104, 105] },
      // Loss on the completion and the eos after it only.
      { inputIds: [BOS, 97, 98, 99, EOS], labels: [-100, -100, -100, 99, EOS] },
      { inputIds: [1, 2, 3], labels: [1, 2, 3] },
      { inputIds: [4, 5, 6], labels: [-100, 5, -100] },
    ]);
    // Token ids need no tokenizer.
    expect(loadExamples(jsonl({ input_ids: [7] }), null)).toEqual([{ inputIds: [7], labels: [7] }]);
  });

  test('readJsonl and tokenize keep their behaviour, and read the new line kinds too', () => {
    const file = jsonl({ input_ids: [1, 2], labels: [-100, 2] }, { messages: [{ role: 'user', content: 'q' }, { role: 'assistant', content: 'a' }] });
    const records = readJsonl(file);
    expect(records).toEqual([
      { kind: 'ids', inputIds: [1, 2], labels: [-100, 2] },
      { kind: 'chat', messages: [{ role: 'user', content: 'q' }, { role: 'assistant', content: 'a' }] },
    ]);
    expect(tokenize(records, byteTok(), file)).toEqual(loadExamples(file, byteTok()));
    expectError(() => tokenize(records, null, file), LorakitError, 'ERR_INVALID_ARG', `${file}: example 2 is text, and no tokenizer was given`);
  });

  test('messages without a chat template: <|role|>\\n{content}\\n per message, then eos; loss on the assistant only', () => {
    const conversation = [
      { role: 'system', content: 'be brief' },
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'yo' },
      { role: 'user', content: 'and?' },
      { role: 'assistant', content: 'ok' },
    ];
    const [ex] = loadExamples(jsonl({ messages: conversation }), byteTok());
    const before1 = '<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n';
    const before2 = '<|user|>\nand?\n<|assistant|>\n';
    expect(ex!.inputIds).toEqual([BOS, ...bytes(`${before1}yo\n${before2}ok\n`), EOS]);
    // The role header is the generation prompt: untrained. The content, its line break and the closing eos are trained.
    expect(ex!.labels).toEqual([...none(1 + before1.length), ...bytes('yo\n'), ...none(before2.length), ...bytes('ok\n'), EOS]);
  });

  test('a conversation that ends with the user does not train the closing eos; without bos or eos none is added', () => {
    const conversation = [{ role: 'user', content: 'q' }, { role: 'assistant', content: 'a' }, { role: 'user', content: 'r' }];
    const [withEnds] = loadExamples(jsonl({ messages: conversation }), byteTok());
    expect(withEnds).toEqual({
      inputIds: [BOS, ...bytes('<|user|>\nq\n<|assistant|>\na\n<|user|>\nr\n'), EOS],
      labels: [...none(1 + '<|user|>\nq\n<|assistant|>\n'.length), ...bytes('a\n'), ...none('<|user|>\nr\n'.length + 1)],
    });
    const [bare] = loadExamples(jsonl({ messages: conversation.slice(0, 2) }), new ByteTokenizer());
    expect(bare).toEqual({
      inputIds: bytes('<|user|>\nq\n<|assistant|>\na\n'),
      labels: [...none('<|user|>\nq\n<|assistant|>\n'.length), ...bytes('a\n')],
    });
  });

  test('the plain format opens with bos only where the tokenizer adds it', () => {
    const conversation = { messages: [{ role: 'user', content: 'hello' }, { role: 'assistant', content: 'hello world' }] };
    const trainedText = (tok: Tokenizer) => {
      const [ex] = loadExamples(jsonl(conversation), tok);
      return { first: ex!.inputIds[0], trained: tok.decode(ex!.labels.filter((l) => l !== -100)), all: tok.decode(ex!.inputIds) };
    };
    const llamaLike = hubTokenizer({ bos_token: '<|begin_of_text|>', eos_token: '<|endoftext|>', add_bos_token: true });
    expect(trainedText(llamaLike)).toEqual({
      first: BEGIN,
      trained: 'hello world\n<|endoftext|>',
      all: '<|begin_of_text|><|user|>\nhello\n<|assistant|>\nhello world\n<|endoftext|>',
    });
    // GPT-2 names a bos token but never adds it.
    const gpt2Like = hubTokenizer({ bos_token: '<|endoftext|>', eos_token: '<|endoftext|>' });
    expect(trainedText(gpt2Like).all).toBe('<|user|>\nhello\n<|assistant|>\nhello world\n<|endoftext|>');
  });

  describe('messages with a Jinja chat template', () => {
    // ChatML-like, with the tokenizer's special tokens: <tool> opens a turn, eos closes it.
    const CHATML =
      '{{ bos_token }}{% for m in messages %}<tool>{{ m.role }}\n{{ m.content }}{{ eos_token }}{% endfor %}' +
      '{% if add_generation_prompt %}<tool>assistant\n{% endif %}';
    const config = (chatTemplate: string) => ({ bos_token: '<|begin_of_text|>', eos_token: '<|endoftext|>', chat_template: chatTemplate });
    // Byte-level ids of plain ASCII letters: the printable bytes from '!' (33) are ids 0...
    const letters = (s: string): number[] => [...s].map((c) => c.charCodeAt(0) - 33);
    const NEWLINE = 198; // GPT-2's 'Ċ'
    const HELLO = 260;
    const SPACE_WORLD = 266;

    test('renders with bos_token and eos_token, tokenizes without added tokens, and trains only the assistant text and its eos', () => {
      const tok = hubTokenizer(config(CHATML));
      const file = jsonl({ messages: [{ role: 'system', content: 'hello' }, { role: 'user', content: 'hello' }, { role: 'assistant', content: 'hello world' }] });
      const [ex] = loadExamples(file, tok);
      const turn = (role: string) => [TOOL, ...letters(role), NEWLINE];
      expect(ex!.inputIds).toEqual([BEGIN, ...turn('system'), HELLO, ENDOFTEXT, ...turn('user'), HELLO, ENDOFTEXT, ...turn('assistant'), HELLO, SPACE_WORLD, ENDOFTEXT]);
      expect(ex!.labels).toEqual([...none(1 + 8 + 2 + 6 + 2 + 11), HELLO, SPACE_WORLD, ENDOFTEXT]);
    });

    test('a template without a generation prompt trains the role header too', () => {
      const tok = hubTokenizer(config('{% for m in messages %}<tool>{{ m.role }}\n{{ m.content }}{{ eos_token }}{% endfor %}'));
      const [ex] = loadExamples(jsonl({ messages: [{ role: 'user', content: 'hello' }, { role: 'assistant', content: 'hello' }] }), tok);
      expect(ex!.inputIds).toEqual([TOOL, ...letters('user'), NEWLINE, HELLO, ENDOFTEXT, TOOL, ...letters('assistant'), NEWLINE, HELLO, ENDOFTEXT]);
      expect(ex!.labels).toEqual([...none(8), TOOL, ...letters('assistant'), NEWLINE, HELLO, ENDOFTEXT]);
    });

    test('a token that straddles the start of the assistant text is found by character offsets, and trained', () => {
      // The messages run together, so BPE merges across them and the prefix tokenizes differently.
      const tok = hubTokenizer(config('{% for m in messages %}{{ m.content }}{% endfor %}'));
      const straddling = loadExamples(jsonl({ messages: [{ role: 'user', content: 'hello w' }, { role: 'assistant', content: 'orld' }] }), tok);
      expect(straddling).toEqual([{ inputIds: [HELLO, SPACE_WORLD], labels: [-100, SPACE_WORLD] }]);
      const inside = loadExamples(jsonl({ messages: [{ role: 'user', content: 'hel' }, { role: 'assistant', content: 'lo world' }] }), tok);
      expect(inside).toEqual([{ inputIds: [HELLO, SPACE_WORLD], labels: [HELLO, SPACE_WORLD] }]);
    });

    test('a template that refuses the conversation, or renders a prefix differently, is an error naming the line', () => {
      const conversation = [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }, { role: 'user', content: 'c' }];
      const refusing = hubTokenizer(config(`{{ raise_exception('roles must alternate') }}`));
      const file = jsonl({ text: 'fine' }, { messages: conversation });
      expectError(() => loadExamples(file, refusing), LorakitError, 'ERR_INVALID_ARG', `${file}:2: the chat template cannot render this conversation: roles must alternate`);
      // The last message is marked, so the first two messages alone render differently than within three.
      const marking = hubTokenizer(config('{% for m in messages %}{{ m.content }}{% if loop.last %}!{% endif %}{% endfor %}'));
      expectError(() => loadExamples(file, marking), LorakitError, 'ERR_INVALID_ARG', `${file}:2: the chat template does not render the first 2 messages as the start of the whole conversation`);
      const broken = hubTokenizer(config('{% if %}'));
      expectError(() => loadExamples(file, broken), LorakitError, 'ERR_TOKENIZER', /:2: the chat template in '.*tokenizer_config\.json' cannot be parsed: /);
    });
  });

  test('malformed lines name the file, the line and the fault', () => {
    const cases: [unknown, string][] = [
      ['{"text": ', 'not valid JSON'],
      [[1, 2], 'expected a JSON object, got [1,2]'],
      [{ input_ids: [] }, `'input_ids' must be a non-empty array of non-negative integers, got []`],
      [{ input_ids: [1, -2] }, `'input_ids' must be a non-empty array of non-negative integers`],
      [{ input_ids: [1, 2], labels: [1] }, `'labels' must be an array as long as 'input_ids' (2) of token ids or -100, got [1]`],
      [{ input_ids: [1, 2], labels: [1, -1] }, `'labels' must be an array as long as 'input_ids' (2)`],
      [{ prompt: 'a' }, `'prompt' and 'completion' must both be strings, got "a" and nothing`],
      [{ text: 3 }, `'text' must be a string, got 3`],
      [{ messages: [] }, `'messages' must be a non-empty array of {"role", "content"} objects, got []`],
      [{ messages: 'hi' }, `'messages' must be a non-empty array`],
      [{ messages: [{ role: 'user', content: 'a' }, 'b'] }, `'messages[1]' must be an object with 'role' and 'content', got "b"`],
      [{ messages: [{ role: 'user', content: 'a' }, { role: 'bot', content: 'b' }] }, `'messages[1].role' must be 'system', 'user' or 'assistant', got "bot"`],
      [{ messages: [{ role: 'assistant', content: ['b'] }] }, `'messages[0].content' must be a string, got ["b"]`],
      [{ messages: [{ role: 'user', content: 'a' }] }, `'messages' has no assistant message, so it would train nothing`],
      [{ input: 'x' }, `expected "text", "prompt"/"completion", "input_ids" or "messages", got keys ["input"]`],
    ];
    for (const [line, message] of cases) {
      const file = jsonl({ input_ids: [1] }, line);
      expectError(() => loadExamples(file, byteTok()), LorakitError, 'ERR_INVALID_ARG', `${file}:2: ${message}`);
    }
  });

  test('text without a tokenizer, an empty file and an unknown extension are errors', () => {
    const text = jsonl({ input_ids: [1] }, { text: 'hi' });
    expectError(() => loadExamples(text, null), LorakitError, 'ERR_INVALID_ARG', `${text}:2 is text, and no tokenizer was given`);
    const chat = jsonl({ messages: [{ role: 'assistant', content: 'a' }] });
    expectError(() => loadExamples(chat, null), LorakitError, 'ERR_INVALID_ARG', `${chat}:1 is text, and no tokenizer was given`);
    const empty = dataFile('empty.jsonl', '\n  \n');
    expectError(() => loadExamples(empty, byteTok()), LorakitError, 'ERR_INVALID_ARG', `${empty}: the file holds no examples`);
    const csv = dataFile('d.csv', 'a,b\n');
    expectError(() => loadExamples(csv, byteTok()), LorakitError, 'ERR_INVALID_ARG', `${csv}: unknown data format '.csv'; expected a .jsonl or a .txt file`);
    const bare = dataFile('data', 'x');
    expectError(() => loadExamples(bare, byteTok()), LorakitError, 'ERR_INVALID_ARG', `unknown data format (no extension)`);
    const missing = path.join(tmp, 'missing.jsonl');
    expectError(() => loadExamples(missing, byteTok()), LorakitError, 'ERR_IO', `'${missing}'`, 'ENOENT');
  });
});

describe('loadExamples: .txt', () => {
  test('documents are separated by blank lines, and every token is trained', () => {
    const file = dataFile('corpus.txt', '\n\nfirst\n\n\nsecond line\nstill second\n  \n\t\nthird\n');
    const tok = byteTok();
    const doc = (s: string) => ({ inputIds: [BOS, ...bytes(s)], labels: [BOS, ...bytes(s)] });
    expect(loadExamples(file, tok)).toEqual([doc('first'), doc('second line\nstill second'), doc('third')]);
    // Windows line breaks separate documents the same way.
    expect(loadExamples(dataFile('crlf.TXT', 'a\r\nb\r\n\r\nc\r\n'), tok)).toEqual([doc('a\r\nb'), doc('c')]);
  });

  test('an empty file and a missing tokenizer are errors', () => {
    const empty = dataFile('empty.txt', '\n \n\n');
    expectError(() => loadExamples(empty, byteTok()), LorakitError, 'ERR_INVALID_ARG', `${empty}: the file holds no examples`);
    const file = dataFile('d.txt', 'words');
    expectError(() => loadExamples(file, null), LorakitError, 'ERR_INVALID_ARG', `${file} is text, and no tokenizer was given`);
  });
});

/** An int64 [B, T] tensor as rows of numbers. */
function rowsOf(t: Batch['inputIds']): number[][] {
  expect(t.dtype).toBe('int64');
  return (t.toArray() as bigint[][]).map((r) => r.map(Number));
}

/** A batch's tensors as rows of numbers; the tensors are disposed. */
function read(batch: Batch): { ids: number[][]; labels: number[][]; positions: number[][]; docStarts: number[][]; tokens: number } {
  const out = { ids: rowsOf(batch.inputIds), labels: rowsOf(batch.labels), positions: rowsOf(batch.positions), docStarts: rowsOf(batch.docStarts), tokens: batch.tokens };
  for (const t of [batch.inputIds, batch.labels, batch.positions, batch.docStarts]) t.dispose();
  return out;
}

describe('Batcher', () => {
  // With seed 1, epoch 0 visits the examples in the order C, A, B (pinned below).
  const A: Example = { inputIds: [10, 11, 12], labels: [10, -100, 12] };
  const B: Example = { inputIds: [20, 21], labels: [20, 21] };
  const C: Example = { inputIds: [30, 31, 32, 33], labels: [30, 31, 32, 33] };
  const examples = [A, B, C];

  test('packing: the stream C A B cut into rows, labels -100 at every document start, positions restart', () => {
    // Stream 30 31 32 33 10 11 12 20 21 in rows of 3: [30 31 32] [33 | 10 11] [12 | 20 21]. C's last token and
    // A's last token go on in the next row as new document pieces.
    const batcher = new Batcher(examples, { seqLen: 3, batchSize: 3, seed: 1, padId: 0 });
    expect(batcher.batchesPerEpoch).toBe(1);
    expect(read(batcher.batch(0, 0))).toEqual({
      ids: [[30, 31, 32], [33, 10, 11], [12, 20, 21]],
      labels: [[-100, 31, 32], [-100, -100, -100], [-100, -100, 21]],
      positions: [[0, 1, 2], [0, 0, 1], [0, 0, 1]],
      docStarts: [[0, 0, 0], [0, 1, 1], [0, 1, 1]],
      // Targets at t = 1..T-1: row 0 has 31 and 32; row 1 none; row 2 has 21.
      tokens: 3,
    });
    // One row a batch: the same rows, one at a time.
    const single = new Batcher(examples, { seqLen: 3, batchSize: 1, pack: true, seed: 1, padId: 0 });
    expect(single.batchesPerEpoch).toBe(3);
    const second = read(single.batch(0, 1));
    expect(second).toEqual({ ids: [[33, 10, 11]], labels: [[-100, -100, -100]], positions: [[0, 0, 1]], docStarts: [[0, 1, 1]], tokens: 0 });
  });

  test('packing drops the last partial row, and the rows that do not fill a batch', () => {
    // 9 tokens make two rows of 4 ([30 31 32 33] [10 11 12 | 20]); 21 is dropped.
    const four = new Batcher(examples, { seqLen: 4, batchSize: 2, seed: 1, padId: 0 });
    expect(four.batchesPerEpoch).toBe(1);
    expect(read(four.batch(0, 0))).toEqual({
      ids: [[30, 31, 32, 33], [10, 11, 12, 20]],
      labels: [[-100, 31, 32, 33], [-100, -100, 12, -100]],
      positions: [[0, 1, 2, 3], [0, 1, 2, 0]],
      docStarts: [[0, 0, 0, 0], [0, 0, 0, 3]],
      tokens: 4,
    });
    // Three rows of 3 with batches of 2: the third row is dropped.
    expect(new Batcher(examples, { seqLen: 3, batchSize: 2, seed: 1, padId: 0 }).batchesPerEpoch).toBe(1);
  });

  test('without packing: one example a row, truncated to seqLen, padded with padId and label -100', () => {
    const batcher = new Batcher(examples, { seqLen: 3, batchSize: 3, pack: false, seed: 1, padId: 7 });
    expect(batcher.batchesPerEpoch).toBe(1);
    expect(read(batcher.batch(0, 0))).toEqual({
      ids: [[30, 31, 32], [10, 11, 12], [20, 21, 7]],
      labels: [[30, 31, 32], [10, -100, 12], [20, 21, -100]],
      positions: [[0, 1, 2], [0, 1, 2], [0, 1, 2]],
      docStarts: [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
      tokens: 2 + 1 + 1,
    });
    // Two rows a batch: one batch, and the third example of each epoch's order waits for another epoch.
    expect(new Batcher(examples, { seqLen: 3, batchSize: 2, pack: false, seed: 1, padId: 7 }).batchesPerEpoch).toBe(1);
  });

  describe('order', () => {
    // Ten one-token examples: each batch of one row names the example it holds.
    const ten: Example[] = Array.from({ length: 10 }, (_, i) => ({ inputIds: [i], labels: [i] }));
    const order = (batcher: Batcher, epoch: number) =>
      Array.from({ length: batcher.batchesPerEpoch }, (_, i) => read(batcher.batch(epoch, i)).ids[0]![0]!);
    const make = (seed: number) => new Batcher(ten, { seqLen: 2, batchSize: 1, pack: false, seed, padId: 0 });

    test('is the same on every machine: pinned for one seed', () => {
      // The shuffle uses integer arithmetic only; these orders must never change, or resumed runs would differ.
      const batcher = make(1234);
      expect(order(batcher, 0)).toEqual([2, 3, 1, 0, 4, 7, 8, 5, 6, 9]);
      expect(order(batcher, 1)).toEqual([7, 3, 4, 9, 2, 8, 0, 6, 1, 5]);
    });

    test('same seed and epoch give the same batches, in any order of calls; other epochs and seeds differ', () => {
      const a = make(5);
      const b = make(5);
      const first = read(a.batch(3, 4));
      expect(read(b.batch(0, 0))).toEqual(read(a.batch(0, 0)));
      // Another epoch in between replaces the batcher's cached order.
      read(a.batch(7, 2));
      expect(read(a.batch(3, 4))).toEqual(first);
      expect(read(b.batch(3, 4))).toEqual(first);
      expect(order(a, 0)).toEqual(order(b, 0));
      expect(order(a, 0)).not.toEqual(order(a, 1));
      expect(order(a, 0)).not.toEqual(order(make(6), 0));
      // The seed's high bits count.
      expect(order(make(5 + 2 ** 32), 0)).not.toEqual(order(a, 0));
      for (const e of [0, 1, 2]) expect([...order(a, e)].sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    });

    test('packed batches follow the same order', () => {
      const packed = new Batcher(examples, { seqLen: 3, batchSize: 1, seed: 1, padId: 0 });
      const again = new Batcher(examples, { seqLen: 3, batchSize: 1, seed: 1, padId: 0 });
      for (const e of [0, 1, 2]) for (let i = 0; i < 3; i++) expect(read(again.batch(e, i))).toEqual(read(packed.batch(e, i)));
      // Epoch 1 of seed 1 visits B, C, A.
      expect(read(packed.batch(1, 0)).ids).toEqual([[20, 21, 30]]);
    });
  });

  test('the model counts the same tokens, and a packed row has the loss of its documents run one by one', () => {
    // GPT-2 learns its position embeddings, so a wrong position changes the loss (RoPE would not notice a shift).
    using model = loadModel(path.join(__dirname, 'fixtures/peft/tiny-gpt2'));
    // Documents of several lengths, with some labels masked, cut across rows of 8.
    const docs: Example[] = [5, 3, 7, 2, 6, 4].map((n, d) => {
      const ids = Array.from({ length: n }, (_, i) => (37 * d + 11 * i + 3) % 512);
      return { inputIds: ids, labels: ids.map((id, i) => (i === 1 && d % 2 === 0 ? -100 : id)) };
    });
    const batcher = new Batcher(docs, { seqLen: 8, batchSize: 3, seed: 9, padId: 0 });
    const batch = batcher.batch(0, 0);
    const packed = model.forward(batch.inputIds, { labels: batch.labels, positions: batch.positions, docStarts: batch.docStarts });
    const rows = read(batch);
    expect(packed.tokens).toBe(batch.tokens);
    let sum = 0;
    let count = 0;
    rows.ids.forEach((row, b) => {
      for (let s = 0; s < row.length; ) {
        let e = s + 1;
        while (e < row.length && rows.docStarts[b]![e] === s) e++;
        using ids = tensor(BigInt64Array.from(row.slice(s, e), BigInt), [1, e - s]);
        using labels = tensor(BigInt64Array.from(rows.labels[b]!.slice(s, e), BigInt), [1, e - s]);
        const alone = model.forward(ids, { labels });
        if (alone.tokens > 0) sum += alone.loss * alone.tokens;
        count += alone.tokens;
        s = e;
      }
    });
    expect(count).toBe(batch.tokens);
    expect(rows.docStarts.some((r) => r.some((start) => start > 0))).toBe(true);
    expect(packed.loss * packed.tokens).toBeCloseTo(sum, 5);
  });

  test('bad options and a dataset too small for one batch are errors with the numbers', () => {
    const opts = { seqLen: 4, batchSize: 1, seed: 0, padId: 0 };
    expectError(() => new Batcher(examples, { ...opts, seqLen: 1 }), LorakitRangeError, 'ERR_OUT_OF_RANGE', `'seqLen' must be >= 2, got 1`);
    expectError(() => new Batcher(examples, { ...opts, batchSize: 0 }), LorakitRangeError, 'ERR_OUT_OF_RANGE', `'batchSize' must be >= 1, got 0`);
    expectError(() => new Batcher(examples, { ...opts, seqLen: 2.5 }), LorakitRangeError, 'ERR_OUT_OF_RANGE', `'seqLen' must be an integer`);
    expectError(() => new Batcher(examples, { ...opts, padId: -1 }), LorakitRangeError, 'ERR_OUT_OF_RANGE', `'padId' must be >= 0`);
    expectError(() => new Batcher(examples, { ...opts, pack: 1 as unknown as boolean }), LorakitTypeError, 'ERR_INVALID_ARG', `option 'pack' must be true or false`);
    expectError(
      () => new Batcher(examples, { ...opts, batchSize: 3 }),
      LorakitError,
      'ERR_INVALID_ARG',
      'Batcher: the dataset cannot fill one batch: 3 examples hold 9 tokens, which fill 2 rows of seqLen 4; a batch of batchSize 3 needs 3 rows (12 tokens)',
    );
    expectError(
      () => new Batcher(examples, { ...opts, batchSize: 4, pack: false }),
      LorakitError,
      'ERR_INVALID_ARG',
      'Batcher: the dataset cannot fill one batch: 3 examples fill 3 rows without packing; a batch of batchSize 4 needs 4 rows',
    );
    expectError(() => new Batcher([], opts), LorakitError, 'ERR_INVALID_ARG', '0 examples hold 0 tokens');
    expectError(() => new Batcher([A, { inputIds: [1, 2], labels: [1] }], opts), LorakitRangeError, 'ERR_SHAPE', 'example 2 has 2 input ids but 1 labels');
    const batcher = new Batcher(examples, opts);
    expectError(() => batcher.batch(0, 2), LorakitRangeError, 'ERR_OUT_OF_RANGE', `Batcher.batch: 'index' must be < 2, got 2`);
    expectError(() => batcher.batch(-1, 0), LorakitRangeError, 'ERR_OUT_OF_RANGE', `Batcher.batch: 'epoch' must be >= 0, got -1`);
  });
});
