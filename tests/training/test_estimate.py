"""zhgpt estimate against reality: parameter counts and FLOPs against the built model, the activation formula
against a census of the tensors autograd really saves, and the total against the peak memory of a real
training step on CPU."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from zhgpt.training import estimate as E
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT, ModelConfig
from zhgpt.model.presets import PRESETS

SMALL = dict(n_layer=2, n_head=4, n_embd=128, block_size=64, vocab_size=512)


def _cfg(arch="gpt2", **kw):
    fields = dict(SMALL, arch=arch, **kw)
    if arch == "llama":
        fields.setdefault("bias", False)
    return ModelConfig(**fields)


def test_params_and_flops_match_the_model():
    for cfg in (_cfg(), _cfg("llama"), _cfg("llama", n_kv_head=2, qk_norm=True, tie_embeddings=False)):
        model = GPT(cfg)
        e = E.estimate(cfg, 4, precision="fp32")
        assert e.params == model.num_params()
        assert E.flops_per_token(cfg, cfg.block_size) == model.flops_per_token()
        assert e.weights == 4 * e.params and e.grads == 4 * e.params and e.optimizer == 8 * e.params
        matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        assert E.matmul_weights(cfg) == matmul


def _saved_bytes(cfg, B, T, mixed, math_attn=False):
    """Bytes of the distinct tensors autograd saves in one forward, split into activations and the
    16-bit weight copies autocast makes (parameters and buffers themselves excluded)."""
    torch.manual_seed(0)
    model = GPT(cfg).train()
    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    acts, copies = {}, {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in own:
            # autocast's cast of a weight is saved transposed by the matmul (grad_fn TBackward0)
            (copies if type(t.grad_fn).__name__ == "TBackward0" else acts)[ptr] = t.untyped_storage().nbytes()
        return t

    idx = torch.randint(0, cfg.vocab_size, (B, T))
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if mixed else contextlib.nullcontext()
    if math_attn:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        kernel = sdpa_kernel(SDPBackend.MATH)
    else:
        kernel = contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp, kernel:
        model(idx, idx)
    return sum(acts.values()), sum(copies.values())


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_optimizer_state_bytes_match_the_real_optimizer(arch, name):
    """The optimizer term against the state tensors zhgpt's optimizers really hold after a step."""
    from zhgpt.training.optim import build_optimizers
    cfg = _cfg(arch, **({"tie_embeddings": False} if arch == "llama" else {}))
    model = GPT(cfg)
    opt = build_optimizers(model, name, 1e-3, 0.1, (0.9, 0.95), "cpu")
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step(torch.amp.GradScaler(enabled=False))
    real = sum(t.numel() * t.element_size() for o in opt.parts for st in o.state.values()
               for t in st.values() if torch.is_tensor(t) and t.dim() > 0)
    assert E.optimizer_bytes(cfg, name) == real


@pytest.mark.parametrize("arch,mixed,extra,attention", [
    ("gpt2", False, {}, "flash"), ("gpt2", True, {}, "flash"),
    ("llama", False, {}, "flash"), ("llama", True, {}, "flash"),
    ("llama", True, {"n_kv_head": 2}, "flash"), ("llama", False, {"n_kv_head": 2, "qk_norm": True}, "flash"),
    ("llama", True, {"qk_norm": True}, "flash"),
    ("gpt2", False, {}, "math"), ("gpt2", True, {}, "math"),
])
def test_activation_formula_matches_saved_tensors(arch, mixed, extra, attention):
    cfg = _cfg(arch, **extra)
    B, T = 4, 64
    acts, copies = _saved_bytes(cfg, B, T, mixed, attention == "math")
    est = E.saved_activation_bytes(cfg, B, T, mixed, attention)
    # counted op by op, so it should be all but exact (scalars and int64 position ids are left out)
    assert est == pytest.approx(acts, rel=0.01), (est, acts)
    if mixed:
        assert copies == 2 * E.matmul_weights(cfg)
    # and it is linear in the batch: doubling B doubles the census
    if arch == "gpt2" and not mixed and attention == "flash":
        acts2, _ = _saved_bytes(cfg, 2 * B, T, mixed)
        assert E.saved_activation_bytes(cfg, 2 * B, T, mixed) == pytest.approx(acts2, rel=0.01)
        assert acts2 == pytest.approx(2 * acts, rel=0.01)


