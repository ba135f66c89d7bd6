"""Token-masking augmentation: BERT's masked-LM corruption (Devlin et al., arXiv 1810.04805)
applied to the inputs of a causal language model.

Each input position is chosen with probability ``mask_prob``; of the chosen, 80% become a
``[MASK]`` token (an id appended after the data's vocabulary), 10% a random token of the data's
vocabulary, 10% keep their token. Targets are not touched: the model still predicts the original
next token, now from a partly hidden context, which makes memorising exact sequences harder.

Plain torch, vectorised, on whatever device the batch is on. GPTModule applies it to training
batches only; evaluation sees clean inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MASK_FRAC, RANDOM_FRAC = 0.8, 0.1  # BERT's split of the chosen positions; the remaining 10% stay as they are


def mask_tokens(
    idx: torch.Tensor,
    mask_prob: float,
    mask_token: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A corrupted copy of idx (B, T); idx itself is left as it is.

    One uniform draw u per position decides both whether it is chosen and what it becomes:
    u < p*0.8 -> mask_token, p*0.8 <= u < p*0.9 -> a random id in [0, vocab_size), otherwise
    unchanged. Random ids never equal mask_token (it lies outside [0, vocab_size)).
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if mask_prob == 0.0:
        return idx
    u = torch.rand(idx.shape, generator=generator, device=idx.device)
    random_ids = torch.randint(vocab_size, idx.shape, generator=generator, device=idx.device, dtype=idx.dtype)
    to_mask = u < mask_prob * MASK_FRAC
    to_random = ~to_mask & (u < mask_prob * (MASK_FRAC + RANDOM_FRAC))
    return torch.where(to_random, random_ids, idx.masked_fill(to_mask, mask_token))


@dataclass
class TokenMasking:
    """mask_tokens with its own seeded generator, created on the batch's device at first use.

    Each process seeds it from (seed, rank), so DDP ranks corrupt differently, and apart from the
    global RNG that initialises the weights; its state goes into checkpoints so that a resumed run
    draws the masks it would have drawn.
    """

    mask_prob: float
    mask_token: int  # the [MASK] id: the data's vocab_size (the model's vocabulary is one larger)
    vocab_size: int  # the data's vocabulary: random replacements are drawn from it
    seed: int = 1337
    _generator: torch.Generator | None = field(default=None, repr=False)
    _pending_state: torch.Tensor | None = field(default=None, repr=False)

    def __call__(self, idx: torch.Tensor, rank: int = 0) -> torch.Tensor:
        if self._generator is None or self._generator.device != idx.device:
            self._generator = torch.Generator(device=idx.device).manual_seed(self.seed + 1_000_003 * (rank + 1))
            if self._pending_state is not None:
                self._generator.set_state(self._pending_state)
                self._pending_state = None
        return mask_tokens(idx, self.mask_prob, self.mask_token, self.vocab_size, self._generator)

    def state_dict(self) -> dict:
        return {"generator": self._generator.get_state()} if self._generator is not None else {}

    def load_state_dict(self, state: dict) -> None:
        # applied when the generator is created on the training device (the first batch)
        if "generator" in state:
            self._pending_state = state["generator"]
            self._generator = None


def corrupt_inputs(batch, masking: TokenMasking, rank: int = 0):
    """The batch with its input ids corrupted: (x, y, ...) tuples, or the document batches'
    dicts holding 'x' (gptlab.packing; their padding is ignored by attention and loss anyway)."""
    if isinstance(batch, dict) and "x" in batch:
        return {**batch, "x": masking(batch["x"], rank)}
    if isinstance(batch, (tuple, list)):
        return (masking(batch[0], rank), *batch[1:])
    raise TypeError(f"token masking needs (x, y) batches or dicts with an 'x' entry, got {type(batch).__name__}")
