"""The training loop and its phases: evaluate + sample, checkpoint, one optimizer step, log, finish.

Each iteration, in order: stop? -> evaluate + sample -> save -> one optimizer step -> log. `train` runs it
on a `Trainer` built by ``zhgpt.training.setup``; the step itself is ``zhgpt.training.step.train_step``
on the trainer's ``batches`` and ``loss_fn``, so a stage with other batches and another loss (SFT, DPO)
runs this same loop. Ctrl-C saves a checkpoint to resume from; running out of memory becomes advice.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from zhgpt.config import save_json
from zhgpt.core.device import autocast_ctx
from zhgpt.core.fmt import clock
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import GPT
from zhgpt.training.config import TrainConfig
from zhgpt.training.logger import sample_tag
from zhgpt.training.setup import Trainer
from zhgpt.training.step import Limits, NonFiniteLoss, lr_at, set_lr, train_step
from zhgpt.training.watch import eval_metrics, warnings_for

OnFinish = Callable[[Path, TrainConfig], None]
STANDARD_VAL = ("val_loss", "val_bpc", "val_ppl")
REPEAT_WINDOW_S = 1.0     # a signal this soon after the first is the same event delivered twice


def train(tr: Trainer, on_finish: OnFinish | None = None) -> Path:
    """Train until the first limit is reached; returns the run folder."""
    cfg, dist, state = tr.cfg, tr.dist, tr.state
    step = state["step"]
    t_start = time.time() - state["elapsed_s"]
    tr.model.train()
    last_val: dict = {}
    meter = Throughput()
    bar = make_bar(dist.master, tr.limits, step)
    preempt, save_clock = Preemption(), SaveClock(cfg.save_every_minutes)
    try:
        while True:
            elapsed = time.time() - t_start
            last = tr.limits.finished(step, elapsed)
            # -- evaluate + sample, save
            if step % cfg.eval_every == 0 or last:
                last_val, best = evaluate_and_sample(tr, step, elapsed, bar)
                save_now = (cfg.save_every == 0 and step > 0) or last
                if save_now and step != state.get("saved_step"):
                    save(tr, step, elapsed, last_val, best)
            elif cfg.save_every and step % cfg.save_every == 0 and step > 0:
                save(tr, step, elapsed, last_val, best=False)
            if step > 0 and step != state.get("saved_step") and save_clock.due(dist):
                save(tr, step, elapsed, last_val, best=False)      # --save-every-minutes
            if last:
                break
            # -- one optimizer step
            lr = lr_at(cfg, step, tr.limits.progress(step, elapsed))
            set_lr(tr.optimizer, lr)
            loss, grad_norm = train_step(tr.model, tr.optimizer, tr.scaler, tr.batches.step_batches(step), tr.loss_fn,
                                         device=tr.device, amp_dtype=tr.amp_dtype, dist=dist,
                                         grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip)
            step += 1
            state["step"] = step
            state["tokens_seen"] += tr.limits.tokens_per_step
            meter.add(tr.limits.tokens_per_step)
            # -- log
            if step % cfg.log_every == 0 and dist.master:
                log_step(tr, step, loss, lr, grad_norm, t_start, meter, bar)
            # -- preempted (SIGTERM / SIGUSR1): checkpoint this step and stop
            if preempt.requested(dist):
                return preempted(tr, step, time.time() - t_start, last_val, preempt.signum, bar)
    except NonFiniteLoss as e:
        raise ZhgptError(nonfinite_advice(tr, step, e.loss)) from None
    except KeyboardInterrupt:
        if dist.master and not dist.fsdp:   # FSDP would need every rank in a collective to gather the state
            path = save(tr, step, time.time() - t_start, last_val, best=False)
            print(f"\ninterrupted: saved {path}; continue with `zhgpt train --resume {tr.run.root}`", file=sys.stderr)
        raise
    except torch.cuda.OutOfMemoryError:
        raise ZhgptError(oom_advice(cfg, tr.device))
    except RuntimeError as e:
        if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
            raise ZhgptError(oom_advice(cfg, tr.device))
        raise
    finally:
        preempt.restore()
        if bar is not None:
            bar.close()
        tr.logger.close()
    return finish(tr, step, time.time() - t_start, last_val, on_finish)


class SaveClock:
    """--save-every-minutes: a checkpoint once that much wall time has passed since the last one it asked for
    (besides the step-based ones), so a preempted or crashed run loses at most that much. Ranks agree through
    an all-reduce, as their clocks differ."""

    def __init__(self, minutes: float):
        self.period, self.last = minutes * 60, time.time()

    def due(self, dist) -> bool:
        if not self.period:
            return False
        now = time.time()
        due = now - self.last >= self.period
        if dist.enabled:
            due = dist.sum(float(due)) > 0
        if due:
            self.last = now
        return due


class Preemption:
    """SIGTERM or SIGUSR1 (how a cloud provider stops a rented machine): the loop finishes the step it is in,
    writes a checkpoint and exits 0 with the resume command. A second signal (a second or more later) exits at
