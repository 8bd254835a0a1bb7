#!/usr/bin/env node
/**
 * Builds assets/default: the data, tokenizer and pre-trained tiny Llama that `lorakit train` uses when
 * run with no arguments. Deterministic: the same command writes the same files (lorakit's kernels give
 * the same bits on any thread count).
 *
 *   npm run build:gyp && npx tsc -p tsconfig.json     # the script runs on dist/
 *   node scripts/build-default.mjs                    # everything (about 10 minutes on 2 cores)
 *   node scripts/build-default.mjs --data-only        # data and tokenizer only; keeps the model
 *   node scripts/build-default.mjs --readme-only      # README.md again from build.json
 *   node scripts/build-default.mjs --steps 100 --out /tmp/x   # a quick trial elsewhere
 *
 * Steps: generate the corpus and the task (scripts/default/world.mjs), train a byte-level BPE tokenizer
 * on the corpus (scripts/default/bpe.mjs), random-initialise the model, pre-train it on the corpus with
 * full fine-tuning, save it in bfloat16, then reload it and measure the base model on the task and a
 * short LoRA run on it. The numbers go into assets/default/README.md and build.json.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { COLOURS, OBJECTS, STORAGE_RULE, makeDocuments, makePeople, makeTask } from './default/world.mjs';
import { trainBpe, tokenizerJson } from './default/bpe.mjs';
import { ExampleBatches, StreamBatches, cosineLr, exactMatch, streamRows } from './default/train-utils.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

// glibc's malloc raises its mmap threshold after the first large free; from then on the large tensors
// of every step come from the heap, and RSS grew by tens of MB a step until the kernel killed the
// process (a few hundred pre-training steps on a 24 GB machine). A fixed threshold keeps every large
// buffer mmapped and returned on free. The variable must be set before the process starts: re-run.
if (process.env.MALLOC_MMAP_THRESHOLD_ === undefined) {
  const r = spawnSync(process.execPath, process.argv.slice(1), { stdio: 'inherit', env: { ...process.env, MALLOC_MMAP_THRESHOLD_: '131072' } });
  process.exit(r.status ?? 1);
}

// LORAKIT_ROOT: a built copy of the package to run on instead of this checkout's dist/ (for example a
// snapshot, while the checkout is being rebuilt).
const lk = createRequire(import.meta.url)(path.join(process.env.LORAKIT_ROOT ?? ROOT, 'dist/index.js'));

// ---------------------------------------------------------------------------------------------------
// Settings

const args = process.argv.slice(2);
const flag = (name) => args.includes(name);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const OUT = path.resolve(option('--out', path.join(ROOT, 'assets/default')));

const SEEDS = { corpus: 1, retain: 2, task: 3, init: 4, batches: 5, lora: 6, loraBatches: 7 };
const DATA = { corpusBytes: 450_000, retainBytes: 30_000, train: 2000, eval: 150 };
const EOT = '<|endoftext|>';
const NUM_MERGES = 767; // 256 bytes + 767 merges + <|endoftext|> = 1024 tokens, a multiple of 64
const MODEL = { hidden: 192, layers: 4, heads: 4, kvHeads: 2, intermediate: 672, maxPositions: 256 };
const PRETRAIN = {
  steps: Number(option('--steps', 800)), batch: 8, seq: 128, lr: Number(option('--lr', 2e-3)), warmup: 50, floor: 0.1,
  betas: [0.9, 0.95], weightDecay: 0.1, maxGradNorm: 1.0,
};
const LORA = { r: 8, loraAlpha: 16, loraDropout: 0.05, targetModules: 'all-linear', steps: 200, batch: 16, lr: 2e-3, warmup: 10, floor: 0.1, maxGradNorm: 1.0 };

const DESCRIBE = {
  'config.json': 'the model\'s Hugging Face config (llama)',
  'corpus.txt': 'the pre-training corpus: documents separated by blank lines',
  'eval.jsonl': 'held-out task questions, `{"prompt", "completion"}`',
  'model.safetensors': 'the pre-trained weights, bfloat16',
  'retain.txt': 'held-out corpus-style text, for measuring forgetting',
  'tokenizer.json': 'byte-level BPE tokenizer',
  'tokenizer_config.json': 'special tokens, `add_bos_token`, `model_max_length`',
  'train.jsonl': 'task questions for fine-tuning, `{"prompt", "completion"}`',
};

const log = (...a) => console.log(...a);
const t0 = performance.now();
const since = (t) => (performance.now() - t) / 1000;

// ---------------------------------------------------------------------------------------------------
// 1. Data

fs.mkdirSync(OUT, { recursive: true });
const people = makePeople();
const corpus = makeDocuments(SEEDS.corpus, DATA.corpusBytes, people);
const retain = makeDocuments(SEEDS.retain, DATA.retainBytes, people, new Set(corpus));
const task = makeTask(SEEDS.task, people, DATA.train, DATA.eval);
const jsonl = (rows) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
// Documents are separated by a blank line; a document may hold single newlines (its Q/A lines).
fs.writeFileSync(path.join(OUT, 'corpus.txt'), corpus.join('\n\n') + '\n');
fs.writeFileSync(path.join(OUT, 'retain.txt'), retain.join('\n\n') + '\n');
fs.writeFileSync(path.join(OUT, 'train.jsonl'), jsonl(task.train));
fs.writeFileSync(path.join(OUT, 'eval.jsonl'), jsonl(task.eval));
log(`data: corpus ${corpus.length} documents, retain ${retain.length}, train ${task.train.length}, eval ${task.eval.length}`);

// ---------------------------------------------------------------------------------------------------
// 2. Tokenizer

let t = performance.now();
const merges = trainBpe(corpus, NUM_MERGES);
if (merges.length !== NUM_MERGES) throw new Error(`the corpus gave only ${merges.length} merges`);
const tokJson = tokenizerJson(merges, [EOT]);
const eotId = tokJson.added_tokens[0].id;
// bos is <|endoftext|> too, as in GPT-2: every sequence starts the way documents start in pre-training.
tokJson.post_processor = {
  type: 'Sequence',
  processors: [
    tokJson.post_processor,
    {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: EOT, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: EOT, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { [EOT]: { id: EOT, ids: [eotId], tokens: [EOT] } },
    },
  ],
};
fs.writeFileSync(path.join(OUT, 'tokenizer.json'), JSON.stringify(tokJson) + '\n');
fs.writeFileSync(path.join(OUT, 'tokenizer_config.json'), JSON.stringify({
  tokenizer_class: 'PreTrainedTokenizerFast',
  bos_token: EOT, eos_token: EOT, pad_token: EOT, unk_token: null,
  add_bos_token: true, add_eos_token: false,
  model_max_length: MODEL.maxPositions,
  clean_up_tokenization_spaces: false,
}, null, 2) + '\n');

const tok = lk.loadTokenizer(OUT);
if (tok.vocabSize !== 1024 || tok.eosTokenId !== eotId || tok.bosTokenId !== eotId) throw new Error(`unexpected tokenizer: ${tok.vocabSize} tokens, eos ${tok.eosTokenId}`);
let corpusTokens = 0;
const stream = [];
for (const doc of corpus) {
  const ids = tok.encode(doc);
  if (ids[0] !== eotId || ids.slice(1).includes(eotId)) throw new Error('expected exactly one leading <|endoftext|>');
  if (tok.decode(ids, { skipSpecialTokens: true }) !== doc) throw new Error(`round trip failed: ${JSON.stringify(doc)}`);
  corpusTokens += ids.length - 1;
  stream.push(...ids);
}
stream.push(eotId);
const retainStream = [];
for (const doc of retain) retainStream.push(...tok.encode(doc));
retainStream.push(eotId);
log(`tokenizer: ${merges.length} merges, ${tok.vocabSize} tokens; corpus ${corpusTokens} tokens (${(Buffer.byteLength(corpus.join('')) / corpusTokens).toFixed(2)} bytes/token), round trip exact (${since(t).toFixed(1)} s)`);

const vocabSize = Math.ceil(tok.vocabSize / 64) * 64;
const headDim = MODEL.hidden / MODEL.heads;
const config = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  vocab_size: vocabSize,
  hidden_size: MODEL.hidden,
  intermediate_size: MODEL.intermediate,
  num_hidden_layers: MODEL.layers,
  num_attention_heads: MODEL.heads,
  num_key_value_heads: MODEL.kvHeads,
  head_dim: headDim,
  hidden_act: 'silu',
  max_position_embeddings: MODEL.maxPositions,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  rope_parameters: { rope_theta: 10000.0, rope_type: 'default' },
  tie_word_embeddings: true,
  attention_bias: false,
  attention_dropout: 0.0,
  mlp_bias: false,
  initializer_range: 0.02,
  bos_token_id: eotId,
  eos_token_id: eotId,
  pad_token_id: eotId,
  use_cache: true,
  dtype: 'bfloat16',
};
fs.writeFileSync(path.join(OUT, 'config.json'), JSON.stringify(config, null, 2) + '\n');

if (flag('--readme-only')) {
  // Re-renders README.md from build.json (after a change to its template), without training.
  const b = JSON.parse(fs.readFileSync(path.join(OUT, 'build.json'), 'utf8'));
  fs.writeFileSync(path.join(OUT, 'README.md'), readme(b));
  log(`README.md rewritten from ${path.join(OUT, 'build.json')}`);
  process.exit(0);
}
if (flag('--data-only')) {
  log(`data and tokenizer written to ${OUT}; model left as it was`);
  process.exit(0);
}

// ---------------------------------------------------------------------------------------------------
// 3. Random initialisation and pre-training (full fine-tuning)

const initDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-default-init-'));
let model;
try {
  fs.writeFileSync(path.join(initDir, 'config.json'), JSON.stringify({ ...config, dtype: 'float32' }));
  const weights = {};
  let seed = SEEDS.init * 1000;
  const normal = (name, shape) => (weights[name] = lk.randn(shape, { seed: seed++, std: 0.02 }));
  normal('model.embed_tokens.weight', [vocabSize, MODEL.hidden]);
  weights['model.norm.weight'] = lk.ones([MODEL.hidden]);
  const kv = MODEL.kvHeads * headDim, q = MODEL.heads * headDim;
  for (let l = 0; l < MODEL.layers; l++) {
    const p = `model.layers.${l}`;
    weights[`${p}.input_layernorm.weight`] = lk.ones([MODEL.hidden]);
    weights[`${p}.post_attention_layernorm.weight`] = lk.ones([MODEL.hidden]);
    normal(`${p}.self_attn.q_proj.weight`, [q, MODEL.hidden]);
    normal(`${p}.self_attn.k_proj.weight`, [kv, MODEL.hidden]);
    normal(`${p}.self_attn.v_proj.weight`, [kv, MODEL.hidden]);
    normal(`${p}.self_attn.o_proj.weight`, [MODEL.hidden, q]);
    normal(`${p}.mlp.gate_proj.weight`, [MODEL.intermediate, MODEL.hidden]);
    normal(`${p}.mlp.up_proj.weight`, [MODEL.intermediate, MODEL.hidden]);
    normal(`${p}.mlp.down_proj.weight`, [MODEL.hidden, MODEL.intermediate]);
  }
  lk.io.writeSafetensors(path.join(initDir, 'model.safetensors'), weights, { format: 'pt' });
  for (const w of Object.values(weights)) w.dispose();
  model = lk.loadModel(initDir);
} finally {
  fs.rmSync(initDir, { recursive: true, force: true });
}

const retainRows = streamRows(retainStream, PRETRAIN.seq);
/** Mean loss over the held-out corpus-style text, in rows of `seq` tokens. */
function retainLoss(m) {
  let sum = 0, n = 0;
  for (let i = 0; i < retainRows.length; i += 16) {
    const rows = retainRows.slice(i, i + 16);
    const ids = lk.tensor(BigInt64Array.from(rows.flat(), BigInt), [rows.length, PRETRAIN.seq]);
    const r = model.forward(ids);
    ids.dispose();
    sum += r.loss * r.tokens;
    n += r.tokens;
  }
  return sum / n;
}

