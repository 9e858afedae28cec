"""The model file: shapes, init loss, KV cache equivalence, Hugging Face export/import parity."""
import math

import pytest
import torch

from zhgpt.errors import ZhgptError
from zhgpt.model.engine import Engine, SamplingParams, process_logits, sample_next
from zhgpt.model.hf import load_hf_folder, to_hf_state_dict, hf_config
from zhgpt.model.gpt import GPT, ModelConfig
from zhgpt.model.presets import count_params, model_config

VARIANTS = {
    "gpt2": dict(arch="gpt2"),
    "llama": dict(arch="llama", bias=False),
    "llama-gqa-untied": dict(arch="llama", bias=False, n_kv_head=2, tie_embeddings=False),
    "llama-qknorm": dict(arch="llama", bias=False, qk_norm=True),
}


def tiny(**kw):
    base = dict(vocab_size=320, block_size=64, n_layer=2, n_head=4, n_embd=64)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_shapes_and_initial_loss(name):
    torch.manual_seed(0)
    cfg = tiny(**VARIANTS[name])
    model = GPT(cfg)
    x = torch.randint(0, cfg.vocab_size, (3, 40))
    y = torch.randint(0, cfg.vocab_size, (3, 40))   # independent of x: tied embeddings favour x itself
    logits, loss = model(x, y)
    assert logits.shape == (3, 40, cfg.vocab_size)
    # At init the model is close to uniform: loss ~ ln(V).
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.3
    assert model.num_params() == count_params(cfg)


@pytest.mark.parametrize("name", VARIANTS)
def test_kv_cache_matches_full_forward(name):
    torch.manual_seed(0)
    cfg = tiny(**VARIANTS[name])
    model = GPT(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 30))
    full, _ = model(x)
    cache = model.make_kv_cache(2)
    a, _ = model(x[:, :17], kv_cache=cache)      # prefill
    b, _ = model(x[:, 17:25], kv_cache=cache)    # several tokens after a cached prefix (masked path)
    steps = [model(x[:, t:t + 1], kv_cache=cache)[0] for t in range(25, 30)]   # one at a time
    inc = torch.cat([a, b, *steps], dim=1)
    assert torch.allclose(inc, full, atol=1e-5), (inc - full).abs().max()


class _FakeTok:
    """Ids are the text: enough for the engine's id-level loop."""
    def encode(self, text, add_special_tokens=False):
        class E: ids = [int(t) for t in text.split()]
        return E()

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_greedy_cached_equals_uncached_including_context_slide(name):
    torch.manual_seed(1)
    cfg = tiny(**VARIANTS[name], block_size=32)
    model = GPT(cfg)
    eng = Engine(model, _FakeTok(), eot_id=0)
    prompt = list(range(5, 25))
    p = SamplingParams(max_new_tokens=30, temperature=0, stop_at_eot=False)   # runs past the 32-token context
    cached = torch.stack(list(eng.generate_ids(prompt, p, use_cache=True)))
    uncached = torch.stack(list(eng.generate_ids(prompt, p, use_cache=False)))
    # Up to the context limit both see the same tokens; after it, the cached engine slides its window by
    # half a context while the uncached one always sees the last block_size tokens, so compare the first part.
    n_same = cfg.block_size - len(prompt)
    assert torch.equal(cached[:n_same], uncached[:n_same])
    assert len(cached) == 30


def test_sampling_options_have_visible_effects():
    torch.manual_seed(0)
    logits = torch.randn(1, 100)
    greedy = process_logits(logits, None, SamplingParams(temperature=0))
    assert greedy.argmax() == logits.argmax()
    k1 = process_logits(logits, None, SamplingParams(temperature=1.0, top_k=1, top_p=1.0))
    assert torch.isfinite(k1).sum() == 1 and k1.argmax() == logits.argmax()
    tp = process_logits(logits, None, SamplingParams(temperature=1.0, top_k=0, top_p=0.5))
    kept = torch.isfinite(tp).sum().item()
    assert 1 <= kept < 100
    assert logits.softmax(-1)[torch.isfinite(tp)].sum() >= 0.5
    seen = torch.tensor([[int(logits.argmax())]])
    rp = process_logits(logits, seen, SamplingParams(temperature=0, repetition_penalty=100.0))
    assert rp.argmax() != logits.argmax()


