import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
// The module object itself (not the import-star copy), so a test can spy on writeSync as lib/io sees it.
import nodeFs = require('node:fs');
import { DisposedError, LorakitError, LorakitRangeError, LorakitTypeError, Tensor, io, tensor, type DType } from '../lib';
import { rng } from './helpers/reference';

const FIXTURES = path.join(__dirname, 'fixtures/peft');
const FILE_DTYPE: Record<DType, string> = { float32: 'F32', float16: 'F16', bfloat16: 'BF16', int64: 'I64', int32: 'I32', uint8: 'U8' };
const ITEM_BYTES: Record<DType, number> = { float32: 4, float16: 2, bfloat16: 2, int64: 8, int32: 4, uint8: 1 };

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-io-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
afterEach(() => jest.restoreAllMocks());

let fileCount = 0;
function tmpFile(name = 'f.safetensors'): string {
  const dir = path.join(tmp, `case${fileCount++}`);
  fs.mkdirSync(dir);
  return path.join(dir, name);
}

/** A safetensors file assembled from the spec alone: the test writes the header JSON text itself. */
function handBuilt(header: string | object, data: Uint8Array = new Uint8Array(0), pad = true): Buffer {
  let json = typeof header === 'string' ? header : JSON.stringify(header);
  if (pad) json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([length, Buffer.from(json), data]);
}

