"""`zhgpt sft`: supervised fine-tuning of a base model into an assistant, full or LoRA.

    zhgpt sft --init-from runs/base                         # the built-in SFT set (reviews, news)
    zhgpt sft --init-from runs/base --data chats.jsonl --lora --out runs/chat

It is `zhgpt train` with another `Stage`: the same set-up, loop, checkpoints, exact resume, time budget,
logging and report. What differs is here:

- **data**: conversations (``zhgpt.training.chat_data``) in the chat template, loss only on the
  assistant's tokens (its ``<|im_end|>`` included, so the model learns to stop);
- **model**: the tokenizer gains ``<|im_start|>`` / ``<|im_end|>``; their embedding rows are added (the
  old rows kept) and start at the mean of the learned ones; ``--lora`` freezes the rest
  (``zhgpt.training.lora``);
- **evaluation**: loss and bits per character of the held-out answers, the exact-match accuracy of
  greedy answers to held-out questions with short answers (the sentiment task: 正面 / 负面), and fixed
  chat prompts answered at every evaluation so the report shows the answers evolving;
- **export**: ``RUN/final`` with the chat template in ``tokenizer_config.json`` (so
  ``apply_chat_template`` works) and ``<|im_end|>`` as an end token in ``generation_config.json``;
  with ``--lora`` the merged model there and the unmerged adapter in ``RUN/adapter``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from zhgpt.config import opt
from zhgpt.errors import ZhgptError
from zhgpt.training.config import TrainConfig
from zhgpt.training.lora import TARGETS
from zhgpt.training.stage import Stage, load_prompts, make_sampler

# Measured on the built-in sentiment task (bench/RESULTS.md): full SFT of a Muon-pre-trained model does best
# with Muon again at the pre-training optimizer's scale, AdamW models with AdamW at 1e-3.
SFT_LR = {"muon": 3e-3, "adamw": 1e-3, "adamw8bit": 1e-3}
LORA_LR = 1e-3          # adapters start at zero and carry few parameters: they need a larger step than full SFT
SHORT_ANSWER_TOKENS = 16
DEFAULT_CHAT_PROMPTS = ["你好，请介绍一下你自己。", "中国的首都是哪里？"]


@dataclass
class SFTConfig(TrainConfig):
    # ---- data (TrainConfig's flags, with their meaning for conversations)
    data: list[str] = opt(help="conversation files, JSONL or JSON, one conversation per record, format detected per file "
                               "(OpenAI messages, ShareGPT, MiniMind, Alpaca), or builtin, builtin:sentiment, "
                               "builtin:continuation (derived from the built-in corpus)", factory=lambda: ["builtin"])
    val_data: str = opt("", "conversations used as the validation split (default: 5 % of --data held out by hash; "
                            "the built-in set has its own held-out split)")
    init_from: str = opt("", "the model to fine-tune (required): a zhgpt run or checkpoint, or a local Hugging Face "
                             "GPT-2/Llama folder; its tokenizer gains the chat tokens")
    lr: float = opt(SFT_LR["adamw"], "peak learning rate: 1e-3 with AdamW (and --lora) unless given; 3e-3 when the "
                                      "model was trained with Muon, which then fine-tunes with Muon again")
    skip_bad_lines: bool = opt(False, "skip (and count) records that cannot be read as conversations instead of "
                                      "stopping at the first")
    packing: bool = opt(True, "pack several conversations into each row, attention and positions kept inside each "
                              "(measured: the same held-out loss 1.2-1.35x sooner than one padded conversation per "
                              "row, with less memory)")
    epochs: float = opt(1.0, "passes over the training conversations, when no --max-steps / --time-budget / "
                             "--max-tokens / --max-epochs is given")
    # ---- evaluation
    eval_every: int = opt(50, "evaluate (answer loss, bits/char, accuracy, chat samples) every N steps")
    eval_answers: int = opt(64, f"held-out questions with short answers (<= {SHORT_ANSWER_TOKENS} tokens) answered "
                                "greedily at every evaluation: their exact-match accuracy (0 = off)")
    sample_prompts: str = opt("", "file with one user message per line, answered at every evaluation "
                                  "(default: held-out questions and two general ones)")
    sample_tokens: int = opt(64, "tokens of each sample answer at most")
    # ---- LoRA
    lora: bool = opt(False, "train LoRA adapters (peft), the embedding rows and the final norm instead of every "
                            f"weight, with AdamW at --lr {LORA_LR:g} by default")
    lora_rank: int = opt(8, "LoRA rank r")
    lora_alpha: float = opt(16.0, "LoRA alpha (updates are scaled by alpha / r)")
    lora_dropout: float = opt(0.0, "dropout on the LoRA input")
    lora_embeddings: bool = opt(True, "with --lora, also train every token's embedding row (peft trainable tokens; tied "
                                      "to the output layer in GPT-2; vocab x n_embd more trainable weights). Measured on "
                                      "the 7M CPU model: 82.8 % held-out sentiment accuracy with them, 59.7 % with the "
                                      "adapters alone (--no-lora-embeddings)")
    lora_targets: list[str] = opt(help=f"layers that get adapters: {', '.join(TARGETS)}", factory=lambda: list(TARGETS))

    def __post_init__(self):
        super().__post_init__()
        if self.epochs <= 0:
            raise ZhgptError(f"--epochs must be positive, got {self.epochs}")
        if self.lora and (self.lora_rank < 1 or self.lora_alpha <= 0):
            raise ZhgptError(f"--lora-rank must be >= 1 and --lora-alpha > 0 (got {self.lora_rank}, {self.lora_alpha})")


class SFTStage(Stage):
    name = "sft"

    def defaults(self, explicit: dict) -> dict:
        """The preset's pre-training length and evaluation cadence (e.g. cpu-tiny's 10-minute budget) are not
        a fine-tuning run's: SFTConfig's own win over them. Full SFT keeps the optimizer the model was
        trained with (Moonshot's Muon report: matching optimizers fine-tune best); LoRA adapters use AdamW."""
        own = {"time_budget": "", "max_tokens": 0, "eval_every": SFTConfig.eval_every}
        if explicit.get("lora"):
            return {**own, "optimizer": "adamw", "lr": LORA_LR}
        optimizer = explicit.get("optimizer") or trained_with(explicit.get("init_from", ""))
        return {**own, "optimizer": optimizer, "lr": SFT_LR.get(optimizer, SFT_LR["adamw"])}

    # ---------------------------------------------------------------- data and model
    def load_data(self, cfg: SFTConfig, model_fields: dict, run, dist, tokenizer_asked: bool):
        from zhgpt.training.chat_data import load_chat_data
        data = load_chat_data(cfg, model_fields["block_size"], run, dist)
        if data.n_base_tokens > model_fields["vocab_size"]:
            raise ZhgptError(f"--init-from {cfg.init_from}: its tokenizer has {data.n_base_tokens:,} tokens but the "
                             f"model only {model_fields['vocab_size']:,} embeddings; the folder's tokenizer is not "
                             "the model's (put the model's own tokenizer files beside it)")
        return data

    def adapt_model(self, model, data, cfg: SFTConfig):
        from zhgpt.model.vocab import add_token_rows
        new = [i for i in data.chat_ids if i >= data.n_base_tokens]   # an SFT model's own chat rows are kept
        if new:
            model = add_token_rows(model, new, data.n_base_tokens)
        if cfg.lora:
            from zhgpt.training.lora import apply_lora
            model = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                               lora_rows(cfg, data))
        return model

    def batches(self, data, mcfg, cfg: SFTConfig, dist):
        from zhgpt.training.chat_data import PackedBatches, PaddedBatches
        if cfg.packing:
            return PackedBatches(data.split("train"), data.eot_id, mcfg.block_size, cfg.batch_size, cfg.grad_accum,
                                 cfg.seed, dist.rank, dist.world)
        return PaddedBatches(data.split("train"), data.eot_id, cfg.batch_size, cfg.grad_accum, cfg.seed,
                             dist.rank, dist.world)

    def loss_fn(self, model, batch):
        x, y, *segments = batch           # packed batches carry segment ids
        return model(x, y, segments=segments[0] if segments else None)[1]

    def limits(self, cfg: SFTConfig, batches, n_params: int):
        if not (cfg.max_steps or cfg.time_budget or cfg.max_tokens or cfg.max_epochs):
            steps = math.ceil(cfg.epochs * batches.steps_per_epoch())
            from dataclasses import replace
            return super().limits(replace(cfg, max_steps=steps), batches, n_params)
        return super().limits(cfg, batches, n_params)

    # ---------------------------------------------------------------- evaluation and samples
    def evaluate(self, tr) -> dict:
        from zhgpt.training.chat_data import evaluate_chat
        data = tr.ds
        m = evaluate_chat(tr.raw_model, tr.val_split, data.eot_id, tr.device, tr.amp_dtype,
                          batch_size=tr.cfg.batch_size)
        if tr.cfg.eval_answers:
            acc, n = answer_accuracy(tr.sampler.engine, tr.val_split.convs, tr.cfg.eval_answers)
            if n:
                m["val_answer_acc"] = acc
        return m

    def sampler(self, cfg: SFTConfig, model, data):
        room = model.cfg.block_size - cfg.sample_tokens     # held-out questions that leave room for the answer
        fits = [c for c in data.splits["val"].convs
                if len(data.tokenizer.encode(chat_prompt(c.messages[0].content)).ids) <= room]
        prompts = load_prompts(cfg.sample_prompts, default=default_chat_prompts(fits))
        return make_sampler(cfg, model, data, prompts, fmt=chat_prompt, min_new_tokens=0)

    # ---------------------------------------------------------------- end of the run
    def final_model(self, model):
        from zhgpt.training.lora import is_lora, merged_model
        return merged_model(model) if is_lora(model) else model

    def export(self, tr, model) -> None:
        super().export(tr, model)
        if tr.cfg.lora:
            from zhgpt.training.lora import write_hf_adapter
            cfg = tr.cfg
            base = base_hf_folder(cfg.init_from, tr)
            write_hf_adapter(tr.raw_model, tr.run.root / "adapter", base, tr.ds.tokenizer_dir, lora_rows(cfg, tr.ds),
                             cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout)
            tr.run_info["adapter"] = {"path": str(tr.run.root / "adapter"), "base": str(base)}


    def try_it(self, run_dir) -> str:
        return f"zhgpt chat --model {run_dir}"


