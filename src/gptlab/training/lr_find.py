"""The learning-rate range test (Smith, arXiv 1506.01186): `gptlab lr-find [key=value ...]`.

A fresh model trains for lr_find.num_steps optimizer steps while the learning rate grows
exponentially from lr_find.min_lr to lr_find.max_lr; the search stops early once the loss
diverges. The smoothed loss against the learning rate (lr_find.png) shows where training is fast
and where it breaks down; a rule reads one learning rate off that curve. `learning_rate=auto` in
train runs the same search in the run folder first and trains with its suggestion.

The search is Lightning's ``Tuner.lr_find`` on a Trainer set up like train's (the same GPTModule,
batches, gradient accumulation, clipping and precision). It fits the iteration-based loop: it
trains for num_steps optimizer steps of the endless batch stream, swaps our warmup+cosine
LambdaLR for its own exponential schedule during the search, and afterwards restores the weights,
the optimizer and the batch sampler from a checkpoint (and then draws one batch ahead for the fit
it expects to follow: the sampler is put back again here). Three things it does not do our way, and
what this module does about them:
- it keeps only a running average of the loss (factor 0.98, so over the last ~50 of 100 steps: the
  curve lags by about three decades of learning rate), and its bias correction is one step off
  (the first points are about half the real loss). The per-step losses are recovered from that
  average exactly and smoothed again with a centred moving average, which does not lag. Its stop
  test (average > diverge_threshold x the lowest average so far) keeps that too-low first point,
  so until the loss halves it stops at about diverge_threshold / 2 x the starting loss;
- its recorded loss is divided by gradient_accumulation_steps (Lightning's scaling before
  backward): multiplied back, so the plot shows the real loss;
- its suggestion takes the steepest slope against the learning rate itself, not its logarithm,
  which favours the low end of an exponential sweep: the rules below work on log(lr).
"""

from __future__ import annotations

import copy
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.tuner import Tuner
from omegaconf import open_dict

from gptlab.config import LR_FIND_RULES
from gptlab.errors import ConfigError
from gptlab.training.module import GPTModule
from gptlab.training.schedule import OptimConfig

log = logging.getLogger("gptlab")

PNG, JSON = "lr_find.png", "lr_find.json"
# Lightning's _LRCallback keeps this exponential moving average of the loss (not configurable
# through Tuner.lr_find); undone with the same factor.
BETA = 0.98
RULES = LR_FIND_RULES
SKIP_START = 10  # the first steps' losses say little (as Lightning's own suggestion skips them)


@dataclass
class LRFindSettings:
    min_lr: float = 1e-6
    max_lr: float = 1.0
    num_steps: int = 100
    diverge_threshold: float | None = 4.0  # stop once the smoothed loss exceeds this many times its minimum
    rule: str = "steepest"


@dataclass
class RangeTest:
    """What a search measured and what it suggests; written to lr_find.json."""

    settings: LRFindSettings
    lrs: list[float]  # the learning rate of each optimizer step
    losses: list[float]  # that step's training loss (its last micro-batch)
    smoothed: list[float] = field(default_factory=list)
    stopped_early: bool = False  # the loss diverged before max_lr
    suggestion: float | None = None
    index: int | None = None  # the step the suggestion was read at
    rule: str = ""  # the rule used, in words

    def to_dict(self) -> dict:
        return asdict(self)


def suggest(lrs: list[float], smoothed: list[float], rule: str) -> tuple[float, int, str]:
    """(learning rate, step it was read at, the rule in words) from a smoothed range-test curve.

    - steepest (default): where the smoothed loss falls fastest per decade of learning rate -- the
      rate at which a step buys the most progress while training is still stable.
    - minimum: a tenth of the learning rate at the lowest smoothed loss. The minimum marks where a
      higher rate stops helping, at the edge of instability; a decade below it is safely inside.
    Both skip the first SKIP_START steps, where the loss has barely moved.
    """
    lr = np.asarray(lrs, dtype=float)
    y = np.asarray(smoothed, dtype=float)
    ok = np.isfinite(y)
    ok[:SKIP_START] = False
    if ok.sum() < 3:
        raise ConfigError(
            f"the range test has {int(ok.sum())} usable steps of {len(y)} (the first {SKIP_START} are skipped), "
            "too few to read a learning rate from. If the loss diverged that early, lower lr_find.min_lr; "
            "else raise lr_find.num_steps"
        )
    idx = np.flatnonzero(ok)
    if rule == "minimum":
        i = int(idx[np.argmin(y[idx])])
        return float(lr[i] / 10), i, "minimum / 10: a tenth of the learning rate at the lowest smoothed loss"
    if rule == "steepest":
        slope = np.gradient(y[idx], np.log10(lr[idx]))
        i = int(idx[np.argmin(slope)])
        return float(lr[i]), i, "steepest: where the smoothed loss falls fastest per decade of learning rate"
    raise ConfigError(f"lr_find.rule must be one of {', '.join(RULES)}, got '{rule}'")