/** The header of a safetensors file, parsed with nothing from lorakit. */
function parseByHand(bytes: Buffer): { json: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>; dataStart: number } {
  const n = Number(bytes.readBigUInt64LE(0));
  return { json: JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')), dataStart: 8 + n };
}

function randomBytes(n: number, seed: number): Uint8Array {
  const r = rng(seed);
  return Uint8Array.from({ length: n }, () => Math.floor(r() * 256));
}

/** A tensor holding exactly `bytes` (any bit pattern, NaN payloads included). */
function tensorOfBytes(bytes: Uint8Array, shape: number[], dtype: DType): Tensor {
  const buf = bytes.slice().buffer;
  const arr =
    dtype === 'float32' ? new Float32Array(buf)
      : dtype === 'int32' ? new Int32Array(buf)
        : dtype === 'int64' ? new BigInt64Array(buf)
          : dtype === 'uint8' ? new Uint8Array(buf)
            : new Uint16Array(buf);
  return tensor(arr, shape, { dtype });
}

function bytesOf(t: Tensor): Buffer {
  const d = t.data();
  return Buffer.from(d.buffer, d.byteOffset, d.byteLength);
}

function expectError(fn: () => unknown, cls: new (...args: never[]) => Error, code: string, pattern: RegExp): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(cls);
  expect((err as LorakitError).code).toBe(code);
  expect((err as Error).message).toMatch(pattern);
}

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('writeSafetensors and openSafetensors', () => {
  // Names sort differently from the data layout (widest dtype first), which the expected file spells out.
  const CASES: { name: string; dtype: DType; shape: number[] }[] = [
    { name: 'a.u8', dtype: 'uint8', shape: [3] },
    { name: 'b.f32', dtype: 'float32', shape: [2, 3] },
    { name: 'c.bf16', dtype: 'bfloat16', shape: [5] },
    { name: 'd.f16', dtype: 'float16', shape: [2, 2] },
    { name: 'e.i64', dtype: 'int64', shape: [3] },
    { name: 'f.i32', dtype: 'int32', shape: [1, 1, 2] },
    { name: 'g.scalar', dtype: 'float32', shape: [] },
    { name: 'h.empty', dtype: 'float32', shape: [0, 4] },
  ];
  const bytes = CASES.map((c, i) => randomBytes(c.shape.reduce((a, b) => a * b, 1) * ITEM_BYTES[c.dtype], 100 + i));

  test('round trip of every dtype is byte-exact and matches a hand-built file', () => {
    const file = tmpFile();
    const tensors = Object.fromEntries(CASES.map((c, i) => [c.name, tensorOfBytes(bytes[i]!, c.shape, c.dtype)]));
    io.writeSafetensors(file, tensors, { format: 'pt', note: 'lorakit test' });

    const layout = CASES.map((c, i) => ({ ...c, bytes: bytes[i]! })).sort(
      (a, b) => ITEM_BYTES[b.dtype] - ITEM_BYTES[a.dtype] || (a.name < b.name ? -1 : 1),
    );
    expect(layout.map((c) => c.name)).toEqual(['e.i64', 'b.f32', 'f.i32', 'g.scalar', 'h.empty', 'c.bf16', 'd.f16', 'a.u8']);
    const header: Record<string, unknown> = { __metadata__: { format: 'pt', note: 'lorakit test' } };
    let offset = 0;
    const offsets: Record<string, [number, number]> = {};
    for (const c of layout) {
      offsets[c.name] = [offset, offset + c.bytes.length];
      offset += c.bytes.length;
    }
    for (const c of CASES) header[c.name] = { dtype: FILE_DTYPE[c.dtype], shape: c.shape, data_offsets: offsets[c.name] };
    const expected = handBuilt(header, Buffer.concat(layout.map((c) => c.bytes)));
    const written = fs.readFileSync(file);
    expect(written.equals(expected)).toBe(true);
    expect(Number(written.readBigUInt64LE(0)) % 8).toBe(0);

    using f = io.openSafetensors(file);
    expect(f.keys()).toEqual(layout.map((c) => c.name));
    expect(f.metadata).toEqual({ format: 'pt', note: 'lorakit test' });
    const { dataStart } = parseByHand(written);
    CASES.forEach((c, i) => {
      expect(f.info(c.name)).toEqual({
        file,
        dtype: c.dtype,
        shape: c.shape,
        byteOffset: dataStart + offsets[c.name]![0],
        byteLength: bytes[i]!.length,
      });
      const t = f.load(c.name);
      expect(t.dtype).toBe(c.dtype);
      expect(t.shape).toEqual(c.shape);
      expect(bytesOf(t).equals(Buffer.from(bytes[i]!))).toBe(true);
      t.dispose();
    });
    for (const t of Object.values(tensors)) t.dispose();
  });

  test('reads files laid out differently: unpadded header, unsorted keys, reversed data, BOOL, prototype-like names', () => {
    const file = tmpFile();
    const w = new Float32Array([1.5, -2, 3.25]);
    const ids = new BigInt64Array([-(2n ** 63n), 7n]);
    const mask = new Uint8Array([1, 0, 1, 1]);
    // Data: mask, ids, w; the header lists them in yet another order.
    const data = Buffer.concat([Buffer.from(mask), Buffer.from(ids.buffer), Buffer.from(w.buffer)]);
    const header =
      '{"w":{"dtype":"F32","shape":[3],"data_offsets":[20,32]},' +
      '"__proto__":{"dtype":"BOOL","shape":[2,2],"data_offsets":[0,4]},' +
      '"constructor":{"shape":[2],"data_offsets":[4,20],"dtype":"I64","extra":"ignored"}}';
    fs.writeFileSync(file, handBuilt(header, data, false));

    const h = io.readSafetensorsHeader(file);
    expect([...h.tensors.keys()]).toEqual(['__proto__', 'constructor', 'w']);
    expect(h.metadata).toEqual({});
    expect(h.dataOffset).toBe(8 + header.length);

    using f = io.openSafetensors(file);
    expect(f.has('w') && f.has('__proto__') && f.has('constructor')).toBe(true);
    expect(f.has('toString')).toBe(false);
    const m = f.load('__proto__');
    expect(m.dtype).toBe('uint8');
    expect(m.toArray()).toEqual([[1, 0], [1, 1]]);
    expect(f.load('constructor').toArray()).toEqual([-(2n ** 63n), 7n]);
    expect(f.load('w').toArray()).toEqual([1.5, -2, 3.25]);
    expect(f.load('w', { dtype: 'bfloat16' }).data()).toEqual(new Uint16Array([0x3fc0, 0xc000, 0x4050]));
    expect(f.load('constructor', { dtype: 'float32' }).toArray()).toEqual([-(2 ** 63), 7]);
  });

  test('bfloat16 and float16 load cast to float32', () => {
    const file = tmpFile();
    const bf = tensor(new Uint16Array([0x3f80, 0xc000, 0x3f00]), [3], { dtype: 'bfloat16' });
    const hf = tensor(new Uint16Array([0x3c00, 0xc000, 0x0001]), [3], { dtype: 'float16' });
    io.writeSafetensors(file, { bf, hf });
    using f = io.openSafetensors(file);
    const a = f.load('bf', { dtype: 'float32' });
    expect(a.dtype).toBe('float32');
    expect(a.toArray()).toEqual([1, -2, 0.5]);
    expect(f.load('hf', { dtype: 'float32' }).toArray()).toEqual([1, -2, 2 ** -24]);
    expect(f.metadata).toEqual({});
    expect(parseByHand(fs.readFileSync(file)).json.__metadata__).toBeUndefined();
  });

  test('an empty tensor map writes a valid file', () => {
    const file = tmpFile();
    io.writeSafetensors(file, {});
    expect(fs.readFileSync(file).equals(handBuilt('{}'))).toBe(true);
    expect(io.openSafetensors(file).keys()).toEqual([]);
  });

  test('load, info and close errors', () => {
    const file = tmpFile();
    io.writeSafetensors(file, { x: tensor([1, 2]) });
    const f = io.openSafetensors(file);
    expectError(() => f.load('y'), LorakitRangeError, 'ERR_INVALID_ARG', new RegExp(`SafetensorsFile\\.load: '${escape(file)}' has no tensor 'y'`));
    expectError(() => f.info('y'), LorakitRangeError, 'ERR_INVALID_ARG', /SafetensorsFile\.info: .* has no tensor 'y'/);
    expectError(() => f.load('x', { dtype: 'float64' as DType }), LorakitTypeError, 'ERR_DTYPE', /options\.dtype must be one of/);
    expectError(() => f.load('x', 3 as never), LorakitTypeError, 'ERR_INVALID_ARG', /options must be an object/);
    f.close();
    f.close();
    expect(() => f.load('x')).toThrow(DisposedError);
    expect(f.info('x').shape).toEqual([2]);
    expectError(() => io.openSafetensors(42 as never), LorakitTypeError, 'ERR_INVALID_ARG', /openSafetensors: file must be a non-empty string/);
  });
});

