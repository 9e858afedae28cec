"""`zhgpt sft`: conversations -> a chat model, full and LoRA, on the tiny pre-trained run.

The data is the built-in review-sentiment set (short reviews only, so they fit the tiny model's 64-token
context), written as OpenAI-format JSONL as a user's file would be.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli, run_sft


def _records(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in open(run / name, encoding="utf-8")]


# ------------------------------------------------------------------------- the loss mask

@pytest.mark.slow
def test_loss_mask_gradients_come_from_the_answer_only(trained_run):
    """Changing the user turn's target tokens changes no gradient; changing one assistant token does. And
    the positions that predict user / header tokens get exactly zero gradient on their logits."""
    from zhgpt.data.chat import Message
    from zhgpt.data.chat_template import add_chat_tokens
    from zhgpt.data.sft import IGNORE, SFTExamples, encode_conversations, pad_batch
    from zhgpt.data.tokenizer import load_tokenizer
    from zhgpt.training.runs import load_for_inference, tokenizer_dir_of

    model, _, _ = load_for_inference(trained_run)
    tok = load_tokenizer(tokenizer_dir_of(trained_run))
    add_chat_tokens(tok)
    conv = [Message("system", "你是助手"), Message("user", "今天天气怎么样？"), Message("assistant", "今天天气很好。")]
    ex = encode_conversations([conv], tok, 64)
    ids, mask = ex.ids[0], ex.mask[0]

    def grads(ids_variant):
        variant = SFTExamples([ids_variant.copy()], [mask.copy()])
        x, y = (torch.from_numpy(a) for a in pad_batch(variant, [0], pad_id=0))
        x = torch.from_numpy(pad_batch(ex, [0], pad_id=0)[0])     # the inputs stay the original conversation
        model.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]), y

    base_loss, base_grad, y = grads(ids)
    user = [t for t in range(1, len(ids)) if not mask[t]]
    answer = [t for t in range(1, len(ids)) if mask[t]]
    assert user and answer and all(y[0, t - 1] == IGNORE for t in user)
    changed = ids.copy()
    changed[user] = (changed[user] + 7) % 3000                       # other user / system / header tokens
    loss2, grad2, _ = grads(changed)
    assert loss2 == base_loss and torch.equal(grad2, base_grad)
    changed = ids.copy()
    changed[answer[0]] = (changed[answer[0]] + 7) % 3000             # one answer token
    loss3, grad3, _ = grads(changed)
    assert loss3 != base_loss and not torch.equal(grad3, base_grad)

    # d loss / d logits is zero wherever the target is not the assistant's
    x, y = (torch.from_numpy(a) for a in pad_batch(ex, [0], pad_id=0))
    model.zero_grad()
    logits, _ = model(x)
    logits.retain_grad()
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1)
    loss.backward()
    per_pos = logits.grad[0].abs().sum(-1)
    assert all(per_pos[t - 1] == 0 for t in user) and all(per_pos[t - 1] > 0 for t in answer)


# ------------------------------------------------------------------------- full SFT

@pytest.mark.slow
def test_sft_run_exports_a_chat_model_that_transformers_runs(sft_run, trained_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from zhgpt.data.chat_template import IM_END

    final = sft_run / "final"
    tok = AutoTokenizer.from_pretrained(str(final))
    model = AutoModelForCausalLM.from_pretrained(str(final))
    text = tok.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    end = tok.convert_tokens_to_ids(IM_END)
    assert end in model.generation_config.eos_token_id
    # the old rows of the embedding are the base model's (SFT moved them, but from there: same shape and ids)
    base = AutoModelForCausalLM.from_pretrained(str(Path(trained_run) / "final"))
    assert model.get_input_embeddings().weight.shape == base.get_input_embeddings().weight.shape
    ids = tok.apply_chat_template([{"role": "user", "content": "这条评论是正面还是负面？\n很好"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.slow
def test_sft_run_records_answers_accuracy_and_data(sft_run, sft_files):
    evals = [r for r in _records(sft_run, "metrics.jsonl") if "val_loss" in r]
    assert [e["step"] for e in evals] == [0, 10, 20]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert all(0 <= e["val_answer_acc"] <= 1 for e in evals)
    samples = _records(sft_run, "samples.jsonl")
    assert {s["step"] for s in samples} == {0, 10, 20}
    # the prompts are user messages; the template is applied around them, not shown
    assert all("<|im_start|>" not in s["prompt"] for s in samples)
    data = json.loads((sft_run / "config.json").read_text())["data"]
    assert data["conversations"]["formats"] == {str(sft_files[0]): "openai", str(sft_files[1]): "openai"}
    assert data["encoded"]["train"]["conversations"] + sum(data["encoded"]["train"]["dropped"].values()) == 400
    info = json.loads((sft_run / "run.json").read_text())
    assert info["status"] == "completed"


@pytest.mark.slow
def test_zhgpt_chat_talks_to_an_sft_run_with_its_template(sft_run):
    proc = run_cli("chat", "--model", sft_run, "--max-new-tokens", "8", "--temperature", "0",
                   input="这条评论是正面还是负面？很好\n/exit\n", check=True)
    assert "<|im_end|>" not in proc.stdout and "<|im_start|>" not in proc.stdout


@pytest.mark.slow
def test_sft_resume_after_a_crash_matches_the_uninterrupted_run(trained_run, sft_files, sft_run, tmp_path,
                                                                monkeypatch):
    """A crash at step 14 (after the step-10 checkpoint), then --resume: the same losses, bit for bit, and
    the same final weights as the run that never stopped."""
    from safetensors.torch import load_file
    from zhgpt.pipeline.sft import sft
    from zhgpt.training import loop
    from zhgpt.training.checkpoint import latest_good
    from zhgpt.training.sft import SFTConfig

    real_step, calls = loop.train_step, []

    def crashing_step(*a, **kw):
        calls.append(1)
        if len(calls) == 15:
            raise RuntimeError("simulated crash")
        return real_step(*a, **kw)

    monkeypatch.setattr(loop, "train_step", crashing_step)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sft(trained_run, sft_files, tmp_path / "crashed")
    monkeypatch.setattr(loop, "train_step", real_step)
    resumed = sft(SFTConfig(), explicit={"resume": str(tmp_path / "crashed")})
    losses = lambda run: {r["step"]: r["loss"] for r in _records(Path(run), "metrics.jsonl") if "loss" in r}
    assert losses(resumed) == losses(sft_run) and sorted(losses(resumed)) == list(range(1, 21))
    a = load_file(str(latest_good(resumed) / "model.safetensors"))
    b = load_file(str(latest_good(sft_run) / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------- LoRA

@pytest.mark.slow
def test_lora_trains_only_adapters_new_rows_and_final_norm(lora_run, trained_run):
    from safetensors.torch import load_file
    from zhgpt.training.runs import load_for_inference
    base, _, _ = load_for_inference(trained_run)
    ckpt = sorted((lora_run / "checkpoints").glob("step_*"))[-1]
    sd = load_file(str(ckpt / "model.safetensors"))
    chat_ids = [3000, 3001]            # the char tokenizer's 3,000 tokens, then <|im_start|>, <|im_end|>
    for k, v in base.state_dict().items():
        if k == "lm_head.weight" or k.startswith("rope_"):
            continue
        saved = sd.get(k, sd.get(k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")))
        if k.startswith("transformer.ln_f."):           # the final norm trains with the adapters
            assert not torch.equal(saved, v), k
        elif k == "transformer.wte.weight":
            keep = torch.ones(v.shape[0], dtype=torch.bool)
            keep[chat_ids] = False
            assert torch.equal(saved[keep], v[keep]) and not torch.equal(saved[chat_ids], v[chat_ids])
        else:
            assert torch.equal(saved, v), k
    assert any(".lora_B." in k and v.abs().sum() > 0 for k, v in sd.items())


@pytest.mark.slow
@pytest.mark.parametrize("run_name", ["lora_run", "lora_emb_run"])
def test_lora_final_is_merged_and_adapter_loads_in_peft(run_name, request):
    from peft import PeftModel
    lora_run = request.getfixturevalue(run_name)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    final = AutoModelForCausalLM.from_pretrained(str(lora_run / "final")).eval()
    adapter_cfg = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"])
    peft_model = PeftModel.from_pretrained(base, str(lora_run / "adapter")).eval()
    tok = AutoTokenizer.from_pretrained(str(lora_run / "adapter"))
    ids = tok.apply_chat_template([{"role": "user", "content": "这条评论是正面还是负面？\n好"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        a, b = final(ids).logits, peft_model(ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, a, atol=1e-4)


@pytest.mark.slow
def test_a_lora_checkpoint_loads_as_a_plain_model(lora_run):
    """zhgpt generate/eval/serve on a LoRA run's checkpoint: the adapters are merged on load."""
    from transformers import AutoModelForCausalLM
    from zhgpt.training.runs import load_for_inference
    model, tok, info = load_for_inference(lora_run)
    assert info["kind"] == "checkpoint"
    hf = AutoModelForCausalLM.from_pretrained(str(lora_run / "final")).eval()
    ids = torch.tensor([tok.encode("今天天气很好").ids])
    with torch.no_grad():
        assert torch.allclose(model(ids)[0], hf(ids).logits, atol=1e-4)