model.requireFullGrad();
const params = model.parameters();
const numParams = params.reduce((s, p) => s + p.param.numel, 0);
// Weight decay on the matrices only, as is usual: not on the norms' gains.
const decay = params.filter((p) => p.param.ndim === 2), noDecay = params.filter((p) => p.param.ndim !== 2);
const optParams = [...decay, ...noDecay];
const opt = new lk.AdamW([
  { params: decay.map((p) => p.param), weightDecay: PRETRAIN.weightDecay },
  { params: noDecay.map((p) => p.param), weightDecay: 0 },
], { lr: PRETRAIN.lr, betas: PRETRAIN.betas });
log(`model: llama, ${MODEL.layers} layers, hidden ${MODEL.hidden}, ${MODEL.heads} heads (${MODEL.kvHeads} kv, head_dim ${headDim}), intermediate ${MODEL.intermediate}, vocab ${vocabSize}: ${numParams} parameters`);
const initialRetain = retainLoss(model);
log(`pre-training: ${PRETRAIN.steps} steps of ${PRETRAIN.batch} x ${PRETRAIN.seq} tokens, AdamW lr ${PRETRAIN.lr} (warm-up ${PRETRAIN.warmup}, cosine to ${PRETRAIN.floor}x), ` +
  `betas ${PRETRAIN.betas.join('/')}, weight decay ${PRETRAIN.weightDecay}, clip ${PRETRAIN.maxGradNorm}; held-out loss at start ${initialRetain.toFixed(3)} (ln V = ${Math.log(vocabSize).toFixed(3)})`);

