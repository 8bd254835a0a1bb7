import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { io, tensor } from '../lib';
import { train, type TrainOptions } from '../lib/train/trainer';
import { missingDevice, missingDeviceError } from './helpers/machine';

const LLAMA = path.join(__dirname, 'fixtures/peft/tiny-llama');
const CLI = path.resolve(__dirname, '../dist/cli/index.js');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'lorakit-train-'));

/** A learnable task: four cycles through 32 token ids, each starting at its own offset. */
function sequences(n = 240, len = 24): string {
  const f = path.join(tmp(), 'seq.jsonl');
  const lines = Array.from({ length: n }, (_, i) => JSON.stringify({ input_ids: Array.from({ length: len }, (_, j) => 20 + (((i % 4) * 8 + j) % 32)) }));
  fs.writeFileSync(f, `${lines.join('\n')}\n`);
  return f;
}

const base = (o: Partial<TrainOptions>): TrainOptions => ({
  model: LLAMA, data: sequences(), batchSize: 4, seqLen: 32, progress: 'none', out: tmp(), seed: 1, ...o,
});

const evalLosses = (r: { evals: { split: string; loss: number }[] }, split = 'heldout') => r.evals.filter((e) => e.split === split).map((e) => e.loss);

describe('training lowers the loss', () => {
  // A low-rank update of a frozen random model moves more slowly than full fine-tuning: each method
  // gets a bar it clears with room to spare.
  test.each([
    ['lora', { method: 'lora', lr: 1e-2, steps: 40, dropout: 0 }, 0.88],
    ['qlora', { method: 'qlora', lr: 1e-2, steps: 40, dropout: 0 }, 0.88],
    ['full', { method: 'full', lr: 3e-3, steps: 40 }, 0.6],
  ] as [string, Partial<TrainOptions>, number][])('%s: training and held-out loss fall on a learnable task', async (_name, o, bar) => {
    const r = await train(base({ ...o, evalEvery: 20 })).done;
    const ev = evalLosses(r);
    expect(ev.length).toBe(3);
    expect(ev[2]!).toBeLessThan(bar * ev[0]!);
    const steps = fs.readFileSync(r.metricsFile, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.type === 'step');
    expect(steps).toHaveLength(40);
    const first = steps.slice(0, 5).reduce((s, m) => s + m.loss, 0) / 5, last = steps.slice(-5).reduce((s, m) => s + m.loss, 0) / 5;
    expect(last).toBeLessThan(bar * first);
    expect(fs.existsSync(path.join(r.lastDir, o.method === 'full' ? 'model.safetensors' : 'adapter_model.safetensors'))).toBe(true);
  });
});

