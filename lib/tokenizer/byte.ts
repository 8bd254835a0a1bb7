import { boolOption, checkIds, checkText, type Tokenizer } from './tokenizer';

const BOS = '<s>';
const EOS = '</s>';
const BYTE_TOKEN = /^<0x([0-9A-F]{2})>$/;

const utf8 = new TextEncoder();
// Not fatal: ids cut mid-character (a truncated generation) still decode, with U+FFFD for the broken bytes.
const fromUtf8 = new TextDecoder('utf-8', { ignoreBOM: true });

/**
 * For a model trained without a tokenizer: ids 0..255 are the bytes of the text's UTF-8, and the optional bos
 * ('<s>') and eos ('</s>') tokens follow from 256. Text is never searched for special tokens, so
 * decode(encode(s), { skipSpecialTokens: true }) gives back every well-formed string exactly.
 */
export class ByteTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenId: number | null;
  readonly padTokenId = null;
  readonly chatTemplate = null;
  readonly modelMaxLength = null;

  constructor(options?: { bos?: boolean; eos?: boolean }) {
    const op = 'ByteTokenizer';
    let next = 256;
    this.bosTokenId = boolOption(op, options, 'bos', false) ? next++ : null;
    this.eosTokenId = boolOption(op, options, 'eos', false) ? next++ : null;
    this.vocabSize = next;
  }

  encode(text: string, options?: { addSpecialTokens?: boolean }): number[] {
    const op = 'ByteTokenizer.encode';
    const ids = Array.from(utf8.encode(checkText(op, text)));
    // As Llama's tokenizers do: bos opens every sequence, and eos is the caller's to append where a sample ends.
    if (boolOption(op, options, 'addSpecialTokens', true) && this.bosTokenId !== null) ids.unshift(this.bosTokenId);
    return ids;
  }

  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string {
    const op = 'ByteTokenizer.decode';
    const skip = boolOption(op, options, 'skipSpecialTokens', false);
    let text = '';
    let start = 0;
    const checked = checkIds(op, ids, this.vocabSize);
    checked.forEach((id, i) => {
      if (id < 256) return;
      text += fromUtf8.decode(Uint8Array.from(checked.slice(start, i)));
      if (!skip) text += id === this.bosTokenId ? BOS : EOS;
      start = i + 1;
    });
    return text + fromUtf8.decode(Uint8Array.from(checked.slice(start)));
  }

  tokenToId(token: string): number | undefined {
    if (token === BOS) return this.bosTokenId ?? undefined;
    if (token === EOS) return this.eosTokenId ?? undefined;
    const byte = BYTE_TOKEN.exec(token)?.[1];
    return byte === undefined ? undefined : parseInt(byte, 16);
  }
}
