/**
 * safetensors (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON
 * header giving each tensor's dtype, shape and byte span, then the tensors' raw little-endian bytes.
 * Every size in a file is untrusted: each is checked against the file's real size before anything is allocated.
 */
import { constants as bufferConstants } from 'node:buffer';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DisposedError, LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';
import { checkOptions, describe, isObject, show } from '../check';
import { DTYPE_BYTES, type DType, isDType } from '../tensor/dtype';
import { checkTensor, Tensor } from '../tensor/tensor';
import { ioError, readJsonFile } from './config';

/** The reference implementation's limit; a file claiming a larger header is refused before reading it. */
export const MAX_HEADER_BYTES = 100_000_000;

// A Map, not an object: a header's dtype string must not find 'constructor' on Object.prototype.
// BOOL is one byte per element holding 0 or 1, so it loads as uint8.
const FROM_FILE = new Map<string, DType>([
  ['F32', 'float32'],
  ['F16', 'float16'],
  ['BF16', 'bfloat16'],
  ['I64', 'int64'],
  ['I32', 'int32'],
  ['U8', 'uint8'],
  ['BOOL', 'uint8'],
]);

const TO_FILE: Readonly<Record<DType, string>> = {
  float32: 'F32',
  float16: 'F16',
  bfloat16: 'BF16',
  int64: 'I64',
  int32: 'I32',
  uint8: 'U8',
};

// fs.readSync / writeSync move at most 2 GiB per call.
const IO_CHUNK = 1 << 30;

export interface TensorInfo {
  /** The file holding the tensor. */
  readonly file: string;
  readonly dtype: DType;
  readonly shape: readonly number[];
  /** Where the tensor's bytes start, counted from the beginning of the file. */
  readonly byteOffset: number;
  readonly byteLength: number;
}

export interface SafetensorsHeader {
  /** The tensors in the order of their bytes in the file. */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  /** The header's `__metadata__` (string to string); empty when it has none. */
  readonly metadata: Readonly<Record<string, string>>;
  /** Where the data section starts: 8 + the header's length. */
  readonly dataOffset: number;
}

export interface LoadOptions {
  /** Cast to this dtype after reading. */
  dtype?: DType;
}

/** Where a model's weights are read from: one file or a sharded checkpoint. */
export interface TensorSource extends Disposable {
  keys(): string[];
  has(name: string): boolean;
  info(name: string): TensorInfo;
  load(name: string, options?: LoadOptions): Tensor;
  close(): void;
}

function formatError(op: string, file: string, message: string): LorakitError {
  return new LorakitError('ERR_SAFETENSORS', `${op}: '${file}' ${message}`);
}

function checkLittleEndian(op: string): void {
  // TypedArrays use the host's byte order, and safetensors bytes are little-endian.
  if (os.endianness() !== 'LE')
    throw new LorakitError('ERR_SAFETENSORS', `${op}: this host is big-endian; lorakit reads and writes safetensors only on little-endian hosts`);
}

