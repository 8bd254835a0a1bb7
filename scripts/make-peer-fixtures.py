#!/usr/bin/env python3
"""
Makes (or checks) the peer fixtures in test/fixtures/peft: what PyTorch, transformers, PEFT and
bitsandbytes compute, for lorakit's tests to compare against. See test/fixtures/peft/README.md.

  python3 scripts/make-peer-fixtures.py --out /tmp/peft          # make every part into /tmp/peft
  python3 scripts/make-peer-fixtures.py --out /tmp/peft --only adamw,tiny-qwen2
  python3 scripts/make-peer-fixtures.py --check                  # recompute from the committed inputs, compare

Making a part writes its inputs (a tiny random model, an adapter, token ids, a tensor to quantize) and then
its expected outputs. --check never makes inputs: it reads the committed inputs of each part found in
--fixtures (default test/fixtures/peft), recomputes the outputs with the installed libraries and compares
them with the committed ones (exactly for token ids and quantized bytes; 1e-5 relative for logits and
losses, 1e-4 for gradients, as the tests' own tolerances). It exits 1 when any part differs; parts not
committed yet are listed and skipped.

What each part needs: adamw, torch only; tiny-gpt2, tiny-llama, tiny-qwen2, tiny-mistral, transformers and
PEFT; bnb-quantize-4bit and tiny-llama-bnb4, bitsandbytes and a CUDA device; lorakit-adapter-*, PEFT and node
with lorakit's dist/ built (`npm run build`). A missing library stops the run naming it, before anything is
written.
"""
import argparse
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'test', 'fixtures', 'peft')

LOGIT_TOL = 1e-5
GRAD_TOL = 1e-4
SEED = 20261203
BATCH, SEQ = 2, 24
LLAMA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']


class Missing(Exception):
    pass


def need(*names):
    """Imports the named modules, or raises Missing naming every one that is not installed."""
    mods, missing = [], []
    for n in names:
        try:
            mods.append(importlib.import_module(n))
        except ImportError:
            missing.append(n)
    if missing:
        raise Missing(', '.join(missing))
    return mods if len(mods) > 1 else mods[0]


def versions():
    out = {}
    for n in ('torch', 'transformers', 'peft', 'bitsandbytes', 'safetensors'):
        try:
            out[n] = importlib.import_module(n).__version__
        except ImportError:
            pass
    return out


def dtype_kw(torch):
    # transformers 5 takes dtype=, 4.x torch_dtype= (and ignores a keyword it does not know).
    transformers = need('transformers')
    major = int(transformers.__version__.split('.')[0])
    return {'dtype': torch.float32} if major >= 5 else {'torch_dtype': torch.float32}


def write_json(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f, indent=1)
        f.write('\n')


def save_tensors(path, tensors):
    st = need('safetensors.torch')
    st.save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path)


def load_tensors(path):
    st = need('safetensors.torch')
    return st.load_file(path)


# ---------------------------------------------------------------------------------------------- comparing

class Report:
    def __init__(self):
        self.failures = []

    def rel(self, part, key, got, want, tol, norm=False):
        torch = need('torch')
        got, want = got.double().flatten(), want.double().flatten()
        if got.shape != want.shape:
            self.failures.append(f'{part}: {key}: {tuple(got.shape)} elements, committed {tuple(want.shape)}')
            return
        if norm:
            err = (got - want).norm().item() / max(want.norm().item(), 1e-30)
        else:
            err = (got - want).abs().max().item() / max(want.abs().max().item(), 1e-30)
        ok = err <= tol and bool(torch.isfinite(got).all())
        print(f'  {"ok  " if ok else "DIFF"} {key}: relative error {err:.2e} (tolerance {tol:g})')
        if not ok:
            self.failures.append(f'{part}: {key}: relative error {err:.2e} > {tol:g}')

    def exact(self, part, key, got, want):
        ok = got.shape == want.shape and bool((got.cpu() == want.cpu()).all())
        print(f'  {"ok  " if ok else "DIFF"} {key}: {"identical" if ok else "differs"}')
        if not ok:
            self.failures.append(f'{part}: {key} differs from the committed bytes')

    def keys(self, part, got, want):
        if set(got) != set(want):
            self.failures.append(f'{part}: keys differ: only made {sorted(set(got) - set(want))[:4]}, only committed {sorted(set(want) - set(got))[:4]}')


