"""`zhgpt estimate`: parameters, memory and time per step of a model, before buying the GPU hours.

Everything here is arithmetic on a ``ModelConfig``; nothing is built or allocated, so the estimate for
GPT-2 XL runs in milliseconds on a laptop.

Assumptions (the numbers a training step of ``zhgpt train`` actually allocates):

- **Weights** stay fp32 (4 B/param) in every precision. Mixed precision (bf16/fp16) means
  ``torch.autocast``: each matmul weight is cast to a 16-bit working copy (2 B/param) that autocast
  caches for the forward pass and the matmul keeps for backward, so mixed precision costs 6 B/param of
  weights, not 2. Embedding lookups read the fp32 table, so only matmul weights get a copy (the tied
  output layer is a matmul).
- **Gradients** have the parameters' dtype: fp32, 4 B/param.
- **Optimizer**: AdamW keeps m and v in fp32, 8 B/param; 8-bit AdamW (bitsandbytes) 1 byte each plus a
  per-2048-block scale (negligible), 2 B/param.
- **Activations** are the tensors autograd saves for backward, counted op by op for model.py's block
  (see ``layer_bytes_per_token``): the residual stream is fp32 (parameters are fp32, so adding a bf16
  branch output promotes), matmul outputs are 16-bit under autocast. Attention is
  ``F.scaled_dot_product_attention`` with ``is_causal=True``, which picks a flash/memory-efficient
  kernel on CUDA and (torch >= 2.2) on CPU: only q, k, v, the output and a per-head logsumexp are
  saved, never the T x T matrix. ``--attention math`` counts the fallback path that does store the
  T x T probabilities (older GPUs, explicit masks). Dropout is 0 (p=0 dropout returns its input).
- **Logits and loss**: the training loop holds the (B, T, V) logits while backward runs, cross-entropy
  saves its fp32 log-softmax, and the first backward node briefly holds two more fp32 (B, T, V) gradients.
  For small models with a 32k vocabulary this is the largest single item.
- **Total** is the sum of the lines: the peak at the start of backward, with gradients counted in full
  (``zero_grad(set_to_none=False)`` or gradient accumulation keep them all alive). No allocator
  fragmentation or CUDA context is included; ``--memory`` keeps 15% headroom for those.
- **Time** is tokens x training FLOPs per token (``6*N + 12*L*C*T``, as ``GPT.flops_per_token``) / (peak x
  MFU). The peak comes from where training takes it (``mfu.peak_flops``: the GPU table, or the matmul
  measurement cached per machine, threads and dtype); ``--device-tflops`` overrides it. The MFU is
  ``--mfu``, else a default per device kind (``DEFAULT_MFU``). Gradient checkpointing re-runs the forward
  (+2N of 6N). Checked against measured runs in bench/RESULTS.md ("zhgpt estimate's time vs measured runs").
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from zhgpt.config import add_args, from_args, opt, overrides_from_args, parse_size, print_config, text_table
from zhgpt.core import fmt
from zhgpt.core.device import DTYPES, hardware_info, resolve_device
from zhgpt.errors import ZhgptError
from zhgpt.model.gpt import ModelConfig
from zhgpt.training.layout import cache_root
from zhgpt.training.mfu import peak_flops
from zhgpt.training.optim import OPTIMIZERS
from zhgpt.model.presets import PRESETS, count_params, get_preset

GiB = 1024 ** 3
PRECISIONS = ("fp32", "bf16", "fp16")
ATTENTIONS = ("flash", "math")
# Share of --memory we plan to fill: the rest is for the CUDA context (~0.3-0.6 GiB), cuBLAS
# workspaces and caching-allocator fragmentation, which max_memory_allocated() does not see.
USABLE_FRACTION = 0.85
# Expected MFU when --mfu is not given, per device kind, with where the figure comes from.
DEFAULT_MFU = {
    # Measured: the default `zhgpt train` (cpu-tiny, bf16, Muon, 10 min) ran at 22.1 % median MFU (131 log
    # lines) on a 2-core AMD EPYC; five other bf16 runs of that size there, 20-26 % (bench/RESULTS.md).
    "cpu": (0.22, "measured: median of the default cpu-tiny run on a 2-core EPYC"),
    # Assumed, not measured here (no GPU run yet): below nanochat's reported 41-46 % (H100, bf16, compiled)
    # as a margin for eager mode, smaller models and other GPUs.
    "gpu": (0.35, "assumed, not measured here (nanochat reports 41-46 % on H100)"),
}


@dataclass
class EstimateConfig:
    preset: str | None = opt(None, "model preset to estimate (default: a table of all presets)",
                             choices=list(PRESETS))
    model: dict = opt(help="ModelConfig fields overriding the preset's, e.g. {'arch': 'llama', 'n_layer': 8} "
                           "(on the command line: the model flags of `zhgpt train`, --n-layer 8 ...)",
                      factory=dict, cli=False)
    batch_size: int | None = opt(None, "micro-batch size in sequences (default: the preset's training batch size)")
    seq_len: int | None = opt(None, "tokens per sequence (default: block_size)")
    precision: str = opt("bf16", "fp32, or bf16/fp16 autocast mixed precision with fp32 master weights",
                         choices=PRECISIONS)
    optimizer: str = opt("adamw", "adamw (fp32 m and v), adamw8bit (bitsandbytes, 1 byte each) or muon "
                                  "(one fp32 momentum for the block matrices, AdamW for the rest)",
                         choices=OPTIMIZERS)
    grad_checkpointing: bool = opt(False, "recompute each block's activations in backward")
    attention: str = opt("flash", "attention kernel: flash (no T x T matrix saved) or math (saves it)",
                         choices=ATTENTIONS)
    memory: str | None = opt(None, "device memory, e.g. 24GB: report the largest batch that fits")
    device_tflops: float | None = opt(None, "peak TFLOPS of the device for the time estimate (default: as "
                                      "training takes it: the GPU table, or this CPU's measured peak), "
                                      "e.g. A100 bf16 312, H100 989, RTX 4090 165")
    mfu: float | None = opt(None, "expected MFU, 0 < mfu <= 1; time = FLOPs / (peak x mfu) "
                                  f"(default: {DEFAULT_MFU['cpu'][0]} on CPU, measured; "
                                  f"{DEFAULT_MFU['gpu'][0]} on GPUs, assumed)")
    tokens_per_step: int | None = opt(None, "tokens per optimizer step incl. gradient accumulation "
                                      "(default: batch_size * seq_len)")

    def __post_init__(self):
        for name in ("batch_size", "seq_len", "tokens_per_step"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ZhgptError(f"--{name.replace('_', '-')} must be positive, got {v}")
        if self.device_tflops is not None and self.device_tflops <= 0:
            raise ZhgptError(f"--device-tflops must be positive, got {self.device_tflops}")
        if self.mfu is not None and not 0 < self.mfu <= 1:
            raise ZhgptError(f"--mfu must be a fraction in (0, 1], got {self.mfu}; e.g. --mfu 0.3 for 30 %")
        if self.memory is not None:
            parse_size(self.memory)   # fail early on "24 gigs"
        unknown = sorted(set(self.model) - {f.name for f in dataclasses.fields(ModelConfig)})
        if unknown:
            raise ZhgptError(f"unknown model field(s) {', '.join(unknown)}; see `zhgpt train --help` for the model flags")

    @property
    def mixed(self) -> bool:
        return self.precision != "fp32"


@dataclass
class Estimate:
    """One configuration's numbers; all memory in bytes."""
    name: str
    model: ModelConfig
    batch_size: int
    seq_len: int
    params: int
    weights: int
    grads: int
    optimizer: int
    activations: int              # saved tensors + logits/loss, without gradient checkpointing
    activations_ckpt: int         # the same with gradient checkpointing
    logits: int                   # of which: logits held by the loop + log-softmax + loss-backward transients
    grad_checkpointing: bool
    flops_per_token: float
    tokens_per_step: int
    step_time_s: float
    max_batch: int | None = None  # with --memory: largest micro-batch that fits
    max_batch_ckpt: int | None = None

    @property
    def act_used(self) -> int:
        return self.activations_ckpt if self.grad_checkpointing else self.activations

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.act_used