describe('the tiny-gpt2 fixture', () => {
  const file = path.join(FIXTURES, 'tiny-gpt2/model.safetensors');

  test('keys, shapes and bytes agree with the header parsed by hand', () => {
    const raw = fs.readFileSync(file);
    const { json, dataStart } = parseByHand(raw);
    const names = Object.keys(json).filter((k) => k !== '__metadata__');
    expect(names.length).toBeGreaterThan(20);
    expect(names).toContain('transformer.wte.weight');
    expect(names).not.toContain('lm_head.weight');

    using f = io.openSafetensors(file);
    expect(f.metadata).toEqual(json.__metadata__);
    expect([...f.keys()].sort()).toEqual([...names].sort());
    const byOffset = [...names].sort((a, b) => json[a]!.data_offsets[0] - json[b]!.data_offsets[0]);
    expect(f.keys()).toEqual(byOffset);
    for (const name of names) {
      const e = json[name]!;
      const info = f.info(name);
      expect(e.dtype).toBe('F32');
      expect(info.dtype).toBe('float32');
      expect(info.shape).toEqual(e.shape);
      expect(info.byteOffset).toBe(dataStart + e.data_offsets[0]);
      const t = f.load(name);
      expect(t.shape).toEqual(e.shape);
      expect(bytesOf(t).equals(raw.subarray(dataStart + e.data_offsets[0], dataStart + e.data_offsets[1]))).toBe(true);
      t.dispose();
    }
    expect(f.info('transformer.wte.weight').shape).toEqual([512, 64]);
    expect(f.info('transformer.h.0.attn.c_attn.weight').shape).toEqual([64, 192]);
  });

  test('readSafetensorsHeader agrees with the file', () => {
    const h = io.readSafetensorsHeader(file);
    expect(h.metadata).toEqual({ format: 'pt' });
    expect(h.dataOffset).toBe(parseByHand(fs.readFileSync(file)).dataStart);
    expect(h.tensors.get('transformer.ln_f.weight')).toMatchObject({ file, dtype: 'float32', shape: [64], byteLength: 256 });
  });
});

