/** Every error lorakit raises carries a stable `code` beside its message. */
export type ErrorCode =
  | 'ERR_INVALID_ARG'
  | 'ERR_OUT_OF_RANGE'
  | 'ERR_SHAPE'
  | 'ERR_DTYPE'
  | 'ERR_DEVICE'
  | 'ERR_DISPOSED'
  | 'ERR_NOT_CONTIGUOUS'
  | 'ERR_OUT_OF_MEMORY'
  | 'ERR_NATIVE'
  | 'ERR_NO_BINARY'
  | 'ERR_TOKENIZER'
  | 'ERR_SAFETENSORS' | 'ERR_CONFIG' | 'ERR_IO'
  /** A generation engine's queue is full (a server answers 429 with Retry-After). */
  | 'ERR_BUSY'
  /** A generation engine is shutting down or closed. */
  | 'ERR_CLOSED'
  /** A generation was cancelled (its client went away or aborted it). */
  | 'ERR_ABORTED';

/**
 * The shape of lorakit's three base errors: a stable `code`, and a `name` of its own on one of the
 * standard classes (so a LorakitTypeError is still `instanceof TypeError`).
 */
function codedError(Base: ErrorConstructor, name: string) {
  return class extends Base {
    readonly code: ErrorCode;
    constructor(code: ErrorCode, message: string) {
      super(message);
      this.name = name;
      this.code = code;
    }
  };
}

export class LorakitError extends codedError(Error, 'LorakitError') {}

/** A wrong argument type or dtype. */
export class LorakitTypeError extends codedError(TypeError, 'LorakitTypeError') {}

/** A value or shape outside what the operation accepts. */
export class LorakitRangeError extends codedError(RangeError, 'LorakitRangeError') {}

/** One of lorakit's own errors (a user mistake or an unreadable file), as opposed to a bug. */
export function isLorakitError(e: unknown): e is LorakitError | LorakitTypeError | LorakitRangeError {
  return e instanceof LorakitError || e instanceof LorakitTypeError || e instanceof LorakitRangeError;
}

/** Use of a tensor (or other native object) after dispose(). */
export class DisposedError extends LorakitError {
  constructor(what: string) {
    super('ERR_DISPOSED', `${what} has been disposed`);
    this.name = 'DisposedError';
  }
}

/** The native addon could not be loaded. */
export class NoBinaryError extends LorakitError {
  constructor(message: string) {
    super('ERR_NO_BINARY', message);
    this.name = 'NoBinaryError';
  }
}

// Checked structurally: errors made by the addon belong to the main realm, so `instanceof Error` fails
// for them inside a vm context (jest, REPL sandboxes).
function hasCode(e: unknown): e is { name: string; message: string; code: string; stack?: string } {
  if (e === null || typeof e !== 'object') return false;
  const r = e as { code?: unknown; message?: unknown };
  return typeof r.code === 'string' && typeof r.message === 'string';
}

/**
 * Native errors arrive as plain Error/TypeError/RangeError with a `code`; rethrow them as lorakit's
 * classes, keeping the message and the JavaScript stack of the call site.
 */
export function fromNative(e: unknown, stack?: string): unknown {
  if (!hasCode(e)) return e;
  const code = e.code as ErrorCode;
  const wrapped =
    e.name === 'RangeError'
      ? new LorakitRangeError(code, e.message)
      : e.name === 'TypeError'
        ? new LorakitTypeError(code, e.message)
        : new LorakitError(code, e.message);
  if (stack) wrapped.stack = `${wrapped.name}: ${e.message}\n${stack.split('\n').slice(1).join('\n')}`;
  return wrapped;
}
