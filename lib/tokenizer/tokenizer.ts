/** The tokenizer interface lorakit trains against, and the argument checks its implementations share. */
import { LorakitRangeError, LorakitTypeError } from '../errors';
import { checkOptions, describe } from '../check';

export interface Tokenizer {
  /** Token ids of `text`; `addSpecialTokens` (default true) adds the bos/eos tokens the tokenizer is configured to add. */
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[];
  /** The text of `ids`; special tokens are written out unless `skipSpecialTokens` is true. */
  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string;
  /** One more than the largest token id: the least embedding size the tokenizer needs. */
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId: number | null;
  /** The Jinja chat template the model was trained with, when its folder has one. */
  readonly chatTemplate: string | null;
  /** The file the chat template was read from, named in errors about it. */
  readonly chatTemplateFile?: string | null;
  /** The longest input the model accepts, when its tokenizer configuration says. */
  readonly modelMaxLength: number | null;
  tokenToId(token: string): number | undefined;
}

/** @internal */
export function checkText(op: string, text: unknown): string {
  if (typeof text !== 'string') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'text' must be a string, got ${describe(text)}`);
  return text;
}

/** @internal Reads one boolean option, with its default. */
export function boolOption(op: string, options: unknown, key: string, fallback: boolean): boolean {
  const v = checkOptions<Record<string, unknown>>(op, options)[key];
  if (v === undefined) return fallback;
  if (typeof v !== 'boolean') throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: option '${key}' must be true or false, got ${describe(v)}`);
  return v;
}

/** @internal Checks that `ids` is an array of token ids below `vocabSize` that `known` accepts. */
export function checkIds(op: string, ids: unknown, vocabSize: number, known: (id: number) => boolean = () => true): readonly number[] {
  if (!Array.isArray(ids)) throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'ids' must be an array of token ids, got ${describe(ids)}`);
  ids.forEach((id: unknown, i) => {
    if (typeof id !== 'number' || !Number.isSafeInteger(id))
      throw new LorakitTypeError('ERR_INVALID_ARG', `${op}: 'ids[${i}]' must be an integer token id, got ${describe(id)}`);
    if (id < 0 || id >= vocabSize || !known(id))
      throw new LorakitRangeError('ERR_OUT_OF_RANGE', `${op}: 'ids[${i}]' is ${id}, which is not a token id of this tokenizer (vocabulary of ${vocabSize})`);
  });
  return ids as readonly number[];
}