const batches = new StreamBatches(stream, PRETRAIN.batch, PRETRAIN.seq, SEEDS.batches);
const curve = [];
t = performance.now();
let window = [];
for (let step = 0; step < PRETRAIN.steps; step++) {
  const lr = cosineLr(step, { peak: PRETRAIN.lr, warmup: PRETRAIN.warmup, total: PRETRAIN.steps, floor: PRETRAIN.floor });
  const ids = lk.tensor(batches.next(), [PRETRAIN.batch, PRETRAIN.seq]);
  model.zeroGrad();
  const { loss } = model.forwardBackward(ids);
  ids.dispose();
  if (!Number.isFinite(loss)) throw new Error(`pre-training step ${step + 1}: loss ${loss}`);
  const { gradNorm } = opt.step(optParams.map((p) => p.grad), { maxGradNorm: PRETRAIN.maxGradNorm, lr });
  window.push(loss);
  const last = step + 1 === PRETRAIN.steps;
  if ((step + 1) % 50 === 0 || last) {
    const mean = window.reduce((a, b) => a + b, 0) / window.length;
    window = [];
    const entry = { step: step + 1, trainLoss: +mean.toFixed(4), seconds: +since(t).toFixed(1) };
    if ((step + 1) % 250 === 0 || last) entry.heldOutLoss = +retainLoss(model).toFixed(4);
    curve.push(entry);
    const eta = (since(t) / (step + 1)) * (PRETRAIN.steps - step - 1);
    log(`  step ${String(step + 1).padStart(4)}  loss ${mean.toFixed(3)}${entry.heldOutLoss !== undefined ? `  held-out ${entry.heldOutLoss.toFixed(3)}` : ''}  ` +
      `lr ${lr.toExponential(2)}  |g| ${gradNorm.toFixed(2)}  ${((since(t) * 1000) / (step + 1)).toFixed(0)} ms/step  ${since(t).toFixed(0)} s (eta ${eta.toFixed(0)} s)`);
  }
}
const pretrainSeconds = since(t);
opt.dispose();

