"""Optimizers: which parameters Muon gets, the update it makes, fallbacks and refusals."""
import pytest
import torch

from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT, ModelConfig
from zhgpt.training.optim import build_optimizers, param_groups
from zhgpt.training.train import resolve_config

CFG = dict(vocab_size=320, block_size=32, n_layer=2, n_head=4, n_embd=64)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_muon_takes_the_block_matrices_and_adamw_the_rest(arch):
    model = GPT(ModelConfig(arch=arch, **CFG, **({"tie_embeddings": False} if arch == "llama" else {})))
    muon, adam = param_groups(model, 0.1, muon=True)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon for p in g["params"]}
    in_adam = {names[id(p)]: g["weight_decay"] for g in adam for p in g["params"]}
    assert in_muon and all(n.startswith("transformer.h.") and model.get_parameter(n).dim() == 2 for n in in_muon)
    # every parameter is optimised exactly once
    assert sorted(in_muon | set(in_adam)) == sorted(names.values())
    assert not in_muon & set(in_adam)
    assert in_adam["transformer.wte.weight"] == 0.0            # embeddings: AdamW, no decay
    if arch == "llama":
        assert in_adam["lm_head.weight"] == 0.1                 # an untied output layer: AdamW, decayed
    else:
        assert all(in_adam[n] == 0.0 for n in in_adam if n.endswith(".bias"))


def test_muon_step_orthogonalises_the_update():
    """One Muon step on a matrix moves it by lr * 0.2 * sqrt(max(A, B)) * (nearly orthogonal matrix):
    the update's singular values are all close to each other, whatever the gradient's spread."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CFG))
    opt = build_optimizers(model, "muon", lr=1e-2, weight_decay=0.0, betas=(0.9, 0.95), device_type="cpu")
    w = model.transformer.h[0].mlp.c_fc.weight
    before = w.detach().clone()
    u, _ = torch.linalg.qr(torch.randn(w.shape[0], 4))
    v, _ = torch.linalg.qr(torch.randn(w.shape[1], 4))
    g = u @ torch.diag(torch.tensor([1.0, 0.5, 0.2, 0.1])) @ v.T      # rank 4, singular values 10:1 apart
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    w.grad = g
    opt.step(torch.amp.GradScaler(enabled=False))
    s = torch.linalg.svdvals((before - w.detach()).double())
    scale = 1e-2 * 0.2 * max(w.shape) ** 0.5     # match_rms_adamw: lr * 0.2 * sqrt(max(A, B))
    # Newton-Schulz maps the singular values into roughly [0.5, 1.5] (bf16 iterations): a 10:1 spread
    # shrinks below 3:1 (the other directions get only bf16 rounding noise, amplified by the iterations).
    assert 0.3 * scale < s[3] <= s[0] < 1.6 * scale
    assert s[0] / s[3] < 3


def test_adamw8bit_falls_back_to_adamw_on_cpu(capsys):
    model = GPT(ModelConfig(**CFG))
    opt = build_optimizers(model, "adamw8bit", 1e-3, 0.1, (0.9, 0.95), "cpu")
    assert [type(o) for o in opt.parts] == [torch.optim.AdamW]
    assert "adamw8bit needs a CUDA GPU; using AdamW" in capsys.readouterr().out


def test_muon_with_fsdp_is_refused_when_asked_and_replaced_when_from_the_preset(capsys):
    model = GPT(ModelConfig(**CFG))
    with pytest.raises(ZhgptError, match="drop --fsdp"):
        build_optimizers(model, "muon", 1e-3, 0.1, (0.9, 0.95), "cpu", sharded=True)
    cfg, _, _ = resolve_config({"fsdp": True}, {}, "cpu")
    assert cfg.optimizer == "adamw" and cfg.lr == pytest.approx(3e-3)
    assert "using AdamW" in capsys.readouterr().out
    cfg, _, _ = resolve_config({}, {}, "cpu")
    assert cfg.optimizer == "muon"


def test_train_step_stops_on_a_non_finite_loss_before_the_weights_move():
    from zhgpt.training.distributed import Dist
    from zhgpt.training.step import NonFiniteLoss, train_step
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CFG))
    opt = build_optimizers(model, "adamw", 1e-3, 0.1, (0.9, 0.95), "cpu")
    x = torch.randint(0, CFG["vocab_size"], (2, 8))
    kw = dict(device="cpu", amp_dtype=torch.float32, dist=Dist("cpu"), grad_accum=2, grad_clip=1.0)
    scaler = torch.amp.GradScaler(enabled=False)
    loss, grad_norm = train_step(model, opt, scaler, [(x, x), (x, x)], **kw)
    assert loss > 0 and float(grad_norm) > 0
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLoss, match="loss became nan"):
        train_step(model, opt, scaler, [(x, x), (x, x)], lambda m, b: m(*b)[1] * float("nan"), **kw)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def _muon_pair(ns_dtype, shape=(96, 48), steps=3):
    """(torch's Muon, zhgpt's Muon with ``ns_dtype``) after the same ``steps`` steps from the same weights."""
    from zhgpt.training.optim import Muon
    torch.manual_seed(0)
    w0, grads = torch.randn(shape), [torch.randn(shape) for _ in range(steps)]
    out = []
    for cls, kw in ((torch.optim.Muon, {}), (Muon, {"ns_dtype": ns_dtype})):
        w = torch.nn.Parameter(w0.clone())
        opt = cls([w], lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw", **kw)
        for g in grads:
            w.grad = g.clone()
            opt.step()
        out.append(w.detach() - w0)
    return out


def test_muon_newton_schulz_in_fp32_makes_nearly_the_bf16_update():
    from torch.optim._muon import _zeropower_via_newtonschulz
    from zhgpt.training.optim import newton_schulz
    torch.manual_seed(1)
    coeffs = (3.4445, -4.7750, 2.0315)
    for shape in ((64, 160), (160, 64)):
        g = torch.randn(shape)
        ref = _zeropower_via_newtonschulz(g, coeffs, 5, 1e-7)
        assert torch.equal(newton_schulz(g, coeffs, 5, 1e-7, torch.bfloat16), ref)     # the same iteration
        fp32 = newton_schulz(g, coeffs, 5, 1e-7, torch.float32)
        assert fp32.dtype == torch.float32 and not torch.equal(fp32, ref.float())
        assert (fp32 - ref.float()).norm() / ref.float().norm() < 0.02       # bf16 rounding, nothing more
    ours, theirs = _muon_pair(torch.bfloat16)
    assert torch.equal(ours, theirs)                   # bf16: torch's own step
    theirs, ours = _muon_pair(torch.float32)
    assert (ours - theirs).norm() / theirs.norm() < 0.02


def test_muon_runs_newton_schulz_in_fp32_where_bf16_is_emulated(monkeypatch):
    import zhgpt.training.optim as optim
    model = GPT(ModelConfig(**CFG))
    for native, want in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: native)
        opt = build_optimizers(model, "muon", lr=1e-2, weight_decay=0.0, betas=(0.9, 0.95), device_type="cpu")
        muon = [o for o in opt.parts if isinstance(o, torch.optim.Muon)]
        assert len(muon) == 1 and muon[0].ns_dtype == want
