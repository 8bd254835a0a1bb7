/**
 * An OpenAI-compatible HTTP server over a generation engine: `/v1/models`, `/v1/completions` and
 * `/v1/chat/completions`, streamed as server-sent events on request; `model` picks the base model or an adapter.
 *
 * Built on node:http rather than a framework: the surface is a handful of routes with JSON bodies, server-sent
 * events need the raw response (headers first, then a write per token, and word of the socket closing, which is
 * what cancels a generation), and a clean shutdown needs the connections themselves. A framework would add a
 * dependency and a layer between the server and all three, and take nothing off its hands.
 */
import * as http from 'node:http';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { type AddressInfo } from 'node:net';
import { LorakitError, LorakitTypeError, isLorakitError } from '../errors';
import { checkNumber, checkOptions, isObject, show } from '../check';
import { checkMessages } from '../data/chat';
import { chatPrompt } from '../generate/chat';
import { type Engine, type FinishReason, type Generation, type GenerationRequest, type GenerationResult } from '../generate/engine';

export interface ServerOptions {
  /** The address to listen on [127.0.0.1: this machine only]. */
  host?: string;
  /** The port [8000]; 0 takes any free one (the returned `port` says which). */
  port?: number;
  /** When set, every request must carry `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** The largest request body accepted [1 MiB]; a larger one is answered 413. */
  maxBodyBytes?: number;
  /** The largest `max_tokens` a request may ask for [2048]. */
  maxTokensLimit?: number;
  /** What `Retry-After` tells a client turned away with 429 or 503, in seconds [1]. */
  retryAfterSeconds?: number;
  /** Where an unexpected failure's stack goes (the client gets a 500 without it) [stderr]. */
  log?: (line: string) => void;
}

export interface Server {
  /** `http://host:port`; the OpenAI base URL is this with `/v1`. */
  readonly url: string;
  readonly port: number;
  /**
   * Stops accepting connections, closes the engine (running generations get `graceMs` [5000] to finish, then
   * their streams end with an error event), and resolves once every connection is closed.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

/** An answer in OpenAI's error shape, `{error: {message, type, param, code}}`. */
class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }

  get body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

const invalid = (message: string, param: string | null = null, status = 400, code: string | null = null): ApiError =>
  new ApiError(status, message, 'invalid_request_error', param, code);

const badField = (field: string, expected: string, got: unknown): ApiError => invalid(`'${field}' must be ${expected}, got ${show(got)}`, field);

type Body = Record<string, unknown>;

/** A number field, absent when missing or null (as OpenAI's clients send unset fields). */
function numberField(body: Body, field: string, range: { min: number; max?: number; integer?: boolean; above?: boolean }, note = ''): number | undefined {
  const v = body[field];
  if (v === undefined || v === null) return undefined;
  const { min, max = Infinity, integer = false, above = false } = range;
  const ok = typeof v === 'number' && Number.isFinite(v) && (!integer || Number.isSafeInteger(v)) && (above ? v > min : v >= min) && v <= max;
  if (ok) return v;
  const words = above ? ` above ${min}${max === Infinity ? '' : ` and at most ${max}`}` : max < Infinity ? ` from ${min} to ${max}` : min > -Infinity ? ` of at least ${min}` : '';
  throw badField(field, `${integer ? 'an integer' : 'a number'}${words}${note}`, v);
}

/**
 * Fields of OpenAI's requests that would change the answer and that lorakit does not implement, each with the
 * values that mean "not used". A client that sets one gets a 400 rather than an answer that ignored it.
 */
const UNSUPPORTED: [string, (v: unknown) => boolean][] = [
  ['echo', (v) => v === false],
  ['suffix', (v) => v === ''],
  ['best_of', (v) => v === 1],
  ['logprobs', (v) => v === false],
  ['top_logprobs', (v) => v === 0],
  ['presence_penalty', (v) => v === 0],
  ['frequency_penalty', (v) => v === 0],
  ['logit_bias', (v) => isObject(v) && Object.keys(v).length === 0],
  ['tools', (v) => Array.isArray(v) && v.length === 0],
  ['functions', (v) => Array.isArray(v) && v.length === 0],
  ['response_format', (v) => isObject(v) && v.type === 'text'],
];

