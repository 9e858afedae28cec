"""Metric loggers: TensorBoard events read back, W&B offline by default, clear errors for missing packages."""
from __future__ import annotations

import sys
import types

import pytest

from zhgpt.errors import ZhgptError
from zhgpt.training.logger import (FanoutLogger, Logger, TensorBoardLogger, make_logger, metric_name, named_scalars,
                          parse_backends, sample_tag)


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_tensorboard_scalars_and_text(tmp_path):
    run = tmp_path / "run"
    lg = make_logger(["tensorboard"], run, {"train": {"lr": 2e-3}, "model": {"n_layer": 4}})
    assert isinstance(lg, TensorBoardLogger)
    for step in (1, 2, 3):
        # what the training loop passes: its flat metrics.jsonl keys, including ones that are not curves
        lg.log_scalars(step, {"step": step, "loss": 5.0 - step, "lr": 1e-3 * step, "grad_norm": 0.5,
                              "tokens_per_sec": 1000.0 * step, "memory_mb": 512, "note": "text is skipped"})
    lg.log_scalars(3, {"val_loss": 2.5, "val_bpc": 3.1, "val_ppl": 12.2})
    lg.log_text(3, sample_tag("今天天气"), "今天天气很好，*我们*去公园。")
    lg.close()

    ea = _events(run)
    scalars = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_sec", "perf/memory_mb", "val/loss",
            "val/bpc", "val/ppl"} <= scalars
    assert not any("step" in s or "note" in s for s in scalars)
    assert [(e.step, e.value) for e in ea.Scalars("train/loss")] == [(1, 4.0), (2, 3.0), (3, 2.0)]
    assert ea.Scalars("val/bpc")[0].value == pytest.approx(3.1)

    tensors = ea.Tags()["tensors"]
    tag = next(t for t in tensors if t.startswith("samples/今天天气"))
    event = ea.Tensors(tag)[0]
    text = event.tensor_proto.string_val[0].decode("utf-8")
    assert event.step == 3 and "今天天气很好，*我们*去公园。" in text
    assert any(t.startswith("config") for t in tensors)


def test_metric_names():
    assert metric_name("loss") == "train/loss" and metric_name("val_bpc") == "val/bpc"
    assert metric_name("tokens_per_sec") == "perf/tokens_per_sec" and metric_name("val/loss") == "val/loss"
    assert metric_name("custom") == "train/custom"
    np = pytest.importorskip("numpy")
    assert named_scalars({"loss": np.float32(1.5), "step": 3, "flag": True, "x": None}) == {"train/loss": 1.5}


def test_noop_logger_and_disabled_ranks(tmp_path):
    for lg in (make_logger(["none"], tmp_path / "a", {}), make_logger(["tensorboard"], tmp_path / "b", {},
                                                                      enabled=False),
               make_logger([], tmp_path / "c", {})):
        assert type(lg) is Logger
        lg.log_scalars(1, {"loss": 1.0})
        lg.log_text(1, "samples/x", "y")
        lg.log_config({})
        lg.close()
    # a disabled (non-zero DDP rank) logger writes nothing at all
    assert not (tmp_path / "b").exists()


def test_parse_backends_and_unknown():
    assert parse_backends("tensorboard,wandb") == ["tensorboard", "wandb"]
    assert parse_backends(["none"]) == [] and parse_backends(None) == ["tensorboard"]
    with pytest.raises(ZhgptError, match="unknown --log backend 'mlflow'"):
        parse_backends(["mlflow"])


@pytest.mark.parametrize("backend", ["wandb", "trackio"])
def test_missing_package_is_a_clear_error(backend, tmp_path, monkeypatch):
    # None in sys.modules makes `import wandb` raise ImportError, as if it were not installed
    monkeypatch.setitem(sys.modules, backend, None)
    with pytest.raises(ZhgptError, match=f"--log {backend} needs the {backend} package: pip install {backend}"):
        make_logger([backend], tmp_path, {})


def test_missing_tensorboard_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ZhgptError, match="pip install tensorboard"):
        make_logger(["tensorboard"], tmp_path, {})


class _FakeRun:
    def __init__(self, calls):
        self.calls = calls
        self.config = types.SimpleNamespace(update=lambda c, **kw: calls.append(("config", c)))

    def log(self, data, step=None):
        self.calls.append(("log", step, data))

    def finish(self):
        self.calls.append(("finish",))


def _fake_wandb(calls):
    mod = types.ModuleType("wandb")
    mod.init = lambda **kw: (calls.append(("init", kw)), _FakeRun(calls))[1]
    mod.Table = lambda columns, data: ("table", columns, data)
    return mod


def test_wandb_offline_without_api_key_and_fanout(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    lg = make_logger(["tensorboard", "wandb"], tmp_path / "run", {"train": {"lr": 1}})
    assert isinstance(lg, FanoutLogger)
    lg.log_scalars(5, {"loss": 2.0, "val_bpc": 3.0})
    lg.log_text(5, "samples/今天", "很好")
    lg.close()
    init = calls[0][1]
    assert init["mode"] == "offline" and init["project"] == "zhgpt" and init["dir"] == str(tmp_path / "run")
    assert init["config"] == {"train": {"lr": 1}}
    assert "WANDB_API_KEY is not set, logging offline" in capsys.readouterr().err
    assert ("log", 5, {"train/loss": 2.0, "val/bpc": 3.0}) in calls
    assert ("log", 5, {"samples/今天": ("table", ["step", "text"], [[5, "很好"]])}) in calls
    assert calls[-1] == ("finish",)
    assert (tmp_path / "run" / "tb").is_dir()

    # an explicit mode or an API key wins
    calls.clear()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    make_logger(["wandb"], tmp_path / "run2", {}).close()
    assert calls[0][1]["mode"] == "online"
    calls.clear()
    monkeypatch.setenv("WANDB_MODE", "disabled")
    make_logger(["wandb"], tmp_path / "run3", {}).close()
    assert calls[0][1]["mode"] == "disabled"