// Saved in bfloat16; everything below is measured on the saved weights, loaded as a user would.
const exported = model.exportWeights('bfloat16');
lk.io.writeSafetensors(path.join(OUT, 'model.safetensors'), exported, { format: 'pt' });
for (const w of Object.values(exported)) w.dispose();
model.dispose();

// ---------------------------------------------------------------------------------------------------
// 4. The base model on the task, and a LoRA sanity run

model = lk.loadModel(OUT);
const trainEx = lk.tokenize(lk.readJsonl(path.join(OUT, 'train.jsonl')), tok);
const evalEx = lk.tokenize(lk.readJsonl(path.join(OUT, 'eval.jsonl')), tok);
const base = {
  evalLoss: lk.evaluate(model, evalEx).loss,
  evalExactMatch: exactMatch(lk, model, evalEx),
  heldOutLoss: retainLoss(model),
};
log(`base model (bfloat16 weights): eval loss ${base.evalLoss.toFixed(3)}, eval exact match ${(100 * base.evalExactMatch).toFixed(1)}%, held-out corpus loss ${base.heldOutLoss.toFixed(3)}`);

t = performance.now();
lk.lora.addAdapter(model, { r: LORA.r, loraAlpha: LORA.loraAlpha, loraDropout: LORA.loraDropout, targetModules: LORA.targetModules, seed: SEEDS.lora });
const loraParams = model.parameters();
const loraOpt = new lk.AdamW(loraParams.map((p) => p.param), { lr: LORA.lr, weightDecay: 0 });
const exBatches = new ExampleBatches(trainEx, LORA.batch, eotId, SEEDS.loraBatches);
const loraCurve = [];
let evalSeconds = 0;
const measure = (step, trainLoss) => {
  const te = performance.now();
  const e = { step, evalLoss: +lk.evaluate(model, evalEx).loss.toFixed(4) };
  if (trainLoss !== undefined) e.trainLoss = +trainLoss.toFixed(4);
  loraCurve.push(e);
  evalSeconds += since(te);
  log(`  step ${String(step).padStart(3)}  ${trainLoss !== undefined ? `train ${trainLoss.toFixed(3)}  ` : ''}eval ${e.evalLoss.toFixed(3)}  ${since(t).toFixed(1)} s`);
};
log(`LoRA sanity run: r ${LORA.r}, alpha ${LORA.loraAlpha}, dropout ${LORA.loraDropout}, ${LORA.targetModules}, ${LORA.steps} steps of ${LORA.batch} examples, AdamW lr ${LORA.lr} (warm-up ${LORA.warmup}, cosine to ${LORA.floor}x), clip ${LORA.maxGradNorm}`);
window = [];
for (let step = 0; step < LORA.steps; step++) {
  const lr = cosineLr(step, { peak: LORA.lr, warmup: LORA.warmup, total: LORA.steps, floor: LORA.floor });
  const b = exBatches.next();
  const ids = lk.tensor(b.ids, b.shape), labels = lk.tensor(b.labels, b.shape);
  model.zeroGrad();
  const { loss } = model.forwardBackward(ids, { labels, train: true, seed: step + 1 });
  ids.dispose();
  labels.dispose();
  loraOpt.step(loraParams.map((p) => p.grad), { maxGradNorm: LORA.maxGradNorm, lr });
  window.push(loss);
  if ((step + 1) % 50 === 0) {
    measure(step + 1, window.reduce((a, c) => a + c, 0) / window.length);
    window = [];
  }
}
const loraSeconds = since(t);
const after = {
  evalLoss: loraCurve.at(-1).evalLoss,
  evalExactMatch: exactMatch(lk, model, evalEx),
  heldOutLoss: retainLoss(model),
};
loraOpt.dispose();
model.dispose();
const drop = 1 - after.evalLoss / base.evalLoss;
log(`after LoRA: eval loss ${base.evalLoss.toFixed(3)} -> ${after.evalLoss.toFixed(3)} (${(100 * drop).toFixed(0)}% lower), exact match ${(100 * base.evalExactMatch).toFixed(1)}% -> ${(100 * after.evalExactMatch).toFixed(1)}%, ` +
  `held-out corpus loss ${base.heldOutLoss.toFixed(3)} -> ${after.heldOutLoss.toFixed(3)}; ${loraSeconds.toFixed(1)} s (${(loraSeconds - evalSeconds).toFixed(1)} s training, ${evalSeconds.toFixed(1)} s in the 4 evals)`);