def compare(report, part, made, committed):
    """Compares a freshly computed expected.safetensors dict with the committed one, key by key."""
    report.keys(part, made, committed)
    for k in sorted(set(made) & set(committed)):
        m, c = made[k], committed[k]
        if not m.is_floating_point():
            report.exact(part, k, m, c)
        elif k.startswith('grad.') or '.grad' in k:
            report.rel(part, k, m, c, GRAD_TOL, norm=True)
        else:
            report.rel(part, k, m, c, LOGIT_TOL)


# ------------------------------------------------------------------------------------ causal LM fixtures

MODELS = {
    # The two committed ones, as their config.json and fixture.json describe them.
    'tiny-gpt2': dict(
        config=lambda t: t.GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4, tie_word_embeddings=True),
        lora=dict(r=4, lora_alpha=8, target_modules=['c_attn', 'c_proj', 'c_fc'], use_rslora=False, fan_in_fan_out=True),
        note='GPT-2 architecture, LoRA on every linear layer (Conv1D, fan_in_fan_out)',
        perturb=False,
    ),
    'tiny-llama': dict(
        config=lambda t: t.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
                                       tie_word_embeddings=False),
        lora=dict(r=8, lora_alpha=16, target_modules=LLAMA_TARGETS, use_rslora=True),
        note='Llama architecture (RMSNorm, RoPE, SwiGLU, grouped-query attention), rsLoRA scaling alpha/sqrt(r)',
        perturb=False,
    ),
    # New: q/k/v biases, a tied head and a large RoPE base; biases and norm weights are drawn away from
    # transformers' zero/one initialisation so that a model ignoring them fails.
    'tiny-qwen2': dict(
        config=lambda t: t.Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=1000000.0,
                                       tie_word_embeddings=True, use_sliding_window=False),
        lora=dict(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS, use_rslora=False),
        note='Qwen2 (q/k/v biases, tied embeddings, RoPE theta 1e6, 4 heads / 2 kv heads), LoRA r=4 alpha=8 on all seven projections',
        perturb=True,
    ),
    # New: one key/value head, head_dim apart from hidden/heads, no sliding window (lorakit refuses one
    # shorter than the context).
    'tiny-mistral': dict(
        config=lambda t: t.MistralConfig(vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=1, head_dim=24, max_position_embeddings=64, rms_norm_eps=1e-5,
                                         rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False),
        lora=dict(r=4, lora_alpha=8, target_modules=LLAMA_TARGETS, use_rslora=True),
        note='Mistral (4 heads of 24 on a 64 hidden size, 1 kv head, eps 1e-5, theta 1e6, sliding_window null), rsLoRA r=4 alpha=8',
        perturb=True,
    ),
}


