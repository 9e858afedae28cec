"""GGUF export (`zhgpt export --format gguf|ollama`), checked in llama.cpp itself through llama-cpp-python:
the same token ids as the HF tokenizer, the same logits, the same greedy continuation."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import pd_lines, run_cli
from zhgpt.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from zhgpt.errors import ZhgptError
from zhgpt.inference.gguf_export import export_gguf, export_ollama, modelfile
from zhgpt.model.gpt import GPT, ModelConfig

llamacpp = pytest.importorskip("zhgpt.inference.llamacpp")
pytest.importorskip("llama_cpp")

# Digits (half and full width), punctuation pairs, full-width letters and spaces, emoji (not in the
# vocabulary: byte fallback / byte-level), rare characters, newlines and tabs, literal special-token and
# byte-token spellings, English contractions.
HARD = ["１９９８年１月１日，江泽民主席发表新年讲话。", "价格是3.14元（约合$0.5），增长12345678%……",
        "“你好！”她说：「今天天气不错」《人民日报》『引号』", "🎉🇨🇳 emoji 测试 😀👍🏽", "第一行\n第二行\n\n  缩进\t制表\r\n",
        "ＡＢＣ　ａｂｃ　全角空格", "𠀀𪚥 罕见字 龘", "<0x41> <|endoftext|> 字面", "I'm don't WE'LL 123 ９０００ 哈哈哈哈哈",
        "——破折号……省略号～～", " 前导空格", "末尾空格  "]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf-tok")
    text = pd_lines("train", 2000)
    out = {}
    for kind in ("bpe", "char", "unigram"):
        save_tokenizer(train_tokenizer(text, kind, 2000, show_progress=False), d / kind, kind)
        out[kind] = d / kind
    return out


def _model(arch="llama", vocab=2048, **kw):
    torch.manual_seed(0)
    m = GPT(ModelConfig(arch=arch, vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_embd=64, **kw)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3)      # sharper logits than the init, so that argmax agreement means something
    return m


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_llama_cpp_tokenizes_exactly_like_the_hf_tokenizer(tokenizers, tmp_path, kind):
    tok = load_tokenizer(tokenizers[kind])
    f, _ = export_gguf(_model(), tokenizers[kind], tmp_path / "m.gguf")
    llm = llamacpp.load(f, vocab_only=True)
    texts = HARD + pd_lines("val", 150)
    for s in texts:
        want = tok.encode(s, add_special_tokens=False).ids
        assert llamacpp.tokenize(llm, s) == want, s
        assert llm.detokenize(want, special=True).decode("utf-8") == s
    # the hard strings really are hard: byte fallback / lone bytes happen on them
    assert sum(len(tok.encode(s).ids) - len(s) for s in HARD) != 0


def test_unigram_is_refused_with_what_to_train_instead(tokenizers, tmp_path):
    with pytest.raises(ZhgptError, match=r"--tokenizer bpe") as e:
        export_gguf(_model(), tokenizers["unigram"], tmp_path / "m.gguf")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m.gguf.tmp").exists()


@pytest.mark.parametrize("arch,kw", [("gpt2", {}), ("llama", {}), ("llama", dict(qk_norm=True, bias=False)),
                                     ("llama", dict(n_kv_head=1, tie_embeddings=False, bias=True))])
def test_f16_logits_match_zhgpt(tokenizers, tmp_path, arch, kw):
    """gpt2 -> gpt2, llama -> llama (RoPE rows permuted for llama.cpp), qk_norm -> qwen3, GQA, untied, biases."""
    tok = load_tokenizer(tokenizers["bpe"])
    ids = tok.encode(HARD[0] + HARD[2], add_special_tokens=False).ids[:60]
    m = _model(arch, **kw)
    with torch.no_grad():
        want = m(torch.tensor([ids]))[0][0].numpy()
    f, _ = export_gguf(m, tokenizers["bpe"], tmp_path / "m.gguf", "f16")
    got = llamacpp.logits(llamacpp.load(f, n_ctx=64), ids)
    tol = 0.05 * want.std()
    assert np.abs(got - want).max() < tol
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tol        # positions whose best token is not a near-tie
    assert clear.sum() > len(ids) // 2 and (got.argmax(1) == want.argmax(1))[clear].all()


def _f16_logits_close(m, tokenizer_dir, path, n_ctx=64, n=60):
    """Export ``m`` at f16 and compare llama.cpp's logits with zhgpt's on ``n`` tokens of hard text."""
    tok = load_tokenizer(tokenizer_dir)
    ids = (tok.encode(HARD[0] + HARD[2] + HARD[1] + HARD[5], add_special_tokens=False).ids * 4)[:n]
    with torch.no_grad():
        want = m(torch.tensor([ids]))[0][0].numpy()
    f, _ = export_gguf(m, tokenizer_dir, path, "f16")
    got = llamacpp.logits(llamacpp.load(f, n_ctx=n_ctx), ids)
    # llama.cpp keeps K/V in f16 and the weights are f16, so a position can be off by more than the typical
    # error where a router's top-k is a near-tie (a different expert is then picked): bound the typical
    # position tightly and the worst loosely.
    err, std = np.abs(got - want).max(axis=1), want.std()
    assert np.percentile(err, 90) < 0.05 * std and err.max() < 0.2 * std
    top2 = np.sort(want, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.2 * std      # wider than the worst error: the best token is settled
    assert clear.sum() > len(ids) // 3 and (got.argmax(1) == want.argmax(1))[clear].all()
    return f


MOE = dict(moe_experts=4, moe_top_k=2, bias=False)


@pytest.mark.parametrize("kw,arch", [(dict(MOE), "llama"),                                    # Mixtral
                                     (dict(MOE, qk_norm=True), "qwen3moe"),
                                     (dict(MOE, moe_shared_expert=True, moe_norm_topk=False), "qwen2moe"),
                                     (dict(MOE, moe_shared_expert=True, moe_norm_topk=False,
                                           tie_embeddings=False, n_kv_head=2), "qwen2moe")])
def test_moe_f16_logits_match_zhgpt(tokenizers, tmp_path, kw, arch):
    """Experts stacked per matrix; the router and the shared expert's gate as llama.cpp's graphs read them."""
    import gguf
    m = _model("llama", **kw)
    with torch.no_grad():
        for blk in m.transformer.h:
            blk.mlp.router.weight.mul_(4)      # routers far from uniform: a wrong expert order would show
    f = _f16_logits_close(m, tokenizers["bpe"], tmp_path / "m.gguf")
    r = gguf.GGUFReader(f)
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == arch
    exps = {t.name: tuple(t.shape) for t in r.tensors if "_exps" in t.name}
    assert len(exps) == 3 * 2 and all(s[-1] == 4 for s in exps.values())   # GGUF lists dims innermost first
    q4, notes = export_gguf(m, tokenizers["bpe"], tmp_path / "q4.gguf", "q4_0")
    assert q4.stat().st_size < f.stat().st_size / 2 and not notes
    llamacpp.load(q4, n_ctx=64)


@pytest.mark.parametrize("kw,why", [(dict(MOE, moe_norm_topk=False, qk_norm=True), "--moe-norm-topk"),
                                    (dict(MOE, moe_shared_expert=True), "--no-moe-norm-topk")])
def test_moe_with_the_other_top_k_normalisation_is_refused(tokenizers, tmp_path, kw, why):
    with pytest.raises(ZhgptError, match=why) as e:
        export_gguf(_model("llama", **kw), tokenizers["bpe"], tmp_path / "m.gguf")
    assert "\n" not in str(e.value) and not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("kw", [{}, dict(qk_norm=True, bias=False), dict(MOE, qk_norm=True)])
def test_yarn_f16_logits_match_zhgpt_beyond_the_trained_context(tokenizers, tmp_path, kw):
    """YaRN factor 4 on a model 'trained' at 16 tokens, scored on 60: the scaled frequencies, the ramp and the
    attention factor all have to agree for the logits at positions 16-60 to match."""
    import gguf
    m = _model("llama", rope_scaling="yarn", rope_factor=4.0, **kw)
    assert m.cfg.original_context == 16
    f = _f16_logits_close(m, tokenizers["bpe"], tmp_path / "m.gguf")
    r = gguf.GGUFReader(f)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    assert r.fields[f"{arch}.rope.scaling.factor"].parts[-1][0] == 4.0
    assert r.fields[f"{arch}.rope.scaling.original_context_length"].parts[-1][0] == 16


def test_export_cli_greedy_matches_zhgpt_generate(trained_run, tmp_path):
    out = tmp_path / "tiny.gguf"
    res = run_cli("export", "--model", trained_run, "--format", "gguf", "--out", out, check=True)
    assert out.is_file() and "f16" in res.stdout
    prompt = "中国的经济"
    gen = run_cli("generate", "--model", trained_run, "--prompt", prompt, "--temperature", 0,
                  "--max-new-tokens", 16, "--no-stream", check=True).stdout.strip()
    llm = llamacpp.load(out, n_ctx=64)
    tok = load_tokenizer(Path(trained_run) / "final")
    ids = llamacpp.tokenize(llm, prompt)
    assert ids == tok.encode(prompt, add_special_tokens=False).ids
    ours = tok.encode(gen, add_special_tokens=False).ids[len(ids):]
    theirs = llamacpp.greedy(llm, ids, 16)
    assert len(ours) >= 8 and theirs[:8] == ours[:8]


def test_trained_moe_run_exports_and_continues_greedily_like_zhgpt(pd_dataset, tmp_path):
    """A Qwen3-MoE-shaped run trained through the CLI's pipeline, exported with `zhgpt export --format gguf`:
    llama.cpp's greedy continuation equals `zhgpt generate --temperature 0`."""
    from conftest import TINY, TINY_TRAIN
    from zhgpt.pipeline import train
    from zhgpt.training.layout import TOKENIZER, RunFolder
    from zhgpt.training.train import TrainConfig
    cfg = TrainConfig(data=[str(pd_dataset)], out=str(tmp_path / "moe"), max_steps=40, preset="cpu-tiny",
                      **{**TINY_TRAIN, "export": False})
    run = train(cfg, model_overrides=dict(TINY, arch="llama", qk_norm=True, bias=False, moe_experts=4, moe_top_k=2))
    out = tmp_path / "moe.gguf"
    run_cli("export", "--model", run, "--format", "gguf", "--out", out, check=True)
    prompt = "中国的经济"
    gen = run_cli("generate", "--model", run, "--prompt", prompt, "--temperature", 0,
                  "--max-new-tokens", 16, "--no-stream", check=True).stdout.strip()
    llm = llamacpp.load(out, n_ctx=64)
    tok = load_tokenizer(RunFolder(run).checkpoints()[-1] / TOKENIZER)
    ids = llamacpp.tokenize(llm, prompt)
    ours = tok.encode(gen, add_special_tokens=False).ids[len(ids):]
    assert len(ours) >= 8 and llamacpp.greedy(llm, ids, 16)[:8] == ours[:8]


