"""`--context N` (ModelOptions): `zhgpt eval` / `generate` at a context other than the trained one, positions as
trained (plain RoPE extrapolation when longer), refused in one line for GPT-2; and the RoPE options passed on to
the Hugging Face folder `zhgpt eval --lm-eval` hands lm-evaluation-harness."""
import json

import pytest
import torch

from conftest import run_cli
from zhgpt.errors import ZhgptError
from zhgpt.inference.loading import ModelOptions

SHAPE = dict(n_layer=2, n_head=4, n_embd=64, block_size=32)


def export_random(pd_dataset, out, **kw):
    """An untrained model exported with the dataset's tokenizer: a model folder in a second, no training."""
    from zhgpt.config import load_json
    from zhgpt.model.gpt import GPT, ModelConfig
    from zhgpt.model.hf import export_hf
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=load_json(pd_dataset / "meta.json")["vocab_size"], **{**SHAPE, **kw})
    return export_hf(GPT(cfg).eval(), pd_dataset / "tokenizer", out)


@pytest.fixture(scope="module")
def llama_folder(pd_dataset, tmp_path_factory):
    return export_random(pd_dataset, tmp_path_factory.mktemp("ctx") / "llama", arch="llama", bias=False)


@pytest.fixture(scope="module")
def gpt2_folder(pd_dataset, tmp_path_factory):
    return export_random(pd_dataset, tmp_path_factory.mktemp("ctx") / "gpt2", arch="gpt2")


def test_context_runs_a_llama_model_past_its_trained_context(llama_folder, pd_text):
    from zhgpt.inference.evaluate import EvalConfig, main as eval_main
    plain = ModelOptions(model=str(llama_folder), device="cpu").load()
    long = ModelOptions(model=str(llama_folder), device="cpu", context=128).load()
    assert plain.model.cfg.block_size == 32 and long.model.cfg.block_size == 128
    assert long.engine.block_size == 128 and long.model.cfg.rope_scaling == "none"
    ids = torch.randint(1, 100, (1, 100))
    with torch.no_grad():
        logits, _ = long.model(ids)
        assert torch.equal(logits[:, :32], plain.model(ids[:, :32])[0])
    # zhgpt eval at 128: windows of 128 with a 64-token stride (half the context it runs at).
    _, val = pd_text
    res = eval_main(EvalConfig(model=str(llama_folder), files=[str(val)], device="cpu", context=128, max_chars=2000))
    native = eval_main(EvalConfig(model=str(llama_folder), files=[str(val)], device="cpu", max_chars=2000))
    a, b = res["files"][0], native["files"][0]
    assert a["tokens"] == b["tokens"] and 0 < a["bpc"] < 20 and a["bpc"] != b["bpc"]


@pytest.mark.parametrize("kw,match", [
    (dict(context=-1), "--context must be >= 0"),
    (dict(context=128, rope_scaling="yarn", rope_factor=4.0), "pass one of the two"),
])
def test_bad_context_options_are_one_line_errors(llama_folder, kw, match):
    with pytest.raises(ZhgptError, match=match):
        ModelOptions(model=str(llama_folder), device="cpu", **kw).load()


def test_gpt2_refuses_a_longer_context_in_one_line(gpt2_folder, pd_text):
    with pytest.raises(ZhgptError, match="learned 32 position embeddings"):
        ModelOptions(model=str(gpt2_folder), device="cpu", context=64).load()
    assert ModelOptions(model=str(gpt2_folder), device="cpu", context=16).load().model.cfg.block_size == 16
    _, val = pd_text
    proc = run_cli("eval", "--model", gpt2_folder, "--context", "128", "--device", "cpu", val)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("zhgpt: error: --context 128: this GPT-2 model learned 32 position embeddings")
    assert "Traceback" not in proc.stderr


def test_lm_eval_export_carries_the_rope_options(llama_folder, tmp_path):
    from zhgpt.inference.harness import hf_folder
    assert hf_folder(str(llama_folder), tmp_path) == llama_folder            # nothing asked: used as it is
    yarn = json.loads((hf_folder(str(llama_folder), tmp_path / "y", rope_factor=4.0) / "config.json").read_text())
    assert yarn["max_position_embeddings"] == 128 and yarn["rope_scaling"]["rope_type"] == "yarn"
    assert yarn["rope_scaling"]["factor"] == 4.0 and yarn["rope_scaling"]["original_max_position_embeddings"] == 32
    plain = json.loads((hf_folder(str(llama_folder), tmp_path / "p", context=128) / "config.json").read_text())
    assert plain["max_position_embeddings"] == 128
    assert (plain.get("rope_scaling") or {}).get("rope_type", "default") == "default"