# --- activation formula ---------------------------------------------------------------------------

def layer_bytes_per_token(cfg: ModelConfig, seq_len: int, mixed: bool, attention: str = "flash") -> float:
    """Bytes one transformer block saves for backward, per token (multiply by B*T).

    Counted op by op from model.py and checked against a saved_tensors_hooks census of the real
    model (tests/training/test_estimate.py). a = bytes of a matmul output (2 under autocast, 4 in fp32);
    r = 4, the fp32 residual stream; C = n_embd, Ckv = key/value width, F = MLP hidden, H = heads.
    A gpt2 block with flash attention comes to 2r*C + a*(5C + 2F) + 4H + 16, i.e. 64*C bytes in fp32
    and 36*C under autocast (Korthikanti et al. 2022 count 34*C with 16-bit norms and dropout masks).
    """
    a, r = (2 if mixed else 4), 4
    C, H, F = cfg.n_embd, cfg.n_head, cfg.mlp_hidden
    Ckv, Hkv = cfg.kv_heads * cfg.head_dim, cfg.kv_heads
    gqa = Hkv != H
    flash = attention == "flash"
    if cfg.arch == "gpt2":
        # LayerNorm saves its input (the residual x) and per-token mean and rstd (2 fp32); the next
        # Linear saves its input: the LN output in fp32, or autocast's 16-bit copy of it.
        norm = r * C + 8 + a * C
    else:
        # RMSNorm: pow/mul save x, one fp32 rsqrt per token, weight * normalized saves the fp32
        # normalized tensor; the next Linear saves its (cast) input.
        norm = 2 * r * C + 4 + a * C
    qkv_kept = False   # is the fused (B, T, C + 2Ckv) c_attn output kept alive by a saved view of it?
    qk = 0.0           # q/k tensors saved on their way to SDPA
    if cfg.arch == "llama":
        if cfg.qk_norm:
            # q_norm/k_norm: .float() of the 16-bit view is a copy under autocast (4 B) and is the
            # view itself in fp32; the normalized tensor is saved in x.dtype (a B); one rsqrt per head.
            if mixed:
                qk += 4 * (C + Ckv)
            else:
                qkv_kept = True
            qk += a * (C + Ckv) + 4 * (H + Hkv)
        if flash:
            # apply_rope multiplies by buffers that need no gradient, so only its outputs are saved,
            # by SDPA: rotated q, and rotated k unless GQA repeats it into a new tensor.
            qk += a * C + (0 if gqa else a * Ckv)
    elif flash:
        qkv_kept = True                     # SDPA saves q and k, views of the c_attn output
    if flash:
        if gqa:
            qk += 2 * a * C                 # repeat_interleave'd k and v, saved by SDPA
        else:
            qkv_kept = True                 # v is a view of the c_attn output
        # SDPA output (also c_proj's input: its layout follows the (B, T, H, D) query view, so
        # .transpose(1, 2).contiguous() does not copy) + fp32 logsumexp per head.
        attn = a * C + 4 * H
    else:
        # Math path, as measured on CPU: computes in fp32 even under autocast, saves scaled q and k,
        # a copy of v, the (B, H, T, T) probabilities, and c_proj's contiguous copy of the output.
        Ck = C if gqa else Ckv
        attn = 4 * (C + 2 * Ck) + 4 * H * seq_len + a * C
    qkv = a * (C + 2 * Ckv) if qkv_kept else 0
    if cfg.arch == "gpt2":
        mlp = 2 * a * F                     # GELU input and GELU output (c_proj's input)
    else:
        mlp = 4 * a * F                     # c_fc output (gate|up, 2F), silu output, silu*up product
    if cfg.moe_experts:
        # MoE (not census-checked, approximate): each of the k routed copies of a token saves an expert's
        # MLP activations plus its gathered input and weighted output; the router its fp32 logits/probs.
        K, E = cfg.moe_top_k, cfg.moe_experts
        mlp = K * (mlp + 2 * a * C) + 8 * E + ((mlp + a * C) if cfg.moe_shared_expert else 0)
    return 2 * norm + qkv + qk + attn + mlp