def lora_rows(cfg: SFTConfig, data) -> list[int]:
    """The embedding rows a LoRA run trains: the chat tokens', or every token's (--lora-embeddings)."""
    return list(range(data.vocab_size)) if cfg.lora_embeddings else list(data.chat_ids)


def trained_with(init_from: str) -> str:
    """The optimizer a zhgpt run or checkpoint was trained with ("adamw" for other models)."""
    from zhgpt.config import load_json
    from zhgpt.training.layout import META
    from zhgpt.training.runs import resolve_model_path
    try:
        kind, src = resolve_model_path(init_from)
    except ZhgptError:
        return "adamw"          # the set-up reports the bad path itself
    if kind != "checkpoint":
        return "adamw"
    return load_json(src / META).get("train", {}).get("optimizer", "adamw")


def chat_prompt(question: str) -> str:
    """A user message -> the model's input: the conversation so far and the assistant's header."""
    from zhgpt.data.chat import Message
    from zhgpt.data.chat_template import render
    from zhgpt.data.clean import normalize
    return render([Message("user", normalize(question))], add_generation_prompt=True)[0]


def default_chat_prompts(val_convs) -> list[str]:
    """Three held-out questions (one per task where there are several) and two general ones."""
    picked, seen_sources = [], set()
    for conv in val_convs:
        src = conv.source.split("/")[0]
        user = next((m.content for m in conv.messages if m.role == "user"), None)
        if user and src not in seen_sources:
            seen_sources.add(src)
            picked.append(user)
        if len(picked) == 3:
            break
    return picked + DEFAULT_CHAT_PROMPTS