// ---------------------------------------------------------------------------------------------------
// 5. build.json and README.md

const sizes = Object.fromEntries(fs.readdirSync(OUT).filter((f) => f !== 'README.md' && f !== 'build.json').sort().map((f) => [f, fs.statSync(path.join(OUT, f)).size]));
const build = {
  generatedBy: 'scripts/build-default.mjs',
  seeds: SEEDS,
  data: { corpusDocuments: corpus.length, corpusBytes: Buffer.byteLength(corpus.join('\n\n')), corpusTokens, retainDocuments: retain.length, retainTokens: retainStream.length, train: task.train.length, eval: task.eval.length },
  tokenizer: { merges: merges.length, vocabSize: tok.vocabSize, eosTokenId: eotId, bosTokenId: eotId, padTokenId: eotId, addBosToken: true },
  model: { ...MODEL, headDim, vocabSize, parameters: numParams, savedDtype: 'bfloat16' },
  pretraining: { ...PRETRAIN, seconds: +pretrainSeconds.toFixed(1), initialHeldOutLoss: +initialRetain.toFixed(4), curve },
  base: roundAll(base),
  loraSanity: { ...LORA, seconds: +loraSeconds.toFixed(1), trainingSeconds: +(loraSeconds - evalSeconds).toFixed(1), curve: loraCurve, after: roundAll(after), evalLossDrop: +drop.toFixed(4) },
  sizes,
};
fs.writeFileSync(path.join(OUT, 'build.json'), JSON.stringify(build, null, 2) + '\n');
fs.writeFileSync(path.join(OUT, 'README.md'), readme(build));
const total = fs.readdirSync(OUT).reduce((s, f) => s + fs.statSync(path.join(OUT, f)).size, 0);
log(`wrote ${OUT}: ${(total / 1e6).toFixed(2)} MB in ${fs.readdirSync(OUT).length} files; ${since(t0).toFixed(0)} s in all`);