def head_bytes_per_token(cfg: ModelConfig, mixed: bool) -> tuple[float, float]:
    """(saved, extra) bytes per token for ln_f + lm_head + cross-entropy.

    saved: ln_f's saved tensors, lm_head's input and the fp32 log-softmax cross-entropy saves.
    extra: what is not a saved tensor but is alive at the start of backward: the (B,T,V) logits the
    loop holds (16-bit under autocast) and the two fp32 (B,T,V) gradients of the first backward
    nodes (nll_loss -> log_softmax).
    """
    a, r, C, V = (2 if mixed else 4), 4, cfg.n_embd, cfg.vocab_size
    norm = (r * C + 8) if cfg.arch == "gpt2" else (2 * r * C + 4)
    saved = norm + a * C + 8 + 4 * V        # + the int64 token ids the embedding keeps, + log-softmax
    extra = a * V + 2 * 4 * V
    return saved, extra


def saved_activation_bytes(cfg: ModelConfig, batch_size: int, seq_len: int, mixed: bool,
                           attention: str = "flash") -> int:
    """Bytes of tensors autograd saves in one forward (no checkpointing, weights' 16-bit copies
    excluded): what a saved_tensors_hooks census measures. Tests compare the two."""
    head_saved, _ = head_bytes_per_token(cfg, mixed)
    per_token = cfg.n_layer * layer_bytes_per_token(cfg, seq_len, mixed, attention) + head_saved
    return int(batch_size * seq_len * per_token)


