"""The `zhgpt` command: one console script, one subcommand per stage.

Each stage module exposes ``configure_parser(parser)`` (flags generated from its dataclass config)
and ``run_cli(args)`` (builds the config and calls the stage's ``main(cfg)``). Modules are imported
lazily so `zhgpt data ...` does not pay for importing torch.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from zhgpt.errors import ZhgptError

# name -> (module, one-line help)
COMMANDS = {
    "train": ("zhgpt.pipeline", "train a GPT (default: a tiny model on the built-in corpus)"),
    "data": ("zhgpt.data.prepare", "read, clean, split and tokenise text into token shards"),
    "sft": ("zhgpt.pipeline.sft", "fine-tune a model on conversations into an assistant (full or --lora)"),
    "dpo": ("zhgpt.pipeline.dpo", "direct preference optimisation of a chat model on chosen/rejected pairs"),
    "tokenizer": ("zhgpt.data.tokenizer_cli", "train a tokenizer or print its statistics"),
    "presets": ("zhgpt.model.presets", "list model presets with parameter counts"),
    "generate": ("zhgpt.inference.generate", "generate text from a run, checkpoint or exported model"),
    "chat": ("zhgpt.inference.chat", "talk to a model in the terminal (multi-turn, streaming, /reset)"),
    "eval": ("zhgpt.inference.evaluate", "bits per character of a model on text files; continuation ROUGE-L/BLEU; lm-eval tasks"),
    "export": ("zhgpt.inference.export", "export a checkpoint as a Hugging Face model folder"),
    "report": ("zhgpt.report.report", "loss curves, sample evolution and report.html for runs"),
    "estimate": ("zhgpt.training.estimate", "parameter count, memory and time estimates for a model"),
    "demo": ("zhgpt.apps.demo", "Gradio web demo for a model (needs the [serve] extra)"),
    "serve": ("zhgpt.apps.serve", "OpenAI-compatible HTTP API for a model (needs the [serve] extra)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zhgpt", description="Train a Chinese GPT from scratch and watch it learn.")
    from zhgpt import __version__
    parser.add_argument("--version", action="version", version=f"zhgpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if only is None or name == only:
            importlib.import_module(module).configure_parser(p)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Build only the requested subcommand's flags: keeps `zhgpt data` free of torch imports.
    only = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(only if only in COMMANDS else None)
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            sys.exit(0)
        importlib.import_module(args._module).run_cli(args)
    except ZhgptError as e:
        print(f"zhgpt: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("zhgpt: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # `zhgpt generate ... | head` closes the pipe early; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