function checkPath(op: string, arg: string, p: unknown): string {
  if (typeof p !== 'string' || p === '') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: ${arg} must be a non-empty string, got ${describe(p)}`);
  return p;
}

/** Fills `buf` from `position`; a short read means the file shrank after its size was checked. */
function readExact(op: string, file: string, fd: number, buf: Uint8Array, position: number): void {
  for (let done = 0; done < buf.length; ) {
    let n: number;
    try {
      n = fs.readSync(fd, buf, done, Math.min(buf.length - done, IO_CHUNK), position + done);
    } catch (e) {
      throw ioError(op, 'read', file, e);
    }
    if (n === 0) throw formatError(op, file, `ended at byte ${position + done}, before byte ${position + buf.length} (was it changed while open?)`);
    done += n;
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length; )
    done += fs.writeSync(fd, bytes, done, Math.min(bytes.length - done, IO_CHUNK));
}

function openForReading(op: string, file: string): { fd: number; size: number } {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw ioError(op, 'open', file, e);
  }
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw new LorakitError('ERR_IO', `${op}: '${file}' is not a regular file`);
    return { fd, size: stat.size };
  } catch (e) {
    fs.closeSync(fd);
    throw ioError(op, 'open', file, e);
  }
}

interface Span {
  name: string;
  begin: number;
  end: number;
}

function parseEntry(op: string, file: string, name: string, entry: unknown, dataOffset: number): [TensorInfo, Span] {
  const bad = (message: string): LorakitError => formatError(op, file, `tensor '${name}' ${message}`);
  if (!isObject(entry)) throw bad(`must be an object with dtype, shape and data_offsets, got ${show(entry)}`);
  const code = entry.dtype;
  const dtype = typeof code === 'string' ? FROM_FILE.get(code) : undefined;
  if (dtype === undefined) throw bad(`has dtype ${show(code)}; expected one of ${[...FROM_FILE.keys()].join(', ')}`);
  const shape = entry.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0))
    throw bad(`has shape ${show(shape)}; expected an array of non-negative integers`);
  const offsets = entry.data_offsets;
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[0] > offsets[1])
    throw bad(`has data_offsets ${show(offsets)}; expected [begin, end] with 0 <= begin <= end`);
  const [begin, end] = offsets as [number, number];
  const dims = shape as number[];
  // Multiplying dims one by one could pass Infinity through to a final 0; a 0 anywhere means no bytes.
  const need = dims.includes(0) ? 0 : dims.reduce((n, d) => n * d, DTYPE_BYTES[dtype]);
  if (need !== end - begin)
    throw bad(`has shape ${show(dims)} of ${code as string}, which needs ${need} bytes, but data_offsets [${begin}, ${end}] hold ${end - begin}`);
  return [{ file, dtype, shape: Object.freeze([...dims]), byteOffset: dataOffset + begin, byteLength: end - begin }, { name, begin, end }];
}

function parseMetadata(op: string, file: string, m: unknown): Record<string, string> {
  if (m === null) return {};
  if (!isObject(m)) throw formatError(op, file, `has __metadata__ ${show(m)}; expected an object of strings`);
  for (const [k, v] of Object.entries(m))
    if (typeof v !== 'string') throw formatError(op, file, `has __metadata__ '${k}' = ${show(v)}; metadata values must be strings`);
  return Object.fromEntries(Object.entries(m)) as Record<string, string>;
}

/** Checks spans against each other and the data section, which holds `dataSize` bytes. */
function checkSpans(op: string, file: string, spans: Span[], dataSize: number): void {
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let prev: Span | undefined;
  let tiled = true; // every byte from 0 to the last end belongs to a tensor, as writers lay files out
  for (const s of spans) {
    if (s.begin === s.end) continue;
    if (prev && s.begin < prev.end)
      throw formatError(op, file, `has overlapping tensors '${prev.name}' [${prev.begin}, ${prev.end}] and '${s.name}' [${s.begin}, ${s.end}]`);
    if (s.begin !== (prev?.end ?? 0)) tiled = false;
    prev = s;
  }
  const beyond = spans.find((s) => s.end > dataSize);
  if (!beyond) return;
  if (tiled) {
    const described = spans.reduce((m, s) => Math.max(m, s.end), 0);
    throw formatError(op, file, `is truncated: its header describes ${described} bytes of tensor data, but only ${dataSize} follow the header`);
  }
  throw new LorakitRangeError(
    'ERR_SAFETENSORS',
    `${op}: '${file}' tensor '${beyond.name}' has data_offsets [${beyond.begin}, ${beyond.end}] outside the ${dataSize}-byte data section`,
  );
}

function parseHeader(op: string, file: string, fd: number, size: number): SafetensorsHeader {
  if (size < 8) throw formatError(op, file, `is truncated: it has ${size} bytes, fewer than the 8 of the header length`);
  const lengthBytes = Buffer.alloc(8);
  readExact(op, file, fd, lengthBytes, 0);
  const length = lengthBytes.readBigUInt64LE(0);
  if (length > BigInt(MAX_HEADER_BYTES))
    throw new LorakitRangeError('ERR_SAFETENSORS', `${op}: '${file}' claims a ${length}-byte header, over the ${MAX_HEADER_BYTES}-byte limit (is it a safetensors file?)`);
  const headerBytes = Number(length);
  if (8 + headerBytes > size)
    throw formatError(op, file, `is truncated: it claims a ${headerBytes}-byte header, but only ${size - 8} bytes follow the length`);
  const raw = Buffer.allocUnsafe(headerBytes);
  readExact(op, file, fd, raw, 8);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(raw));
  } catch (e) {
    throw formatError(op, file, `has a header that is not valid UTF-8 JSON: ${(e as Error).message}`);
  }
  if (!isObject(json)) throw formatError(op, file, `has a header that is not a JSON object: ${show(json)}`);
  const dataOffset = 8 + headerBytes;
  let metadata: Record<string, string> = {};
  const tensors: [string, TensorInfo][] = [];
  const spans: Span[] = [];
  for (const [name, entry] of Object.entries(json)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(op, file, entry);
      continue;
    }
    const [info, span] = parseEntry(op, file, name, entry, dataOffset);
    tensors.push([name, info]);
    spans.push(span);
  }
  checkSpans(op, file, spans, size - dataOffset);
  // An empty tensor sorts before a non-empty one at the same offset, as writers lay them out.
  tensors.sort((a, b) => a[1].byteOffset - b[1].byteOffset || a[1].byteLength - b[1].byteLength);
  return { tensors: new Map(tensors), metadata: Object.freeze(metadata), dataOffset };
}

/** Parses and validates a safetensors file's header without reading any tensor. */
export function readSafetensorsHeader(file: string): SafetensorsHeader {
  const op = 'readSafetensorsHeader';
  checkLittleEndian(op);
  const { fd, size } = openForReading(op, checkPath(op, 'file', file));
  try {
    return parseHeader(op, file, fd, size);
  } finally {
    fs.closeSync(fd);
  }
}

function checkLoadOptions(op: string, options: unknown): LoadOptions {
  const opts = checkOptions<LoadOptions>(op, options);
  if (opts.dtype !== undefined && !isDType(opts.dtype))
    throw new LorakitTypeError('ERR_DTYPE', `${op}: options.dtype must be one of float32, bfloat16, float16, int32, int64, uint8, got ${describe(opts.dtype)}`);
  return opts;
}

/** An open safetensors file; tensors are read one at a time on demand. close() it (or `using`). */
export class SafetensorsFile implements TensorSource {
  readonly path: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly #tensors: ReadonlyMap<string, TensorInfo>;
  #fd: number | null;

  /** @internal Use openSafetensors(). */
  constructor(file: string, fd: number, header: SafetensorsHeader) {
    this.path = file;
    this.#fd = fd;
    this.#tensors = header.tensors;
    this.metadata = header.metadata;
  }

  /** Tensor names, in the order of their bytes in the file. */
  keys(): string[] {
    return [...this.#tensors.keys()];
  }

  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  info(name: string): TensorInfo {
    return this.#info('SafetensorsFile.info', name);
  }

  #info(op: string, name: unknown): TensorInfo {
    if (typeof name !== 'string') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: name must be a string, got ${describe(name)}`);
    const info = this.#tensors.get(name);
    if (!info) throw new LorakitRangeError('ERR_INVALID_ARG', `${op}: '${this.path}' has no tensor '${name}' (it has ${this.#tensors.size}; see keys())`);
    return info;
  }

  /** Reads one tensor: only its own bytes pass through memory, never the whole file. */
  load(name: string, options: LoadOptions = {}): Tensor {
    const op = 'SafetensorsFile.load';
    const { dtype } = checkLoadOptions(op, options);
    if (this.#fd === null) throw new DisposedError(`${op}: '${this.path}'`);
    const info = this.#info(op, name);
    if (info.byteLength > bufferConstants.MAX_LENGTH)
      throw new LorakitRangeError(
        'ERR_OUT_OF_MEMORY',
        `${op}: tensor '${name}' in '${this.path}' is ${info.byteLength} bytes, more than a Node.js Buffer holds (${bufferConstants.MAX_LENGTH})`,
      );
    const bytes = Buffer.allocUnsafe(info.byteLength);
    readExact(op, this.path, this.#fd, bytes, info.byteOffset);
    const t = Tensor.empty(info.shape, info.dtype, 'cpu', op);
    try {
      t.storage(op).upload(bytes);
      if (dtype === undefined || dtype === info.dtype) return t;
      const cast = t.to(dtype);
      t.dispose();
      return cast;
    } catch (e) {
      t.dispose();
      throw e;
    }
  }

  /** Closes the file; keys() and info() still answer, load() throws. Idempotent. */
  close(): void {
    if (this.#fd === null) return;
    fs.closeSync(this.#fd);
    this.#fd = null;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function openFile(op: string, file: string): SafetensorsFile {
  checkLittleEndian(op);
  const { fd, size } = openForReading(op, file);
  try {
    return new SafetensorsFile(file, fd, parseHeader(op, file, fd, size));
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Opens a safetensors file, reading and validating its header. */
export function openSafetensors(file: string): SafetensorsFile {
  const op = 'openSafetensors';
  return openFile(op, checkPath(op, 'file', file));
}

/** A model's weights across one or more safetensors files, as one key space. */
export class Checkpoint implements TensorSource {
  readonly dir: string;
  readonly #shards: readonly SafetensorsFile[];
  readonly #owner: ReadonlyMap<string, SafetensorsFile>;

  /** @internal Use openCheckpoint(). */
  constructor(dir: string, shards: readonly SafetensorsFile[], owner: ReadonlyMap<string, SafetensorsFile>) {
    this.dir = dir;
    this.#shards = shards;
    this.#owner = owner;
  }

  /** The safetensors files, in the order they were opened. */
  get files(): string[] {
    return this.#shards.map((s) => s.path);
  }

  keys(): string[] {
    return [...this.#owner.keys()];
  }

  has(name: string): boolean {
    return this.#owner.has(name);
  }

  info(name: string): TensorInfo {
    return this.#shard('Checkpoint.info', name).info(name);
  }

  load(name: string, options: LoadOptions = {}): Tensor {
    return this.#shard('Checkpoint.load', name).load(name, options);
  }

  #shard(op: string, name: unknown): SafetensorsFile {
    if (typeof name !== 'string') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: name must be a string, got ${describe(name)}`);
    const shard = this.#owner.get(name);
    if (!shard) throw new LorakitRangeError('ERR_INVALID_ARG', `${op}: the checkpoint in '${this.dir}' has no tensor '${name}' (it has ${this.#owner.size}; see keys())`);
    return shard;
  }

  close(): void {
    for (const s of this.#shards) s.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Opens the weights in a model folder: `model.safetensors`, or the shards that
 * `model.safetensors.index.json` lists (its weight_map names each tensor's file), checking that every
 * listed tensor is in its shard.
 */
export function openCheckpoint(dir: string): Checkpoint {
  const op = 'openCheckpoint';
  checkPath(op, 'dir', dir);
  const single = path.join(dir, 'model.safetensors');
  const indexFile = path.join(dir, 'model.safetensors.index.json');
  if (fs.existsSync(single)) {
    const file = openFile(op, single);
    return new Checkpoint(dir, [file], new Map(file.keys().map((k) => [k, file])));
  }
  if (!fs.existsSync(indexFile)) {
    const why = fs.existsSync(dir) ? 'has neither model.safetensors nor model.safetensors.index.json' : 'does not exist';
    throw new LorakitError('ERR_IO', `${op}: '${dir}' ${why}`);
  }
  const index = readJsonFile(op, indexFile, 'ERR_SAFETENSORS');
  const weightMap = isObject(index) ? index.weight_map : undefined;
  if (!isObject(weightMap) || Object.keys(weightMap).length === 0)
    throw formatError(op, indexFile, `must have a non-empty weight_map object (tensor name to shard file), got ${show(weightMap)}`);
  const byShard = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(weightMap)) {
    // A shard is a file beside the index: a path that leaves the folder is refused, whatever wrote it.
    if (typeof shard !== 'string' || shard === '' || path.isAbsolute(shard) || path.normalize(shard).split(/[\\/]/).includes('..'))
      throw formatError(op, indexFile, `maps '${name}' to ${show(shard)}; expected a file name inside '${dir}'`);
    const names = byShard.get(shard) ?? [];
    names.push(name);
    byShard.set(shard, names);
  }
  const shards: SafetensorsFile[] = [];
  const owner = new Map<string, SafetensorsFile>();
  try {
    for (const [shard, names] of byShard) {
      const file = openFile(op, path.join(dir, shard));
      shards.push(file);
      for (const name of names) {
        if (!file.has(name)) throw formatError(op, indexFile, `maps '${name}' to '${shard}', which has no such tensor`);
        owner.set(name, file);
      }
    }
  } catch (e) {
    for (const s of shards) s.close();
    throw e;
  }
  return new Checkpoint(dir, shards, owner);
}

function checkMetadata(op: string, metadata: unknown): Record<string, string> | undefined {
  if (metadata === undefined) return undefined;
  if (!isObject(metadata)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: metadata must be an object of strings, got ${describe(metadata)}`);
  for (const [k, v] of Object.entries(metadata))
    if (typeof v !== 'string') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: metadata['${k}'] must be a string, got ${describe(v)}`);
  return metadata as Record<string, string>;
}

const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** `{"k":v,...}` with the keys in the given order (an object would put integer-like keys first). */
function jsonObject(entries: [string, string][]): string {
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`;
}

/**
 * Writes tensors to a safetensors file atomically: into `<file>.tmp-<pid>`, then renamed over `file`, so
 * a failed write leaves any old file as it was. Header keys are sorted; the data is laid out widest dtype
 * first, then by name, so every tensor starts aligned to its element size (as the reference writer does).
 */
export function writeSafetensors(file: string, tensors: Record<string, Tensor>, metadata?: Record<string, string>): void {
  const op = 'writeSafetensors';
  checkLittleEndian(op);
  checkPath(op, 'file', file);
  if (!isObject(tensors)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: tensors must be an object of name to Tensor, got ${describe(tensors)}`);
  const meta = checkMetadata(op, metadata);
  const names = Object.keys(tensors).sort(byName);
  for (const name of names) {
    if (name === '' || name === '__metadata__')
      throw new LorakitRangeError('ERR_INVALID_ARG', `${op}: '${name}' cannot name a tensor (empty, or the header's metadata key)`);
    checkTensor(op, name, tensors[name]);
  }
  const tensorOf = (name: string): Tensor => tensors[name]!;
  const order = [...names].sort((a, b) => DTYPE_BYTES[tensorOf(b).dtype] - DTYPE_BYTES[tensorOf(a).dtype] || byName(a, b));
  const offsets = new Map<string, [number, number]>();
  let end = 0;
  for (const name of order) {
    offsets.set(name, [end, end + tensorOf(name).nbytes]);
    end += tensorOf(name).nbytes;
  }

  const fields: [string, string][] = [];
  if (meta) fields.push(['__metadata__', jsonObject(Object.keys(meta).sort(byName).map((k) => [k, JSON.stringify(meta[k])]))]);
  for (const name of names) {
    const t = tensorOf(name);
    fields.push([name, `{"dtype":"${TO_FILE[t.dtype]}","shape":[${t.shape.join(',')}],"data_offsets":[${offsets.get(name)!.join(',')}]}`]);
  }
  const json = jsonObject(fields);
  // Padding the header with spaces to a multiple of 8 puts the data section on an 8-byte boundary.
  const headerBytes = Math.ceil(Buffer.byteLength(json) / 8) * 8;
  if (headerBytes > MAX_HEADER_BYTES)
    throw new LorakitRangeError('ERR_SAFETENSORS', `${op}: the header for '${file}' would be ${headerBytes} bytes, over the ${MAX_HEADER_BYTES}-byte limit readers accept`);
  const head = Buffer.alloc(8 + headerBytes, 0x20);
  head.writeBigUInt64LE(BigInt(headerBytes), 0);
  head.write(json, 8, 'utf8');

  const tmp = `${file}.tmp-${process.pid}`;
  let fd: number | null = null;
  try {
    fd = fs.openSync(tmp, 'w');
    writeAll(fd, head);
    // One tensor at a time, so only one tensor's bytes are ever copied into the JavaScript heap.
    for (const name of order) {
      const data = tensorOf(name).data();
      writeAll(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = null;
    fs.renameSync(tmp, file);
  } catch (e) {
    if (fd !== null)
      try {
        fs.closeSync(fd);
      } catch {
        // The error that stopped the write is the one to report.
      }
    fs.rmSync(tmp, { force: true });
    throw ioError(op, 'write', file, e);
  }
}
