"""The GPT, in one file of plain PyTorch.

Two architectures share this code, picked by ``ModelConfig.arch``:

- ``gpt2``: learned absolute positions, pre-LayerNorm, GELU MLP, biases, tied input/output
  embeddings — GPT-2 exactly, so it exports 1:1 to Hugging Face ``GPT2LMHeadModel``.
- ``llama``: rotary positions (RoPE), RMSNorm, SwiGLU MLP, no biases, optional grouped-query
  attention, untied embeddings and QK-norm — the recipe of Llama/Qwen, exported to ``LlamaForCausalLM``.
  Optionally a mixture of experts in place of each MLP (``moe_experts``, Mixtral/Qwen-MoE style) and
  YaRN RoPE scaling for contexts longer than the one trained at (``rope_scaling``).

Names follow GPT-2 (``wte, wpe, h, ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj, ln_f``)
so the export is a renaming plus GPT-2's transposed ``Conv1D`` weights. Shapes: B batch, T time,
C channels (n_embd), H heads, D head size.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from zhgpt.config import opt
from zhgpt.errors import ZhgptError

ARCHS = ("gpt2", "llama")
ROPE_SCALINGS = ("none", "yarn")
# YaRN's ramp between interpolated and kept frequencies (the paper's and transformers' defaults): dimensions
# turning more than 32 times over the original context keep their frequency, fewer than once are interpolated.
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0


@dataclass
class ModelConfig:
    arch: str = opt("gpt2", "architecture: gpt2 (learned positions, LayerNorm, GELU) or llama "
                    "(RoPE, RMSNorm, SwiGLU, no biases)", choices=ARCHS)
    vocab_size: int = opt(32000, "vocabulary size (set from the tokenizer)")
    block_size: int = opt(1024, "context length in tokens")
    n_layer: int = opt(12, "transformer blocks")
    n_head: int = opt(12, "attention heads")
    n_kv_head: int = opt(0, "key/value heads for grouped-query attention (llama only; 0 = n_head)")
    n_embd: int = opt(768, "hidden size")
    intermediate_size: int = opt(0, "MLP hidden size (0 = 4*n_embd for gpt2, ~8/3*n_embd rounded to 64 for llama)")
    dropout: float = opt(0.0, "dropout on attention and residuals (0 for pre-training: more data beats regularisation)")
    bias: bool = opt(True, "biases in linear layers and norms (GPT-2 has them, Llama does not)")
    tie_embeddings: bool = opt(True, "share the token embedding with the output layer (saves vocab*n_embd parameters)")
    rope_theta: float = opt(10000.0, "RoPE base (llama only)")
    qk_norm: bool = opt(False, "RMSNorm on queries and keys per head (llama only; steadies high learning rates)")
    norm_eps: float = opt(1e-5, "epsilon of LayerNorm/RMSNorm")
    # ---- mixture of experts (llama only): each MLP becomes E expert MLPs of intermediate_size and a router
    moe_experts: int = opt(0, "experts per MoE layer (llama only; 0 = a dense MLP)")
    moe_top_k: int = opt(2, "experts each token is sent to (active experts per token)")
    moe_shared_expert: bool = opt(False, "also one always-on expert behind a sigmoid gate (Qwen2-MoE's shared expert)")
    moe_norm_topk: bool = opt(True, "renormalise the top-k gate weights to sum to 1 (Mixtral; Qwen-MoE's "
                              "norm_topk_prob)")
    moe_aux_loss_coef: float = opt(0.01, "weight of the load-balancing loss (Switch Transformer; 1.0 = balanced)")
    moe_z_loss_coef: float = opt(0.001, "weight of the router z-loss (ST-MoE: keeps router logits small)")
    # ---- RoPE scaling (llama only)
    rope_scaling: str = opt("none", "RoPE scaling for a context longer than trained at: none or yarn",
                            choices=ROPE_SCALINGS)
    rope_factor: float = opt(1.0, "YaRN: context extension factor (> 1)")
    rope_original_context: int = opt(0, "YaRN: the context the model was trained at (0 = block_size / rope_factor)")

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ZhgptError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if self.n_embd % self.n_head:
            raise ZhgptError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                             "pick sizes such that n_embd/n_head is a whole head size (e.g. 64)")
        if self.n_kv_head and (self.n_head % self.n_kv_head):
            raise ZhgptError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        if self.arch == "gpt2" and (self.n_kv_head not in (0, self.n_head) or self.qk_norm):
            raise ZhgptError("n_kv_head and qk_norm need --arch llama (GPT-2 has neither)")
        if self.arch == "llama" and self.head_dim % 2:
            raise ZhgptError(f"RoPE needs an even head size; n_embd/n_head = {self.head_dim}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ZhgptError(f"{name} must be positive, got {getattr(self, name)}")
        self._check_moe()
        self._check_rope()

    def _check_moe(self):
        if not self.moe_experts:
            return
        if self.moe_experts < 0:
            raise ZhgptError(f"--moe-experts must be >= 0, got {self.moe_experts}")
        if self.arch != "llama":
            raise ZhgptError("--moe-experts needs --arch llama (the experts are SwiGLU MLPs, as in Mixtral/Qwen-MoE)")
        if not 1 <= self.moe_top_k <= self.moe_experts:
            raise ZhgptError(f"--moe-top-k {self.moe_top_k} must be between 1 and --moe-experts {self.moe_experts}")
        if self.moe_aux_loss_coef < 0 or self.moe_z_loss_coef < 0:
            raise ZhgptError("--moe-aux-loss-coef and --moe-z-loss-coef must be >= 0")

    def _check_rope(self):
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ZhgptError(f"unknown --rope-scaling {self.rope_scaling!r}; choose one of {', '.join(ROPE_SCALINGS)}")
        if self.rope_scaling == "none":
            if self.rope_factor != 1.0 or self.rope_original_context:
                raise ZhgptError("--rope-factor / --rope-original-context need --rope-scaling yarn")
            return
        if self.arch != "llama":
            raise ZhgptError("--rope-scaling yarn needs --arch llama (GPT-2 learns its positions, it has no RoPE)")
        if not self.rope_factor > 1.0:
            raise ZhgptError(f"--rope-factor must be > 1 with --rope-scaling yarn, got {self.rope_factor:g}; "
                             "e.g. 4 for four times the trained context")
        if self.rope_original_context < 0:
            raise ZhgptError(f"--rope-original-context must be >= 0, got {self.rope_original_context}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_hidden(self) -> int:
        if self.intermediate_size:
            return self.intermediate_size
        if self.arch == "gpt2":
            return 4 * self.n_embd
        # SwiGLU has three matrices instead of two: 8/3*C keeps the parameter count of a 4*C MLP.
        return 64 * math.ceil(8 * self.n_embd / 3 / 64)

    @property
    def original_context(self) -> int:
        """YaRN: the context length the model was trained at."""
        return self.rope_original_context or max(1, round(self.block_size / self.rope_factor))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # Normalise in fp32 as Llama does: under bf16 autocast the mean of squares loses precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.n_embd
    if cfg.arch == "llama":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


def rope_cache(cfg: ModelConfig, length: int, device=None):
    """cos/sin tables (length, D) in the 'rotate half' layout Hugging Face Llama uses."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, device=device).float() / cfg.head_dim))
    scale = 1.0
    if cfg.rope_scaling == "yarn":
        inv_freq, scale = yarn_frequencies(cfg, inv_freq)
    t = torch.arange(length, device=device).float()
    freqs = torch.outer(t, inv_freq)                   # (L, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)            # (L, D)
    return emb.cos() * scale, emb.sin() * scale


