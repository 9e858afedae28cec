"""`zhgpt generate`: sample text from a run, a checkpoint or an exported Hugging Face folder.

Streams tokens to the terminal as they are generated (one sequence), or prints numbered samples
(``--num-return-sequences N``). ``--prompt-file`` generates for every line of a file.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass

from zhgpt.config import add_args, from_args, opt, print_config
from zhgpt.inference.loading import ModelOptions
from zhgpt.model.engine import Engine, SamplingParams
from zhgpt.errors import ZhgptError


@dataclass
class GenerateConfig(ModelOptions):
    """`zhgpt generate`: its own fields below; which model and how to run it come from ModelOptions."""
    prompt: str = opt("", "text to continue (empty = start a new document)")
    prompt_file: str = opt("", "generate for each line of this UTF-8 file")
    stream: bool = opt(True, "print tokens as they arrive (single sequence only)")
    no_cache: bool = opt(False, "recompute the whole context every token instead of using the KV cache (slow; for checks)")

    def __post_init__(self):
        self.require_model("generate")


def read_prompts(cfg: GenerateConfig) -> list[str]:
    if not cfg.prompt_file:
        return [cfg.prompt]
    try:
        with open(cfg.prompt_file, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    except OSError as e:
        raise ZhgptError(f"--prompt-file {cfg.prompt_file}: cannot read ({e.strerror})")
    except UnicodeDecodeError as e:
        raise ZhgptError(f"--prompt-file {cfg.prompt_file}: not UTF-8 (byte {e.start}); save the file as UTF-8")
    if not prompts:
        raise ZhgptError(f"--prompt-file {cfg.prompt_file}: no prompts in the file (one per line)")
    return prompts


def check_prompt(engine: Engine, prompt: str) -> None:
    """Warn when the tokenizer has to fall back to raw bytes: the model has never seen those characters."""
    ids = engine.encode(prompt)
    vocab = engine.tokenizer.get_vocab_size()
    fallback = [t for t in ids if (engine.tokenizer.id_to_token(t) or "").startswith("<0x")]
    if fallback or any(t >= vocab for t in ids):
        print(f"zhgpt: warning: the prompt has characters the tokenizer does not know ({len(fallback)} byte "
              "tokens); the model has not seen them in training, expect poor output", file=sys.stderr)


def main(cfg: GenerateConfig, params: SamplingParams) -> list[list[str]]:
    engine = cfg.load().engine
    results = []
    for prompt in read_prompts(cfg):
        check_prompt(engine, prompt)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cfg.stream and params.num_return_sequences == 1 and not cfg.no_cache:
                sys.stdout.write(prompt)
                sys.stdout.flush()
                pieces = []
                for piece in engine.stream(prompt, params):
                    pieces.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                sys.stdout.write("\n")
                texts = ["".join(pieces)]
            else:
                texts = engine.generate(prompt, params, use_cache=not cfg.no_cache).texts
                for i, t in enumerate(texts):
                    if len(texts) > 1:
                        print(f"--- sample {i + 1}")
                    print(prompt + t)
        for w in caught:
            print(f"zhgpt: warning: {w.message}", file=sys.stderr)
        results.append(texts)
    return results


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, GenerateConfig)
    add_args(p, SamplingParams, group="sampling")


def run_cli(args) -> None:
    cfg = from_args(GenerateConfig, args)
    params = from_args(SamplingParams, args)
    print_config(cfg, params, titles=("generate", "sampling"))
    main(cfg, params)
