/**
 * Tokenizers of models from the Hugging Face hub, read from the folder's tokenizer.json (the file transformers'
 * fast tokenizers save) and tokenizer_config.json. Tokenization itself is @huggingface/tokenizers, Hugging
 * Face's JavaScript port of their Rust tokenizers; this file reads the files, checks them, and applies the
 * settings transformers keeps in tokenizer_config.json rather than in tokenizer.json.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { LorakitError, LorakitRangeError, LorakitTypeError } from '../errors';
import { ioError, readJsonFile } from '../io/config';
import { isObject, show, describe } from '../check';
import { boolOption, checkIds, checkText, type Tokenizer } from './tokenizer';

const OP = 'loadTokenizer';

const MODEL_TYPES = ['BPE', 'WordPiece', 'Unigram'];

// The slow tokenizers' files: transformers converts them to tokenizer.json, lorakit only reads the result.
const SLOW_FILES = ['tokenizer.model', 'spiece.model', 'vocab.json', 'merges.txt', 'vocab.txt'];

type Json = Record<string, unknown>;

/** Whether bos and eos are added by lorakit, as tokenizer_config.json says, rather than by tokenizer.json. */
interface AddedEnds {
  readonly bos: boolean;
  readonly eos: boolean;
}

function fail(file: string, message: string): LorakitError {
  return new LorakitError('ERR_TOKENIZER', `${OP}: '${file}': ${message}`);
}

function typeFail(file: string, key: string, expected: string, got: unknown): LorakitTypeError {
  return new LorakitTypeError('ERR_TOKENIZER', `${OP}: '${file}': '${key}' must be ${expected}, got ${show(got)}`);
}

function isFile(file: string): boolean {
  return fs.statSync(file, { throwIfNoEntry: false })?.isFile() ?? false;
}

function missingTokenizer(dir: string): LorakitError {
  const slow = SLOW_FILES.filter((f) => isFile(path.join(dir, f)));
  const hint = slow.length === 0 ? '' :
    `; it has ${slow.join(' and ')}, which lorakit does not read: load the tokenizer in transformers and save_pretrained() it to write tokenizer.json`;
  return new LorakitError('ERR_IO', `${OP}: '${dir}' has no tokenizer.json${hint}. For a model trained without a tokenizer, use new ByteTokenizer()`);
}

/**
 * Refuses pre-tokenizer settings that @huggingface/tokenizers reads differently from Hugging Face's Rust
 * tokenizers, where the ids would come out different from those the model was trained on.
 */
function checkPreTokenizer(file: string, pre: unknown, model: Json, where: string): void {
  if (!isObject(pre)) return;
  if (pre.type === 'Sequence' && Array.isArray(pre.pretokenizers)) {
    pre.pretokenizers.forEach((p: unknown, i) => checkPreTokenizer(file, p, model, `${where}.pretokenizers[${i}]`));
    return;
  }
  if (pre.type === 'Split' && pre.behavior !== 'Isolated' && pre.behavior !== 'Removed')
    throw fail(file, `${where} is a Split with behavior ${show(pre.behavior)}; the tokenizer library splits as 'Isolated' or 'Removed' only, and its tokens would differ from Hugging Face's`);
  // Splitting at each ▁ (split: true, the default) only matters when a token could span one: Llama's and
  // Mistral's vocabularies cannot, and they turn the split off anyway.
  if (pre.type === 'Metaspace' && pre.split !== false) {
    const mark = typeof pre.replacement === 'string' ? pre.replacement : '\u2581';
    const pieces: unknown[] = Array.isArray(model.vocab) ? model.vocab.map((v: unknown) => (Array.isArray(v) ? v[0] : v)) : Object.keys(model.vocab as Json);
    const spanning = pieces.find((p) => typeof p === 'string' && p.indexOf(mark, 1) > 0);
    if (spanning !== undefined)
      throw fail(file, `${where} is a Metaspace that splits words at ${show(mark)}, which the tokenizer library does not do; with tokens such as ${show(spanning)} in the vocabulary, its tokens would differ from Hugging Face's`);
  }
}

/**
 * The first group in `pattern` that repeats without bound and holds an unbounded repetition itself, as in
 * `(a+)+$`, or null. JavaScript's regexes backtrack, and such a group makes them try exponentially many ways
 * to split a long run that finally fails to match: tokenizing would never end, and cannot be interrupted.
 * (Overlapping alternatives repeated, `(a|aa)+`, backtrack the same way and are not found here; no tokenizer
 * we know of writes either.)
 */