# One real training step (forward, backward, AdamW) in a fresh process. Peak RSS is read from
# /proc/self/status (VmHWM) after resetting it with /proc/self/clear_refs, so the import of torch and the
# kernel warm-up do not count. AdamW's m and v are created before the measured step, so it is the steady
# state a training run lives in (from the second step on they exist while activations are alive).
MEASURE = textwrap.dedent("""
    import gc, json, sys
    import torch
    torch.set_num_threads(1)
    from zhgpt.model.gpt import GPT, ModelConfig
    from zhgpt.training.optim import param_groups

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

    def reset_peak():
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def step(model, opt, B, T, V):
        x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
        logits, loss = model(x, y)        # the loop holds the logits through backward, as train.py does
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    B, T = int(sys.argv[1]), 128
    warm = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=64))
    step(warm, torch.optim.AdamW(warm.parameters()), 2, 16, 64)   # load kernels, start thread pools
    del warm
    reset_peak()
    base = status("VmRSS")
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=256, block_size=T, vocab_size=4096)
    model = GPT(cfg).train()
    opt = torch.optim.AdamW(param_groups(model, 0.1, muon=False)[1], lr=1e-3)
    for p in model.parameters():          # create AdamW's m and v without paying for a first real step
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    step(model, opt, B, T, cfg.vocab_size)
    print(json.dumps({"growth": status("VmHWM") - base}))
""")


def _measure(batches):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", MEASURE, str(b)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for b in batches]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        out.append(json.loads(stdout.strip().splitlines()[-1])["growth"])
    return out


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.slow
def test_estimate_matches_a_real_cpu_training_step():
    """4 layers x 256 hidden, vocab 4096, batch 4 and 8 x 128 tokens, fp32, AdamW. Measured when written
    (2-core CPU, torch 2.13): 119-123 MiB and 183-203 MiB peak growth vs 130 MiB and 195 MiB estimated.
    Tolerance +-35% on the total, and the extra memory of doubling the batch (activations only) must agree
    within 35% too, so a formula that forgot the logits (half of the activations here) or the optimizer
    fails."""
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=256, block_size=128, vocab_size=4096)
    m4, m8 = _measure([4, 8])
    e4 = E.estimate(cfg, 4, precision="fp32", optimizer="adamw")
    e8 = E.estimate(cfg, 8, precision="fp32", optimizer="adamw")
    print(f"measured {m4 / 2**20:.0f} / {m8 / 2**20:.0f} MiB, estimated {e4.total / 2**20:.0f} / "
          f"{e8.total / 2**20:.0f} MiB")
    assert e4.total == pytest.approx(m4, rel=0.35)
    assert e8.total == pytest.approx(m8, rel=0.35)
    assert m8 > m4
    assert e8.total - e4.total == pytest.approx(m8 - m4, rel=0.35)


def test_largest_batch_fits_and_next_does_not():
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=32000)
    mem = 24 * 2**30
    for ckpt in (False, True):
        b = E.largest_batch(cfg, 1024, mem, grad_checkpointing=ckpt)
        assert b >= 1
        fits = E.estimate(cfg, b, grad_checkpointing=ckpt).total
        over = E.estimate(cfg, b + 1, grad_checkpointing=ckpt).total
        assert fits <= mem * E.USABLE_FRACTION < over
    assert E.largest_batch(cfg, 1024, mem, grad_checkpointing=True) > E.largest_batch(cfg, 1024, mem)
    assert E.largest_batch(cfg, 1024, 2**30) == 0          # 1 GiB cannot hold 16 B/param of 110M params