def smooth(losses: list[float], half_width: int) -> list[float]:
    """Centred moving average over 2 * half_width + 1 steps (fewer at the ends). Unlike a running
    average it does not shift the curve towards higher learning rates; a diverged (non-finite)
    step makes its neighbourhood non-finite."""
    y = np.asarray(losses, dtype=float)
    kernel = np.ones(2 * half_width + 1)
    total = np.convolve(y, kernel, mode="same")
    count = np.convolve(np.ones_like(y), kernel, mode="same")
    return (total / count).tolist()


def smoothing_width(num_steps: int) -> int:
    return max(2, num_steps // 20)  # 5 steps either side for the usual 100


def _unsmooth(recorded: list[float], first_step: int) -> list[float]:
    """The per-step losses behind Lightning's smoothed ones. Its k-th value (k from 0) is
    avg_k / (1 - BETA^(first_step + k + 2)), avg_k = BETA avg_(k-1) + (1 - BETA) loss_k:
    invert both. After a non-finite value the average stays non-finite: so does the result."""
    out, prev = [], 0.0
    for k, s in enumerate(recorded):
        avg = s * (1 - BETA ** (first_step + k + 2))
        out.append((avg - BETA * prev) / (1 - BETA) if math.isfinite(avg) else float("nan"))
        prev = avg
    return out


def search(
    module: L.LightningModule, datamodule: L.LightningDataModule, trainer: L.Trainer, settings: LRFindSettings
) -> RangeTest:
    """Run Tuner.lr_find on module. Afterwards the module, its optimizer and schedule, and the
    datamodule's samplers are as they were: Lightning reloads the checkpoint it wrote before the
    search, then draws one batch for the fit it expects to follow (fit_loop.setup_data()), which
    here is undone by putting the samplers' state back once more."""
    datamodule.setup("fit")  # create the samplers now, so that their state can be put back afterwards
    sampler_state = datamodule.state_dict()
    start = trainer.global_step
    finder = Tuner(trainer).lr_find(
        module,
        datamodule=datamodule,
        min_lr=settings.min_lr,
        max_lr=settings.max_lr,
        num_training=settings.num_steps,
        mode="exponential",
        early_stop_threshold=settings.diverge_threshold,
        update_attr=False,  # the caller applies the suggestion (to the config, not a module attribute)
    )
    datamodule.load_state_dict(sampler_state)
    recorded = finder.results["loss"]
    accum = trainer.accumulate_grad_batches
    losses = [x * accum for x in _unsmooth(recorded, start)]
    result = RangeTest(settings, [float(x) for x in finder.results["lr"]], losses)
    result.stopped_early = len(losses) < settings.num_steps
    result.smoothed = smooth(losses, smoothing_width(settings.num_steps))
    result.suggestion, result.index, result.rule = suggest(result.lrs, result.smoothed, settings.rule)
    return result


def search_trainer(device, accumulate: int, grad_clip: float, root_dir: Path) -> L.Trainer:
    """A Trainer for the search: train's device, precision, accumulation and clipping; no
    logger, checkpoints or progress bar. The Tuner raises limit_val_batches for its run, so
    validation is kept out by asking for it only every second epoch of an endless train loader."""
    return L.Trainer(
        accelerator=device.accelerator,
        devices=device.devices if isinstance(device.devices, list) else 1,  # one process: see README
        precision=device.precision,
        max_epochs=-1,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=grad_clip or None,
        gradient_clip_algorithm="norm",
        check_val_every_n_epoch=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root_dir),  # the Tuner's temporary checkpoint goes here and is removed
        use_distributed_sampler=False,
    )