// OpenAI's own limit on stop sequences.
const MAX_STOPS = 4;

type Kind = 'completion' | 'chat';

interface Parsed {
  model: string;
  request: GenerationRequest;
  stream: boolean;
  includeUsage: boolean;
}

/** The lorakit request an OpenAI completion or chat completion body asks for; a 400 or 404 names what is wrong. */
function parseBody(engine: Engine, body: unknown, kind: Kind, maxTokensLimit: number): Parsed {
  if (!isObject(body)) throw invalid(`the request body must be a JSON object, got ${show(body)}`);
  const model = body.model;
  if (typeof model !== 'string' || model === '') throw badField('model', `the name of a model this server serves (${modelIds(engine).join(', ')})`, model);
  const adapter = model === engine.modelName ? null : engine.adapterNames.includes(model) ? model : undefined;
  if (adapter === undefined)
    throw invalid(`the model '${model}' does not exist here; this server serves ${modelIds(engine).join(', ')}`, 'model', 404, 'model_not_found');

  for (const [field, unused] of UNSUPPORTED) {
    const v = body[field];
    if (v !== undefined && v !== null && !unused(v)) throw invalid(`'${field}' is not supported by lorakit serve; leave it out (got ${show(v)})`, field);
  }
  if (body.n !== undefined && body.n !== null && body.n !== 1) throw badField('n', '1 (lorakit serve writes one choice per request)', body.n);
  const stream = body.stream ?? false;
  if (typeof stream !== 'boolean') throw badField('stream', 'true or false', stream);
  const options = body.stream_options ?? {};
  if (!isObject(options)) throw badField('stream_options', 'an object such as {"include_usage": true}', options);
  const includeUsage = options.include_usage ?? false;
  if (typeof includeUsage !== 'boolean') throw badField('stream_options.include_usage', 'true or false', includeUsage);

  // OpenAI's completions write 16 tokens unless told; a chat answer runs to its end, here to the server's limit.
  const limit = { min: 1, max: maxTokensLimit, integer: true };
  const note = " (this server's limit)";
  const maxTokens =
    kind === 'chat'
      ? (numberField(body, 'max_completion_tokens', limit, note) ?? numberField(body, 'max_tokens', limit, note) ?? maxTokensLimit)
      : (numberField(body, 'max_tokens', limit, note) ?? 16);

  const stopField = body.stop ?? [];
  const stop = typeof stopField === 'string' ? [stopField] : stopField;
  if (!Array.isArray(stop) || stop.length > MAX_STOPS || !stop.every((s) => typeof s === 'string' && s !== ''))
    throw badField('stop', `a non-empty string or an array of at most ${MAX_STOPS} of them`, stopField);

  const prompt = kind === 'chat' ? chatMessages(engine, body.messages) : completionPrompt(body.prompt);
  return {
    model,
    stream,
    includeUsage: stream && includeUsage,
    request: {
      prompt,
      adapter,
      maxTokens,
      stop,
      // OpenAI samples at temperature 1 unless told; 0 is greedy.
      temperature: numberField(body, 'temperature', { min: 0, max: 2 }) ?? 1,
      topP: numberField(body, 'top_p', { min: 0, max: 1, above: true }),
      topK: numberField(body, 'top_k', { min: 0, integer: true }),
      repetitionPenalty: numberField(body, 'repetition_penalty', { min: 0, above: true }),
      seed: numberField(body, 'seed', { min: -Infinity, integer: true }),
    },
  };
}