def test_assumptions_in_numbers():
    cfg = ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=32000)
    fp32 = E.estimate(cfg, 8, precision="fp32")
    bf16 = E.estimate(cfg, 8, precision="bf16")
    q8 = E.estimate(cfg, 8, precision="bf16", optimizer="adamw8bit")
    ck = E.estimate(cfg, 8, precision="bf16", grad_checkpointing=True)
    assert bf16.weights == 4 * bf16.params + 2 * E.matmul_weights(cfg)   # fp32 master + 16-bit copies
    assert q8.optimizer == 2 * q8.params and bf16.optimizer == 8 * bf16.params
    assert bf16.activations < fp32.activations
    assert ck.total < bf16.total and ck.step_time_s == pytest.approx(bf16.step_time_s * 8 / 6)
    # tokens x (6N + 12LCT) FLOPs per token / (peak x MFU)
    e = E.estimate(cfg, 8, peak=989e12, mfu=0.4)
    assert e.step_time_s == pytest.approx(E.flops_per_token(cfg, 1024) * 8 * 1024 / (989e12 * 0.4))
    assert E.estimate(cfg, 8, peak=989e12, mfu=0.2).step_time_s == pytest.approx(2 * e.step_time_s)


def test_main_table_and_single_preset(capsys):
    ests = E.main(E.EstimateConfig())
    out = capsys.readouterr().out
    assert [e.name for e in ests] == list(PRESETS)
    for name in PRESETS:
        assert f"\n{name} " in out
    assert "activations" in out and "step time" in out
    assert ests[-1].params > 1.4e9                                    # xl
    ests = E.main(E.EstimateConfig(preset="small", memory="24GB", model={"arch": "llama"}, batch_size=4, seq_len=512,
                                   tokens_per_step=524288))
    out = capsys.readouterr().out
    assert ests[0].model.arch == "llama" and ests[0].seq_len == 512
    assert "largest" not in out and "fits in 24.00 GiB" in out and "batch" in out
    assert "256 micro-batches" in out


def test_time_comes_from_the_peak_training_uses_times_mfu(capsys, zhgpt_home):
    """Without flags: the peak mfu.peak_flops gives training (here: this CPU's measured and cached peak) and the
    CPU's default MFU; --mfu replaces the MFU, --device-tflops the peak, and the printed time follows."""
    import json
    from zhgpt.training.layout import cache_root
    from zhgpt.training.mfu import peak_flops
    peak, _ = peak_flops("cpu", torch.bfloat16, cache_root())      # measured once, cached for what follows
    key = next(iter(json.loads((cache_root() / "peak_flops.json").read_text())))
    [e] = E.main(E.EstimateConfig(preset="cpu-tiny"))
    out = capsys.readouterr().out
    mfu = E.DEFAULT_MFU["cpu"][0]
    assert f"MFU {mfu:.0%} (cpu default, measured" in out and "measured: " in out and "peak_flops.json" in out
    assert e.step_time_s == pytest.approx(e.flops_per_token * e.tokens_per_step / (peak * mfu))
    assert key.endswith("bfloat16")
    [half] = E.main(E.EstimateConfig(preset="cpu-tiny", mfu=2 * mfu))
    out = capsys.readouterr().out
    assert half.step_time_s == pytest.approx(e.step_time_s / 2) and "(--mfu)" in out
    [gpu] = E.main(E.EstimateConfig(preset="cpu-tiny", device_tflops=989, mfu=0.4))
    out = capsys.readouterr().out
    assert "peak 989 TFLOP/s (--device-tflops) x MFU 40% (--mfu)" in out
    assert gpu.step_time_s == pytest.approx(gpu.flops_per_token * gpu.tokens_per_step / (989e12 * 0.4))
    from zhgpt.core import fmt
    assert f"1B tokens in {fmt.estimate_time(gpu.step_time_s * 1e9 / gpu.tokens_per_step)}" in out


@pytest.mark.parametrize("bad", ["0", "-0.1", "1.5"])
def test_bad_mfu_is_a_one_line_error(bad):
    with pytest.raises(ZhgptError, match="--mfu must be a fraction in"):
        E.EstimateConfig(mfu=float(bad))
    proc = subprocess.run([sys.executable, "-m", "zhgpt", "estimate", "--preset", "cpu-tiny", "--mfu", bad],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("zhgpt: error: --mfu must be a fraction")
    assert "Traceback" not in proc.stderr


def test_errors():
    with pytest.raises(ZhgptError, match="memory size"):
        E.EstimateConfig(memory="24 gigs")
    with pytest.raises(ZhgptError, match="exceeds the model's block_size"):
        E.main(E.EstimateConfig(preset="cpu-tiny", seq_len=4096))
    with pytest.raises(ZhgptError, match="must be positive"):
        E.EstimateConfig(batch_size=0)