# ------------------------------------------------------------------------- errors

@pytest.mark.slow
def test_sft_errors_are_one_line(trained_run, sft_files, tmp_path):
    proc = run_cli("sft", "--data", sft_files[0])
    assert proc.returncode != 0 and "needs --init-from" in proc.stderr and "Traceback" not in proc.stderr
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(sft_files[0].read_text(encoding="utf-8").splitlines()[0] + "\n"
                     + json.dumps({"instruction": "你好", "output": "你好"}, ensure_ascii=False) + "\n", encoding="utf-8")
    proc = run_cli("sft", "--init-from", trained_run, "--data", mixed, "--out", tmp_path / "r1", "--max-steps", "1")
    assert proc.returncode != 0 and f"{mixed}:2:" in proc.stderr and "Traceback" not in proc.stderr
    no_answer = tmp_path / "no_answer.jsonl"
    no_answer.write_text(json.dumps({"messages": [{"role": "user", "content": "你好"}]}, ensure_ascii=False) + "\n",
                         encoding="utf-8")
    proc = run_cli("sft", "--init-from", trained_run, "--data", no_answer, "--out", tmp_path / "r2", "--max-steps", "1")
    assert proc.returncode != 0 and f"{no_answer}:1:" in proc.stderr and "assistant" in proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1]) < 400 and "Traceback" not in proc.stderr