def test_no_repeat_ngram_bans_exactly_the_completing_tokens():
    from zhgpt.model.engine import ban_repeated_ngrams
    logits = torch.zeros(2, 10)
    seen = torch.tensor([[1, 2, 3, 1, 2], [4, 5, 4, 6, 4]])
    for n, banned in ((3, [{3}, set()]), (2, [{3}, {5, 6}]), (1, [{1, 2, 3}, {4, 5, 6}])):
        out = ban_repeated_ngrams(logits, seen, n)
        assert [set(torch.nonzero(torch.isinf(r)).flatten().tolist()) for r in out] == banned, n
    assert torch.equal(ban_repeated_ngrams(logits, seen[:, :2], 3), logits)    # shorter than n: nothing


def test_frequency_and_presence_penalties_count_generated_tokens_only():
    logits = torch.zeros(1, 10)
    seen = torch.tensor([[7, 7, 5, 5, 7]])              # prompt [7, 7], generated [5, 5, 7]
    p = SamplingParams(temperature=0, frequency_penalty=0.5, presence_penalty=0.25)
    out = process_logits(logits, seen, p, generated=3)[0]
    assert out[5] == pytest.approx(-1.25) and out[7] == pytest.approx(-0.75) and out[0] == 0
    assert torch.equal(process_logits(logits, seen, p, generated=0), logits)  # nothing generated yet
    with pytest.raises(ZhgptError, match="frequency_penalty"):
        SamplingParams(frequency_penalty=3.0)
    with pytest.raises(ZhgptError, match="no_repeat_ngram_size"):
        SamplingParams(no_repeat_ngram_size=-1)


@pytest.mark.parametrize("k,top_p,temp", [(0, 1.0, 1.0), (20, 1.0, 0.7), (0, 0.6, 1.0), (30, 0.8, 1.3)])
def test_fast_sampler_draws_from_the_same_distribution_as_process_logits(k, top_p, temp):
    """sample_next (top-k/top-p on the candidates only) vs softmax(process_logits(...)) (whole vocabulary):
    same support, and 20,000 draws match the probabilities within sampling error."""
    torch.manual_seed(3)
    logits = torch.randn(1, 200) * 2
    p = SamplingParams(temperature=temp, top_k=k, top_p=top_p)
    want = process_logits(logits, None, p).softmax(-1)[0]
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(20_000, -1).contiguous(), None, p, gen)
    freq = torch.bincount(draws, minlength=200).float() / draws.numel()
    assert set(draws.unique().tolist()) <= set(torch.nonzero(want).flatten().tolist())
    assert (freq - want).abs().max() < 0.015
    seen = torch.tensor([[int(logits.argmax())]])
    assert sample_next(logits, seen, SamplingParams(temperature=0, repetition_penalty=100.0)) != logits.argmax()


class _ChatTok(_FakeTok):
    def token_to_id(self, token):
        return {"<|im_end|>": 9}.get(token)


class _EndsAfter(torch.nn.Module):
    """A GPT whose logits favour token 9 (<|im_end|> of _ChatTok) from the ``n``-th call on."""
    def __init__(self, model, n):
        super().__init__()
        self.inner, self.cfg, self.n, self.calls = model, model.cfg, n, 0

    def make_kv_cache(self, *a, **kw):
        return self.inner.make_kv_cache(*a, **kw)

    def forward(self, idx, **kw):
        logits, loss = self.inner(idx, **kw)
        self.calls += 1
        if self.calls >= self.n:
            logits[..., 9] += 1e4
        return logits, loss


