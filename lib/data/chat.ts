/**
 * Chat examples: a conversation rendered with the model's chat template (or, without one, a plain format),
 * tokenized, with the loss on the assistant messages only.
 */
import { Environment, Interpreter, Template } from '@huggingface/jinja';
import { LorakitError } from '../errors';
import { isObject, show } from '../check';
import { type Tokenizer } from '../tokenizer/tokenizer';
import { type Example } from './example';

export type ChatRole = 'system' | 'user' | 'assistant';

export interface ChatMessage {
  role: ChatRole;
  content: string;
}

const ROLES: readonly string[] = ['system', 'user', 'assistant'];

/** @internal Checks a conversation's shape; `fail` turns a complaint into the caller's error. */
export function checkMessages(value: unknown, fail: (msg: string) => Error): ChatMessage[] {
  if (!Array.isArray(value) || value.length === 0)
    throw fail(`'messages' must be a non-empty array of {"role", "content"} objects, got ${show(value)}`);
  return value.map((m: unknown, i): ChatMessage => {
    if (!isObject(m)) throw fail(`'messages[${i}]' must be an object with 'role' and 'content', got ${show(m)}`);
    if (typeof m.role !== 'string' || !ROLES.includes(m.role))
      throw fail(`'messages[${i}].role' must be 'system', 'user' or 'assistant', got ${show(m.role)}`);
    if (typeof m.content !== 'string') throw fail(`'messages[${i}].content' must be a string, got ${show(m.content)}`);
    return { role: m.role as ChatRole, content: m.content };
  });
}

/**
 * @internal Checks a data line's 'messages'. A conversation with no assistant message is refused: it would
 * train nothing.
 */
export function parseMessages(value: unknown, fail: (msg: string) => LorakitError): ChatMessage[] {
  const messages = checkMessages(value, fail);
  if (!messages.some((m) => m.role === 'assistant')) throw fail(`'messages' has no assistant message, so it would train nothing`);
  return messages;
}

/** How one tokenizer turns a conversation into tokens. */
export interface ChatFormat {
  render(messages: readonly ChatMessage[], addGenerationPrompt: boolean): string;
  /** Tokens before the rendered text's own. */
  lead: number[];
  /** Tokens after it; trained when the conversation ends with an assistant message. */
  closing: number[];
}

/**
 * Without a chat template, each message is written as `<|role|>\n{content}\n` and the conversation is closed by
 * eos; bos opens it when the tokenizer adds bos to text. The generation prompt (the part of a turn that is
 * not trained) is `<|assistant|>\n`. The role markers are plain text, so any tokenizer spells them.
 */
function plainFormat(tokenizer: Tokenizer): ChatFormat {
  const bos = tokenizer.bosTokenId;
  const eos = tokenizer.eosTokenId;
  // Asked of the tokenizer rather than assumed: GPT-2's has a bos token that it never adds.
  const addsBos = bos !== null && tokenizer.encode('', { addSpecialTokens: true })[0] === bos;
  return {
    render: (messages, gen) => messages.map((m) => `<|${m.role}|>\n${m.content}\n`).join('') + (gen ? '<|assistant|>\n' : ''),
    lead: addsBos ? [bos] : [],
    closing: eos !== null ? [eos] : [],
  };
}

// A chat template is code from the model's folder, and @huggingface/jinja runs it with no limit: a loop over
// range(100000000) would run for minutes and fill memory. Every node the interpreter evaluates is a step; a
// render may take this many (about a second), and more for long conversations: a ChatML template takes 25
// steps a message, and none we know of takes more than a few hundred.
const RENDER_STEPS = 100_000;
const RENDER_STEPS_PER_MESSAGE = 1_000;
// Text a render may build (in any one value) beyond the conversation's own: `'x' * 10**8` is one step.
const RENDER_SLACK_CHARS = 16_000_000;

/** A render that ran past its budget: no fault of the conversation, so the caller does not try shorter ones. */
class TemplateBudgetError extends LorakitError {}

/**
 * Renders `template` with `context` within a budget of steps and characters. The library has no hook for a
 * limit, so the interpreter's one dispatch method is wrapped for the length of this (synchronous) call, and
 * the global `range` is replaced by one that refuses to build a list longer than the steps left.
 */