def make_model(part, spec, out):
    torch, transformers, peft = need('torch', 'transformers', 'peft')
    torch.manual_seed(SEED)
    model = transformers.AutoModelForCausalLM.from_config(spec['config'](transformers), **dtype_kw(torch))
    if spec['perturb']:
        g = torch.Generator().manual_seed(SEED + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith('.bias'):
                    p.copy_(0.5 * torch.randn(p.shape, generator=g))
                elif 'norm' in name:
                    p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(out, safe_serialization=True)
    lora = peft.LoraConfig(lora_dropout=0.0, bias='none', init_lora_weights=False, **spec['lora'])
    peft.get_peft_model(model, lora).save_pretrained(out)
    readme = os.path.join(out, 'README.md')  # PEFT's model card
    if os.path.exists(readme):
        os.remove(readme)
    ids = torch.randint(0, model.config.vocab_size, (BATCH, SEQ), generator=torch.Generator().manual_seed(SEED + 2))
    save_tensors(os.path.join(out, 'input_ids.tmp.safetensors'), {'input_ids': ids})
    fixture = {'note': spec['note'], 'targets': spec['lora']['target_modules'], 'r': spec['lora']['r'], 'alpha': spec['lora']['lora_alpha'],
               'use_rslora': spec['lora']['use_rslora'], 'loss': 'mean next-token cross-entropy over both rows (labels = input_ids, shifted inside the model)',
               'dropout': 0.0, 'dtype': 'float32', 'seed': SEED, 'generated_by': versions()}
    write_json(os.path.join(out, 'fixture.json'), fixture)


def model_expected(folder, ids):
    """Base, adapter and merged logits and losses, and every LoRA gradient, for the model and adapter in `folder`."""
    torch, transformers, peft = need('torch', 'transformers', 'peft')
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, **dtype_kw(torch))
    model.eval()
    out = {'input_ids': ids}
    with torch.no_grad():
        r = model(input_ids=ids, labels=ids)
    out['base_logits'], out['base_loss'] = r.logits, r.loss.reshape(1)
    pm = peft.PeftModel.from_pretrained(model, folder, is_trainable=True)
    pm.eval()  # dropout is 0 anyway
    r = pm(input_ids=ids, labels=ids)
    r.loss.backward()
    out['lora_logits'], out['lora_loss'] = r.logits.detach(), r.loss.detach().reshape(1)
    for name, p in pm.named_parameters():
        if p.requires_grad and p.grad is not None:
            out[f'grad.{name}'] = p.grad
    merged = pm.merge_and_unload()
    with torch.no_grad():
        out['merged_logits'] = merged(input_ids=ids).logits
    return out


def run_model(part, out, fixtures, check, report):
    spec = MODELS[part]
    if check:
        folder = os.path.join(fixtures, part)
        committed = load_tensors(os.path.join(folder, 'expected.safetensors'))
        compare(report, part, model_expected(folder, committed['input_ids']), committed)
        return
    folder = os.path.join(out, part)
    os.makedirs(folder, exist_ok=True)
    make_model(part, spec, folder)
    tmp = os.path.join(folder, 'input_ids.tmp.safetensors')
    ids = load_tensors(tmp)['input_ids']
    os.remove(tmp)
    save_tensors(os.path.join(folder, 'expected.safetensors'), model_expected(folder, ids))


# ---------------------------------------------------------------------------------------------- AdamW

ADAMW = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
ADAMW_STEPS = 6


def adamw_expected(inits, grads):
    torch = need('torch')
    params = [torch.nn.Parameter(p.clone()) for p in inits]
    opt = torch.optim.AdamW(params, **ADAMW)
    for step in range(ADAMW_STEPS):
        for p, g in zip(params, grads):
            p.grad = g[step].clone()
        opt.step()
    out = {}
    for i, p in enumerate(params):
        out[f'p{i}.init'] = inits[i]
        for step in range(ADAMW_STEPS):
            out[f'p{i}.grad{step}'] = grads[i][step]
        out[f'p{i}.final'] = p.detach()
        out[f'p{i}.exp_avg'] = opt.state[p]['exp_avg']
        out[f'p{i}.exp_avg_sq'] = opt.state[p]['exp_avg_sq']
    return out


def run_adamw(part, out, fixtures, check, report):
    torch = need('torch')
    if check:
        committed = load_tensors(os.path.join(fixtures, part, 'expected.safetensors'))
        n = len({k.split('.')[0] for k in committed})
        inits = [committed[f'p{i}.init'] for i in range(n)]
        grads = [[committed[f'p{i}.grad{s}'] for s in range(ADAMW_STEPS)] for i in range(n)]
        compare(report, part, adamw_expected(inits, grads), committed)
        return
    g = torch.Generator().manual_seed(SEED)
    shapes = [(7, 5), (13,)]
    inits = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for _ in range(ADAMW_STEPS)] for s in shapes]
    folder = os.path.join(out, part)
    os.makedirs(folder, exist_ok=True)
    save_tensors(os.path.join(folder, 'expected.safetensors'), adamw_expected(inits, grads))
    write_json(os.path.join(folder, 'fixture.json'), {
        'optimizer': 'torch.optim.AdamW', 'lr': ADAMW['lr'], 'betas': list(ADAMW['betas']), 'eps': ADAMW['eps'],
        'weight_decay': ADAMW['weight_decay'], 'steps': ADAMW_STEPS, 'seed': SEED, 'generated_by': versions(),
        'note': 'decoupled weight decay: p -= lr*wd*p before the Adam update; bias-corrected moments'})