describe('malformed safetensors files', () => {
  const f32 = (n: number): Uint8Array => new Uint8Array(new Float32Array(n).buffer);
  const valid = handBuilt({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, f32(2));
  const withLength = (n: bigint, rest: Buffer = Buffer.from('{}      ')): Buffer => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(n);
    return Buffer.concat([b, rest]);
  };
  const one = (entry: unknown, data = f32(2)): Buffer => handBuilt({ w: entry }, data);

  const CASES: [string, Buffer, new (...args: never[]) => Error, RegExp][] = [
    ['file shorter than the length', Buffer.from([1, 2, 3]), LorakitError, /is truncated: it has 3 bytes, fewer than the 8/],
    ['length beyond the file', withLength(1000n), LorakitError, /is truncated: it claims a 1000-byte header, but only 8 bytes follow/],
    ['header over 100 MB claimed', withLength(100_000_001n), LorakitRangeError, /claims a 100000001-byte header, over the 100000000-byte limit/],
    ['length 2^64 - 1', withLength(2n ** 64n - 1n), LorakitRangeError, /claims a 18446744073709551615-byte header/],
    ['header not JSON', handBuilt('{"w": nope}'), LorakitError, /header that is not valid UTF-8 JSON: .*JSON/],
    ['header not UTF-8', handBuilt('{"\xff"}').fill(0xff, 9, 10), LorakitError, /header that is not valid UTF-8 JSON/],
    ['empty header', withLength(0n, Buffer.alloc(0)), LorakitError, /not valid UTF-8 JSON/],
    ['header a JSON array', handBuilt('[1,2]'), LorakitError, /header that is not a JSON object: \[1,2\]/],
    ['entry not an object', one(5), LorakitError, /tensor 'w' must be an object with dtype, shape and data_offsets, got 5/],
    ['unsupported dtype', one({ dtype: 'F64', shape: [1], data_offsets: [0, 8] }), LorakitError, /tensor 'w' has dtype "F64"; expected one of F32, F16, BF16, I64, I32, U8, BOOL/],
    ['dtype missing', one({ shape: [2], data_offsets: [0, 8] }), LorakitError, /tensor 'w' has dtype nothing/],
    ['dtype an object key', one({ dtype: 'constructor', shape: [2], data_offsets: [0, 8] }), LorakitError, /has dtype "constructor"/],
    ['negative dim', one({ dtype: 'F32', shape: [-2], data_offsets: [0, 8] }), LorakitError, /tensor 'w' has shape \[-2\]; expected an array of non-negative integers/],
    ['fractional dim', one({ dtype: 'F32', shape: [1.5], data_offsets: [0, 8] }), LorakitError, /has shape \[1.5\]/],
    ['shape not an array', one({ dtype: 'F32', shape: '2', data_offsets: [0, 8] }), LorakitError, /has shape "2"/],
    ['offsets not a pair', one({ dtype: 'F32', shape: [2], data_offsets: [8] }), LorakitError, /has data_offsets \[8\]; expected \[begin, end\]/],
    ['offsets reversed', one({ dtype: 'F32', shape: [2], data_offsets: [8, 0] }), LorakitError, /has data_offsets \[8,0\]/],
    ['shape and offsets disagree', one({ dtype: 'F32', shape: [3], data_offsets: [0, 8] }), LorakitError, /shape \[3\] of F32, which needs 12 bytes, but data_offsets \[0, 8\] hold 8/],
    ['numel overflowing', one({ dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 8] }), LorakitError, /which needs \d.*bytes, but data_offsets \[0, 8\] hold 8/],
    [
      'span out of range',
      handBuilt({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [16, 24] } }, f32(4)),
      LorakitRangeError,
      /tensor 'b' has data_offsets \[16, 24\] outside the 16-byte data section/,
    ],
    [
      'overlapping spans',
      handBuilt({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, f32(3)),
      LorakitError,
      /overlapping tensors 'a' \[0, 8\] and 'b' \[4, 12\]/,
    ],
    ['truncated data', valid.subarray(0, valid.length - 4), LorakitError, /is truncated: its header describes 8 bytes of tensor data, but only 4 follow/],
    ['metadata value not a string', handBuilt({ __metadata__: { n: 1 } }), LorakitError, /has __metadata__ 'n' = 1; metadata values must be strings/],
    ['metadata not an object', handBuilt({ __metadata__: [] }), LorakitError, /has __metadata__ \[\]; expected an object of strings/],
  ];

  test.each(CASES)('%s', (name, bytes, cls, pattern) => {
    const file = tmpFile(`${name.replace(/\W+/g, '_')}.safetensors`);
    fs.writeFileSync(file, bytes);
    const where = new RegExp(`'${escape(file)}'`);
    for (const [op, read] of [
      ['openSafetensors', () => io.openSafetensors(file)],
      ['readSafetensorsHeader', () => io.readSafetensorsHeader(file)],
    ] as const) {
      expectError(read, cls, 'ERR_SAFETENSORS', pattern);
      expectError(read, cls, 'ERR_SAFETENSORS', where);
      expectError(read, cls, 'ERR_SAFETENSORS', new RegExp(`^${op}: `));
    }
  });

  test('the valid base case reads', () => {
    const file = tmpFile();
    fs.writeFileSync(file, valid);
    expect(io.openSafetensors(file).load('w').toArray()).toEqual([0, 0]);
  });

  test('a missing file, or a directory, is ERR_IO', () => {
    const missing = path.join(tmp, 'nope.safetensors');
    expectError(() => io.openSafetensors(missing), LorakitError, 'ERR_IO', new RegExp(`openSafetensors: cannot open '${escape(missing)}': no such file or directory \\(ENOENT\\)`));
    expectError(() => io.readSafetensorsHeader(tmp), LorakitError, 'ERR_IO', /readSafetensorsHeader: '.*' is not a regular file/);
  });
});