describe('checkpoints', () => {
  test.each(['lora', 'full'] as const)('%s: stopping and resuming ends with the same weights as an unbroken run, bit for bit', async (method) => {
    const data = sequences();
    const common = base({ method, data, steps: 8, lr: 5e-3, dropout: 0.1, gradAccum: 2, evalEvery: 4 });
    const whole = await train({ ...common, out: tmp() }).done;
    const outB = tmp();
    const h = train({ ...common, out: outB });
    h.on('step', (s) => {
      if (s.step === 3) h.stop();
    });
    const part = await h.done;
    expect(part.stopped).toBe(true);
    expect(part.steps).toBe(3);
    const resumed = await train({ model: '', data: '', resume: path.join(outB, 'checkpoint-3'), progress: 'none' }).done;
    expect(resumed.steps).toBe(8);
    const file = method === 'full' ? 'model.safetensors' : 'adapter_model.safetensors';
    expect(fs.readFileSync(path.join(resumed.lastDir, file)).equals(fs.readFileSync(path.join(whole.lastDir, file)))).toBe(true);
    const losses = (f: string) => fs.readFileSync(f, 'utf8').trim().split('\n').map((l) => JSON.parse(l)).filter((m) => m.type === 'step').map((m) => [m.step, m.loss]);
    expect(losses(resumed.metricsFile)).toEqual(losses(whole.metricsFile));
  });

  test('SIGINT saves a checkpoint and exits cleanly', async () => {
    const out = tmp();
    const child = spawn(process.execPath, [CLI, 'train', '--model', LLAMA, '--data', sequences(), '--steps', '500', '--batch-size', '4', '--seq-len', '32', '--progress', 'lines', '--out', out], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    let sent = false;
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      if (!sent && /step \d+\/500/.test(err)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    expect(sent).toBe(true);
    expect(code).toBe(130);
    expect(err).toMatch(/interrupted at step (\d+): saving a checkpoint/);
    const step = Number(/interrupted at step (\d+)/.exec(err)![1]);
    const ckpt = path.join(out, `checkpoint-${step}`);
    for (const f of ['trainer_state.json', 'optimizer.safetensors', 'adapter_model.safetensors', 'adapter_config.json']) expect(fs.existsSync(path.join(ckpt, f))).toBe(true);
    expect(JSON.parse(fs.readFileSync(path.join(ckpt, 'trainer_state.json'), 'utf8')).step).toBe(step);
    expect(fs.readdirSync(out).filter((f) => f.includes('.tmp'))).toEqual([]);
  });

  test('a NaN loss stops the run naming the step, and the last good checkpoint stays', async () => {
    // tiny-llama with a NaN embedding row for token 7, which only one example contains.
    const dir = tmp();
    fs.copyFileSync(path.join(LLAMA, 'config.json'), path.join(dir, 'config.json'));
    const src = io.openSafetensors(path.join(LLAMA, 'model.safetensors'));
    const weights = Object.fromEntries(src.keys().map((k) => [k, src.load(k)]));
    src.close();
    const emb = weights['model.embed_tokens.weight']!.toFloat32Array();
    emb.fill(NaN, 7 * 64, 8 * 64);
    weights['model.embed_tokens.weight'] = tensor(emb, [512, 64]);
    io.writeSafetensors(path.join(dir, 'model.safetensors'), weights);
    const data = path.join(tmp(), 'd.jsonl');
    const lines = Array.from({ length: 12 }, (_, i) => JSON.stringify({ input_ids: [30 + i, i === 5 ? 7 : 31 + i, 32 + i, 33 + i] }));
    fs.writeFileSync(data, lines.join('\n'));
    const out = tmp();
    await expect(train({ model: dir, data, batchSize: 1, seqLen: 4, pack: false, steps: 12, saveEvery: 1, evalSplit: 0, progress: 'none', out }).done).rejects.toThrow(/the loss is NaN at step (\d+); stopping/);
    const steps = fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((m) => m.type === 'step');
    const good = steps.length;
    expect(steps.every((m) => Number.isFinite(m.loss))).toBe(true);
    if (good > 0) {
      const state = JSON.parse(fs.readFileSync(path.join(out, `checkpoint-${good}`, 'trainer_state.json'), 'utf8'));
      expect(state.step).toBe(good);
    }
    expect(fs.existsSync(path.join(out, `checkpoint-${good + 1}`))).toBe(false);
  });

  test('an adapter trained on tiny-llama has exactly the keys and shapes of the PEFT adapter for it', async () => {
    const r = await train(base({ r: 8, alpha: 16, steps: 2 })).done;
    const ours = io.readSafetensorsHeader(path.join(r.lastDir, 'adapter_model.safetensors')).tensors;
    const peft = io.readSafetensorsHeader(path.join(LLAMA, 'adapter_model.safetensors')).tensors;
    expect([...ours.keys()].sort()).toEqual([...peft.keys()].sort());
    for (const [k, v] of peft) expect(ours.get(k)!.shape).toEqual(v.shape);
    const cfg = JSON.parse(fs.readFileSync(path.join(r.lastDir, 'adapter_config.json'), 'utf8'));
    expect(cfg).toMatchObject({ peft_type: 'LORA', r: 8, lora_alpha: 16, task_type: 'CAUSAL_LM' });
  });
});

describe('choosing what to adapt', () => {
  test.each([
    ['attention', ['k_proj', 'o_proj', 'q_proj', 'v_proj']],
    ['mlp', ['down_proj', 'gate_proj', 'up_proj']],
    ['q_proj,v_proj', ['q_proj', 'v_proj']],
    ['.*layers\\.1\\.self_attn\\.q_proj', ['q_proj']],
  ])('--target %s', async (target, modules) => {
    const r = await train(base({ target, steps: 1 })).done;
    const keys = [...io.readSafetensorsHeader(path.join(r.lastDir, 'adapter_model.safetensors')).tensors.keys()];
    expect([...new Set(keys.map((k) => k.split('.').slice(-3)[0]))].sort()).toEqual(modules);
  });
});

describe('the run stays responsive and reports bad input', () => {
  test('the event loop keeps turning while training', async () => {
    let last = Date.now(), worst = 0;
    const timer = setInterval(() => {
      const now = Date.now();
      worst = Math.max(worst, now - last);
      last = now;
    }, 5);
    try {
      await train(base({ steps: 10 })).done;
    } finally {
      clearInterval(timer);
    }
    // One micro-batch of this model is milliseconds; the loop must never be blocked for long.
    expect(worst).toBeLessThan(1000);
  });

  test('bad data and options', async () => {
    const empty = path.join(tmp(), 'empty.jsonl');
    fs.writeFileSync(empty, '\n\n');
    await expect(train(base({ data: empty, steps: 1 })).done).rejects.toThrow(/holds no examples/);
    const bad = path.join(tmp(), 'bad.jsonl');
    fs.writeFileSync(bad, '{"text": "ok"}\n{"text": 5}\n');
    await expect(train(base({ data: bad, steps: 1 })).done).rejects.toThrow(/bad\.jsonl:2/);
    const small = path.join(tmp(), 'small.jsonl');
    fs.writeFileSync(small, '{"input_ids": [1, 2, 3]}\n');
    await expect(train(base({ data: small, steps: 1, batchSize: 4, evalSplit: 0 })).done).rejects.toThrow(/batch/);
    await expect(train(base({ method: 'dora' as never })).done).rejects.toThrow(/'method' must be lora, qlora or full/);
    await expect(train(base({ device: missingDevice() as never })).done).rejects.toThrow(missingDeviceError());
    await expect(train(base({ steps: 0 })).done).rejects.toThrow(/'steps' must be an integer >= 1, got number 0/);
    await expect(train({ model: '', data: '', resume: tmp() }).done).rejects.toThrow(/is not a lorakit checkpoint/);
  });
});

describe('initialisation option', () => {
  test("--init pissa leaves the model's function unchanged at the start (like B = 0); --init false does not", async () => {
    const start = async (init: TrainOptions['init']) => {
      const res = await train(base({ init, steps: 1, lr: 1e-9, r: 4, alpha: 8, evalSplit: 0.1 })).done;
      return { first: evalLosses(res)[0]!, res };
    };
    const zero = await start(true), pissa = await start('pissa'), random = await start(false);
    expect(Math.abs(pissa.first - zero.first)).toBeLessThan(1e-4);
    expect(Math.abs(random.first - zero.first)).toBeGreaterThan(1e-3);
    const r = pissa.res;
    const cfg = JSON.parse(fs.readFileSync(path.join(r.lastDir, 'adapter_config.json'), 'utf8'));
    expect(cfg.init_lora_weights).toBe('pissa');
    await expect(train(base({ init: 'lora-ga' as never })).done).rejects.toThrow(/'init' must be true, false, gaussian or pissa/);
  });
});