/** A completion's prompt: text or token ids, alone or as the one entry of a list. */
function completionPrompt(value: unknown): string | number[] {
  const one = Array.isArray(value) && value.length === 1 && (typeof value[0] === 'string' || Array.isArray(value[0])) ? value[0] : value;
  if (typeof one === 'string') return one;
  if (Array.isArray(one) && one.length > 0 && one.every((id) => Number.isSafeInteger(id) && id >= 0)) return one as number[];
  throw badField('prompt', 'a string or a non-empty array of token ids (one prompt per request)', value);
}

function chatMessages(engine: Engine, value: unknown): number[] {
  const messages = checkMessages(value, (msg) => invalid(msg, 'messages'));
  const tokenizer = engine.tokenizer;
  if (tokenizer === null) throw invalid(`the model '${engine.modelName}' has no tokenizer, so it cannot read messages; send token ids to /v1/completions`, 'messages');
  try {
    return chatPrompt(tokenizer, messages, 'messages');
  } catch (e) {
    // A template that refuses the conversation (roles that do not alternate, say) is the request's to fix.
    if (isLorakitError(e) && e.code === 'ERR_INVALID_ARG') throw invalid(e.message, 'messages');
    throw e;
  }
}

function modelIds(engine: Engine): string[] {
  return [engine.modelName, ...engine.adapterNames];
}

/** What an error from the engine (or any unexpected one) is answered with. */
function apiErrorOf(e: unknown, retryAfter: string): ApiError {
  if (e instanceof ApiError) return e;
  if (isLorakitError(e)) {
    if (e.code === 'ERR_BUSY')
      return new ApiError(429, `lorakit serve is busy: ${e.message}`, 'rate_limit_error', null, 'rate_limit_exceeded', { 'retry-after': retryAfter });
    // ERR_ABORTED here is a generation the engine's shutdown cut short (a client that left gets no answer).
    if (e.code === 'ERR_CLOSED' || e.code === 'ERR_ABORTED')
      return new ApiError(503, `lorakit serve is shutting down: ${e.message}`, 'server_error', null, 'server_shutting_down', { 'retry-after': retryAfter });
    // A prompt longer than the model's context, a token id outside the vocabulary: the request's to fix.
    if (e.code === 'ERR_INVALID_ARG' || e.code === 'ERR_OUT_OF_RANGE') return invalid(e.message);
    return new ApiError(500, e.message, 'server_error');
  }
  return new ApiError(500, 'internal error in lorakit serve (its log has the details)', 'server_error');
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** The request body, up to `limit` bytes; null when the client went away before sending all of it. */
function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer | null> {
  const tooLarge = (): ApiError => invalid(`the request body is larger than this server's limit of ${limit} bytes`, null, 413, 'request_too_large');
  if (Number(req.headers['content-length'] ?? 0) > limit) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        req.pause();
        reject(tooLarge());
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', () => resolve(null));
    req.on('close', () => resolve(null));
  });
}

/** OpenAI's finish_reason; a generation aborted while its client is still there was cut short by the shutdown. */
function finishReasonOf(reason: FinishReason): 'stop' | 'length' {
  if (reason === 'abort') throw new LorakitError('ERR_ABORTED', 'it ended before this completion finished');
  return reason;
}