once. Under torchrun
    every rank gets the signal, maybe at different steps: the ranks agree on stopping through an all-reduce."""
    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        import signal
        self.signum, self.at, self.previous = None, 0.0, {}
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:     # not the main thread (a run started from a server or a notebook thread)
                pass

    def _handle(self, signum, frame):
        if self.signum is not None:
            # torchrun forwards the signal it gets to its workers: when the whole process group was signalled,
            # a worker gets it twice at once. Only a second signal that comes later means "stop now".
            if time.monotonic() - self.at > REPEAT_WINDOW_S:
                os._exit(128 + signum)
            return
        self.signum, self.at = signum, time.monotonic()

    def requested(self, dist) -> bool:
        if not dist.enabled:
            return self.signum is not None
        return dist.sum(float(self.signum is not None)) > 0

    def restore(self) -> None:
        import signal
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def preempted(tr: Trainer, step: int, elapsed: float, last_val: dict, signum, bar=None) -> Path:
    """The end of a preempted run: a checkpoint at ``step`` (all ranks take part), run.json says so, and the
    command that continues it."""
    import signal
    if step != tr.state.get("saved_step"):
        save(tr, step, elapsed, last_val, best=False)
    if tr.dist.master:
        tr.run_info.update({"status": "preempted", "steps": step, "tokens_seen": tr.state["tokens_seen"],
                            "elapsed_s": round(elapsed, 1)})
        save_json(tr.run.info, tr.run_info)
        name = signal.Signals(signum).name if signum else "a signal"
        say(f"{name}: stopped after step {step} with a checkpoint; continue with "
            f"`zhgpt {tr.stage.name} --resume {tr.run.root}`", bar)
    return tr.run.root


# ------------------------------------------------------------------------- evaluate + sample

def evaluate_and_sample(tr: Trainer, step: int, elapsed: float, bar=None) -> tuple[dict, bool]:
    """Validation loss / bits per char, the samples, and their records (rank 0 writes them).
    Returns (metrics, whether the validation loss is the best so far)."""
    dist, state = tr.dist, tr.state
    t0 = time.perf_counter()
    m = tr.stage.evaluate(tr)
    watched: dict = {}
    if dist.master or dist.all_ranks_forward:
        samples = write_samples(tr, step, elapsed, m, bar)
        watched = eval_metrics(tr, step, samples)
    best = state["best_val"] is None or m["val_loss"] < state["best_val"]
    if best:
        state["best_val"] = m["val_loss"]
    rec = {"step": step, "tokens_seen": state["tokens_seen"], "elapsed_s": round(elapsed, 2),
           **{k: v for k, v in m.items() if k.startswith("val_") and k != "val_partial"}, **watched,
           "eval_s": round(time.perf_counter() - t0, 3)}
    if dist.master:
        append_jsonl(tr.run.metrics, rec)
        tr.logger.log_scalars(step, {k: v for k, v in rec.items() if k not in ("step", "tokens_seen", "elapsed_s")
                                     and isinstance(v, (int, float))})
        extra = "".join(f" | {k[4:]} {m[k]:.3f}" for k in m if k.startswith("val_") and k not in STANDARD_VAL
                        and isinstance(m[k], float))
        say(f"eval step {step}: val loss {m['val_loss']:.4f} | bpc {m['val_bpc']:.4f} | ppl {m['val_ppl']:.2f}{extra}"
            f"{watch_line(watched)}", bar)
        warn(tr, rec, bar)
    return m, best


def watch_line(watched: dict) -> str:
    """The headline watcher metrics on the eval log line (all of them are in metrics.jsonl)."""
    return "".join(f" | {k} {watched[k]:.3f}" for k in ("probe_acc", "repeat_4", "copy_rate")
                   if isinstance(watched.get(k), float))


def warn(tr: Trainer, rec: dict, bar=None) -> None:
    """Health warnings for one metrics.jsonl record: printed, and kept in RUN/warnings.jsonl (rank 0)."""
    for msg in warnings_for(tr, rec):
        say(f"warning: {msg}", bar)
        append_jsonl(tr.run.warnings, {"step": rec["step"], "message": msg})


def write_samples(tr: Trainer, step: int, elapsed: float, metrics: dict, bar=None) -> list[tuple[str, str]]:
    """One completion per prompt into samples.jsonl and the logger; returns the (prompt, output) pairs.
    Every rank generates under FSDP (its forward passes are collectives); rank 0 writes."""
    sampler, master = tr.sampler, tr.dist.master
    outs = []
    tr.raw_model.eval()
    for prompt in sampler.prompts:
        with autocast_ctx(tr.device, tr.amp_dtype):
            text = sampler.engine.generate(sampler.format(prompt), sampler.params).texts[0]
        outs.append(text)
        if master:
            append_jsonl(tr.run.samples, {"step": step, "tokens_seen": tr.state["tokens_seen"],
                                          "elapsed_s": round(elapsed, 2), "val_loss": metrics["val_loss"],
                                          "val_bpc": metrics["val_bpc"], "prompt": prompt, "output": text})
            tr.logger.log_text(step, sample_tag(prompt), prompt + text)
    tr.raw_model.train()
    if master:
        first = (sampler.prompts[0] + outs[0]).replace("\n", " ")
        say(f"  sample @{step}: {first[:60]}", bar)   # through the bar, which a bare print would break
    return list(zip(sampler.prompts, outs))


# ------------------------------------------------------------------------- checkpoint, log, finish

def save(tr: Trainer, step: int, elapsed: float, metrics: dict, best: bool) -> Path | None:
    """Checkpoint on rank 0 (all ranks call it: under FSDP gathering the state is a collective)."""
    from zhgpt.training.checkpoint import save_checkpoint

    state = tr.state
    model_state, optim_state = tr.dist.full_state(tr.raw_model, tr.optimizer)
    state["saved_step"] = step    # on every rank: they must agree on which steps still need a save
    if not tr.dist.master:
        return None
    state["elapsed_s"] = elapsed
    train_state = {k: state[k] for k in ("step", "tokens_seen", "elapsed_s", "best_val")}
    meta = {"model": tr.full_config["model"], "train": tr.full_config["train"], "eot_id": tr.ds.eot_id,
            "tokenizer_hash": tr.ds.tokenizer_hash, "metrics": dict(metrics or {})}
    return save_checkpoint(tr.run.root, step, model_state, optim_state, train_state, meta, tr.ds.tokenizer_dir,
                           keep_last=tr.cfg.keep_last, best=best)


class Throughput:
    """Tokens per second between two log lines."""

    def __init__(self):
        self.since, self.tokens = time.time(), 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self, now: float) -> float:
        """Tokens per second since the last call, and start counting again."""
        tps = self.tokens / max(now - self.since, 1e-9)
        self.since, self.tokens = now, 0
        return tps


def log_step(tr: Trainer, step: int, loss: float, lr: float, grad_norm, t_start: float, meter: Throughput,
             bar=None) -> None:
    """A training record into metrics.jsonl and the logger, and the log line (or the progress bar). Rank 0."""
    now = time.time()
    elapsed = now - t_start
    tps = meter.rate(now)
    p = tr.limits.progress(step, elapsed)
    eta = elapsed * (1 - p) / p if p > 0 else 0.0
    rec = {"step": step, "tokens_seen": tr.state["tokens_seen"], "loss": loss, "lr": lr,
           "grad_norm": float(grad_norm), "tokens_per_sec": round(tps, 1),
           "elapsed_s": round(elapsed, 2), "eta_s": round(eta, 1)}
    if tr.peak_flops:
        from zhgpt.training.mfu import mfu
        rec["mfu"] = round(mfu(tps, tr.flops_per_token, tr.peak_flops, tr.dist.world), 5)
    mem = memory_mb(tr.device)
    if mem:
        rec["memory_mb"] = mem
    if tr.mcfg.moe_experts:      # MoE: aux_loss, z_loss, expert_frac (per layer, share of tokens per expert)
        rec.update(tr.raw_model.moe_stats())
    append_jsonl(tr.run.metrics, rec)
    tr.logger.log_scalars(step, {k: rec[k] for k in ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "memory_mb",
                                                     "aux_loss", "z_loss") if k in rec})
    warn(tr, rec, bar)
    if bar is not None:
        bar.set_postfix_str(f"loss {loss:.3f} {tps / 1000:.1f}k tok/s")
        bar.n = min(int(elapsed) if bar.unit == "s" else step, bar.total)
        bar.refresh()
    else:
        util = f" | MFU {rec['mfu']:.1%}" if "mfu" in rec else ""
        print(f"step {step} | loss {loss:.4f} | lr {lr:.2e} | {tps / 1000:.1f}k tok/s{util} | {clock(elapsed)} | "
              f"ETA {clock(eta)}", flush=True)


def finish(tr: Trainer, step: int, elapsed: float, last_val: dict, on_finish: OnFinish | None = None) -> Path:
    """The end of a run: run.json completed, the Hugging Face export RUN/final, ``on_finish`` (the report),
    the summary. Returns the run folder."""
    cfg, dist, run, state = tr.cfg, tr.dist, tr.run, tr.state
    final_model = tr.raw_model
    if dist.fsdp and cfg.export:
        full, _ = dist.full_state(tr.raw_model, None)   # collective: all ranks gather, rank 0 rebuilds
        if dist.master:
            final_model = GPT(tr.mcfg)
            final_model.load_state_dict(full)
    if dist.master and cfg.export:
        final_model = tr.stage.final_model(final_model)
    if dist.master:
        tr.run_info.update({"status": "completed", "steps": step, "tokens_seen": state["tokens_seen"],
                            "elapsed_s": round(elapsed, 1),
                            "final": {k: last_val.get(k) for k in ("val_loss", "val_bpc", "val_ppl")},
                            "tokens_per_sec": round(state["tokens_seen"] / max(elapsed, 1e-9), 1)})
        if cfg.export:
            tr.stage.export(tr, final_model)
            tr.run_info["export"] = str(run.final)
        save_json(run.info, tr.run_info)
        if on_finish is not None:
            on_finish(run.root, cfg)
        print(f"done: {step} steps, {state['tokens_seen']:,} tokens in {clock(elapsed)} | val loss "
              f"{last_val.get('val_loss', float('nan')):.4f} | {last_val.get('val_bpc', float('nan')):.4f} bits/char")
        print(f"run folder: {run.root}")
        print(f"try it: {tr.stage.try_it(run.root)}")
    return run.root


# ------------------------------------------------------------------------- small pieces

def append_jsonl(path: Path, rec: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def nonfinite_advice(tr: Trainer, step: int, loss: float) -> str:
    from zhgpt.training.checkpoint import latest_good
    good = latest_good(tr.run.root, quiet=True)
    return (f"loss became {loss} at step {step}; training stopped. Last good checkpoint: {good or 'none'}. "
            f"Lower --lr (now {tr.cfg.lr:g}), raise --warmup-steps, or use --dtype fp32/bf16 instead of fp16")


def oom_advice(cfg: TrainConfig, device: str) -> str:
    if device.startswith("cuda"):
        return (f"out of GPU memory with --batch-size {cfg.batch_size}; lower --batch-size (and raise --grad-accum "
                "to keep the tokens per step), add --grad-checkpointing, or use a smaller --block-size / preset")
    return (f"out of memory with --batch-size {cfg.batch_size}; lower --batch-size or --block-size, or add "
            "--grad-checkpointing (`zhgpt estimate` shows what fits)")


def memory_mb(device: str) -> float | None:
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    try:
        import resource
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)   # Linux: KiB
    except Exception:
        return None


def make_bar(master: bool, limits: Limits, step: int):
    """A tqdm progress bar when rank 0 writes to a terminal, else None (plain log lines)."""
    if not master or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    if limits.max_steps:
        total, unit = limits.max_steps, "step"
    elif limits.max_tokens:
        total, unit = math.ceil(limits.max_tokens / limits.tokens_per_step), "step"
    else:
        total, unit = int(limits.budget_s), "s"
    return tqdm(total=total, initial=step if unit == "step" else 0, unit=unit, dynamic_ncols=True, desc="train")


def say(msg: str, bar=None) -> None:
    if bar is not None:
        bar.write(msg)
    else:
        print(msg, flush=True)
