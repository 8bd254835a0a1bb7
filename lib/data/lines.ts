/**
 * Data files read a chunk at a time, one line after another: a file is never held whole in memory, so one
 * larger than V8's longest string (about 512 MB) reads like any other.
 */
import * as fs from 'node:fs';
import { LorakitError } from '../errors';
import { ioError } from '../io/config';

/** @internal How a file is read; tests make both small. */
export interface ReadOptions {
  /** Bytes read at a time. */
  chunkBytes?: number;
  /** The longest line accepted, in bytes: a line longer than this is an error naming it. */
  maxLineBytes?: number;
}

const CHUNK_BYTES = 1 << 20;
// Far beyond any one example a model can take (a long context is well under 4 MB of text), and well below
// the string length at which V8 gives up.
export const MAX_LINE_BYTES = 64 << 20;

/** @internal A line of a file, without its '\n' (a '\r' before it stays); `ended` says whether a '\n' followed. */
export interface Line {
  text: string;
  number: number;
  ended: boolean;
}

/**
 * The lines of `file`, from 1. Each line is decoded whole, so a character cut between two chunks is read
 * right. `op` names the operation in errors.
 */
export function* readLines(op: string, file: string, options: ReadOptions = {}): Generator<Line> {
  const chunkBytes = options.chunkBytes ?? CHUNK_BYTES;
  const maxLineBytes = options.maxLineBytes ?? MAX_LINE_BYTES;
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw ioError(op, 'read', file, e);
  }
  try {
    const buf = Buffer.allocUnsafe(chunkBytes);
    // The bytes of the line read so far, copied out of buf, which the next read overwrites.
    let parts: Buffer[] = [];
    let partBytes = 0;
    let number = 1;
    const tooLong = (): LorakitError =>
      new LorakitError('ERR_INVALID_ARG', `${file}:${number}: the line is longer than ${maxLineBytes} bytes, more than any example a model can take`);
    for (;;) {
      let n: number;
      try {
        n = fs.readSync(fd, buf, 0, chunkBytes, null);
      } catch (e) {
        throw ioError(op, 'read', file, e);
      }
      if (n === 0) break;
      let start = 0;
      for (let nl = buf.indexOf(10, start); nl !== -1 && nl < n; nl = buf.indexOf(10, start)) {
        if (partBytes + nl - start > maxLineBytes) throw tooLong();
        const line = partBytes === 0 ? buf.toString('utf8', start, nl) : Buffer.concat([...parts, buf.subarray(start, nl)]).toString('utf8');
        parts = [];
        partBytes = 0;
        yield { text: line, number, ended: true };
        number++;
        start = nl + 1;
      }
      if (start < n) {
        partBytes += n - start;
        if (partBytes > maxLineBytes) throw tooLong();
        parts.push(Buffer.from(buf.subarray(start, n)));
      }
    }
    if (partBytes > 0) yield { text: Buffer.concat(parts).toString('utf8'), number, ended: false };
  } finally {
    fs.closeSync(fd);
  }
}