def activation_bytes(cfg: ModelConfig, batch_size: int, seq_len: int, mixed: bool, attention: str = "flash",
                     grad_checkpointing: bool = False) -> tuple[int, int]:
    """(activations incl. logits/loss, of which logits/loss) for one micro-batch."""
    tokens = batch_size * seq_len
    layer = layer_bytes_per_token(cfg, seq_len, mixed, attention)
    head_saved, extra = head_bytes_per_token(cfg, mixed)
    logits = extra + 4 * cfg.vocab_size     # everything (B, T, V)-sized: held logits, log-softmax, grads
    if grad_checkpointing:
        # Each block keeps only its fp32 input; in backward one block at a time is recomputed.
        blocks = cfg.n_layer * 4 * cfg.n_embd + layer
    else:
        blocks = cfg.n_layer * layer
    return int(tokens * (blocks + head_saved + extra)), int(tokens * logits)


# --- the rest of the step ---------------------------------------------------------------------------

def matmul_params(cfg: ModelConfig) -> int:
    """Weights a token uses in matmuls: everything but the embedding tables, plus the (possibly tied) output
    layer; with MoE only the top-k experts (FLOPs follow the active parameters, memory the total)."""
    n = count_params(cfg, active=True) - cfg.vocab_size * cfg.n_embd          # minus wte
    if cfg.arch == "gpt2":
        n -= cfg.block_size * cfg.n_embd                           # minus wpe
    if cfg.tie_embeddings:
        n += cfg.vocab_size * cfg.n_embd                           # the tied lm_head is a matmul
    return n


