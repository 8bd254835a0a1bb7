/**
 * chatPrompt: a conversation as the prompt a model continues as the assistant, in the format training renders
 * conversations (the model's template, or lorakit's plain format without one).
 */
import * as path from 'node:path';
import { chatPrompt } from '../lib/generate/chat';
import { tokenizeChat, type ChatMessage } from '../lib/data/chat';
import { loadTokenizer } from '../lib/tokenizer';
import { DEFAULT_MODEL as DEFAULT, defaultModelWithTemplate } from './helpers/chat-model';
import { tempDirs } from './helpers/tmp';

const CHAT: ChatMessage[] = [{ role: 'system', content: 'Answer briefly.' }, { role: 'user', content: 'Where is the red key?' }];
const tmp = tempDirs('lorakit-chat-prompt-');
let modelDir: string;
beforeAll(() => {
  modelDir = defaultModelWithTemplate(path.join(tmp(), 'tiny'));
});

describe('chatPrompt', () => {
  test("renders the model's template with the generation prompt, adding no special token of its own", () => {
    const tok = loadTokenizer(modelDir);
    const ids = chatPrompt(tok, CHAT);
    expect(ids).toEqual(tok.encode('<|system|>\nAnswer briefly.<|endoftext|>\n<|user|>\nWhere is the red key?<|endoftext|>\n<|assistant|>\n', { addSpecialTokens: false }));
    // The template writes no bos, so none is there (encode() with special tokens would start with one).
    expect(tok.encode('x')[0]).toBe(tok.bosTokenId);
    expect(ids[0]).not.toBe(tok.bosTokenId);
  });

  test('is the prompt training put before the assistant message: the same tokens, all unlabelled, and the answer labelled after them', () => {
    for (const tok of [loadTokenizer(modelDir), loadTokenizer(DEFAULT)]) {
      const prompt = chatPrompt(tok, CHAT);
      const trained = tokenizeChat([...CHAT, { role: 'assistant', content: 'Under the mat.' }], tok, 'test');
      expect(trained.inputIds.slice(0, prompt.length)).toEqual(prompt);
      expect(trained.labels.slice(0, prompt.length).every((l) => l === -100)).toBe(true);
      expect(trained.labels[prompt.length]).toBe(trained.inputIds[prompt.length]);
    }
  });

  test("without a template, lorakit's plain format, opened by bos as the tokenizer adds it", () => {
    const tok = loadTokenizer(DEFAULT);
    expect(tok.chatTemplate).toBeNull();
    expect(chatPrompt(tok, [{ role: 'user', content: 'Hi' }])).toEqual([
      tok.bosTokenId,
      ...tok.encode('<|user|>\nHi\n<|assistant|>\n', { addSpecialTokens: false }),
    ]);
  });

  test('a template that refuses the conversation, or a malformed message, is a clear error', () => {
    const tok = loadTokenizer(modelDir);
    const strict = Object.create(tok, { chatTemplate: { value: "{{ raise_exception('roles must alternate') }}" } });
    expect(() => chatPrompt(strict, CHAT)).toThrow(/^chatPrompt: the chat template cannot render this conversation: .*roles must alternate/);
    expect(() => chatPrompt(tok, [{ role: 'robot', content: 'x' }] as never)).toThrow(/'messages\[0\]\.role' must be 'system', 'user' or 'assistant', got "robot"/);
  });
});