def test_adding_token_rows_keeps_old_rows_and_grows_when_full():
    from zhgpt.model.gpt import GPT, ModelConfig
    from zhgpt.model.vocab import add_token_rows
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=128, block_size=16, n_layer=1, n_head=2, n_embd=16))
    old = m.transformer.wte.weight.detach().clone()
    grown = add_token_rows(m, [128, 129], n_learned=128)
    w = grown.transformer.wte.weight
    assert grown.cfg.vocab_size == 192 and torch.equal(w[:128], old)
    assert torch.allclose(w[128], old.mean(0)) and grown.lm_head.weight is w
    same = add_token_rows(grown, [130], n_learned=128)
    assert same is grown and same.cfg.vocab_size == 192


@pytest.mark.slow
def test_a_tokenizer_that_is_not_the_models_is_refused(trained_run, sft_files, tmp_path):
    """A Hugging Face folder whose tokenizer has more tokens than the model has embeddings."""
    import shutil
    from zhgpt.data.tokenizer import load_tokenizer
    folder = tmp_path / "hf"
    shutil.copytree(Path(trained_run) / "final", folder)
    tok = load_tokenizer(folder)
    tok.add_tokens([f"词{i}" for i in range(200)])            # 3,000 + 200 tokens > 3,008 embedding rows
    tok.save(str(folder / "tokenizer.json"))
    proc = run_cli("sft", "--init-from", folder, "--data", sft_files[0], "--out", tmp_path / "r", "--max-steps", "1")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "tokenizer has 3200 tokens but the model only 3008" in proc.stderr


def test_packed_rows_score_each_conversation_as_if_alone():
    """Packing: every conversation once per epoch, rows within the context, and the loss of a packed
    micro-batch equal to that of the same conversations padded one per row."""
    import numpy as np
    from zhgpt.data.sft import SFTExamples, pad_batch
    from zhgpt.model.gpt import GPT, ModelConfig
    from zhgpt.training.chat_data import ChatSplit, PackedBatches, pack_batch
    rng = np.random.default_rng(0)
    ex = SFTExamples()
    for _ in range(40):
        n = int(rng.integers(4, 20))
        ex.ids.append(rng.integers(1, 60, n).astype(np.int32))
        ex.mask.append(np.r_[False, rng.random(n - 1) < 0.5])
    batches = PackedBatches(ChatSplit("train", ex, [1] * 40), pad_id=0, block_size=32, batch_size=4, grad_accum=1,
                            seed=0)
    rows = batches._rows(0)
    assert sorted(c for row in rows for c in row) == list(range(40))
    assert all(sum(len(ex.ids[c]) for c in row) <= 33 for row in rows)
    torch.manual_seed(0)
    for arch in ("gpt2", "llama"):
        model = GPT(ModelConfig(arch=arch, vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16,
                                bias=arch == "gpt2", tie_embeddings=arch == "gpt2")).eval()
        picked = batches.packed_rows(0, 0)
        x, y, seg = (torch.from_numpy(a) for a in pack_batch(ex, picked, 0))
        xp, yp = (torch.from_numpy(a) for a in pad_batch(ex, [c for row in picked for c in row], 0))
        with torch.no_grad():
            packed = model(x, y, reduction="sum", segments=seg)[1]
            padded = model(xp, yp, reduction="sum")[1]
        assert torch.allclose(packed, padded, rtol=1e-5), arch


def test_bad_stage_flags_are_one_line_errors():
    from zhgpt.errors import ZhgptError
    from zhgpt.training.dpo import DPOConfig
    from zhgpt.training.sft import SFTConfig
    from zhgpt.training.train import TrainConfig
    for make, flag in ((lambda: TrainConfig(save_every_minutes=-1), "--save-every-minutes must be >= 0"),
                       (lambda: SFTConfig(epochs=0), "--epochs must be positive"),
                       (lambda: SFTConfig(lora=True, lora_rank=0), "--lora-rank must be >= 1"),
                       (lambda: DPOConfig(beta=0), "--beta must be positive")):
        with pytest.raises(ZhgptError, match=flag):
            make()