# ----------------------------------------------------------------------------------------- bitsandbytes

QUANT_VARIANTS = [('nf4', False), ('nf4', True), ('fp4', False), ('fp4', True)]
QUANT_BLOCK = 64


def cuda():
    torch = need('torch')
    if not torch.cuda.is_available():
        raise Missing('a CUDA device (bitsandbytes 4-bit quantization runs there)')
    return torch.device('cuda')


def quantize_expected(x):
    """bitsandbytes' quantize_4bit of x in every variant: packed bytes, the quantization state, the dequantized values."""
    torch, F = need('torch', 'bitsandbytes.functional')
    dev = cuda()
    out = {'input': x}
    for qt, dq in QUANT_VARIANTS:
        p = f'{qt}{".double_quant" if dq else ""}'
        packed, state = F.quantize_4bit(x.to(dev), blocksize=QUANT_BLOCK, quant_type=qt, compress_statistics=dq)
        out[f'{p}.packed'] = packed.flatten()
        out[f'{p}.code'] = state.code.float()
        out[f'{p}.dequantized'] = F.dequantize_4bit(packed, state).float()
        if dq:
            # The block scales quantized once more: 8-bit codes of (absmax - offset), per 256 blocks a float32 scale.
            out[f'{p}.absmax'] = state.absmax
            out[f'{p}.offset'] = state.offset.float().reshape(1)
            out[f'{p}.nested_absmax'] = state.state2.absmax.float()
            out[f'{p}.nested_code'] = state.state2.code.float()
        else:
            out[f'{p}.absmax'] = state.absmax.float()
    return out


def run_quantize(part, out, fixtures, check, report):
    torch = need('torch')
    need('bitsandbytes')
    if check:
        committed = load_tensors(os.path.join(fixtures, part, 'expected.safetensors'))
        made = quantize_expected(committed['input'])
        report.keys(part, made, committed)
        for k in sorted(set(made) & set(committed)):
            # Bytes and scales are bitsandbytes' own: they must come back identical.
            report.exact(part, k, made[k].cpu(), committed[k])
        return
    g = torch.Generator().manual_seed(SEED)
    # 1000 values: 15 full blocks of 64 and a partial one; a few large ones so blocks differ in scale.
    x = torch.randn(1000, generator=g)
    x[::97] *= 8
    folder = os.path.join(out, part)
    os.makedirs(folder, exist_ok=True)
    save_tensors(os.path.join(folder, 'expected.safetensors'), quantize_expected(x))
    write_json(os.path.join(folder, 'fixture.json'), {
        'function': 'bitsandbytes.functional.quantize_4bit / dequantize_4bit', 'blocksize': QUANT_BLOCK,
        'variants': [{'quant_type': qt, 'compress_statistics': dq} for qt, dq in QUANT_VARIANTS], 'seed': SEED, 'generated_by': versions()})


def bnb4_expected(folder, ids):
    torch, transformers, bnb = need('torch', 'transformers', 'bitsandbytes')
    dev = cuda()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, device_map={'': dev.index or 0}, **dtype_kw(torch))
    model.eval()
    with torch.no_grad():
        r = model(input_ids=ids.to(dev), labels=ids.to(dev))
    out = {'input_ids': ids, 'logits': r.logits.float().cpu(), 'loss': r.loss.float().reshape(1).cpu()}
    for name, m in model.named_modules():
        if isinstance(m, bnb.nn.Linear4bit):
            out[f'dequantized.{name}.weight'] = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float().cpu()
    return out