describe('sharded checkpoints', () => {
  function sharded(weightMap: Record<string, string> | string, shards: Record<string, Record<string, Tensor>>): string {
    const dir = path.dirname(tmpFile());
    for (const [file, tensors] of Object.entries(shards)) io.writeSafetensors(path.join(dir, file), tensors);
    const index = typeof weightMap === 'string' ? weightMap : JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap });
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), index);
    return dir;
  }
  const S1 = 'model-00001-of-00002.safetensors';
  const S2 = 'model-00002-of-00002.safetensors';

  test('one key space across two shards', () => {
    const dir = sharded(
      { 'layers.0.w': S1, 'embed.weight': S1, 'layers.1.w': S2 },
      {
        [S1]: { 'layers.0.w': tensor([[1, 2], [3, 4]]), 'embed.weight': tensor(new Int32Array([5, 6, 7])) },
        [S2]: { 'layers.1.w': tensor([9, 8], undefined, { dtype: 'bfloat16' }) },
      },
    );
    using ckpt = io.openCheckpoint(dir);
    expect(ckpt.keys().sort()).toEqual(['embed.weight', 'layers.0.w', 'layers.1.w']);
    expect(ckpt.files.sort()).toEqual([path.join(dir, S1), path.join(dir, S2)]);
    expect(ckpt.has('layers.1.w')).toBe(true);
    expect(ckpt.has('nope')).toBe(false);
    expect(ckpt.info('layers.1.w')).toMatchObject({ file: path.join(dir, S2), dtype: 'bfloat16', shape: [2] });
    expect(ckpt.info('embed.weight').file).toBe(path.join(dir, S1));
    expect(ckpt.load('layers.0.w').toArray()).toEqual([[1, 2], [3, 4]]);
    expect(ckpt.load('embed.weight').toArray()).toEqual([5, 6, 7]);
    expect(ckpt.load('layers.1.w', { dtype: 'float32' }).toArray()).toEqual([9, 8]);
    expectError(() => ckpt.load('nope'), LorakitRangeError, 'ERR_INVALID_ARG', /Checkpoint\.load: the checkpoint in '.*' has no tensor 'nope'/);
    ckpt.close();
    expect(() => ckpt.load('layers.0.w')).toThrow(DisposedError);
  });

  test('a folder with model.safetensors is a one-shard checkpoint', () => {
    const dir = path.join(FIXTURES, 'tiny-llama');
    using ckpt = io.openCheckpoint(dir);
    using file = io.openSafetensors(path.join(dir, 'model.safetensors'));
    expect(ckpt.keys()).toEqual(file.keys());
    expect(ckpt.files).toEqual([path.join(dir, 'model.safetensors')]);
    expect(bytesOf(ckpt.load('model.norm.weight')).equals(bytesOf(file.load('model.norm.weight')))).toBe(true);
  });

  test('bad indexes and folders', () => {
    const t = { a: tensor([1]) };
    const index = (dir: string): string => escape(path.join(dir, 'model.safetensors.index.json'));

    let dir = sharded({ a: S1, b: S2 }, { [S1]: t });
    expectError(() => io.openCheckpoint(dir), LorakitError, 'ERR_IO', new RegExp(`openCheckpoint: cannot open '${escape(path.join(dir, S2))}': no such file`));

    dir = sharded({ a: S1, b: S1 }, { [S1]: t });
    expectError(() => io.openCheckpoint(dir), LorakitError, 'ERR_SAFETENSORS', new RegExp(`'${index(dir)}' maps 'b' to '${escape(S1)}', which has no such tensor`));

    dir = sharded({ a: '../outside.safetensors' }, {});
    expectError(() => io.openCheckpoint(dir), LorakitError, 'ERR_SAFETENSORS', /maps 'a' to "\.\.\/outside\.safetensors"; expected a file name inside/);
    dir = sharded({ a: '/etc/passwd' }, {});
    expectError(() => io.openCheckpoint(dir), LorakitError, 'ERR_SAFETENSORS', /maps 'a' to "\/etc\/passwd"/);
    dir = sharded({ a: 3 } as never, {});
    expectError(() => io.openCheckpoint(dir), LorakitError, 'ERR_SAFETENSORS', /maps 'a' to 3/);

    dir = sharded('{"metadata": {}}', {});
    expectError(() => io.openCheckpoint(dir), LorakitError, 'ERR_SAFETENSORS', new RegExp(`'${index(dir)}' must have a non-empty weight_map object .*got nothing`));
    dir = sharded({}, {});
    expectError(() => io.openCheckpoint(dir), LorakitError, 'ERR_SAFETENSORS', /must have a non-empty weight_map/);
    dir = sharded('{"weight_map": ', {});
    expectError(() => io.openCheckpoint(dir), LorakitError, 'ERR_SAFETENSORS', new RegExp(`openCheckpoint: '${index(dir)}' is not valid JSON: `));

    dir = path.dirname(tmpFile());
    expectError(() => io.openCheckpoint(dir), LorakitError, 'ERR_IO', /has neither model\.safetensors nor model\.safetensors\.index\.json/);
    expectError(() => io.openCheckpoint(path.join(dir, 'missing')), LorakitError, 'ERR_IO', /'.*missing' does not exist/);
  });
});

