"""The GPT-2 language model in plain PyTorch.

Nothing here knows about Lightning, Hydra or files: a notebook can build a
``GPT(GPTConfig(...))`` and train it with a hand-written loop.

References: GPT-2 (Radford et al., 2019) for the architecture and
initialisation; nanoGPT for the shapes and names used here. The switches beyond GPT-2 (rotary
positions, RMSNorm, QK-norm, squared-ReLU / SwiGLU MLPs, an untied head, zero-initialised
projections, a logit soft-cap) are small branches below, each with its reference in docs/modern.md;
their defaults build exactly the GPT-2 model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2 BPE; char-level Tiny Shakespeare is 65
    block_size: int = 1024  # longest context the position table covers
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2; False is a little faster
    # the embedding / output tables get padded_vocab_size rows: 64 turns GPT-2's 50,257 into
    # 50,304, a shape GPU matmul kernels handle faster; the extra ids are never produced
    vocab_multiple: int = 1
    # --- beyond the GPT-2 recipe (docs/modern.md); the defaults are GPT-2's
    pos_emb: str = "learned"  # learned: a table of block_size positions | rope: rotary, q and k rotated by position
    rope_base: float = 10000.0  # rope: the longest wavelength's base (Su et al. 2021)
    norm: str = "layernorm"  # layernorm | rmsnorm: scale by the root mean square only, no mean, no bias
    qk_norm: bool = False  # normalise each head's queries and keys before their dot product
    # gelu (exact, nanoGPT's) | gelu_tanh: GELU's tanh approximation, OpenAI's GPT-2 (its weights load exactly)
    # | relu2: relu(x)^2 | swiglu: silu(gate) * up, hidden width swiglu_hidden()
    mlp: str = "gelu"
    tie_embeddings: bool = True  # false: the output head gets its own matrix instead of the token embedding's
    zero_init_proj: bool = False  # true: every residual projection (c_proj) starts at zero, blocks start as identity
    logit_softcap: float | None = None  # cap * tanh(logits / cap): logits stay within +-cap; None: off

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "vocab_multiple"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                f"each head gets n_embd / n_head channels. Try n_head={_nearest_divisor(self.n_embd, self.n_head)}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in SWITCHES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"pos_emb=rope rotates channel pairs: n_embd / n_head must be even, got {self.n_embd // self.n_head}"
            )
        if not self.rope_base > 1:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            raise ValueError(f"logit_softcap must be > 0, or None (off), got {self.logit_softcap}")

    @property
    def padded_vocab_size(self) -> int:
        return -(-self.vocab_size // self.vocab_multiple) * self.vocab_multiple

    def to_dict(self) -> dict:
        return asdict(self)

    def swiglu_hidden(self) -> int:
        """SwiGLU's hidden width: 2/3 of GPT-2's 4 * n_embd, so that its three matrices hold about as
        many weights as GELU's two (3 * n * 8n/3 = 8n^2), rounded to a multiple of 64 for fast matmuls."""
        return max(64, 64 * round(8 * self.n_embd / 3 / 64))


# the switches with a fixed set of values, and those values (the first is GPT-2's)
SWITCHES = {
    "pos_emb": ("learned", "rope"),
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "gelu_tanh", "relu2", "swiglu"),
}
# every architecture switch at GPT-2's value: what a checkpoint from before the switches was trained with
SWITCH_DEFAULTS = {
    k: GPTConfig.__dataclass_fields__[k].default
    for k in ("pos_emb", "rope_base", "norm", "qk_norm", "mlp", "tie_embeddings", "zero_init_proj", "logit_softcap")
}


def _nearest_divisor(n: int, near: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - near), d))