def yarn_frequencies(cfg: ModelConfig, inv_freq):
    """YaRN (Peng et al. 2023), as transformers' ``_compute_yarn_parameters`` computes it: (inv_freq, scale).

    A dimension pair that turns many times within the original context (high frequency, local order) keeps
    its frequency; one that turns less than once there (low frequency) is divided by ``factor``, so the
    longer context maps onto angles seen in training; a linear ramp in between. cos/sin are multiplied by
    0.1*ln(factor) + 1 (1.14 at factor 4): q.k grows by its square, sharpening attention that would otherwise
    spread over factor-times more keys.
    """
    D, base, factor, orig = cfg.head_dim, cfg.rope_theta, cfg.rope_factor, cfg.original_context

    def dim_of(rotations):   # the dimension whose pair turns `rotations` times over the original context
        return D * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(dim_of(YARN_BETA_FAST)), 0)
    high = min(math.ceil(dim_of(YARN_BETA_SLOW)), D - 1)
    if low == high:
        high += 0.001      # as transformers: no division by zero
    ramp = ((torch.arange(D // 2, dtype=torch.float32, device=inv_freq.device) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp                                    # 1 = keep the frequency, 0 = interpolate it
    inv_freq = (inv_freq / factor) * (1 - keep) + inv_freq * keep
    return inv_freq, 0.1 * math.log(factor) + 1.0


def apply_rope(x, cos, sin):
    # x: (B, H, T, D); cos/sin: (T, D)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Preallocated keys/values for every layer, so decoding a token costs O(T) and no re-allocation.

    ``pos`` is how many positions are filled. The cache is advanced by the model after the last layer.
    """

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype):
        shape = (cfg.n_layer, batch_size, cfg.kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k, v):
        """Store k, v (B, Hkv, T, D) at the current position; return all keys/values so far."""
        T = k.size(2)
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache full ({self.pos}+{T} > {self.max_len})")
        self.k[layer, :, :, self.pos:self.pos + T] = k
        self.v[layer, :, :, self.pos:self.pos + T] = v
        return self.k[layer, :, :, :self.pos + T], self.v[layer, :, :, :self.pos + T]

    def reset(self):
        self.pos = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        # q, k, v in one matmul: one larger GEMM is faster than three small ones on CPU and GPU.
        self.c_attn = nn.Linear(cfg.n_embd, (self.n_head + 2 * self.n_kv) * self.hd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_scale = True
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.hd, cfg.norm_eps)
            self.k_norm = RMSNorm(self.hd, cfg.norm_eps)

    def forward(self, x, rope=None, kv_cache: KVCache | None = None, attn_mask=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split([self.n_head * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], dim=2)
        q = q.view(B, T, self.n_head, self.hd).transpose(1, 2)   # (B, H, T, D)
        k = k.view(B, T, self.n_kv, self.hd).transpose(1, 2)     # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        past = 0
        if kv_cache is not None:
            past = kv_cache.pos
            k, v = kv_cache.update(self.layer, k, v)
        if self.n_kv != self.n_head:
            # Grouped-query attention: each key/value head serves n_head/n_kv query heads.
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        dropout = self.dropout if self.training else 0.0
        if attn_mask is not None:
            # Packed sequences: causal within each sequence, nothing across (see GPT.forward's segments).
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        elif past == 0:
            # Training and prefill: SDPA's is_causal picks the flash/memory-efficient kernels.
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif T == 1:
            # Decoding one token: it may attend to everything cached, so no mask at all.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            # Several new tokens after a cached prefix: query i sees keys 0..past+i.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)          # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.arch == "llama"
        hidden = cfg.mlp_hidden
        # SwiGLU: gate and up projections fused into one matmul of width 2*hidden.
        self.c_fc = nn.Linear(cfg.n_embd, (2 if self.swiglu else 1) * hidden, bias=cfg.bias)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.c_proj.residual_scale = True
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")   # GPT-2's "gelu_new"
        return self.dropout(self.c_proj(h))


class MoE(nn.Module):
    """A mixture of experts in place of the MLP: a router picks, per token, ``top_k`` of ``E`` expert MLPs
    and the output is their gate-weighted sum (Mixtral, Qwen-MoE); optionally plus a shared expert that
    every token uses, behind a sigmoid gate (Qwen2-MoE).

    Gating as transformers' Mixtral/Qwen-MoE routers do it, so the export is exact: softmax over all
    experts in fp32, the top k, optionally renormalised to sum to 1 (``moe_norm_topk``).

    Cost: each token runs k of the E MLPs, so k/E of the expert FLOPs of running all of them. The tokens
    are sorted by expert and each expert runs one matmul on its group: a Python loop over E experts (not
    over tokens), one host sync per layer for the group sizes, and two copies of (tokens*k, C) rows (gather
    and index_add) -- memory traffic, not FLOPs. E smaller matmuls are less efficient than one large one
    (on a GPU much less at small group sizes); grouped-GEMM kernels (megablocks) are what removes that.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k, self.norm_topk = cfg.moe_experts, cfg.moe_top_k, cfg.moe_norm_topk
        self.router = nn.Linear(cfg.n_embd, cfg.moe_experts, bias=False)
        self.experts = nn.ModuleList([MLP(cfg) for _ in range(cfg.moe_experts)])
        if cfg.moe_shared_expert:
            self.shared = MLP(cfg)
            self.shared_gate = nn.Linear(cfg.n_embd, 1, bias=False)
        self.stats = None   # (aux loss, z-loss, tokens per expert (E,)) of the last forward; GPT.forward reads it

    def forward(self, x):
        B, T, C = x.shape
        x = x.reshape(-1, C)                                          # (N, C), N = B*T
        logits = self.router(x).float()                               # (N, E)
        probs = logits.softmax(dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)              # (N, K)
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        # Group the N*K (token, expert) assignments by expert.
        flat = chosen.reshape(-1)                                     # (N*K,)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.n_experts)       # (E,)
        token = order // self.top_k                                   # the token of each sorted assignment
        groups = x[token].split(counts.tolist())                      # E groups of (n_e, C)
        # Every expert runs, also on 0 rows: its weights stay in the graph (DDP expects every gradient).
        ys = torch.cat([expert(g) for expert, g in zip(self.experts, groups)])        # (N*K, C)
        ys = ys * weights.reshape(-1)[order, None].to(ys.dtype)
        y = torch.zeros_like(x, dtype=ys.dtype).index_add_(0, token, ys)              # (N, C)
        if hasattr(self, "shared"):
            y = y + torch.sigmoid(self.shared_gate(x)) * self.shared(x)
        # Load balancing (Switch Transformer eq. 4): E * sum_e (share of assignments to e) * (mean prob of e);
        # 1.0 when balanced, E when one expert takes everything. z-loss (ST-MoE): mean logsumexp(logits)^2.
        frac = counts.float() / flat.numel()
        aux = self.n_experts * (frac * probs.mean(dim=0)).sum()
        z = torch.logsumexp(logits, dim=-1).pow(2).mean()
        self.stats = (aux, z, counts)
        return y.view(B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln_2 = make_norm(cfg)
        self.mlp = MoE(cfg) if cfg.moe_experts else MLP(cfg)

    def forward(self, x, rope=None, kv_cache=None, attn_mask=None):
        x = x + self.attn(self.ln_1(x), rope, kv_cache, attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


def segment_positions(segments):
    """(B, T) positions that restart at 0 where the segment id changes."""
    T = segments.size(1)
    t = torch.arange(T, device=segments.device).expand_as(segments)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return t - torch.cummax(torch.where(starts, t, torch.zeros_like(t)), dim=1).values


def segment_mask(segments):
    """(B, 1, T, T) attention mask: causal, and only within a segment."""
    T = segments.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return (segments[:, :, None] == segments[:, None, :]).unsqueeze(1) & causal


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.grad_checkpointing = False
        # Optional fused output layer + loss for training, fused(weight, x (N, C), targets (N,)) -> mean loss,
        # e.g. Liger's FusedLinearCrossEntropy on CUDA (zhgpt train --liger): it never holds the (N, V) logits.
        self.fused_loss = None
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
            ln_f=make_norm(cfg),
        ))
        if cfg.arch == "gpt2":
            self.transformer["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            cos, sin = rope_cache(cfg, cfg.block_size)
            # Buffers, not parameters; non-persistent so checkpoints hold weights only.
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        self.moe_meter = MoEMeter(cfg)

    def _init_weights(self, module):
        # GPT-2 init: N(0, 0.02); projections into the residual stream scaled by 1/sqrt(2*n_layer)
        # so the residual's variance does not grow with depth.
        if isinstance(module, nn.Linear):
            std = 0.02 / math.sqrt(2 * self.cfg.n_layer) if getattr(module, "residual_scale", False) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False, active: bool = False) -> int:
        """Parameters; ``active``: those one token uses (a MoE layer's top-k experts, not all E)."""
        n = sum(p.numel() for p in self.parameters())   # tied weights are counted once by parameters()
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
        if active and self.cfg.moe_experts:
            per_expert = sum(p.numel() for p in self.transformer.h[0].mlp.experts[0].parameters())
            n -= self.cfg.n_layer * (self.cfg.moe_experts - self.cfg.moe_top_k) * per_expert
        return n

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None, reduction: str = "mean",
                last_only: bool = False, segments=None):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        With ``targets`` the loss is cross-entropy (ignore_index -1) with the given reduction; where some
        targets are -1 only the others are scored and their logits, (N, V), returned.
        With a ``kv_cache`` the new tokens continue the cached sequence at position ``kv_cache.pos``.
        ``last_only`` (decoding): logits of the last position only, (B, 1, V) -- a prompt's prefill would
        otherwise run the output layer, often the largest matmul, on every prompt position.
        ``segments`` (B, T) ids, for several short sequences packed into one row (SFT): a token attends only
        to earlier tokens of its own segment and its position counts from its segment's start, so each
        sequence is computed exactly as if it were alone.
        """
        B, T = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds the context of {self.cfg.block_size}")
        x = self.transformer.wte(idx)                                        # (B, T, C)
        pos, mask = torch.arange(start, start + T, device=idx.device), None
        if segments is not None:
            pos, mask = segment_positions(segments), segment_mask(segments)
        rope = None
        if self.cfg.arch == "gpt2":
            x = x + self.transformer.wpe(pos)
        elif segments is None:
            rope = (self.rope_cos[start:start + T], self.rope_sin[start:start + T])
        else:                                                                # per-row positions: (B, 1, T, D)
            rope = (self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1))
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            if self.grad_checkpointing and self.training and kv_cache is None:
                # Recompute activations in backward: ~30% more compute for ~n_layer x less activation memory.
                x = checkpoint(block, x, rope, None, mask, use_reentrant=False)
            else:
                x = block(x, rope, kv_cache, mask)
        if kv_cache is not None:
            kv_cache.pos += T
        # MoE: the load-balancing and z-losses join the training loss (not evaluation's).
        penalty = 0.0
        if self.cfg.moe_experts and self.training:
            moe_loss = self.moe_meter.collect(self.transformer.h)
            penalty = moe_loss if reduction == "mean" else 0.0
        if last_only and targets is None:
            x = x[:, -1:]
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x), None
        keep = targets != -1
        if not bool(keep.all()):
            # Masked targets (SFT takes loss on the answers only): the output layer, often the largest
            # matmul, runs on the scored positions alone, and the logits returned are theirs, (N, V).
            x, targets = x[keep], targets[keep]
        if self.fused_loss is not None and self.training and reduction == "mean":
            return None, self.fused_loss(self.lm_head.weight, x.reshape(-1, x.size(-1)), targets.reshape(-1)) + penalty
        logits = self.lm_head(x)                                             # (B, T, V) or (N, V)
        # The loss in fp32 even under autocast: log-softmax over 30k classes in bf16 is too coarse.
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=-1, reduction=reduction)
        return logits, loss + penalty

    def extend_context(self, factor: float) -> "GPT":
        """YaRN: run at ``factor`` times the context the model was trained at (llama only; in place).
        The trained context stays the reference (a model already extended is re-extended from it)."""
        c = self.cfg
        orig = c.original_context if c.rope_scaling == "yarn" else c.block_size
        return self._use_config(dataclasses.replace(c, rope_scaling="yarn", rope_factor=float(factor),
                                                    rope_original_context=orig,
                                                    block_size=round(orig * factor)))   # validates: llama, factor > 1

    def set_context(self, length: int) -> "GPT":
        """Run at ``length`` tokens of context with the positions as they are (in place): past the trained
        context that is plain RoPE extrapolation -- angles never seen in training -- the baseline YaRN is
        measured against. A YaRN model keeps its frequencies. GPT-2 learned one embedding per position of
        its block, so it can only run shorter."""
        c = self.cfg
        if c.arch == "gpt2":
            if length > c.block_size:
                raise ZhgptError(f"--context {length}: this GPT-2 model learned {c.block_size} position embeddings "
                                 f"and has none past them; use --context <= {c.block_size}, or a llama (RoPE) "
                                 "model (zhgpt train --arch llama)")
            self.transformer.wpe.weight.data = self.transformer.wpe.weight.data[:length]   # exports as n_positions
            self.transformer.wpe.num_embeddings = length
        # A YaRN model's frequencies depend on its trained context, derived from block_size unless pinned.
        pin = {"rope_original_context": c.original_context} if c.rope_scaling == "yarn" else {}
        return self._use_config(dataclasses.replace(c, block_size=int(length), **pin))

    def _use_config(self, cfg: ModelConfig) -> "GPT":
        """Swap in a config differing in context or RoPE alone; the RoPE tables are rebuilt at its length."""
        self.cfg = cfg
        for block in self.transformer.h:
            block.attn.cfg = cfg
        self.moe_meter.cfg = cfg
        if cfg.arch == "llama":
            cos, sin = rope_cache(cfg, cfg.block_size, device=self.rope_cos.device)
            self.rope_cos, self.rope_sin = cos.to(self.rope_cos.dtype), sin.to(self.rope_sin.dtype)
        return self

    def moe_stats(self) -> dict:
        """MoE training statistics since the last call (aux_loss, z_loss, expert_frac (L, E)); {} if dense."""
        return self.moe_meter.summary() if self.cfg.moe_experts else {}

    def make_kv_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.cfg, batch_size, max_len or self.cfg.block_size, p.device, dtype or p.dtype)

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6 per weight used in a matmul
        (the blocks and the output layer; embedding lookups are free) plus 12*L*C*T for attention scores."""
        c = self.cfg
        # MoE: only the experts a token is routed to do arithmetic for it (an MFU counting all E overstates).
        matmul_params = self.num_params(non_embedding=True, active=True) + c.vocab_size * c.n_embd
        if not c.tie_embeddings:
            matmul_params -= c.vocab_size * c.n_embd   # the untied lm_head is already in num_params
        return 6 * matmul_params + 12 * c.n_layer * c.n_embd * c.block_size


class MoEMeter:
    """The MoE losses of each training forward, summed over layers, and running sums of them and of the
    tokens routed to each expert between two log records (`GPT.moe_stats`)."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.reset()

    def reset(self):
        self.aux = self.z = 0.0
        self.counts, self.n = None, 0

    def collect(self, blocks) -> torch.Tensor:
        """The penalty of this forward: aux_coef * sum of layers' aux losses + z_coef * sum of z-losses."""
        aux = sum(b.mlp.stats[0] for b in blocks)
        z = sum(b.mlp.stats[1] for b in blocks)
        counts = torch.stack([b.mlp.stats[2] for b in blocks]).detach()          # (L, E)
        # Detached running sums, no host sync here: the log record reads them every log_every steps.
        self.aux, self.z = self.aux + aux.detach(), self.z + z.detach()
        self.counts = counts if self.counts is None else self.counts + counts
        self.n += 1
        return self.cfg.moe_aux_loss_coef * aux + self.cfg.moe_z_loss_coef * z

    def summary(self) -> dict:
        """Mean per-layer aux and z-loss, and each layer's share of assignments per expert, since the last
        call; then start again. {} when no training forward ran."""
        if not self.n:
            return {}
        L = self.cfg.n_layer
        frac = self.counts.float() / self.counts.sum(dim=1, keepdim=True).clamp(min=1)
        out = {"aux_loss": round(float(self.aux) / self.n / L, 5), "z_loss": round(float(self.z) / self.n / L, 5),
               "expert_frac": [[round(v, 4) for v in row] for row in frac.tolist()]}
        self.reset()
        return out
