import { jsonlRecords, type DataRecord } from '../../data/jsonl';
import { loadAdapter } from '../../adapters/adapter';
import { loadModel } from '../../models';
import { loadTokenizer } from '../../tokenizer';
import { Engine, type GenerationRequest } from '../../generate/engine';
import { chatPrompt } from '../../generate/chat';
import { type Tokenizer } from '../../tokenizer/tokenizer';
import { command, print } from '../run';

/**
 * The prompt a data record asks for: a prompt/completion row's prompt (the completion is the answer it
 * was trained towards), a chat row's conversation up to its last assistant turn, a text row whole.
 */
function recordPrompt(r: DataRecord, tokenizer: Tokenizer, chat: boolean, where: string): { shown: string; ids: number[] } {
  switch (r.kind) {
    case 'prompt':
    case 'text': {
      const text = r.kind === 'prompt' ? r.prompt : r.text;
      return { shown: text, ids: chat ? chatPrompt(tokenizer, [{ role: 'user', content: text }], where) : tokenizer.encode(text) };
    }
    case 'chat': {
      const msgs = r.messages.at(-1)?.role === 'assistant' ? r.messages.slice(0, -1) : r.messages;
      return { shown: msgs.at(-1)?.content ?? '', ids: chatPrompt(tokenizer, msgs, where) };
    }
    case 'ids':
      return { shown: tokenizer.decode(r.inputIds), ids: r.inputIds };
  }
}

export const generateCommand = command({
  usage: 'generate',
  describe: 'Continue prompts with a model (and an adapter, unmerged or merged), batched on one KV cache',
  options: (a) =>
    a
      .option('model', { type: 'string', demandOption: true, describe: 'model folder (config.json, safetensors, tokenizer.json)' })
      .option('adapter', { type: 'string', describe: 'PEFT adapter folder, applied unmerged (or merged with --merge)' })
      .option('prompt', { type: 'string', array: true, describe: 'a prompt (repeat for several)' })
      .option('data', { type: 'string', describe: 'JSONL of prompts: {"prompt"}, {"text"} or {"messages"} rows (a training file works: a final assistant turn is left out)' })
      .option('chat', { type: 'boolean', default: false, describe: "wrap each --prompt as a user message in the model's chat template" })
      .option('max-tokens', { type: 'number', default: 128, describe: 'most tokens to generate per prompt' })
      .option('temperature', { type: 'number', default: 0, describe: '0: greedy' })
      .option('top-k', { type: 'number', default: 0, describe: 'sample among the k likeliest tokens (0: off)' })
      .option('top-p', { type: 'number', default: 1, describe: 'sample among the likeliest tokens holding this probability (1: off)' })
      .option('repetition-penalty', { type: 'number', default: 1, describe: "transformers' repetition penalty (1: off)" })
      .option('seed', { type: 'number', describe: 'sampling seed (each prompt i uses seed + i)' })
      .option('stop', { type: 'string', array: true, describe: 'end a completion before this string (repeatable)' })
      .option('quantize', { type: 'boolean', default: false, describe: 'NF4 base weights, as QLoRA trains them' })
      .option('merge', { type: 'boolean', default: false, describe: 'fold the adapter into the base weights first (PEFT merge_and_unload)' })
      .option('json', { type: 'boolean', default: false, describe: 'one JSON object per prompt: {"prompt", "text", "tokens", "finish_reason"}' })
      .check((argv) => {
        if (!argv.prompt && !argv.data) throw new Error('give --prompt "..." or --data file.jsonl');
        if (argv.prompt && argv.data) throw new Error('give --prompt or --data, not both');
        if (argv.merge && !argv.adapter) throw new Error('--merge needs --adapter');
        return true;
      }),
  run: async (argv) => {
    const tokenizer = loadTokenizer(argv.model);
    const model = loadModel(argv.model, { quantize: argv.quantize });
    // The adapter served unmerged goes through the engine's adapter path, as `lorakit serve` runs it.
    let adapter: string | null = null;
    if (argv.adapter && argv.merge) {
      loadAdapter(model, argv.adapter);
      model.mergeAdapters();
    }
    const engine = new Engine(model, tokenizer, { maxQueue: Number.MAX_SAFE_INTEGER });
    try {
      if (argv.adapter && !argv.merge) {
        engine.addAdapter('adapter', argv.adapter);
        adapter = 'adapter';
      }
      const prompts = argv.data
        ? [...jsonlRecords(argv.data)].map(({ line, record }) => recordPrompt(record, tokenizer, argv.chat, `${argv.data}:${line}`))
        : argv.prompt!.map((p) => recordPrompt({ kind: 'text', text: p }, tokenizer, argv.chat, '--prompt'));
      const base: Omit<GenerationRequest, 'prompt'> = {
        adapter, maxTokens: argv.maxTokens, temperature: argv.temperature, topK: argv.topK, topP: argv.topP,
        repetitionPenalty: argv.repetitionPenalty, stop: argv.stop,
      };
      const runs = prompts.map((p, i) => engine.generate({ ...base, prompt: p.ids, seed: argv.seed === undefined ? undefined : argv.seed + i }));
      // One prompt streams as it is written; several print in order as each completes.
      if (runs.length === 1 && !argv.json) {
        for await (const e of runs[0]!) process.stdout.write(e.delta);
        await runs[0]!.result;
        process.stdout.write('\n');
        return;
      }
      for (const [i, run] of runs.entries()) {
        const r = await run.result;
        if (argv.json) print(JSON.stringify({ prompt: prompts[i]!.shown, text: r.text, tokens: r.tokens, finish_reason: r.finishReason }));
        else print(`${i > 0 ? '\n' : ''}### ${i + 1}: ${JSON.stringify(prompts[i]!.shown)}\n${r.text}`);
      }
    } finally {
      engine.dispose();
      model.dispose();
    }
  },
});
