"""`zhgpt eval --lm-eval TASKS`: EleutherAI's lm-evaluation-harness (C-Eval, CMMLU, your own tasks) on the model.

The harness runs Hugging Face models, so a run or checkpoint is first exported (``zhgpt.model.hf.export_hf``)
into a temporary folder; an exported folder is used as it is. zhgpt never downloads: the task's data must
already be on disk (a local JSON/CSV/parquet file named by the task YAML, or a dataset already in the
Hugging Face cache), and the hub is switched off for the run (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from zhgpt.errors import ZhgptError

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@contextmanager
def offline():
    """No hub access while the harness runs. The libraries read the variables when first imported, and
    transformers (hence huggingface_hub) is usually imported by then, so their flags are set too; all
    are restored afterwards."""
    import datasets.config
    import huggingface_hub.constants
    flags = [(huggingface_hub.constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE"),
             (datasets.config, "HF_DATASETS_OFFLINE")]
    old_env = {k: os.environ.get(k) for k in OFFLINE}
    old_flags = [getattr(m, name, None) for m, name in flags]
    os.environ.update(OFFLINE)
    for m, name in flags:
        setattr(m, name, True)
    try:
        yield
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for (m, name), v in zip(flags, old_flags):
            setattr(m, name, v)


def parse_tasks(spec: str) -> list[str]:
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    if not tasks:
        raise ZhgptError(f"--lm-eval {spec!r}: no task names; pass comma-separated lm-eval tasks, e.g. "
                         "--lm-eval cmmlu or --lm-eval mytask --lm-eval-include tasks/")
    return tasks


def check_include(paths: list[str]) -> list[str]:
    for p in paths:
        if not Path(p).is_dir():
            raise ZhgptError(f"--lm-eval-include {p}: no such folder; pass the folder holding your task YAML files")
    return [str(Path(p).resolve()) for p in paths]


def require_lm_eval() -> None:
    """Fail before any work when the eval extra is missing."""
    _lm_eval()


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ZhgptError("zhgpt eval --lm-eval needs lm-evaluation-harness; install the eval extra: "
                         "pip install -e \".[eval]\"") from None
    return lm_eval, TaskManager


def task_manager(tasks: list[str], include: list[str]):
    """A TaskManager that knows ``tasks``. Indexing lm-eval's own ~15,000 task configs takes 10-15 s, so
    tasks found in the user's folders alone skip it. Unknown names -> one-line error."""
    _, TaskManager = _lm_eval()
    if include:
        own = TaskManager(include_path=include, include_defaults=False)
        if all(own.match_tasks([t]) for t in tasks):
            return own
    tm = TaskManager(include_path=include or None)
    unknown = [t for t in tasks if not tm.match_tasks([t])]
    if unknown:
        where = f" or in {', '.join(include)}" if include else " (add --lm-eval-include DIR for your own task YAMLs)"
        raise ZhgptError(f"--lm-eval: unknown task {', '.join(unknown)}: not an lm-eval task{where}; "
                         "`lm-eval ls tasks` lists them")
    return tm


def hf_folder(model_path: str, tmp: Path, rope_factor: float | None = None, context: int = 0) -> Path:
    """The Hugging Face folder of ``model_path``: itself if it is one and no RoPE scaling or context is
    asked, else a fresh export into ``tmp`` (with the ``rope_scaling`` / ``max_position_embeddings``
    transformers then runs it at: ``zhgpt.inference.loading.adapt_context``)."""
    from zhgpt.inference.loading import adapt_context
    from zhgpt.model.hf import EOT_ID, export_hf
    from zhgpt.training.runs import load_for_inference, resolve_model_path, tokenizer_dir_of
    kind, p = resolve_model_path(model_path)
    if kind == "hf" and not (rope_factor or context):
        return p
    if kind == "int8":
        raise ZhgptError(f"{p} is an int8 model, which lm-eval cannot load; pass the run or checkpoint it came from")
    model, _, info = load_for_inference(p)
    adapt_context(model, rope_factor, context)
    tokenizer = tokenizer_files(p, tmp / "tokenizer") if kind == "hf" else tokenizer_dir_of(p)
    return export_hf(model, tokenizer, tmp / "hf", eot_id=info.get("eot_id", EOT_ID))


def tokenizer_files(folder: Path, out: Path) -> Path:
    """The tokenizer files of an exported folder, copied into ``out``: export_hf copies every file of the
    tokenizer folder it is given, and this one's config.json and weights would overwrite the new export's."""
    out.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file() and f.name not in ("config.json", "generation_config.json") and \
                f.suffix not in (".safetensors", ".bin", ".pt") and not f.name.endswith(".index.json"):
            shutil.copy2(f, out / f.name)
    return out


def run_lm_eval(model_path: str, tasks: list[str], include: list[str], device: str, dtype: str,
                limit: int = 0, fewshot: int = -1, batch_size: int = 8, rope_factor: float | None = None,
                context: int = 0) -> dict:
    """Run the harness offline; -> {"results": per-task metrics, "table": the harness's own markdown table}.
    ``rope_factor`` / ``context``: as `zhgpt eval --rope-scaling yarn --rope-factor F` / `--context N`."""
    lm_eval, _ = _lm_eval()
    from lm_eval.utils import make_table
    tm = task_manager(tasks, include)
    torch_dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
    with offline(), tempfile.TemporaryDirectory(prefix="zhgpt-lm-eval-") as tmp:
        folder = hf_folder(model_path, Path(tmp), rope_factor, context)
        try:
            out = lm_eval.simple_evaluate(
                model="hf", model_args=f"pretrained={folder},tokenizer={folder},dtype={torch_dtype}",
                tasks=tasks, task_manager=tm, device=device, batch_size=batch_size,
                limit=limit or None, num_fewshot=None if fewshot < 0 else fewshot, log_samples=False)
        except (FileNotFoundError, ConnectionError, OSError) as e:
            # The usual cause: the task's dataset is on the hub and not in the local cache.
            raise ZhgptError(f"--lm-eval {','.join(tasks)}: {str(e).splitlines()[0]}; zhgpt runs lm-eval offline, "
                             "so the task's data must be on disk (point the task YAML at local files: "
                             "dataset_path: json, dataset_kwargs: {data_files: ...})") from None
    return {"results": out["results"], "table": make_table(out)}