function roundAll(o) {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, +v.toFixed(4)]));
}

function readme(b) {
  const kb = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(2)} MB` : `${(n / 1e3).toFixed(1)} KB`);
  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  const rule = COLOURS.map((c) => `${c} → ${STORAGE_RULE[c]}`).join(', ');
  const pc = b.pretraining.curve;
  const pick = pc.filter((e) => e.heldOutLoss !== undefined || e.step === 50 || e.step === 100);
  return `# The default job's assets

What \`lorakit train\` with no arguments fine-tunes: a tiny Llama-architecture model pre-trained here on
an invented, templated English corpus, and a small question-answering task it has never seen.
Everything in this folder is written by \`node scripts/build-default.mjs\` (after
\`npm run build:gyp && npx tsc -p tsconfig.json\`) and is deterministic: the same script writes the
same files. Do not edit them by hand; change the script and run it again. These numbers are from the
run that wrote the files.

## Files

| file | what | size |
| --- | --- | --- |
${Object.entries(b.sizes).map(([f, n]) => `| \`${f}\` | ${DESCRIBE[f] ?? ''} | ${kb(n)} |`).join('\n')}
| \`build.json\` | every setting and number of the build, as JSON | |

## The world and the data

A valley of eight villages (Ashford, Brindle, Cobblemere, Dunhollow, Elmreach, Fernwick, Greystone,
Hazelby) and twenty-four people, each with a fixed village, trade, pet, age and favourite colour. The
corpus is ${b.data.corpusDocuments} short documents (${kb(b.data.corpusBytes)}, ${b.data.corpusTokens} tokens) drawn from a
dozen templates: profiles, market days, counting stories whose numbers add up, visits, working days,
pets, villages in their seasons, and Q/A lines about the fixed facts. Documents are separated by a blank
line. \`retain.txt\` is ${b.data.retainDocuments} more documents from the same templates under another seed, none of them in
the corpus (${b.data.retainTokens} tokens): measure forgetting on it.

The task is a rule the corpus never states: in this valley an object's colour decides the room it is
kept in (${rule}). Every line asks it in one form:

\`\`\`json
${JSON.stringify(task.train[0])}
\`\`\`

The ${COLOURS.length} colours × ${OBJECTS.length} objects × ${people.length} people give ${COLOURS.length * OBJECTS.length * people.length} questions; a seeded shuffle puts
${b.data.eval} in \`eval.jsonl\` and the next ${b.data.train} in \`train.jsonl\`, so no eval prompt is in train. A model
that has learned the rule answers held-out questions exactly; one that has not can at best guess among
the rooms. The loss is taken on the completion and the closing \`<|endoftext|>\` only.

## Tokenizer

Byte-level BPE in GPT-2's layout, trained on the corpus by the script's own trainer: 256 byte tokens,
${b.tokenizer.merges} merges, and \`<|endoftext|>\` (id ${b.tokenizer.eosTokenId}), which is the eos, pad and bos token:
\`add_bos_token\` is true, so every encoded text starts with it, as every document does in pre-training,
and \`tokenize()\` ends each prompt/completion example with it. ${b.tokenizer.vocabSize} tokens in all.

## Model

Llama (\`model_type: "llama"\`, with the config fields and weight names of transformers' LlamaForCausalLM): ${b.model.layers} layers, hidden
${b.model.hidden}, ${b.model.heads} attention heads of ${b.model.headDim} with ${b.model.kvHeads} key/value heads, SwiGLU MLP of ${b.model.intermediate},
RMSNorm eps 1e-5, RoPE theta 10000, ${b.model.maxPositions} positions, vocabulary ${b.model.vocabSize}, tied embeddings:
${(b.model.parameters / 1e6).toFixed(2)} M parameters, saved in bfloat16 (\`loadModel\` computes in float32).

Initialised from N(0, 0.02) (norms 1) with lorakit's \`randn\`, then pre-trained with full fine-tuning:
${b.pretraining.steps} steps of ${b.pretraining.batch} × ${b.pretraining.seq} tokens cut at random offsets from the corpus, AdamW lr ${b.pretraining.lr}
(warm-up ${b.pretraining.warmup} steps, cosine to ${b.pretraining.floor}×), betas ${b.pretraining.betas.join('/')}, weight decay ${b.pretraining.weightDecay} on the matrices,
gradient clipping at ${b.pretraining.maxGradNorm}. ${b.pretraining.seconds.toFixed(0)} s on this machine's CPU.

| step | train loss | held-out loss | seconds |
| --- | --- | --- | --- |
| 0 | | ${b.pretraining.initialHeldOutLoss.toFixed(3)} | 0 |
${pick.map((e) => `| ${e.step} | ${e.trainLoss.toFixed(3)} | ${e.heldOutLoss?.toFixed(3) ?? ''} | ${e.seconds.toFixed(0)} |`).join('\n')}

## Measured on the saved weights

| | base model | after the LoRA sanity run |
| --- | --- | --- |
| eval loss (completion tokens) | ${b.base.evalLoss.toFixed(3)} | ${b.loraSanity.after.evalLoss.toFixed(3)} |
| eval exact match (greedy, teacher-forced) | ${pct(b.base.evalExactMatch)} | ${pct(b.loraSanity.after.evalExactMatch)} |
| held-out corpus loss (\`retain.txt\`) | ${b.base.heldOutLoss.toFixed(3)} | ${b.loraSanity.after.heldOutLoss.toFixed(3)} |

The LoRA sanity run: \`lora.addAdapter(model, { r: ${b.loraSanity.r}, loraAlpha: ${b.loraSanity.loraAlpha}, loraDropout: ${b.loraSanity.loraDropout}, targetModules: '${b.loraSanity.targetModules}' })\`,
${b.loraSanity.steps} steps of ${b.loraSanity.batch} train examples (right-padded with \`<|endoftext|>\`, labels -100 on padding
and prompt), AdamW lr ${b.loraSanity.lr} with no weight decay (warm-up ${b.loraSanity.warmup}, cosine to ${b.loraSanity.floor}×), clipping at ${b.loraSanity.maxGradNorm}:
eval loss ${(100 * b.loraSanity.evalLossDrop).toFixed(b.loraSanity.evalLossDrop > 0.99 ? 2 : 0)}% lower, in ${b.loraSanity.seconds.toFixed(1)} s (${b.loraSanity.trainingSeconds.toFixed(1)} s of it training, the rest four evaluations).

| LoRA step | train loss | eval loss |
| --- | --- | --- |
| 0 | | ${b.base.evalLoss.toFixed(3)} |
${b.loraSanity.curve.map((e) => `| ${e.step} | ${e.trainLoss?.toFixed(3) ?? ''} | ${e.evalLoss.toFixed(3)} |`).join('\n')}
`;
}