def make_norm(cfg: GPTConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        # x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019): no centring, no bias, one reduction less
        return nn.RMSNorm(dim, eps=1e-5)
    return nn.LayerNorm(dim, bias=cfg.bias)


def rope_angles(pos: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation of each channel pair at each position: (T, head_dim / 2), or
    (B, 1, T, head_dim / 2) for per-token positions (B, T) -- shaped to broadcast over heads."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angles = pos.float()[..., None] * inv_freq  # pair i turns by pos * base^(-2i/head_dim)
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, T, d/2) -> (B, 1, T, d/2): the same rotation in every head
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + head_dim/2) of x (B, n_head, T, head_dim) by their angles. Rotations
    compose, so q_m . k_n depends on positions only through m - n (Su et al. 2021)."""
    a, b = x.float().chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        if cfg.qk_norm:
            # normalised q and k bound the attention logits: no head can saturate its softmax early in training
            self.q_norm = make_norm(cfg, cfg.n_embd // cfg.n_head)
            self.k_norm = make_norm(cfg, cfg.n_embd // cfg.n_head)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, rope: tuple | None = None
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim): every head attends independently
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            # positions enter here, as rotations of q and k, rather than added to the input
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:
            # the fused kernels (flash / memory-efficient) apply the causal mask themselves
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            # an explicit boolean mask (True = may attend), already causal, e.g. block-diagonal for packed documents
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind = cfg.mlp
        if cfg.mlp == "swiglu":
            # gate and up projections in one matmul; 2/3 the width keeps the weight count of GELU's MLP
            hidden = cfg.swiglu_hidden()
            self.c_fc = nn.Linear(cfg.n_embd, 2 * hidden, bias=cfg.bias)
        else:
            hidden = 4 * cfg.n_embd
            self.c_fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.gelu = nn.GELU(approximate="tanh" if cfg.mlp == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.kind == "relu2":
            h = F.relu(h).square()  # Primer (So et al. 2021): sparse like ReLU, smooth near zero like GELU
        elif self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up  # Shazeer 2020: a learned, input-dependent gate on each hidden unit
        else:
            h = self.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg, cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, rope: tuple | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, rope)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        layers = dict(wte=nn.Embedding(cfg.padded_vocab_size, cfg.n_embd))  # token embeddings
        if cfg.pos_emb == "learned":
            layers["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)  # learned position embeddings
        layers.update(
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=make_norm(cfg, cfg.n_embd),
        )
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.padded_vocab_size, bias=False)
        if cfg.tie_embeddings:
            # weight tying (Press & Wolf, 2017): the output projection reuses the token embedding matrix
            self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 * n_layer), two residual adds per block,
        # so the residual stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
                if cfg.zero_init_proj:
                    # modded-nanogpt: each block starts as the identity and its outputs grow from zero
                    nn.init.zeros_(p)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. Tied weights count once. With non_embedding=True the position table is
        left out (the token table stays: it is also the output layer's weight)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        if non_embedding and not self.config.tie_embeddings:
            n -= self.transformer.wte.weight.numel()  # untied, the token table is input only; the head stays
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        pos: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids. targets: (B, T) next-token ids, or None.

        Returns (logits, loss). With targets the logits cover every position; without them only
        the last position is projected (all that generation needs, and T times cheaper).
        pos and attn_mask are for batches of several documents: per-token positions (B, T) and a
        boolean (B, 1, T, T) mask that is True where attention is allowed. reduction="none" gives
        the loss per target (B * T,), 0 where ignored: evaluation averages several batches' worth
        per batch from one forward.
        """
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
        if pos is None:
            pos = torch.arange(T, device=idx.device)
        x, rope = self.transformer.wte(idx), None
        if self.config.pos_emb == "rope":
            rope = rope_angles(pos, self.config.n_embd // self.config.n_head, self.config.rope_base)
        else:
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, attn_mask, rope)
        x = self.transformer.ln_f(x)
        V = self.config.vocab_size
        if targets is None:
            return self.softcap(self.lm_head(x[:, [-1], :]))[..., :V], None
        logits = self.softcap(self.lm_head(x))
        # the loss sees the padded columns too (no copy of the logits); no target points at them,
        # so training only pushes them down
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index, reduction=reduction
        )
        return logits[..., :V], loss

    def softcap(self, logits: torch.Tensor) -> torch.Tensor:
        """logit_softcap: cap * tanh(logits / cap) (Gemma 2): no logit grows past +-cap, so the model cannot
        become over-confident through the logits' size alone; about linear for |logits| << cap."""
        cap = self.config.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: decay on matmul weights and embeddings, none on biases and
        LayerNorm gains, which only shift or scale and should not be pulled to zero. Chosen by the
        layer a tensor belongs to, not its shape: FSDP hands the optimizer flattened 1-D shards."""
        matrices = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
        params = [p for p in self.parameters() if p.requires_grad]  # a tied weight appears once
        decay = [p for p in params if id(p) in matrices]
        no_decay = [p for p in params if id(p) not in matrices]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The 2-D weights inside the blocks (attention's c_attn and c_proj, the MLP's c_fc and c_proj):
        what Muon orthogonalises. Embeddings, the head, norms and biases are not among them."""
        return [m.weight for m in self.transformer.h.modules() if isinstance(m, nn.Linear)]

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12·L·H·Q·T."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        suppress_tokens: list[int] | None = None,
    ) -> torch.Tensor:
        """Extend idx (B, T) by max_new_tokens sampled tokens. Call model.eval() first.

        temperature < 1 sharpens the distribution, > 1 flattens it; top_k keeps only the k most
        likely tokens at each step. suppress_tokens are never sampled (e.g. a [MASK] token that
        exists only for training).
        """
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for _ in range(max_new_tokens):
            # the model saw at most block_size positions: condition on the last block_size tokens only
            context = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size :]
            logits, _ = self(context)
            logits = logits[:, -1, :] / temperature
            if suppress_tokens:
                logits[:, suppress_tokens] = float("-inf")
            if top_k is not None and top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            next_id = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, next_id), dim=1)
        return idx
