"""The learning-rate schedule: linear warmup, cosine decay, then a floor. One pure function,
and the optimizer settings it belongs to."""

import math
from dataclasses import dataclass


def get_lr(
    step: int,
    *,
    learning_rate: float,
    warmup_iters: int,
    lr_decay_iters: int,
    min_lr: float,
    decay_lr: bool = True,
) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    - decay_lr=False: ``learning_rate`` after warmup (the guide's "warmup only"; with
      warmup_iters=0 a constant rate).
    - step < warmup_iters: linear ramp, learning_rate * (step + 1) / (warmup_iters + 1), so that
      the very first step already moves the weights instead of taking a zero-size step.
    - warmup_iters <= step <= lr_decay_iters: cosine from learning_rate down to min_lr.
    - step > lr_decay_iters: min_lr.
    """
    if step < warmup_iters:
        return learning_rate * (step + 1) / (warmup_iters + 1)
    if not decay_lr:
        return learning_rate
    if step > lr_decay_iters:
        return min_lr
    span = lr_decay_iters - warmup_iters
    progress = (step - warmup_iters) / span if span > 0 else 1.0
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 at the start of decay, 0 at its end
    return min_lr + coeff * (learning_rate - min_lr)


@dataclass
class OptimConfig:
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int = 5000
    min_lr: float = 1e-4
    optimizer: str = "adamw"  # adamw | muon: Muon for the hidden matrices, AdamW for the rest (training.optimizers)
    muon_lr: float = 0.02  # Muon's peak rate; the schedule scales it as it scales learning_rate
    muon_momentum: float = 0.95

    def lr_at(self, step: int) -> float:
        return get_lr(
            step,
            learning_rate=self.learning_rate,
            warmup_iters=self.warmup_iters,
            lr_decay_iters=self.lr_decay_iters,
            min_lr=self.min_lr,
            decay_lr=self.decay_lr,
        )


def optim_config(cfg) -> OptimConfig:
    """The optimizer's settings and the schedule from a run's config (any object with these keys)."""
    return OptimConfig(
        learning_rate=float(cfg.learning_rate),
        weight_decay=float(cfg.weight_decay),
        beta1=float(cfg.beta1),
        beta2=float(cfg.beta2),
        decay_lr=bool(cfg.decay_lr),
        warmup_iters=int(cfg.warmup_iters),
        lr_decay_iters=int(cfg.lr_decay_iters),
        min_lr=float(cfg.min_lr),
        optimizer=str(cfg.get("optimizer", "adamw")),
        muon_lr=float(cfg.get("muon_lr", 0.02)),
        muon_momentum=float(cfg.get("muon_momentum", 0.95)),
    )