/** Starts an OpenAI-compatible server over `engine`; resolves once it listens. */
export async function startServer(engine: Engine, options: ServerOptions = {}): Promise<Server> {
  const op = 'startServer';
  const o = checkOptions<ServerOptions>(op, options);
  const host = o.host ?? '127.0.0.1';
  if (typeof host !== 'string' || host === '') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'host' must be a host name or address, got ${show(host)}`);
  const port = o.port === undefined ? 8000 : checkNumber(op, 'port', o.port, { integer: true, min: 0, max: 65535 });
  const apiKey = o.apiKey;
  if (apiKey !== undefined && (typeof apiKey !== 'string' || apiKey === ''))
    throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'apiKey' must be a non-empty string, got ${show(apiKey)}`);
  const maxBodyBytes = o.maxBodyBytes === undefined ? 1 << 20 : checkNumber(op, 'maxBodyBytes', o.maxBodyBytes, { integer: true, min: 1 });
  const maxTokensLimit = o.maxTokensLimit === undefined ? 2048 : checkNumber(op, 'maxTokensLimit', o.maxTokensLimit, { integer: true, min: 1 });
  const retryAfter = String(o.retryAfterSeconds === undefined ? 1 : checkNumber(op, 'retryAfterSeconds', o.retryAfterSeconds, { integer: true, min: 0 }));
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));

  // Compared as digests: equal lengths, so timingSafeEqual says nothing of the key's length either.
  const digest = (s: string): Buffer => createHash('sha256').update(s).digest();
  const keyDigest = apiKey === undefined ? null : digest(apiKey);
  const authorized = (header: string | undefined): boolean => {
    if (keyDigest === null) return true;
    const m = /^Bearer (.+)$/i.exec(header ?? '');
    return m !== null && timingSafeEqual(digest(m[1]!), keyDigest);
  };

  const created = Math.floor(Date.now() / 1000);
  const modelObject = (id: string) => ({ id, object: 'model', created, owned_by: 'lorakit', ...(id === engine.modelName ? {} : { parent: engine.modelName }) });

  /** The responses not yet closed, which a shutdown waits for. */
  const open = new Set<http.ServerResponse>();
  let shutdown: Promise<void> | null = null;

  async function completion(req: http.IncomingMessage, res: http.ServerResponse, kind: Kind): Promise<void> {
    const raw = await readBody(req, maxBodyBytes);
    if (raw === null) return;
    let body: unknown;
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch (e) {
      throw invalid(`the request body is not valid JSON: ${(e as Error).message}`);
    }
    const parsed = parseBody(engine, body, kind, maxTokensLimit);
    const generation = engine.generate(parsed.request);
    // A client that goes away before its answer is written frees the generation's place and cache blocks.
    res.once('close', () => {
      if (!res.writableFinished) generation.cancel();
    });
    const id = `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('hex')}`;
    const head = { id, object: kind === 'chat' ? 'chat.completion' : 'text_completion', created: Math.floor(Date.now() / 1000), model: parsed.model };
    if (parsed.stream) await stream(res, generation, kind, head, parsed.includeUsage);
    else {
      const result = await generation.result;
      if (res.destroyed) return;
      const finish_reason = finishReasonOf(result.finishReason);
      const choice = kind === 'chat' ? { index: 0, message: { role: 'assistant', content: result.text }, logprobs: null, finish_reason } : { index: 0, text: result.text, logprobs: null, finish_reason };
      sendJson(res, 200, { ...head, choices: [choice], usage: usageOf(result) });
    }
  }

  async function stream(res: http.ServerResponse, generation: Generation, kind: Kind, head: Record<string, unknown>, includeUsage: boolean): Promise<void> {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const event = (data: unknown): void => {
      if (!res.destroyed) res.write(`data: ${JSON.stringify(data)}\n\n`);
    };
    const object = kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
    const chunk = (choice: Record<string, unknown>, finish_reason: string | null = null): void =>
      event({ ...head, object, choices: [{ index: 0, ...choice, logprobs: null, finish_reason }], ...(includeUsage ? { usage: null } : {}) });
    const text = (delta: string): Record<string, unknown> => (kind === 'chat' ? { delta: { content: delta } } : { text: delta });
    let result: GenerationResult;
    try {
      if (kind === 'chat') chunk({ delta: { role: 'assistant', content: '' } });
      for await (const { delta } of generation) if (delta !== '') chunk(text(delta));
      result = await generation.result;
      const finish = finishReasonOf(result.finishReason);
      chunk(kind === 'chat' ? { delta: {} } : { text: '' }, finish);
    } catch (e) {
      // The status is sent already: the failure goes in the stream, where OpenAI's clients raise it.
      const err = apiErrorOf(e, retryAfter);
      if (err.status === 500) logUnexpected(e);
      event(err.body);
      if (!res.destroyed) res.end();
      return;
    }
    if (includeUsage) event({ ...head, object, choices: [], usage: usageOf(result) });
    if (!res.destroyed) res.end('data: [DONE]\n\n');
  }

  function models(res: http.ServerResponse, id: string | null): void {
    if (id === null) return sendJson(res, 200, { object: 'list', data: modelIds(engine).map(modelObject) });
    if (!modelIds(engine).includes(id)) throw invalid(`the model '${id}' does not exist here; this server serves ${modelIds(engine).join(', ')}`, 'model', 404, 'model_not_found');
    sendJson(res, 200, modelObject(id));
  }

  function logUnexpected(e: unknown): void {
    if (!isLorakitError(e)) log(`lorakit serve: internal error (a bug in lorakit; please report it with this trace):\n${e instanceof Error ? e.stack : String(e)}`);
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    open.add(res);
    res.once('close', () => open.delete(res));
    try {
      if (!authorized(req.headers.authorization))
        throw new ApiError(401, 'a valid API key is required: send it as `Authorization: Bearer <key>`', 'invalid_request_error', null, 'invalid_api_key', { 'www-authenticate': 'Bearer' });
      const path = new URL(req.url ?? '/', 'http://localhost').pathname.replace(/\/+$/, '');
      const route =
        path === '/v1/models' || path.startsWith('/v1/models/')
          ? { method: 'GET', run: () => models(res, path === '/v1/models' ? null : decodeURIComponent(path.slice('/v1/models/'.length))) }
          : path === '/v1/completions' || path === '/v1/chat/completions'
            ? { method: 'POST', run: () => completion(req, res, path === '/v1/completions' ? 'completion' : 'chat') }
            : null;
      if (route === null) throw invalid(`there is no ${path} here; lorakit serve answers /v1/models, /v1/completions and /v1/chat/completions`, null, 404, 'not_found');
      if (req.method !== route.method)
        throw new ApiError(405, `${path} takes ${route.method}, not ${req.method}`, 'invalid_request_error', null, 'method_not_allowed', { allow: route.method });
      await route.run();
    } catch (e) {
      const err = apiErrorOf(e, retryAfter);
      if (err.status === 500) logUnexpected(e);
      if (res.headersSent) res.destroy();
      // A body left unread (too large, or never looked at) is not drained: the connection closes instead.
      else sendJson(res, err.status, err.body, { ...err.headers, ...(req.complete ? {} : { connection: 'close' }) });
    }
  }

  const server = http.createServer((req, res) => void handle(req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) =>
      reject(new LorakitError('ERR_IO', `${op}: cannot listen on ${host}:${port}: ${e.code === 'EADDRINUSE' ? 'the port is in use' : e.message}`)),
    );
    server.listen(port, host, resolve);
  });
  const bound = (server.address() as AddressInfo).port;

  async function close(graceMs: number): Promise<void> {
    const listenerClosed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    try {
      await engine.close({ graceMs });
      // Every generation has ended; their handlers end their responses within a few turns. One still open
      // after that waits on its client (a body that never finishes arriving) and is cut.
      await allClosed(open, 1000);
    } finally {
      server.closeAllConnections();
      await listenerClosed;
    }
  }

  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${bound}`,
    port: bound,
    close: (closeOptions = {}) => {
      const graceMs = closeOptions.graceMs === undefined ? 5000 : checkNumber('close', 'graceMs', closeOptions.graceMs, { min: 0 });
      return (shutdown ??= close(graceMs));
    },
  };
}

function usageOf(result: GenerationResult): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
  return { prompt_tokens: result.promptTokens, completion_tokens: result.tokens.length, total_tokens: result.promptTokens + result.tokens.length };
}

/** Resolves when every response in `responses` has closed, or after `ms`. */
function allClosed(responses: Set<http.ServerResponse>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    const check = (): void => {
      if (responses.size > 0) return;
      clearTimeout(timer);
      resolve();
    };
    for (const r of responses) r.once('close', () => setImmediate(check));
    check();
  });
}