def test_export_cli_quantised_sizes_and_bad_input(trained_run, tmp_path):
    sizes = {}
    for q in ("f16", "q8_0", "q4_0"):
        out = tmp_path / f"m-{q}.gguf"
        run_cli("export", "--model", trained_run, "--format", "gguf", "--quantize", q, "--out", out, check=True)
        sizes[q] = out.stat().st_size
        llamacpp.load(out, n_ctx=64)          # loads in llama.cpp
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]
    again = run_cli("export", "--model", trained_run, "--format", "gguf", "--out", tmp_path / "m-f16.gguf")
    assert again.returncode != 0 and "--force" in again.stderr.strip().splitlines()[-1]
    assert "Traceback" not in again.stderr
    wrong = run_cli("export", "--model", trained_run, "--quantize", "q4_0")
    assert wrong.returncode != 0 and "--format gguf" in wrong.stderr
    unknown = run_cli("export", "--model", trained_run, "--format", "gguf", "--quantize", "q3_k")
    assert unknown.returncode != 0 and "q3_k" in unknown.stderr
    from zhgpt.inference.export import ExportConfig
    with pytest.raises(ZhgptError, match=r"--quantize q8_0"):
        ExportConfig(model=str(trained_run), format="gguf", quantize="int8")


def test_q4_0_falls_back_per_tensor_with_a_note(tokenizers, tmp_path):
    m = _model("llama", intermediate_size=100)      # ffn_down rows of 100 values: not whole 32-blocks
    f, notes = export_gguf(m, tokenizers["bpe"], tmp_path / "m.gguf", "q4_0")
    assert any("ffn_down" in n and "100" in n and "f16" in n for n in notes)
    assert not any("ffn_up" in n for n in notes)
    llamacpp.load(f, n_ctx=64)


