// safetensors edge cases (lib/io/safetensors.ts) against files built byte by byte here: empty tensors between and
// at the offsets of others, null metadata, a file cut short after it was opened, gaps in the data section, and the
// argument errors of Checkpoint and SafetensorsFile.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { LorakitError, LorakitRangeError, LorakitTypeError, io, tensor } from '../lib';
import { expectError } from './helpers/errors';

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-io-mutation-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let count = 0;
function file(bytes?: Buffer): string {
  const dir = path.join(tmp, `c${count++}`);
  fs.mkdirSync(dir);
  const f = path.join(dir, 'x.safetensors');
  if (bytes) fs.writeFileSync(f, bytes);
  return f;
}

/** 8-byte little-endian length, the header text as given (no padding), then the data. */
function build(header: string, data: Buffer = Buffer.alloc(0)): Buffer {
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(header)));
  return Buffer.concat([length, Buffer.from(header, 'utf8'), data]);
}

const f32 = (...xs: number[]) => Buffer.from(new Float32Array(xs).buffer);

describe('header layouts a reader must accept', () => {
  test('an empty tensor inside another tensor\'s span holds no bytes and overlaps nothing', () => {
    const header = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}';
    const f = file(build(header, f32(1.5, -2)));
    const h = io.readSafetensorsHeader(f);
    expect([...h.tensors.keys()]).toEqual(['a', 'e']);
    expect(h.tensors.get('e')).toEqual({ file: f, dtype: 'float32', shape: [0], byteOffset: 8 + header.length + 4, byteLength: 0 });
    using s = io.openSafetensors(f);
    expect(s.load('a').toArray()).toEqual([1.5, -2]);
    expect(s.load('e').shape).toEqual([0]);
  });

  test('at one offset the empty tensor comes first in keys(), whatever the header order', () => {
    const header = '{"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"y":{"dtype":"I32","shape":[2,0],"data_offsets":[0,0]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}';
    const f = file(build(header, f32(7, 9)));
    using s = io.openSafetensors(f);
    expect(s.keys()).toEqual(['y', 'z', 'b']);
    expect(s.info('b')).toEqual({ file: f, dtype: 'float32', shape: [1], byteOffset: 8 + header.length + 4, byteLength: 4 });
    expect(s.load('b').toArray()).toEqual([9]);
  });

  test('"__metadata__": null reads as no metadata; metadata is kept as written', () => {
    const none = file(build('{"__metadata__":null,"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', Buffer.from([5])));
    expect(io.readSafetensorsHeader(none).metadata).toEqual({});
    const some = file(build('{"__metadata__":{"k":"v","format":"pt"}}'));
    expect(io.readSafetensorsHeader(some).metadata).toEqual({ k: 'v', format: 'pt' });
    expect(io.readSafetensorsHeader(some).tensors.size).toBe(0);
  });

  test('bytes after the last tensor are allowed', () => {
    const f = file(build('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', Buffer.concat([f32(3), Buffer.alloc(12)])));
    using s = io.openSafetensors(f);
    expect(s.load('a').toArray()).toEqual([3]);
  });

  test('each dtype code, BOOL as uint8, and the element sizes they imply', () => {
    for (const [code, dtype, size] of [['F32', 'float32', 4], ['F16', 'float16', 2], ['BF16', 'bfloat16', 2], ['I64', 'int64', 8], ['I32', 'int32', 4], ['U8', 'uint8', 1], ['BOOL', 'uint8', 1]] as const) {
      const f = file(build(`{"t":{"dtype":"${code}","shape":[3],"data_offsets":[0,${3 * size}]}}`, Buffer.alloc(3 * size)));
      expect(io.readSafetensorsHeader(f).tensors.get('t')).toMatchObject({ dtype, byteLength: 3 * size });
      // One byte short of the size is refused.
      const bad = file(build(`{"t":{"dtype":"${code}","shape":[3],"data_offsets":[0,${3 * size - 1}]}}`, Buffer.alloc(3 * size)));
      expectError(() => io.readSafetensorsHeader(bad), LorakitError, 'ERR_SAFETENSORS', `which needs ${3 * size} bytes, but data_offsets [0, ${3 * size - 1}] hold ${3 * size - 1}`);
    }
  });
});