describe('atomic writes', () => {
  const files = (dir: string): string[] => fs.readdirSync(dir).sort();

  test('no temporary file is left, and a second write replaces the first', () => {
    const file = tmpFile('w.safetensors');
    io.writeSafetensors(file, { x: tensor([1, 2, 3]) });
    expect(files(path.dirname(file))).toEqual(['w.safetensors']);
    io.writeSafetensors(file, { y: tensor([4]) });
    expect(files(path.dirname(file))).toEqual(['w.safetensors']);
    expect(io.openSafetensors(file).keys()).toEqual(['y']);
  });

  test('a write failing half way leaves the old file intact', () => {
    const file = tmpFile('w.safetensors');
    io.writeSafetensors(file, { x: tensor([1, 2, 3]) });
    const before = fs.readFileSync(file);
    const realWrite = nodeFs.writeSync;
    let calls = 0;
    const spy = jest.spyOn(nodeFs, 'writeSync').mockImplementation(((...args: Parameters<typeof realWrite>) => {
      if (++calls === 2) throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write', errno: -28 });
      return realWrite(...args);
    }) as typeof realWrite);
    expectError(
      () => io.writeSafetensors(file, { a: tensor([7, 8]), b: tensor([9]) }),
      LorakitError,
      'ERR_IO',
      new RegExp(`writeSafetensors: cannot write '${escape(file)}': no space left on device \\(ENOSPC\\)`),
    );
    expect(calls).toBe(2);
    spy.mockRestore();
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    expect(files(path.dirname(file))).toEqual(['w.safetensors']);
  });

  test('a bad argument writes nothing; a rename onto a folder fails cleanly', () => {
    const file = tmpFile('w.safetensors');
    io.writeSafetensors(file, { x: tensor([1]) });
    const before = fs.readFileSync(file);
    const gone = tensor([1]);
    gone.dispose();
    expect(() => io.writeSafetensors(file, { a: tensor([1]), b: gone })).toThrow(DisposedError);
    expect(fs.readFileSync(file).equals(before)).toBe(true);
    expect(files(path.dirname(file))).toEqual(['w.safetensors']);

    const folder = path.join(path.dirname(file), 'folder');
    fs.mkdirSync(folder);
    expectError(() => io.writeSafetensors(folder, { a: tensor([1]) }), LorakitError, 'ERR_IO', /writeSafetensors: cannot write '.*folder'/);
    expect(files(path.dirname(file))).toEqual(['folder', 'w.safetensors']);
  });

  test('argument errors', () => {
    const file = tmpFile();
    expectError(() => io.writeSafetensors(file, { __metadata__: tensor([1]) }), LorakitRangeError, 'ERR_INVALID_ARG', /'__metadata__' cannot name a tensor/);
    expectError(() => io.writeSafetensors(file, { '': tensor([1]) }), LorakitRangeError, 'ERR_INVALID_ARG', /'' cannot name a tensor/);
    expectError(() => io.writeSafetensors(file, { a: [1, 2] as never }), LorakitTypeError, 'ERR_INVALID_ARG', /writeSafetensors: 'a' must be a Tensor, got an array/);
    expectError(() => io.writeSafetensors(file, null as never), LorakitTypeError, 'ERR_INVALID_ARG', /tensors must be an object of name to Tensor, got null/);
    expectError(() => io.writeSafetensors(file, {}, { n: 1 } as never), LorakitTypeError, 'ERR_INVALID_ARG', /metadata\['n'\] must be a string, got number 1/);
    expectError(() => io.writeSafetensors('', {}), LorakitTypeError, 'ERR_INVALID_ARG', /file must be a non-empty string/);
    expect(fs.existsSync(file)).toBe(false);
  });
});