def _render_go_chatml(template: str, messages: list[dict]) -> str:
    """The subset of Go's text/template that a ChatML Modelfile uses: one range over .Messages."""
    m = re.fullmatch(r"\{\{- range \.Messages \}\}(.*)\{\{ end \}\}(.*)", template, re.S)
    assert m, template
    body, tail = m.groups()
    return "".join(body.replace("{{ .Role }}", x["role"]).replace("{{ .Content }}", x["content"])
                   for x in messages) + tail


def test_ollama_folder_modelfile_matches_the_chat_template(sft_run, tmp_path):
    from zhgpt.data.chat import Message
    from zhgpt.data.chat_template import render
    from zhgpt.training.runs import load_for_inference
    model, _, info = load_for_inference(sft_run)
    out, _ = export_ollama(model, Path(sft_run) / "final", tmp_path / "ollama", "q8_0")
    text = (out / "Modelfile").read_text(encoding="utf-8")
    assert text.startswith("FROM ./model.gguf\n") and (out / "model.gguf").is_file()
    keywords = {"FROM", "TEMPLATE", "PARAMETER", "SYSTEM", "ADAPTER", "LICENSE", "MESSAGE"}
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    outside = text.replace(f'TEMPLATE """{template}"""', "TEMPLATE")
    assert all(line.split()[0] in keywords for line in outside.splitlines() if line.strip())
    assert 'PARAMETER stop "<|im_end|>"' in text
    msgs = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "中国的首都是哪里？"}]
    want, _ = render([Message(**x) for x in msgs], add_generation_prompt=True)
    assert _render_go_chatml(template, msgs) == want
    # the chat template also went into the GGUF metadata, and llama.cpp reads it back
    llm = llamacpp.load(out / "model.gguf", n_ctx=64)
    assert "<|im_start|>" in llm.metadata.get("tokenizer.chat_template", "")
    assert modelfile("m.gguf", False, 64).count("PARAMETER stop") == 1