describe('data sections that do not hold what the header says', () => {
  test('a gap before the tensor that runs past the end is out of range, not truncated', () => {
    // One tensor at [8, 16] with 12 bytes of data: bytes 0..7 belong to nothing, so the file is not a writer's layout.
    const f = file(build('{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', Buffer.alloc(12)));
    expectError(() => io.readSafetensorsHeader(f), LorakitRangeError, 'ERR_SAFETENSORS', `tensor 'a' has data_offsets [8, 16] outside the 12-byte data section`);
  });

  test('tiled tensors past the end: truncated, with the bytes the header describes (the largest end)', () => {
    const f = file(build('{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', Buffer.alloc(6)));
    expectError(() => io.readSafetensorsHeader(f), LorakitError, 'ERR_SAFETENSORS', 'is truncated: its header describes 12 bytes of tensor data, but only 6 follow the header');
  });

  test('an empty tensor past the end of the data counts as described data', () => {
    const f = file(build('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0],"data_offsets":[9,9]}}', Buffer.alloc(4)));
    expectError(() => io.readSafetensorsHeader(f), LorakitError, 'ERR_SAFETENSORS', 'is truncated: its header describes 9 bytes of tensor data, but only 4 follow the header');
  });

  test('overlap is reported with both tensors in file order', () => {
    const f = file(build('{"late":{"dtype":"U8","shape":[4],"data_offsets":[2,6]},"early":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}', Buffer.alloc(6)));
    expectError(() => io.readSafetensorsHeader(f), LorakitError, 'ERR_SAFETENSORS', `has overlapping tensors 'early' [0, 3] and 'late' [2, 6]`);
    // Touching spans do not overlap.
    const ok = file(build('{"late":{"dtype":"U8","shape":[3],"data_offsets":[3,6]},"early":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}', Buffer.from([1, 2, 3, 4, 5, 6])));
    using s = io.openSafetensors(ok);
    expect(s.load('late').toArray()).toEqual([4, 5, 6]);
  });

  test('a header length exactly at the limit is checked against the file, not refused as too long', () => {
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(io.MAX_HEADER_BYTES));
    const f = file(Buffer.concat([length, Buffer.from('{}')]));
    expectError(() => io.readSafetensorsHeader(f), LorakitError, 'ERR_SAFETENSORS', `claims a ${io.MAX_HEADER_BYTES}-byte header, but only 2 bytes follow the length`);
    // A header filling the file exactly reads.
    expect(io.readSafetensorsHeader(file(build('{}'))).dataOffset).toBe(10);
    // Exactly 8 bytes: the length and nothing, a zero-length header that is no JSON.
    expectError(() => io.readSafetensorsHeader(file(Buffer.alloc(8))), LorakitError, 'ERR_SAFETENSORS', 'not valid UTF-8 JSON');
  });

  test('a file cut short after it was opened: load names the byte where it ended', () => {
    const header = '{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}';
    const f = file(build(header, f32(1, 2, 3, 4)));
    using s = io.openSafetensors(f);
    fs.truncateSync(f, 8 + header.length + 6);
    expectError(() => s.load('a'), LorakitError, 'ERR_SAFETENSORS', `SafetensorsFile.load: '${f}' ended at byte ${8 + header.length + 6}, before byte ${8 + header.length + 16} (was it changed while open?)`);
  });
});

describe('argument errors', () => {
  test('a name that is not a string', () => {
    const f = file();
    io.writeSafetensors(f, { a: tensor([1]) });
    using s = io.openSafetensors(f);
    expectError(() => s.info(3 as never), LorakitTypeError, 'ERR_INVALID_ARG', 'SafetensorsFile.info: name must be a string, got');
    expectError(() => s.load(3 as never), LorakitTypeError, 'ERR_INVALID_ARG', 'SafetensorsFile.load: name must be a string');
    expectError(() => s.info('b'), LorakitRangeError, 'ERR_INVALID_ARG', `(it has 1; see keys())`);
    fs.renameSync(f, path.join(path.dirname(f), 'model.safetensors'));
    using c = io.openCheckpoint(path.dirname(f));
    expectError(() => c.info(3 as never), LorakitTypeError, 'ERR_INVALID_ARG', 'Checkpoint.info: name must be a string');
    expectError(() => c.info('b'), LorakitRangeError, 'ERR_INVALID_ARG', `Checkpoint.info: the checkpoint in '${path.dirname(f)}' has no tensor 'b' (it has 1; see keys())`);
    expect(c.info('a')).toMatchObject({ dtype: 'float32', shape: [1], byteLength: 4 });
    expect(c.has('a')).toBe(true);
  });

  test('model.safetensors wins over an index beside it', () => {
    const dir = path.dirname(file());
    io.writeSafetensors(path.join(dir, 'model.safetensors'), { w: tensor([2, 3]) });
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), '{"weight_map": {"w": "missing.safetensors"}}');
    using c = io.openCheckpoint(dir);
    expect(c.files).toEqual([path.join(dir, 'model.safetensors')]);
    expect(c.load('w').toArray()).toEqual([2, 3]);
  });

  test('an index shard named "" or by a path through a subfolder', () => {
    const dir = path.dirname(file());
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), '{"weight_map": {"w": ""}}');
    expectError(() => io.openCheckpoint(dir), LorakitError, 'ERR_SAFETENSORS', `maps 'w' to ""; expected a file name inside`);
    // 'sub/../s.safetensors' stays inside the folder, and reads.
    io.writeSafetensors(path.join(dir, 's.safetensors'), { w: tensor([4]) });
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), '{"weight_map": {"w": "sub/../s.safetensors"}}');
    using c = io.openCheckpoint(dir);
    expect(c.load('w').toArray()).toEqual([4]);
  });

  test('metadata that is not an object, and a path that is not a string', () => {
    const f = file();
    expectError(() => io.writeSafetensors(f, {}, 'x' as never), LorakitTypeError, 'ERR_INVALID_ARG', 'writeSafetensors: metadata must be an object of strings, got');
    expectError(() => io.readSafetensorsHeader('' as never), LorakitTypeError, 'ERR_INVALID_ARG', 'readSafetensorsHeader: file must be a non-empty string');
    expectError(() => io.openCheckpoint(7 as never), LorakitTypeError, 'ERR_INVALID_ARG', 'openCheckpoint: dir must be a non-empty string');
    expect(fs.existsSync(f)).toBe(false);
  });

  test('metadata keys are written sorted, and the header padded with spaces to a multiple of 8', () => {
    const f = file();
    io.writeSafetensors(f, { b: tensor(new Uint8Array([1])) }, { z: '1', a: '2' });
    const json = '{"__metadata__":{"a":"2","z":"1"},"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}';
    const padded = json + ' '.repeat((8 - (json.length % 8)) % 8);
    expect(fs.readFileSync(f).equals(build(padded, Buffer.from([1])))).toBe(true);
  });
});