function boundedRender(template: Template, context: Record<string, unknown>, steps: number, chars: number, file: string): string {
  const over = (what: string): TemplateBudgetError =>
    new TemplateBudgetError('ERR_TOKENIZER', `the chat template in '${file}' ${what}, far beyond what writing out a conversation takes, so it was stopped`);
  let left = steps;
  const range = (...args: number[]): number[] => {
    const [from, to, step] = args.length === 1 ? [0, args[0]!, 1] : [args[0]!, args[1]!, args[2] ?? 1];
    if (step === 0) throw new Error('range() step must not be zero');
    const length = Math.max(0, Math.ceil((to - from) / step));
    if (!Number.isFinite(length) || length > left) throw over(`asked for range(${args.join(', ')}), more than the ${steps} steps a render may take`);
    left -= length;
    return Array.from({ length }, (_, i) => from + i * step);
  };
  // The library's globals are declared in the render's own environment; `set` makes the runtime function value.
  const boundedRange = new Environment().set('range', range);
  const evaluate = Interpreter.prototype.evaluate;
  Interpreter.prototype.evaluate = function (this: Interpreter, statement, environment) {
    // The first step is the program, in the global environment.
    if (left === steps) environment.setVariable('range', boundedRange);
    if (--left < 0) throw over(`did not finish within ${steps} steps`);
    const value = evaluate.call(this, statement, environment);
    if (typeof value.value === 'string' && value.value.length > chars) throw over(`built a text of ${value.value.length} characters (the limit is ${chars})`);
    return value;
  };
  try {
    return template.render(context);
  } finally {
    Interpreter.prototype.evaluate = evaluate;
  }
}

/**
 * A Jinja chat template rendered as transformers' apply_chat_template does: with the messages, the special
 * tokens' text, and the rendered text tokenized without added special tokens (the template writes its own).
 */
function templateFormat(tokenizer: Tokenizer, source: string, where: string): ChatFormat {
  const file = tokenizer.chatTemplateFile ?? 'the tokenizer';
  let template: Template;
  try {
    template = new Template(source);
  } catch (e) {
    throw new LorakitError('ERR_TOKENIZER', `${where}: the chat template in '${file}' cannot be parsed: ${messageOf(e)}`);
  }
  // The Tokenizer interface keeps special tokens as ids; decoding one gives back its text.
  const special: Record<string, string> = {};
  for (const [key, id] of [['bos_token', tokenizer.bosTokenId], ['eos_token', tokenizer.eosTokenId], ['pad_token', tokenizer.padTokenId]] as const)
    if (id !== null) special[key] = tokenizer.decode([id]);
  return {
    render: (messages, gen) => {
      const chars = messages.reduce((n, m) => n + m.content.length, 0);
      const steps = RENDER_STEPS + RENDER_STEPS_PER_MESSAGE * messages.length;
      return boundedRender(template, { ...special, messages, add_generation_prompt: gen }, steps, RENDER_SLACK_CHARS + 2 * chars, file);
    },
    lead: [],
    closing: [],
  };
}

const formats = new WeakMap<Tokenizer, ChatFormat>();

/**
 * @internal The tokenizer's format, made once; `where` names the example that needed it, should the template be
 * broken. Rendering may throw the library's errors (a template that raises), or a LorakitError when the render
 * runs past its budget.
 */
export function formatOf(tokenizer: Tokenizer, where: string): ChatFormat {
  let f = formats.get(tokenizer);
  if (f === undefined) {
    f = tokenizer.chatTemplate === null ? plainFormat(tokenizer) : templateFormat(tokenizer, tokenizer.chatTemplate, where);
    formats.set(tokenizer, f);
  }
  return f;
}

/** @internal */
export function messageOf(e: unknown): string {
  return isObject(e) && typeof e.message === 'string' ? e.message : String(e);
}

function startsWith(ids: readonly number[], prefix: readonly number[]): boolean {
  return prefix.length <= ids.length && prefix.every((id, i) => ids[i] === id);
}

/**
 * Token boundaries for character offsets into `text`, which `ids` tokenizes. A prefix of the text that
 * tokenizes to a prefix of `ids` gives its boundary exactly. Where a token straddles the boundary (a merge
 * across it), the prefix tokenizes differently, and the boundary falls back to character offsets read from
 * decoding `ids` prefix by prefix; a straddling token then counts as inside the assistant span, so no
 * assistant text goes untrained.
 */
