/** The shipped model with a chat template, for the tests of chat prompts and of the server. */
import * as fs from 'node:fs';
import * as path from 'node:path';

export const DEFAULT_MODEL = path.resolve(__dirname, '../../assets/default');

/** A Zephyr-style template: role headers as text, eos after each message, the assistant's header as the generation prompt. */
export const TEMPLATE =
  "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

/** Copies assets/default into `dir` (created), with TEMPLATE as the chat template in its tokenizer_config.json. */
export function defaultModelWithTemplate(dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json']) fs.copyFileSync(path.join(DEFAULT_MODEL, f), path.join(dir, f));
  const config = JSON.parse(fs.readFileSync(path.join(DEFAULT_MODEL, 'tokenizer_config.json'), 'utf8'));
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ ...config, chat_template: TEMPLATE }));
  return dir;
}