def run_bnb4(part, out, fixtures, check, report):
    torch, transformers = need('torch', 'transformers')
    need('bitsandbytes')
    dev = cuda()
    if check:
        folder = os.path.join(fixtures, part)
        committed = load_tensors(os.path.join(folder, 'expected.safetensors'))
        compare(report, part, bnb4_expected(folder, committed['input_ids']), committed)
        return
    # tiny-llama quantized on load (NF4, double quantization, float32 compute), saved as bitsandbytes saves it.
    src = os.path.join(out, 'tiny-llama') if os.path.exists(os.path.join(out, 'tiny-llama', 'model.safetensors')) else os.path.join(FIXTURES, 'tiny-llama')
    q = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True,
                                        bnb_4bit_compute_dtype=torch.float32, bnb_4bit_quant_storage=torch.uint8)
    model = transformers.AutoModelForCausalLM.from_pretrained(src, quantization_config=q, device_map={'': dev.index or 0}, **dtype_kw(torch))
    folder = os.path.join(out, part)
    model.save_pretrained(folder, safe_serialization=True)
    ids = load_tensors(os.path.join(src, 'expected.safetensors'))['input_ids']
    save_tensors(os.path.join(folder, 'expected.safetensors'), bnb4_expected(folder, ids))
    write_json(os.path.join(folder, 'fixture.json'), {
        'source': 'tiny-llama', 'quantization': 'BitsAndBytesConfig(load_in_4bit, nf4, double quant, compute float32, storage uint8)',
        'expected': 'logits and loss of the quantized model on tiny-llama input_ids; dequantized.<module>.weight from bitsandbytes',
        'generated_by': versions()})


# ----------------------------------------------------------------------------- PEFT reading lorakit's files

LORAKIT_ADAPTERS = {
    # rank_pattern and alpha_pattern too: PEFT must read lorakit's per-module ranks and scales as lorakit does.
    'lorakit-adapter-llama': dict(base='tiny-llama', options=dict(r=4, loraAlpha=8, targetModules=LLAMA_TARGETS, rankPattern={'o_proj': 2},
                                                                  alphaPattern={'down_proj': 4}, initLoraWeights=False, loraDropout=0, seed=7)),
    'lorakit-adapter-gpt2': dict(base='tiny-gpt2', options=dict(r=4, loraAlpha=16, targetModules=['c_attn', 'c_proj', 'c_fc'], useRslora=True,
                                                                initLoraWeights=False, loraDropout=0, seed=8)),
}

NODE_SAVE = """
const [dist, base, out, options] = process.argv.slice(1);
const lk = require(dist);
const model = lk.loadModel(base);
lk.lora.addAdapter(model, JSON.parse(options));
lk.lora.saveAdapter(model, out);
model.dispose();
"""


def lorakit_expected(folder, base, ids):
    torch, transformers, peft = need('torch', 'transformers', 'peft')
    model = transformers.AutoModelForCausalLM.from_pretrained(base, **dtype_kw(torch))
    pm = peft.PeftModel.from_pretrained(model, folder)
    pm.eval()
    with torch.no_grad():
        r = pm(input_ids=ids, labels=ids)
        out = {'input_ids': ids, 'peft_logits': r.logits, 'peft_loss': r.loss.reshape(1)}
        out['merged_logits'] = pm.merge_and_unload()(input_ids=ids).logits
    return out


def run_lorakit(part, out, fixtures, check, report):
    need('torch', 'transformers', 'peft')
    spec = LORAKIT_ADAPTERS[part]
    base = os.path.join(fixtures if check else (out if os.path.exists(os.path.join(out, spec['base'], 'model.safetensors')) else FIXTURES), spec['base'])
    ids = load_tensors(os.path.join(base, 'expected.safetensors'))['input_ids']
    if check:
        folder = os.path.join(fixtures, part)
        compare(report, part, lorakit_expected(folder, base, ids), load_tensors(os.path.join(folder, 'expected.safetensors')))
        return
    dist = os.path.join(ROOT, 'dist', 'index.js')
    node = shutil.which('node')
    if node is None or not os.path.exists(dist):
        raise Missing('node and lorakit\'s dist/ (run `npm run build`)')
    folder = os.path.join(out, part)
    os.makedirs(folder, exist_ok=True)
    subprocess.run([node, '-e', NODE_SAVE, dist, base, folder, json.dumps(spec['options'])], check=True)
    save_tensors(os.path.join(folder, 'expected.safetensors'), lorakit_expected(folder, base, ids))
    write_json(os.path.join(folder, 'fixture.json'), {
        'base': spec['base'], 'written_by': 'lorakit addAdapter + saveAdapter', 'lorakit_options': spec['options'],
        'expected': 'PEFT PeftModel.from_pretrained on this folder: logits and loss on the base fixture\'s input_ids, and after merge_and_unload',
        'generated_by': versions()})