def answer_accuracy(engine, convs, limit: int) -> tuple[float, int]:
    """(exact-match accuracy, how many) of greedy answers to ``limit`` conversations spread evenly over
    those whose last turn is a short assistant answer (the reference) and whose prompt fits the context."""
    from zhgpt.data.chat_template import render
    from zhgpt.data.sft import clean_messages
    from zhgpt.model.engine import SamplingParams

    room = engine.block_size - SHORT_ANSWER_TOKENS - 2
    eligible = []
    for conv in convs:
        msgs = clean_messages(conv.messages)
        if msgs[-1].role != "assistant" or len(engine.encode(msgs[-1].content)) > SHORT_ANSWER_TOKENS:
            continue
        prompt = render(msgs[:-1], add_generation_prompt=True)[0]
        if len(engine.encode(prompt)) <= room:
            eligible.append((prompt, msgs[-1].content.strip()))
    picked = eligible[::max(1, len(eligible) // limit)][:limit]     # spread: not just the first (often shortest)
    params = SamplingParams(max_new_tokens=SHORT_ANSWER_TOKENS + 2, temperature=0.0, seed=0)
    right = sum(engine.generate(prompt, params).texts[0].strip() == ref for prompt, ref in picked)
    return right / max(len(picked), 1), len(picked)


def base_hf_folder(init_from: str, tr) -> Path:
    """The Hugging Face folder the adapter applies to: --init-from itself when it is one, else RUN/base, the
    model the run started from (its new token rows included) exported once."""
    from zhgpt.training.runs import resolve_model_path
    kind, src = resolve_model_path(init_from)
    if kind == "hf":
        return src
    from zhgpt.model.hf import export_hf
    from zhgpt.training.lora import base_model
    return export_hf(base_model(tr.raw_model), tr.ds.tokenizer_dir, tr.run.root / "base")


# ------------------------------------------------------------------------- CLI

SKIP_FLAGS = ("tokenizer", "vocab_size", "preset")   # the model brings its tokenizer and shape


def configure_parser(p) -> None:
    from zhgpt.config import add_args
    add_args(p, SFTConfig, defaults_none=True, skip=SKIP_FLAGS)


def run_stage_cli(cls, stage: Stage, args, on_finish, needs: str) -> None:
    """A fine-tuning stage's command line (sft, dpo): its flags over the stage's defaults; --init-from required
    (``needs`` says what it takes) unless the run is resumed."""
    from zhgpt.config import overrides_from_args
    from zhgpt.training.train import main
    explicit = overrides_from_args(cls, args)
    if not explicit.get("init_from") and not explicit.get("resume"):
        raise ZhgptError(f"zhgpt {stage.name} needs --init-from MODEL: {needs}")
    main(cls(), explicit=explicit, on_finish=on_finish, stage=stage)


def run_cli(args, on_finish=None) -> None:
    run_stage_cli(SFTConfig, SFTStage(), args, on_finish, "a zhgpt run folder (e.g. runs/20260101-120000), "
                  "a checkpoint, or a local Hugging Face GPT-2/Llama folder")
