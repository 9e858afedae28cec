"""bench/yarn_context.py: its batched sliding-window scorer is `zhgpt eval`'s (score_document), and the
RESULTS table is filled from the rows it measured."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
yarn_context = pytest.importorskip("yarn_context")


@pytest.mark.parametrize("length", [300, 97, 20])       # several windows with a short tail; one; shorter than one
def test_batched_sliding_windows_score_what_zhgpt_eval_scores(length):
    from zhgpt.inference.evaluate import score_document
    from zhgpt.model.gpt import GPT, ModelConfig
    torch.manual_seed(0)
    model = GPT(ModelConfig(arch="llama", bias=False, vocab_size=100, block_size=64, n_layer=1, n_head=2,
                            n_embd=32)).eval().set_context(128)
    ids = torch.randint(0, 100, (length,)).tolist()
    with torch.no_grad():
        want = score_document(model, ids, 128, 64, "cpu")
    got = yarn_context.sliding_nats(model, ids, 128, 64)
    assert got[1] == want[1] == length - 1
    assert got[0] == pytest.approx(want[0], rel=1e-5)


def test_results_table_puts_each_measurement_in_its_cell():
    rows = {"base/none/128": {"bpc": 6.1}, "base/none/512": {"bpc": 9.5}, "base/yarn/512": {"bpc": 6.4},
            "yarn_continued/none/512": {"bpc": 6.0}, "control_continued/none/128": {"bpc": 5.9},
            "control_continued/yarn/512": {"bpc": 6.2}}
    table = yarn_context.results_table(rows, [128, 512], 128, 100).splitlines()
    assert table[2] == "| 128 (1x) | 6.1000 | 6.1000 | 5.9000 | 5.9000 | - |"
    assert table[3] == "| 512 (4x) | 9.5000 | 6.4000 | - | 6.2000 | 6.0000 |"