def test_a_chat_model_stops_at_im_end_and_min_new_tokens_holds_it_back():
    torch.manual_seed(3)
    eng = Engine(_EndsAfter(GPT(tiny()), 3), _ChatTok(), eot_id=0)
    assert eng.end_ids == [0, 9]
    out = list(eng.stream_rows([3, 4, 5], SamplingParams(max_new_tokens=20, temperature=0)))
    assert out[-1][2] == "stop" and out[-1][3] == 2          # two tokens, then <|im_end|> ends the turn
    assert "9" not in "".join(d for _, d, _, _ in out).split()
    eng = Engine(_EndsAfter(GPT(tiny()), 1), _ChatTok(), eot_id=0)
    ids = list(eng.generate_ids([3, 4, 5], SamplingParams(max_new_tokens=20, min_new_tokens=4, temperature=0)))
    assert [int(t) for t in ids[:4]] != [9] * 4 and int(ids[4]) == 9 and len(ids) == 5


def test_top_k_1_sampling_equals_greedy():
    torch.manual_seed(2)
    model = GPT(tiny())
    eng = Engine(model, _FakeTok())
    prompt = [3, 4, 5]
    greedy = list(eng.generate_ids(prompt, SamplingParams(max_new_tokens=20, temperature=0, stop_at_eot=False)))
    k1 = list(eng.generate_ids(prompt, SamplingParams(max_new_tokens=20, temperature=1.3, top_k=1, seed=7,
                                                      stop_at_eot=False)))
    assert torch.equal(torch.stack(greedy), torch.stack(k1))


@pytest.mark.parametrize("name", VARIANTS)
def test_hf_export_logits_parity_and_reimport(name, tmp_path):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    cfg = tiny(**VARIANTS[name])
    model = GPT(cfg).eval()
    _, sd = to_hf_state_dict(model)
    hf = AutoModelForCausalLM.from_config(hf_config(cfg))
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected
    hf.save_pretrained(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    expected_class = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}
    assert type(hf).__name__ == ("Qwen3ForCausalLM" if cfg.qk_norm else expected_class[cfg.arch])
    x = torch.randint(0, cfg.vocab_size, (2, 48))
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
        assert (ours - theirs).abs().max().item() < 1e-4
        back, _ = load_hf_folder(tmp_path)
        again, _ = back.eval()(x)
    assert (again - ours).abs().max().item() < 1e-5


def test_bad_model_configs_give_clear_errors():
    from zhgpt.errors import ZhgptError
    with pytest.raises(ZhgptError, match="not divisible"):
        ModelConfig(n_embd=100, n_head=3)
    with pytest.raises(ZhgptError, match="arch llama"):
        ModelConfig(arch="gpt2", qk_norm=True)
    with pytest.raises(ZhgptError, match="unknown preset"):
        model_config("huge")
    with pytest.raises(ZhgptError, match="unknown model field"):
        model_config("cpu-tiny", n_layers=3)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    cfg = tiny()
    a = GPT(cfg)
    b = GPT(cfg)
    b.load_state_dict(a.state_dict())
    b.grad_checkpointing = True
    x = torch.randint(0, cfg.vocab_size, (2, 32))
    y = torch.randint(0, cfg.vocab_size, (2, 32))
    la, lb = a(x, y)[1], b(x, y)[1]
    la.backward()
    lb.backward()
    assert torch.equal(la, lb)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n


def test_fused_loss_hook_matches_the_standard_loss_and_liger_falls_back_on_cpu(capsys):
    """The hook --liger fills on CUDA gets (weight, hidden, targets); any correct fused loss gives the same
    loss and gradients as the standard path. On CPU --liger only prints a note."""
    import torch.nn.functional as F
    from zhgpt.training.train import liger_fused_loss
    torch.manual_seed(0)
    a, b = GPT(tiny()), GPT(tiny())
    b.load_state_dict(a.state_dict())
    b.fused_loss = lambda w, h, t: F.cross_entropy((h @ w.t()).float(), t, ignore_index=-1)
    x = torch.randint(0, 320, (2, 16))
    y = torch.randint(0, 320, (2, 16))
    y[0, :3] = -1
    la, lb = a(x, y)[1], b(x, y)[1]
    la.backward()
    lb.backward()
    assert la.item() == pytest.approx(lb.item(), rel=1e-6)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), n
    assert liger_fused_loss("cpu", quiet=False) is None
    assert "--liger needs a CUDA GPU" in capsys.readouterr().out
