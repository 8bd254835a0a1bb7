/** A conversation as a generation prompt: the tokens a model continues as the assistant. */
import { LorakitError } from '../errors';
import { checkMessages, formatOf, messageOf, type ChatMessage } from '../data/chat';
import { type Tokenizer } from '../tokenizer/tokenizer';

/**
 * The tokens of `messages` rendered with the assistant's turn opened (add_generation_prompt=true), in the format
 * training renders them: the model's chat template when its tokenizer has one, and otherwise lorakit's plain
 * `<|role|>` format, which is what a model fine-tuned by lorakit on chat data without a template has learned.
 * `where` starts each error message (the server names the request field).
 */
export function chatPrompt(tokenizer: Tokenizer, messages: readonly ChatMessage[], where = 'chatPrompt'): number[] {
  const fail = (msg: string): LorakitError => new LorakitError('ERR_INVALID_ARG', `${where}: ${msg}`);
  const checked = checkMessages(messages, fail);
  const format = formatOf(tokenizer, where);
  let text: string;
  try {
    text = format.render(checked, true);
  } catch (e) {
    // A LorakitError is the render's budget running out: the template's fault, not the conversation's.
    if (e instanceof LorakitError) throw new LorakitError(e.code, `${where}: ${e.message}`);
    throw fail(`the chat template cannot render this conversation: ${messageOf(e)}`);
  }
  // The template writes its own special tokens (a plain format's lead is bos), so none are added to its text.
  return [...format.lead, ...tokenizer.encode(text, { addSpecialTokens: false })];
}