class Boundaries {
  private readonly decoded = new Map<number, number>();
  /** The latest boundary found exact: ids[:k] spell text[:c]. */
  private last = { c: 0, k: 0 };

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly text: string,
    private readonly ids: readonly number[],
  ) {}

  /** The first token of a span starting at character `c`: the first token that ends after c. */
  start(c: number): number {
    return this.exact(c) ?? Math.max(0, this.firstReaching((n) => n > c) - 1);
  }

  /** One past the last token of a span ending at character `c`: the last token that starts before c. */
  end(c: number): number {
    return this.exact(c) ?? Math.min(this.ids.length, this.firstReaching((n) => n >= c));
  }

  private exact(c: number): number | null {
    // Spans come in order, so the text since the latest exact boundary is tokenized first: when its tokens
    // follow that boundary in ids, ids[:k] spell text[:c]. Tokenizing each whole prefix instead made a long
    // conversation quadratic (each assistant message tokenized everything before it again).
    const { c: c0, k: k0 } = this.last;
    if (c >= c0) {
      const piece = this.tokenizer.encode(this.text.slice(c0, c), { addSpecialTokens: false });
      if (piece.every((id, j) => this.ids[k0 + j] === id)) return this.found(c, k0 + piece.length);
    }
    const prefix = this.tokenizer.encode(this.text.slice(0, c), { addSpecialTokens: false });
    return startsWith(this.ids, prefix) ? this.found(c, prefix.length) : null;
  }

  private found(c: number, k: number): number {
    this.last = { c, k };
    return k;
  }

  /**
   * The least k whose decoded prefix ids[:k] has a length that passes `test` (decoded length grows with k), or
   * ids.length + 1 when none does.
   */
  private firstReaching(test: (length: number) => boolean): number {
    let lo = 0;
    let hi = this.ids.length + 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (test(this.decodedLength(mid))) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  private decodedLength(k: number): number {
    let n = this.decoded.get(k);
    if (n === undefined) {
      n = this.tokenizer.decode(this.ids.slice(0, k)).length;
      this.decoded.set(k, n);
    }
    return n;
  }
}

/**
 * Tokenizes a conversation, with labels on the assistant messages only. Each assistant message's span is found
 * by rendering the conversation up to it (with the generation prompt, so the role header stays untrained)
 * and up to its end: the difference is exactly the text the model must write, for any template.
 */
export function tokenizeChat(messages: readonly ChatMessage[], tokenizer: Tokenizer, where: string): Example {
  const format = formatOf(tokenizer, where);
  const fail = (msg: string): LorakitError => new LorakitError('ERR_INVALID_ARG', `${where}: ${msg}`);
  const overBudget = (e: TemplateBudgetError): LorakitError => new LorakitError(e.code, `${where}: ${e.message}`);
  let text: string;
  try {
    text = format.render(messages, false);
  } catch (e) {
    if (e instanceof TemplateBudgetError) throw overBudget(e);
    throw fail(`the chat template cannot render this conversation: ${messageOf(e)}`);
  }
  // A template may refuse a shorter conversation (one that must end with the assistant, say).
  const render = (upTo: number, gen: boolean): string | null => {
    try {
      return format.render(messages.slice(0, upTo), gen);
    } catch (e) {
      if (e instanceof TemplateBudgetError) throw overBudget(e);
      return null;
    }
  };
  const body = tokenizer.encode(text, { addSpecialTokens: false });
  const bounds = new Boundaries(tokenizer, text, body);
  const trained = new Array<boolean>(body.length).fill(false);
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    const upToEnd = render(i + 1, false);
    const unstable = (): LorakitError =>
      fail(`the chat template does not render the first ${i + 1} messages as the start of the whole conversation, so the assistant's tokens cannot be found`);
    if (upToEnd === null || !text.startsWith(upToEnd)) throw unstable();
    // Templates without a generation prompt render the same either way; the role header is then trained too.
    const candidates = [render(i, true), render(i, false), ...(i === 0 ? [''] : [])];
    const upToStart = candidates.find((s): s is string => s !== null && upToEnd.startsWith(s));
    if (upToStart === undefined) throw unstable();
    for (let k = bounds.start(upToStart.length), to = bounds.end(upToEnd.length); k < to; k++) trained[k] = true;
  });
  const closed = messages.at(-1)?.role === 'assistant';
  const ids = [...format.lead, ...body, ...format.closing];
  const labels = [
    ...format.lead.map(() => -100),
    ...body.map((id, k) => (trained[k] ? id : -100)),
    ...format.closing.map((id) => (closed ? id : -100)),
  ];
  return { inputIds: ids, labels };
}