describe('readModelConfig', () => {
  function configDir(config: unknown): string {
    const dir = path.dirname(tmpFile());
    fs.writeFileSync(path.join(dir, 'config.json'), typeof config === 'string' ? config : JSON.stringify(config));
    return dir;
  }

  test('the tiny-gpt2 fixture (transformers 5)', () => {
    expect(io.readModelConfig(path.join(FIXTURES, 'tiny-gpt2'))).toEqual({
      modelType: 'gpt2',
      vocabSize: 512,
      hiddenSize: 64,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 4,
      headDim: 16,
      intermediateSize: 256,
      maxPositions: 64,
      normEps: 1e-5,
      ropeTheta: null,
      tieWordEmbeddings: true,
      dtype: 'float32',
      attentionBias: true,
      attentionOutBias: true,
      mlpBias: true,
      hiddenAct: 'gelu_new',
      slidingWindow: null,
      bosTokenId: 50256,
      eosTokenId: [50256],
    });
  });

  test('the tiny-llama fixture (transformers 5, rope_parameters)', () => {
    expect(io.readModelConfig(path.join(FIXTURES, 'tiny-llama'))).toEqual({
      modelType: 'llama',
      vocabSize: 512,
      hiddenSize: 64,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 16,
      intermediateSize: 176,
      maxPositions: 64,
      normEps: 1e-6,
      ropeTheta: 10000,
      tieWordEmbeddings: false,
      dtype: 'float32',
      attentionBias: false,
      attentionOutBias: false,
      mlpBias: false,
      hiddenAct: 'silu',
      slidingWindow: null,
      bosTokenId: 1,
      eosTokenId: [2],
    });
  });

  const llama4 = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: 49152,
    hidden_size: 576,
    intermediate_size: 1536,
    num_hidden_layers: 30,
    num_attention_heads: 9,
    num_key_value_heads: 3,
    max_position_embeddings: 8192,
    rms_norm_eps: 1e-5,
    rope_theta: 100000,
    rope_scaling: null,
    tie_word_embeddings: true,
    torch_dtype: 'bfloat16',
    bos_token_id: 0,
    eos_token_id: 0,
    pad_token_id: null,
    transformers_version: '4.42.3',
  };

  test('a transformers 4 llama config (SmolLM style): top-level rope_theta, torch_dtype, tied embeddings', () => {
    expect(io.readModelConfig(configDir(llama4))).toMatchObject({
      modelType: 'llama',
      hiddenSize: 576,
      numHeads: 9,
      numKvHeads: 3,
      headDim: 64,
      ropeTheta: 100000,
      dtype: 'bfloat16',
      tieWordEmbeddings: true,
      normEps: 1e-5,
      bosTokenId: 0,
      eosTokenId: [0],
      hiddenAct: 'silu',
      maxPositions: 8192,
    });
  });

  test('defaults where a config leaves fields out', () => {
    const { num_key_value_heads: _kv, rope_theta: _t, torch_dtype: _d, tie_word_embeddings: _tie, max_position_embeddings: _m, rms_norm_eps: _e, bos_token_id: _b, eos_token_id: _eos, ...bare } = llama4;
    expect(io.readModelConfig(configDir(bare))).toMatchObject({
      numKvHeads: 9,
      ropeTheta: 10000,
      dtype: null,
      tieWordEmbeddings: false,
      maxPositions: 2048,
      normEps: 1e-6,
      bosTokenId: null,
      eosTokenId: [],
      attentionBias: false,
      mlpBias: false,
    });
    expect(io.readModelConfig(configDir({ ...llama4, attention_bias: true, mlp_bias: true, eos_token_id: [1, 2], head_dim: 32 }))).toMatchObject({
      attentionBias: true,
      attentionOutBias: true,
      mlpBias: true,
      eosTokenId: [1, 2],
      headDim: 32,
    });
    // rope_parameters (transformers 5) wins over a stale top-level rope_theta.
    expect(io.readModelConfig(configDir({ ...llama4, rope_parameters: { rope_type: 'default', rope_theta: 5e5 } })).ropeTheta).toBe(5e5);
    expect(io.readModelConfig(configDir({ ...llama4, dtype: 'float16' })).dtype).toBe('float16');
  });

  test('a transformers 4 GPT-2 config: n_ctx, n_inner null, no activation or tie given', () => {
    const c = io.readModelConfig(configDir({ model_type: 'gpt2', vocab_size: 50257, n_embd: 768, n_layer: 12, n_head: 12, n_ctx: 1024, n_inner: null }));
    expect(c).toMatchObject({ maxPositions: 1024, intermediateSize: 3072, headDim: 64, hiddenAct: 'gelu_new', tieWordEmbeddings: true, normEps: 1e-5, numKvHeads: 12 });
    expect(io.readModelConfig(configDir({ model_type: 'gpt2', vocab_size: 8, n_embd: 8, n_layer: 1, n_head: 2, n_positions: 16, n_inner: 20, activation_function: 'relu' }))).toMatchObject({
      intermediateSize: 20,
      maxPositions: 16,
      hiddenAct: 'relu',
    });
  });

  test('mistral and qwen2', () => {
    const mistral = { ...llama4, model_type: 'mistral', hidden_size: 5120, num_attention_heads: 32, num_key_value_heads: 8, head_dim: 128, sliding_window: 4096 };
    expect(io.readModelConfig(configDir(mistral))).toMatchObject({ modelType: 'mistral', slidingWindow: 4096, headDim: 128, attentionBias: false, attentionOutBias: false });
    expect(io.readModelConfig(configDir({ ...mistral, sliding_window: null })).slidingWindow).toBeNull();
    const { sliding_window: _s, max_position_embeddings: _m, ...noWindow } = mistral;
    expect(io.readModelConfig(configDir(noWindow))).toMatchObject({ slidingWindow: 4096, maxPositions: 131072 });

    const qwen2 = { ...llama4, model_type: 'qwen2', use_sliding_window: false, sliding_window: 32768, max_window_layers: 21 };
    expect(io.readModelConfig(configDir(qwen2))).toMatchObject({ modelType: 'qwen2', attentionBias: true, attentionOutBias: false, mlpBias: false, slidingWindow: null });
    expectError(() => io.readModelConfig(configDir({ ...qwen2, use_sliding_window: true })), LorakitError, 'ERR_CONFIG', /'use_sliding_window' is true/);
  });

  test('bad configs', () => {
    const fileIn = (dir: string): string => escape(path.join(dir, 'config.json'));
    const missing = path.dirname(tmpFile());
    expectError(() => io.readModelConfig(missing), LorakitError, 'ERR_IO', new RegExp(`readModelConfig: cannot read '${fileIn(missing)}': no such file`));

    let dir = configDir('{"model_type": "llama",}');
    let jsonMessage = '';
    try {
      JSON.parse('{"model_type": "llama",}');
    } catch (e) {
      jsonMessage = (e as Error).message;
    }
    expectError(() => io.readModelConfig(dir), LorakitError, 'ERR_CONFIG', new RegExp(`readModelConfig: '${fileIn(dir)}' is not valid JSON: ${escape(jsonMessage)}`));
    dir = configDir([1]);
    expectError(() => io.readModelConfig(dir), LorakitError, 'ERR_CONFIG', /must hold a JSON object, got \[1\]/);

    const CASES: [string, object, new (...args: never[]) => Error, RegExp][] = [
      ['unsupported model_type', { ...llama4, model_type: 'phi3' }, LorakitError, /model_type is "phi3"; lorakit supports gpt2, llama, mistral, qwen2/],
      ['no model_type', { ...llama4, model_type: undefined }, LorakitError, /model_type is nothing; lorakit supports/],
      ['missing size', { ...llama4, hidden_size: undefined }, LorakitError, /'hidden_size' is missing; expected an integer >= 1/],
      ['size a string', { ...llama4, num_hidden_layers: '30' }, LorakitTypeError, /'num_hidden_layers' must be an integer >= 1, got "30"/],
      ['size negative', { ...llama4, vocab_size: -5 }, LorakitRangeError, /'vocab_size' must be an integer >= 1, got -5/],
      ['size fractional', { ...llama4, intermediate_size: 1536.5 }, LorakitRangeError, /'intermediate_size' must be an integer >= 1, got 1536.5/],
      ['hidden not divisible by heads', { ...llama4, num_attention_heads: 7, num_key_value_heads: 7 }, LorakitRangeError, /'hidden_size' \(576\) must be divisible by 'num_attention_heads' \(7\)/],
      ['heads not divisible by kv heads', { ...llama4, num_key_value_heads: 2 }, LorakitRangeError, /'num_attention_heads' \(9\) must be divisible by 'num_key_value_heads' \(2\)/],
      ['gpt2 hidden not divisible', { model_type: 'gpt2', vocab_size: 8, n_embd: 10, n_layer: 1, n_head: 4, n_positions: 8 }, LorakitRangeError, /'n_embd' \(10\) must be divisible by 'n_head' \(4\)/],
      ['gpt2 without positions', { model_type: 'gpt2', vocab_size: 8, n_embd: 8, n_layer: 1, n_head: 4 }, LorakitError, /'n_positions' is missing/],
      ['eps zero', { ...llama4, rms_norm_eps: 0 }, LorakitRangeError, /'rms_norm_eps' must be a positive number, got 0/],
      ['rope theta a string', { ...llama4, rope_parameters: { rope_theta: '1e4' } }, LorakitTypeError, /'rope_parameters\.rope_theta' must be a positive number, got "1e4"/],
      ['rope_parameters not an object', { ...llama4, rope_parameters: 3 }, LorakitTypeError, /'rope_parameters' must be an object, got 3/],
      ['scaled rope (transformers 5)', { ...llama4, rope_parameters: { rope_type: 'llama3', rope_theta: 5e5, factor: 8 } }, LorakitError, /'rope_parameters' asks for RoPE type 'llama3'; lorakit implements only the default RoPE/],
      ['scaled rope (transformers 4)', { ...llama4, rope_scaling: { type: 'linear', factor: 2 } }, LorakitError, /'rope_scaling' asks for RoPE type 'linear'/],
      ['unsupported dtype', { ...llama4, torch_dtype: 'float64' }, LorakitRangeError, /'torch_dtype' must be one of float32, bfloat16, float16, got "float64"/],
      ['flag not boolean', { ...llama4, tie_word_embeddings: 'yes' }, LorakitTypeError, /'tie_word_embeddings' must be true or false, got "yes"/],
      ['activation not a string', { ...llama4, hidden_act: 1 }, LorakitTypeError, /'hidden_act' must be a string, got 1/],
      ['bos a list', { ...llama4, bos_token_id: [1, 2] }, LorakitTypeError, /'bos_token_id' must be an integer >= 0, got \[1,2\]/],
      ['eos negative', { ...llama4, eos_token_id: [2, -1] }, LorakitTypeError, /'eos_token_id' must be a token id \(an integer >= 0\), a list of them, or null, got \[2,-1\]/],
    ];
    for (const [what, config, cls, pattern] of CASES) {
      dir = configDir(config);
      try {
        expectError(() => io.readModelConfig(dir), cls, 'ERR_CONFIG', pattern);
        expectError(() => io.readModelConfig(dir), cls, 'ERR_CONFIG', new RegExp(`^readModelConfig: '${fileIn(dir)}': `));
      } catch (e) {
        throw new Error(`case '${what}': ${(e as Error).message}`);
      }
    }
    expectError(() => io.readModelConfig(3 as never), LorakitTypeError, 'ERR_INVALID_ARG', /readModelConfig: dir must be a non-empty string, got number 3/);
  });
});
