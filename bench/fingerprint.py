"""Fingerprint the pipeline's outputs on a fixed seed: shards, tokenizer, checkpoint weights, exports.

Used to show that a change which should not change behaviour (a refactor, a move of modules) leaves
every artifact byte-identical. It only drives the `zhgpt` command line, so it runs unchanged against
any version of the package:

    git worktree add /tmp/old OLD_COMMIT
    python bench/fingerprint.py --src /tmp/old --out /tmp/fp-before.json     # the old commit's code
    python bench/fingerprint.py --out /tmp/fp-after.json      # on the new one
    python bench/fingerprint.py --compare /tmp/fp-before.json /tmp/fp-after.json

Exit status 1 when an artifact differs or a flag disappeared. A changed --help is listed but is not a failure: a refactor may
reword or regroup flags on purpose (check the list against what was meant to change).

Files whose content holds wall-clock times or absolute paths (run.json, metrics, config.json of a
run, meta.json of a checkpoint) are not hashed; what they describe is covered by the hashed files
(the weights after N steps depend on every batch, learning rate and optimizer step that came before).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "pd1998"

# Deterministic outputs, relative to the work folder. Globs expand to every matching file.
HASHED = [
    "data/*.bin", "data/tokenizer/*",
    "run/checkpoints/step_*/model.safetensors", "run/checkpoints/step_*/tokenizer/*",
    "run/final/*.safetensors", "run/final/tokenizer*.json", "run/final/config.json",
    "run/final/generation_config.json", "run/final/special_tokens_map.json",
    "export_llama/*.safetensors", "export_llama/config.json", "export_int8/model_int8.pt",
    "generate.txt", "help/*.txt",
]
COMMANDS = ["train", "data", "tokenizer", "presets", "generate", "chat", "eval", "export", "report", "estimate",
            "demo", "serve"]


ZHGPT = [sys.executable, "-m", "zhgpt"]


def use_source(src: str) -> None:
    """Run the zhgpt found in folder ``src`` (e.g. a `git worktree` of an older commit) instead of the
    installed one: the editable install's import hook is taken off sys.meta_path so ``src`` wins."""
    boot = ("import runpy, sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
            f"type(f).__module__.lower()]; sys.path.insert(0, {str(Path(src).resolve())!r}); "
            "sys.argv[0] = 'zhgpt'; runpy.run_module('zhgpt', run_name='__main__', alter_sys=True)")
    ZHGPT[:] = [sys.executable, "-c", boot]


def zhgpt(*args: str, cwd: Path, stdout=subprocess.DEVNULL) -> None:
    env = {**os.environ, "COLUMNS": "100", "ZHGPT_HOME": str(cwd / "home"), "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    subprocess.run([*ZHGPT, *args], cwd=cwd, env=env, check=True, stdout=stdout,
                   stderr=subprocess.DEVNULL)


def make_text(work: Path) -> tuple[Path, Path]:
    train, val = work / "train.txt", work / "val.txt"
    for src, dst, n in ((SHARED / "train.txt", train, 2000), (SHARED / "val.txt", val, 100)):
        with open(src, encoding="utf-8") as f:
            dst.write_text("".join(line for _, line in zip(range(n), f)), encoding="utf-8")
    return train, val


def build(work: Path) -> None:
    train, val = make_text(work)
    zhgpt("data", "prepare", str(train), "--val-source", str(val), "--tokenizer", "bpe", "--vocab-size", "2000",
          "--out", str(work / "data"), cwd=work)
    tiny = ["--n-layer", "2", "--n-head", "4", "--n-embd", "64", "--block-size", "64"]
    common = ["--batch-size", "4", "--eval-every", "10", "--eval-tokens", "2000", "--sample-tokens", "8",
              "--log", "none", "--no-report", "--seed", "7"]
    zhgpt("train", "--data", str(work / "data"), "--out", str(work / "run"), "--max-steps", "20", "--preset",
          "cpu-tiny", "--dtype", "fp32", *tiny, *common, cwd=work)
    zhgpt("train", "--data", str(work / "data"), "--out", str(work / "llama"), "--max-steps", "10", "--preset",
          "cpu-tiny", "--arch", "llama", "--qk-norm", "--no-bias", "--dtype", "fp32", "--no-export", *tiny, *common,
          cwd=work)
    zhgpt("export", "--model", str(work / "llama"), "--out", str(work / "export_llama"), cwd=work)
    zhgpt("export", "--model", str(work / "run"), "--quantize", "int8", "--out", str(work / "export_int8"), cwd=work)
    with open(work / "generate.txt", "w", encoding="utf-8") as f:
        zhgpt("generate", "--model", str(work / "run"), "--prompt", "中国的", "--max-new-tokens", "16",
              "--temperature", "0", "--no-stream", cwd=work, stdout=f)


def capture_help(work: Path) -> None:
    """Every subcommand's --help, so a change to what users see is caught too."""
    (work / "help").mkdir()
    for cmd in ["", *COMMANDS, "data prepare", "tokenizer train", "tokenizer stats"]:
        path = work / "help" / f"{cmd.replace(' ', '_') or 'zhgpt'}.txt"
        try:
            with open(path, "w", encoding="utf-8") as f:
                zhgpt(*cmd.split(), "--help", cwd=work, stdout=f)
        except subprocess.CalledProcessError:     # a command this version does not have yet
            path.unlink()


def flags_of(help_text: str) -> list[str]:
    """The long options a --help lists (its usage block), sorted."""
    return sorted(set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", help_text.split("\n\n")[0])))


def fingerprint(work: Path) -> dict[str, str]:
    out = {f"flags/{p.stem}": " ".join(flags_of(p.read_text(encoding="utf-8")))
           for p in sorted((work / "help").glob("*.txt"))}
    for pattern in HASHED:
        for p in sorted(work.glob(pattern)):
            if p.is_file():
                out[str(p.relative_to(work))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the fingerprint JSON here")
    ap.add_argument("--src", help="fingerprint the zhgpt in this folder (e.g. a git worktree of an old commit)")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two fingerprint files")
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not k.startswith("flags/"))
        artifacts = [k for k in diff if not k.startswith("help/")]
        removed = []
        for k in sorted(k for k in a if k.startswith("flags/")):
            gone = set(a[k].split()) - set(b.get(k, "").split())
            new = set(b.get(k, "").split()) - set(a[k].split())
            removed += [f"{k[6:]} {f}" for f in sorted(gone)]
            if new:
                print(f"flags added: zhgpt {k[6:].replace('_', ' ')}: {' '.join(sorted(new))}")
        for k in diff:
            print(f"{'help text changed' if k.startswith('help/') else 'DIFFERS'}: {k}")
        for r in removed:
            print(f"FLAG REMOVED: {r}")
        print(f"artifacts: {sum(1 for k in a if not k.startswith(('help/', 'flags/'))) - len(artifacts)} identical, "
              f"{len(artifacts)} differ; flags removed: {len(removed)}; help: {len(diff) - len(artifacts)} of "
              f"{sum(1 for k in a if k.startswith('help/'))} subcommands' --help changed")
        sys.exit(1 if artifacts or removed else 0)
    if args.src:
        use_source(args.src)
    with tempfile.TemporaryDirectory(prefix="zhgpt-fp-") as tmp:
        work = Path(tmp)
        build(work)
        capture_help(work)
        fp = fingerprint(work)
    text = json.dumps(fp, indent=1, sort_keys=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(f"{len(fp)} files fingerprinted")


if __name__ == "__main__":
    main()