function nestedQuantifier(pattern: string): string | null {
  // Open groups: where each starts, and whether it holds an unbounded repetition so far.
  const open: { start: number; unbounded: boolean }[] = [{ start: 0, unbounded: false }];
  // The atom a quantifier would apply to: a group (from `start`) and whether it holds an unbounded repetition.
  let atom: { start: number; unbounded: boolean } | null = null;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    let quantifier: { unbounded: boolean; end: number } | null = null;
    if (c === '\\') {
      // \p{L}, \x{41}: the braces belong to the escape.
      const braced = /^\\[pPx]\{[^}]*\}/.exec(pattern.slice(i));
      i += braced ? braced[0].length - 1 : 1;
      atom = { start: i, unbounded: false };
    } else if (c === '[') {
      // A class is one atom; Oniguruma nests classes.
      let depth = 0;
      for (; i < pattern.length; i++) {
        if (pattern[i] === '\\') i++;
        else if (pattern[i] === '[') depth++;
        else if (pattern[i] === ']' && --depth === 0) break;
      }
      atom = { start: i, unbounded: false };
    } else if (c === '(') {
      open.push({ start: i, unbounded: false });
      // (?:, (?=, (?<name>, (?i: : the '?' is not a quantifier.
      if (pattern[i + 1] === '?') i++;
      atom = null;
    } else if (c === ')' && open.length > 1) {
      const group = open.pop()!;
      atom = group;
      open.at(-1)!.unbounded ||= group.unbounded;
    } else if (c === '*' || c === '+' || c === '?') {
      quantifier = { unbounded: c !== '?', end: i };
    } else if (c === '{' && /^\{\d*,?\d*\}/.test(pattern.slice(i))) {
      const end = i + pattern.slice(i).indexOf('}');
      // {n} and {n,m} repeat a bounded number of times; {n,} does not.
      quantifier = { unbounded: /^\{\d*,\}/.test(pattern.slice(i)), end };
    } else if (c === '|') {
      atom = null;
    } else {
      atom = { start: i, unbounded: false };
    }
    if (quantifier === null) continue;
    if (atom !== null && quantifier.unbounded && atom.unbounded) return pattern.slice(atom.start, quantifier.end + 1);
    if (quantifier.unbounded) open.at(-1)!.unbounded = true;
    i = quantifier.end;
    // A lazy or possessive mark after a quantifier.
    if (pattern[i + 1] === '?' || pattern[i + 1] === '+') i++;
    atom = null;
  }
  return null;
}

/** Every regex in tokenizer.json's normalizer, pre-tokenizer and decoder (Split and Replace steps): `{"Regex": ...}`. */
function checkRegexes(file: string, value: unknown, where: string): void {
  if (Array.isArray(value)) return value.forEach((v: unknown, i) => checkRegexes(file, v, `${where}[${i}]`));
  if (!isObject(value)) return;
  if (typeof value.Regex === 'string') {
    const group = nestedQuantifier(value.Regex);
    if (group !== null)
      throw fail(file, `${where}.Regex ${show(value.Regex)} repeats ${show(group)}, a repetition of a repetition, which can take exponential time on a long input (catastrophic backtracking); lorakit does not run it`);
    return;
  }
  for (const [k, v] of Object.entries(value)) checkRegexes(file, v, `${where}.${k}`);
}

/** Checks what the library would otherwise trip over with a bare TypeError, or misread in silence. */
function checkTokenizerJson(file: string, json: unknown): Json {
  if (!isObject(json)) throw fail(file, `expected a JSON object, got ${show(json)}`);
  const model = json.model;
  if (!isObject(model)) throw typeFail(file, 'model', 'an object', model);
  if (!MODEL_TYPES.includes(model.type as string))
    throw fail(file, `model.type is ${show(model.type)}; lorakit reads tokenizers of type ${MODEL_TYPES.join(', ')}`);
  if (model.type === 'Unigram' ? !Array.isArray(model.vocab) : !isObject(model.vocab))
    throw typeFail(file, 'model.vocab', model.type === 'Unigram' ? 'an array of [piece, score] pairs' : 'an object of token ids', model.vocab);
  if (model.type === 'BPE' && !Array.isArray(model.merges)) throw typeFail(file, 'model.merges', 'an array', model.merges);
  checkPreTokenizer(file, json.pre_tokenizer, model, 'pre_tokenizer');
  for (const key of ['normalizer', 'pre_tokenizer', 'decoder'] as const) checkRegexes(file, json[key], key);
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) throw typeFail(file, 'added_tokens', 'an array', added);
  added.forEach((t: unknown, i) => {
    if (!isObject(t) || typeof t.content !== 'string' || !Number.isSafeInteger(t.id) || (t.id as number) < 0)
      throw typeFail(file, `added_tokens[${i}]`, `an object with a string 'content' and an integer 'id' >= 0`, t);
  });
  return { ...json, added_tokens: added };
}