def plot(result: RangeTest, path: Path) -> None:
    """Smoothed loss against learning rate (log axis), the raw losses faintly behind it, the
    suggestion marked."""
    import matplotlib  # only here: matplotlib is needed for learning_rate=auto and lr-find, not every run

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # only here: after choosing the Agg backend (no display)

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(result.lrs, result.losses, color="0.8", lw=0.8, label="loss per step")
    width = 2 * smoothing_width(result.settings.num_steps) + 1
    ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label=f"smoothed (centred mean of {width} steps)")
    if result.index is not None:
        i = result.index
        ax.plot(result.lrs[i], result.smoothed[i], "o", color="C3", ms=8, label=f"read at {result.lrs[i]:.2e}")
        ax.axvline(
            result.suggestion, color="C3", ls="--", lw=1, label=f"suggested learning_rate={result.suggestion:.2e}"
        )
    finite = [y for y in result.smoothed if math.isfinite(y)]
    if finite:  # keep the diverged tail from flattening the interesting part
        lo = min(finite + [y for y in result.losses if math.isfinite(y)])
        hi = max(finite[0], min(max(finite), 2 * finite[0]))
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.1 * (hi - lo))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(
        f"learning-rate range test ({len(result.lrs)} steps"
        f"{', stopped: loss diverged' if result.stopped_early else ''})"
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(result: RangeTest, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    plot(result, folder / PNG)
    (folder / JSON).write_text(json.dumps(result.to_dict(), indent=1))


def settings_from(cfg) -> LRFindSettings:
    n = cfg.lr_find
    thr = n.diverge_threshold
    return LRFindSettings(
        float(n.min_lr), float(n.max_lr), int(n.num_steps), None if thr is None else float(thr), str(n.rule)
    )


def run(cfg, datamodule, model_config, device, out_dir: Path, augment=None) -> RangeTest:
    """The search for a training config: a fresh GPTModule (seeded as train seeds it) on the
    config's batches; lr_find.png and lr_find.json in out_dir."""
    s = settings_from(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    # the schedule during the search is the Tuner's; only AdamW's own settings matter here
    optim = OptimConfig(
        learning_rate=s.min_lr,
        weight_decay=float(cfg.weight_decay),
        beta1=float(cfg.beta1),
        beta2=float(cfg.beta2),
        decay_lr=False,
        warmup_iters=0,
        min_lr=0.0,
    )
    module = GPTModule(model_config, optim, augment=copy.deepcopy(augment))
    trainer = search_trainer(device, int(cfg.gradient_accumulation_steps), float(cfg.grad_clip), out_dir)
    log.info(f"learning-rate range test: {s.num_steps} steps from {s.min_lr:g} to {s.max_lr:g}, exponentially")
    result = search(module, datamodule, trainer, s)
    save(result, out_dir)
    ended = (
        f"stopped after {len(result.lrs)} steps: the loss diverged"
        if result.stopped_early
        else f"{len(result.lrs)} steps"
    )
    log.info(
        f"range test: {ended}; suggested learning_rate={result.suggestion:.3g} (rule {result.rule}); "
        f"curve in {out_dir / PNG}"
    )
    return result


def use_suggestion(cfg, result: RangeTest) -> None:
    """learning_rate=auto: train with the suggestion; min_lr follows it at lr_find.min_lr_ratio
    (a tenth, nanoGPT's usual ratio), or stays as set when that is null."""
    lr = float(f"{result.suggestion:.3g}")
    ratio = cfg.lr_find.get("min_lr_ratio", 0.1)
    use_learning_rate(cfg, lr, None if ratio is None else lr * float(ratio), "the range test's")


def use_learning_rate(cfg, learning_rate: float, min_lr: float | None, source: str) -> None:
    """Put the chosen learning rate (and min_lr, unless None) into cfg for the run that follows."""
    with open_dict(cfg):
        cfg.learning_rate = float(learning_rate)
        if min_lr is not None:
            cfg.min_lr = float(min_lr)
    if float(cfg.min_lr) > cfg.learning_rate:
        raise ConfigError(
            f"learning_rate=auto chose {cfg.learning_rate:g}, below the min_lr={cfg.min_lr:g} you set; "
            f"leave min_lr out (it then follows the learning rate) or set min_lr<={cfg.learning_rate:g}"
        )
    log.info(f"learning_rate=auto: training with {source} learning_rate={cfg.learning_rate:g}, min_lr={cfg.min_lr:g}")