def matmul_weights(cfg: ModelConfig) -> int:
    """Elements of the weight matrices autocast casts to 16 bits (biases and norms are not saved as copies)."""
    C, F = cfg.n_embd, cfg.mlp_hidden
    qkv_out = (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim
    fc_out = F * (2 if cfg.arch == "llama" else 1)
    mlp = C * fc_out + F * C
    if cfg.moe_experts:   # every expert's matrices (all run, on 0 rows when no token picks them), the router
        mlp = (cfg.moe_experts + cfg.moe_shared_expert) * mlp + cfg.moe_experts * C + cfg.moe_shared_expert * C
    return cfg.n_layer * (C * qkv_out + C * C + mlp) + cfg.vocab_size * C


def optimizer_bytes(cfg: ModelConfig, optimizer: str) -> int:
    """Optimizer state: AdamW m and v (fp32, or 8-bit with bitsandbytes); Muon keeps one fp32 momentum
    for the matrices inside the blocks and AdamW's two moments for everything else (zhgpt/optim.py)."""
    n = count_params(cfg)
    if optimizer == "muon":
        block_matrices = matmul_weights(cfg) - cfg.vocab_size * cfg.n_embd
        return 4 * block_matrices + 8 * (n - block_matrices)
    return (8 if optimizer == "adamw" else 2) * n


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token, as GPT.flops_per_token but for the sequence length actually used."""
    return 6 * matmul_params(cfg) + 12 * cfg.n_layer * cfg.n_embd * seq_len


def estimate(cfg: ModelConfig, batch_size: int, seq_len: int | None = None, *, precision: str = "bf16",
             optimizer: str = "adamw", grad_checkpointing: bool = False, attention: str = "flash",
             peak: float = 312e12, mfu: float = DEFAULT_MFU["gpu"][0], tokens_per_step: int | None = None,
             memory: int | None = None, name: str = "") -> Estimate:
    """Memory and time of one step; time at ``peak`` FLOP/s (default: A100 bf16 dense) x ``mfu``."""
    seq_len = seq_len or cfg.block_size
    if seq_len > cfg.block_size:
        raise ZhgptError(f"seq_len {seq_len} exceeds the model's block_size {cfg.block_size}; "
                         "raise --block-size or lower --seq-len")
    mixed = precision != "fp32"
    n = count_params(cfg)
    weights = 4 * n + (2 * matmul_weights(cfg) if mixed else 0)
    grads = 4 * n
    opt_bytes = optimizer_bytes(cfg, optimizer)
    act, logits = activation_bytes(cfg, batch_size, seq_len, mixed, attention, False)
    act_ckpt, _ = activation_bytes(cfg, batch_size, seq_len, mixed, attention, True)
    tps = tokens_per_step or batch_size * seq_len
    fpt = flops_per_token(cfg, seq_len)
    recompute = 8 / 6 if grad_checkpointing else 1.0   # forward 2N of the 6N runs twice
    est = Estimate(name=name, model=cfg, batch_size=batch_size, seq_len=seq_len, params=n, weights=weights,
                   grads=grads, optimizer=opt_bytes, activations=act, activations_ckpt=act_ckpt, logits=logits,
                   grad_checkpointing=grad_checkpointing, flops_per_token=fpt, tokens_per_step=tps,
                   step_time_s=fpt * tps * recompute / (peak * mfu))
    if memory is not None:
        est.max_batch = largest_batch(cfg, seq_len, memory, precision=precision, optimizer=optimizer,
                                      attention=attention, grad_checkpointing=False)
        est.max_batch_ckpt = largest_batch(cfg, seq_len, memory, precision=precision, optimizer=optimizer,
                                           attention=attention, grad_checkpointing=True)
    return est


def largest_batch(cfg: ModelConfig, seq_len: int, memory: int, *, precision="bf16", optimizer="adamw",
                  attention="flash", grad_checkpointing=False) -> int:
    """Largest micro-batch whose total fits in USABLE_FRACTION of ``memory`` (0 = not even batch 1).
    Activations are linear in the batch size, so this is one division."""
    one = estimate(cfg, 1, seq_len, precision=precision, optimizer=optimizer, attention=attention,
                   grad_checkpointing=grad_checkpointing)
    fixed = one.weights + one.grads + one.optimizer
    per_seq = one.act_used
    return max(0, int((memory * USABLE_FRACTION - fixed) // per_seq))


# --- formatting -----------------------------------------------------------------------------------

def format_estimate(e: Estimate, cfg: EstimateConfig, memory: int | None, sustained: float) -> str:
    m = e.model
    prec = "fp32" if cfg.precision == "fp32" else f"{cfg.precision} autocast, fp32 master weights"
    opt_desc = {"adamw": "AdamW, fp32 m and v (8 B/param)",
                "adamw8bit": "8-bit AdamW, 1 byte each for m and v (2 B/param)",
                "muon": "Muon momentum 4 B/param on block matrices, AdamW 8 B/param on the rest"}[cfg.optimizer]
    emb = m.vocab_size * m.n_embd + (m.block_size * m.n_embd if m.arch == "gpt2" else 0)
    w_desc = "fp32 (4 B/param)" if cfg.precision == "fp32" else \
        f"fp32 master 4 B/param + {cfg.precision} matmul copies 2 B/param"
    lines = [
        f"model        {e.name or 'custom'}: {m.arch}, {m.n_layer} layers, {m.n_head} heads, {m.n_embd} hidden, "
        f"ctx {m.block_size}, vocab {m.vocab_size}",
        f"parameters   {e.params:,} ({fmt.params(e.params)}; {fmt.params(emb)} in embeddings)"
        + (f"; {fmt.params(count_params(m, active=True))} active per token ({m.moe_top_k} of {m.moe_experts} "
           "experts): memory counts all, compute the active" if m.moe_experts else ""),
        f"micro-batch  {e.batch_size} x {e.seq_len} tokens, {prec}, {cfg.attention} attention",
        "memory",
        f"  weights       {fmt.nbytes(e.weights):>11}   {w_desc}",
        f"  gradients     {fmt.nbytes(e.grads):>11}   fp32 (4 B/param)",
        f"  optimizer     {fmt.nbytes(e.optimizer):>11}   {opt_desc}",
        f"  activations   {fmt.nbytes(e.activations):>11}   without gradient checkpointing "
        f"(logits and loss: {fmt.nbytes(e.logits)})",
        f"                {fmt.nbytes(e.activations_ckpt):>11}   with gradient checkpointing",
        f"  total         {fmt.nbytes(e.total):>11}   "
        f"{'with' if e.grad_checkpointing else 'without'} gradient checkpointing "
        "(peak of one step; add ~0.5 GiB CUDA context)",
    ]
    if memory is not None:
        def fit(b):
            return f"batch {b}" if b else "does not fit even at batch 1"
        lines.append(f"fits in {fmt.nbytes(memory)} ({USABLE_FRACTION:.0%} usable): {fit(e.max_batch)}; "
                     f"with gradient checkpointing {fit(e.max_batch_ckpt)}")
        if not e.max_batch_ckpt:
            lines.append("  try --optimizer adamw8bit, --precision bf16, a shorter --seq-len or a smaller preset")
    accum = e.tokens_per_step / (e.batch_size * e.seq_len)
    lines += [
        f"compute      {e.flops_per_token / 1e9:.2f} GFLOP/token (6N + 12*L*C*T), "
        f"{e.tokens_per_step:,} tokens/step" + (f" ({accum:g} micro-batches)" if accum != 1 else ""),
        f"time         {fmt.estimate_time(e.step_time_s)} per step at {sustained / 1e12:.3g} TFLOP/s sustained"
        + (" (+33% for recomputation)" if e.grad_checkpointing else "")
        + f"; 1B tokens in {fmt.estimate_time(e.step_time_s * 1e9 / e.tokens_per_step)}",
    ]
    return "\n".join(lines)


def format_table(ests: list[Estimate], cfg: EstimateConfig, memory: int | None, sustained: float) -> str:
    head = ["preset", "params", "batch", "weights", "grads", "optimizer", "activations", "total", "step time"]
    if memory is not None:
        head.append("max batch")
    rows = [head]
    for e in ests:
        act = e.act_used
        row = [e.name, fmt.params(e.params), f"{e.batch_size}x{e.seq_len}", fmt.nbytes(e.weights),
               fmt.nbytes(e.grads), fmt.nbytes(e.optimizer), fmt.nbytes(act), fmt.nbytes(e.total),
               fmt.estimate_time(e.step_time_s)]
        if memory is not None:
            row.append(str(e.max_batch_ckpt if e.grad_checkpointing else e.max_batch))
        rows.append(row)
    note = (f"{cfg.precision} {'autocast with fp32 master weights' if cfg.mixed else ''}, {cfg.optimizer}, "
            f"{'with' if cfg.grad_checkpointing else 'no'} gradient checkpointing, {cfg.attention} attention; "
            f"step time for batch x seq tokens at {sustained / 1e12:.3g} TFLOP/s sustained"
            + (f"; max batch in {fmt.nbytes(memory)}" if memory is not None else ""))
    return text_table(rows, right=True) + "\n\n" + note.replace("  ", " ")


# --- stage entry points ------------------------------------------------------------------------------

def throughput(cfg: EstimateConfig) -> tuple[float, str, float, str]:
    """(peak FLOP/s, where it came from, MFU, where it came from) for the time estimate on this machine's
    device (`--device auto`, one process with the threads torch uses now), as training would take them."""
    device = resolve_device("auto")
    kind = "cpu" if device == "cpu" else "gpu"
    if cfg.device_tflops is not None:
        peak, peak_src = cfg.device_tflops * 1e12, "--device-tflops"
    else:
        peak, how = peak_flops(device, DTYPES[cfg.precision], cache_root())
        what = hardware_info(device)
        peak_src = (f"{how}: {what.get('gpu', what['cpu'])}, {what['threads']} threads, {cfg.precision}"
                    + (f" (cached in {cache_root() / 'peak_flops.json'})" if how == "measured" else ""))
    if cfg.mfu is not None:
        return peak, peak_src, cfg.mfu, "--mfu"
    mfu, mfu_src = DEFAULT_MFU[kind]
    return peak, peak_src, mfu, f"{kind} default, {mfu_src}; set --mfu"


def model_for(cfg: EstimateConfig, preset: str) -> ModelConfig:
    fields, _ = get_preset(preset)
    fields.update(cfg.model)
    if fields.get("arch") == "llama":
        # As `zhgpt presets --arch llama` counts them: no biases, tied embeddings.
        fields.setdefault("bias", False)
    fields.setdefault("vocab_size", 32000)
    return ModelConfig(**fields)


def main(cfg: EstimateConfig) -> list[Estimate]:
    memory = parse_size(cfg.memory) if cfg.memory is not None else None
    names = [cfg.preset] if cfg.preset else list(PRESETS)
    peak, peak_src, mfu, mfu_src = throughput(cfg)
    print(f"time at peak {peak / 1e12:.3g} TFLOP/s ({peak_src}) x MFU {mfu:.0%} ({mfu_src})")
    ests = []
    for name in names:
        model = model_for(cfg, name)
        _, train = get_preset(name)
        batch = cfg.batch_size or train.get("batch_size", 8)
        ests.append(estimate(model, batch, cfg.seq_len, precision=cfg.precision, optimizer=cfg.optimizer,
                             grad_checkpointing=cfg.grad_checkpointing, attention=cfg.attention,
                             peak=peak, mfu=mfu, tokens_per_step=cfg.tokens_per_step,
                             memory=memory, name=name))
    if cfg.preset:
        print(format_estimate(ests[0], cfg, memory, peak * mfu))
    else:
        print(format_table(ests, cfg, memory, peak * mfu))
    return ests


def configure_parser(p: argparse.ArgumentParser) -> None:
    add_args(p, EstimateConfig)
    add_args(p, ModelConfig, defaults_none=True, group="model (override the preset)")


def run_cli(args) -> None:
    cfg = from_args(EstimateConfig, args, model=overrides_from_args(ModelConfig, args))
    print_config(cfg)
    main(cfg)