# ------------------------------------------------------------------------------------------------ main

PARTS = {
    'tiny-gpt2': run_model, 'tiny-llama': run_model, 'tiny-qwen2': run_model, 'tiny-mistral': run_model, 'adamw': run_adamw,
    'bnb-quantize-4bit': run_quantize, 'tiny-llama-bnb4': run_bnb4,
    'lorakit-adapter-llama': run_lorakit, 'lorakit-adapter-gpt2': run_lorakit,
}
NEEDS = {
    'tiny-gpt2': ('torch', 'transformers', 'peft', 'safetensors'), 'tiny-llama': ('torch', 'transformers', 'peft', 'safetensors'),
    'tiny-qwen2': ('torch', 'transformers', 'peft', 'safetensors'), 'tiny-mistral': ('torch', 'transformers', 'peft', 'safetensors'),
    'adamw': ('torch', 'safetensors'), 'bnb-quantize-4bit': ('torch', 'bitsandbytes', 'safetensors'),
    'tiny-llama-bnb4': ('torch', 'transformers', 'bitsandbytes', 'safetensors'),
    'lorakit-adapter-llama': ('torch', 'transformers', 'peft', 'safetensors'), 'lorakit-adapter-gpt2': ('torch', 'transformers', 'peft', 'safetensors'),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument('--out', help='folder to make the fixtures in (one subfolder per part)')
    mode.add_argument('--check', action='store_true', help='recompute from the committed inputs and compare')
    ap.add_argument('--fixtures', default=FIXTURES, help='the committed fixtures (default: test/fixtures/peft)')
    ap.add_argument('--only', help=f'comma-separated parts (default: all): {", ".join(PARTS)}')
    args = ap.parse_args(argv)
    parts = list(PARTS) if not args.only else [p.strip() for p in args.only.split(',') if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f'unknown part(s) {", ".join(unknown)}; parts: {", ".join(PARTS)}')
    if args.check:
        absent = [p for p in parts if not os.path.exists(os.path.join(args.fixtures, p, 'expected.safetensors'))]
        for p in absent:
            print(f'{p}: not committed in {args.fixtures} yet; skipped')
        parts = [p for p in parts if p not in absent]
    # Every library the chosen parts need, before anything is made: a missing one stops the run here.
    missing = sorted({n for p in parts for n in NEEDS[p] if importlib.util.find_spec(n) is None})
    if missing:
        print(f'make-peer-fixtures: {", ".join(missing)} not installed; the parts {", ".join(p for p in parts if set(NEEDS[p]) & set(missing))} '
              f'need {"them" if len(missing) > 1 else "it"} (pip install {" ".join(missing)}), or choose others with --only', file=sys.stderr)
        return 2
    report = Report()
    out = args.out
    if out:
        os.makedirs(out, exist_ok=True)
    for p in parts:
        print(f'{p}:')
        try:
            PARTS[p](p, out, args.fixtures, args.check, report)
        except Missing as e:
            print(f'make-peer-fixtures: {p} needs {e}', file=sys.stderr)
            return 2
    if report.failures:
        print(f'\n{len(report.failures)} difference(s):', file=sys.stderr)
        for f in report.failures:
            print(f'  {f}', file=sys.stderr)
        return 1
    print('all parts match' if args.check else f'made {", ".join(parts)} in {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