/** A special token's text: configs write a string, or an AddedToken object with the string in 'content'. */
function tokenText(file: string, key: string, v: unknown): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (isObject(v) && typeof v.content === 'string') return v.content;
  throw typeFail(file, key, `a string, an object with a string 'content', or null`, v);
}

function optionalBool(file: string, config: Json, key: string): boolean | undefined {
  const v = config[key] ?? undefined;
  if (v !== undefined && typeof v !== 'boolean') throw typeFail(file, key, 'true or false', v);
  return v as boolean | undefined;
}

function modelMaxLength(file: string, config: Json): number | null {
  const v = config.model_max_length ?? null;
  if (v === null) return null;
  if (typeof v !== 'number') throw typeFail(file, 'model_max_length', 'an integer >= 1', v);
  // transformers writes int(1e30) for "no limit"; nothing that large is a real length.
  if (v > Number.MAX_SAFE_INTEGER) return null;
  if (!Number.isSafeInteger(v) || v < 1)
    throw new LorakitRangeError('ERR_TOKENIZER', `${OP}: '${file}': 'model_max_length' must be an integer >= 1, got ${show(v)}`);
  return v;
}

/** The chat template, and the file it came from. */
function chatTemplate(dir: string, configFile: string, config: Json): { template: string | null; file: string | null } {
  // Newer transformers saves the template beside the config, and reads that file first.
  const jinja = path.join(dir, 'chat_template.jinja');
  if (isFile(jinja)) {
    try {
      return { template: fs.readFileSync(jinja, 'utf8'), file: jinja };
    } catch (e) {
      throw ioError(OP, 'read', jinja, e);
    }
  }
  const v = config.chat_template ?? null;
  if (v === null) return { template: null, file: null };
  if (typeof v === 'string') return { template: v, file: configFile };
  // A list of named templates: the one transformers applies when the caller names none is 'default'.
  if (Array.isArray(v)) {
    const named = v.find((t: unknown) => isObject(t) && t.name === 'default') as unknown;
    return isObject(named) && typeof named.template === 'string' ? { template: named.template, file: configFile } : { template: null, file: null };
  }
  throw typeFail(configFile, 'chat_template', 'a string or a list of {name, template} objects', v);
}

/** Whether tokenizer.json's TemplateProcessing puts `token` at the start (or end) of a single sequence. */
function templateAdds(json: Json, token: string | null, atEnd: boolean): boolean {
  const post = json.post_processor;
  // Llama 3 nests its TemplateProcessing in a Sequence after ByteLevel.
  const steps: unknown[] = isObject(post) ? (post.type === 'Sequence' && Array.isArray(post.processors) ? post.processors : [post]) : [];
  const template = steps.find((p) => isObject(p) && p.type === 'TemplateProcessing') as Json | undefined;
  if (token === null || !Array.isArray(template?.single)) return false;
  const item: unknown = atEnd ? template.single.at(-1) : template.single[0];
  return isObject(item) && isObject(item.SpecialToken) && item.SpecialToken.id === token;
}

class HubTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  readonly chatTemplate: string | null;
  readonly chatTemplateFile: string | null;
  readonly modelMaxLength: number | null;
  private readonly hf: HfTokenizer;
  private readonly file: string;
  private readonly addedEnds: AddedEnds | null;

  constructor(dir: string, file: string, json: Json, configFile: string, config: Json) {
    this.file = file;
    const text = (key: string): string | null => tokenText(configFile, key, config[key]);
    const [bos, eos, pad] = [text('bos_token'), text('eos_token'), text('pad_token')];
    const extra = config.additional_special_tokens ?? [];
    if (!Array.isArray(extra)) throw typeFail(configFile, 'additional_special_tokens', 'an array', extra);
    const extraTexts = extra.map((t: unknown, i) => tokenText(configFile, `additional_special_tokens[${i}]`, t)).filter((t) => t !== null);
    const clean = optionalBool(configFile, config, 'clean_up_tokenization_spaces');
    try {
      this.hf = new HfTokenizer(json, {
        // transformers' default; the library's own default (true) would change text on decode.
        clean_up_tokenization_spaces: clean ?? false,
        additional_special_tokens: extraTexts,
        eos_token: eos,
      });
    } catch (e) {
      // An unknown normalizer, pre-tokenizer or decoder type, or a regex JavaScript cannot compile.
      throw fail(file, `cannot be loaded: ${isObject(e) && typeof e.message === 'string' ? e.message : String(e)}`);
    }

    let max = -1;
    for (const id of this.hf.get_vocab(true).values()) max = Math.max(max, id);
    this.vocabSize = max + 1;
    const id = (key: string, token: string | null): number | null => {
      if (token === null) return null;
      const found = this.hf.token_to_id(token);
      if (found === undefined) throw fail(configFile, `${key} ${show(token)} is not a token of '${file}'`);
      return found;
    };
    this.bosTokenId = id('bos_token', bos);
    this.eosTokenId = id('eos_token', eos);
    this.padTokenId = id('pad_token', pad);

    // transformers' Llama-family tokenizers add bos/eos as these flags say, overriding tokenizer.json; a flag
    // left out keeps what tokenizer.json's template does.
    const addBos = optionalBool(configFile, config, 'add_bos_token');
    const addEos = optionalBool(configFile, config, 'add_eos_token');
    this.addedEnds = addBos === undefined && addEos === undefined ? null : {
      bos: addBos ?? templateAdds(json, bos, false),
      eos: addEos ?? templateAdds(json, eos, true),
    };
    if (this.addedEnds?.bos && this.bosTokenId === null) throw fail(configFile, `'add_bos_token' is true but no 'bos_token' is set`);
    if (this.addedEnds?.eos && this.eosTokenId === null) throw fail(configFile, `'add_eos_token' is true but no 'eos_token' is set`);

    this.modelMaxLength = modelMaxLength(configFile, config);
    ({ template: this.chatTemplate, file: this.chatTemplateFile } = chatTemplate(dir, configFile, config));
  }

  encode(text: string, options?: { addSpecialTokens?: boolean }): number[] {
    const op = 'Tokenizer.encode';
    const add = boolOption(op, options, 'addSpecialTokens', true);
    const ends = add ? this.addedEnds : null;
    const ids = this.hf.encode(checkText(op, text), { add_special_tokens: add && this.addedEnds === null }).ids;
    if (ends?.bos) ids.unshift(this.bosTokenId!);
    if (ends?.eos) ids.push(this.eosTokenId!);
    // The library gives undefined, not an error, for a token missing from the vocabulary (an unk_token or a
    // template's special token that the vocabulary lacks).
    if (ids.some((id) => id === undefined))
      throw new LorakitError('ERR_TOKENIZER', `${op}: the tokenizer of '${this.file}' made a token that is not in its vocabulary; check its unk_token and post_processor`);
    return ids;
  }

  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string {
    const op = 'Tokenizer.decode';
    const skip = boolOption(op, options, 'skipSpecialTokens', false);
    const checked = checkIds(op, ids, this.vocabSize, (id) => this.hf.id_to_token(id) !== undefined);
    // The library refuses an empty list.
    return checked.length === 0 ? '' : this.hf.decode([...checked], { skip_special_tokens: skip });
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }
}

/**
 * The tokenizer of the model in `dir`: tokenizer.json, with bos/eos/pad, add_bos_token/add_eos_token,
 * model_max_length and the chat template from tokenizer_config.json (and chat_template.jinja) when present.
 * Byte-level BPE (GPT-2, Llama 3, Qwen2), SentencePiece-style BPE (Llama 2, Mistral), WordPiece and Unigram
 * tokenizers load; added tokens are matched in the text before the model splits it.
 */
export function loadTokenizer(dir: string): Tokenizer {
  if (typeof dir !== 'string' || dir === '')
    throw new LorakitTypeError('ERR_INVALID_ARG', `${OP}: dir must be a non-empty string, got ${describe(dir)}`);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch (e) {
    throw ioError(OP, 'read', dir, e);
  }
  if (!stat.isDirectory()) throw new LorakitError('ERR_IO', `${OP}: '${dir}' is not a folder; expected the folder of a model`);
  const file = path.join(dir, 'tokenizer.json');
  if (!isFile(file)) throw missingTokenizer(dir);
  const json = checkTokenizerJson(file, readJsonFile(OP, file, 'ERR_TOKENIZER'));
  const configFile = path.join(dir, 'tokenizer_config.json');
  const config = isFile(configFile) ? readJsonFile(OP, configFile, 'ERR_TOKENIZER') : {};
  if (!isObject(config)) throw fail(configFile, `expected a JSON object, got ${show(config)}`);
  return new HubTokenizer(dir, file, json, configFile, config);
}
