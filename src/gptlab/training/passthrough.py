"""What the config hands to Lightning as it is: Trainer arguments (`+trainer.<argument>=<value>`),
and the checks on the callbacks of its `callbacks` node (built by cli/train.py).

conf/trainer/*.yaml holds gptlab's own trainer keys (GPTLAB_KEYS); any other key under `trainer`
is handed to ``L.Trainer`` as it is (`+trainer.profiler=simple`, `+trainer.detect_anomaly=true`),
so no code needs editing to use one. Refused, each with one message before any work: a name that
is not an argument of ``L.Trainer`` (with the close matches), and the arguments gptlab sets from
keys of its own (SET_BY_GPTLAB names that key). ``max_time`` is Lightning's Timer, checked only
after the last micro-batch of an optimizer step (OptimizerStepTimer).
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
import logging
import warnings
from collections.abc import Iterable

import lightning as L
from lightning.pytorch.callbacks import StochasticWeightAveraging, Timer
from omegaconf import DictConfig, OmegaConf

from gptlab.errors import ConfigError

# conf/trainer/default.yaml's keys: gptlab reads these itself (tests/training/test_passthrough.py checks the list)
GPTLAB_KEYS = ("accelerator", "devices", "strategy", "num_nodes", "deterministic")
TRAINER_ARGS = tuple(inspect.signature(L.Trainer).parameters)

# Trainer arguments that gptlab sets itself (training/run.py build_trainer) -> the key to give instead
SET_BY_GPTLAB = {
    "precision": "dtype (float32 | bfloat16 | float16)",
    "max_steps": "max_iters",
    "max_epochs": "max_iters (training is one endless epoch counted in optimizer steps)",
    "min_epochs": "trainer.min_steps (training is one endless epoch counted in optimizer steps)",
    "limit_train_batches": "max_iters (a limit would also move the evaluations, which count micro-batches)",
    "accumulate_grad_batches": "gradient_accumulation_steps",
    "gradient_clip_val": "grad_clip",
    "gradient_clip_algorithm": "grad_clip (gptlab clips the global norm)",
    "val_check_interval": "eval_interval",
    "check_val_every_n_epoch": "eval_interval",
    "limit_val_batches": "eval_iters",
    "num_sanity_val_steps": "nothing: every fresh run evaluates at step 0 instead",
    "log_every_n_steps": "log_interval",
    "enable_progress_bar": "log_interval (a progress line every log_interval steps)",
    "enable_model_summary": "nothing: the run's first line gives the model's shape and parameters",
    "logger": "logger=<name> or logger=[a,b] (conf/logger/: tensorboard, csv, wandb, mlflow; docs/loggers.md)",
    "callbacks": "+callbacks.<name>._target_=<class> (docs/training.md, Your own callbacks)",
    "enable_checkpointing": "always_save_checkpoint (best.ckpt and last.ckpt are the run's checkpoints)",
    "default_root_dir": "out_dir",
    "use_distributed_sampler": "data.batching (each process draws its own batches)",
    "plugins": "nothing: gptlab sets them (atomic checkpoint writes, the SLURM environment)",
    "fast_dev_run": "max_iters=1 eval_iters=1 (fast_dev_run turns off the logging and checkpoints a run writes)",
    "barebones": "nothing: it turns off the logging and checkpoints a run writes",
    "overfit_batches": "nothing: it replaces the random windows every run draws",
}


# Lightning callbacks that act at epoch ends: a run is one endless epoch counted in optimizer steps
EPOCH_CALLBACKS = {
    StochasticWeightAveraging: (
        "it averages the weights at epoch ends, and a gptlab run is one endless epoch, so it would average the "
        "starting weights only and put them back when training ends. Use "
        "lightning.pytorch.callbacks.WeightAveraging (the same average, updated after every optimizer step) or "
        "EMAWeightAveraging"
    ),
}


def check_callback(name: str, cb: L.Callback) -> None:
    """A callback of the config's `callbacks` node that cannot work in a gptlab run is refused."""
    for cls, why in EPOCH_CALLBACKS.items():
        if isinstance(cb, cls):
            raise ConfigError(f"callbacks.{name}: {cls.__name__} does not fit gptlab's training loop: {why}")


def extra_keys(cfg: DictConfig) -> dict:
    """The keys under `trainer` that are not gptlab's own, as plain values."""
    node = cfg.get("trainer")
    if node is None:
        return {}
    plain = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in plain.items() if k not in GPTLAB_KEYS}


def check_names(names: Iterable[str]) -> None:
    """Each name must be an argument of L.Trainer that gptlab does not set itself."""
    for name in names:
        if name in GPTLAB_KEYS:
            continue
        if name in SET_BY_GPTLAB:
            raise ConfigError(f"trainer.{name} is set by gptlab; give {SET_BY_GPTLAB[name]} instead")
        if name not in TRAINER_ARGS:
            close = difflib.get_close_matches(name, [a for a in TRAINER_ARGS if a not in SET_BY_GPTLAB], n=3)
            hint = f" Did you mean {' or '.join(f'trainer.{c}' for c in close)}?" if close else ""
            raise ConfigError(
                f"trainer.{name} is not an argument of Lightning's Trainer.{hint} "
                "(docs/configuration.md, Trainer arguments)"
            )


def check(cfg: DictConfig) -> None:
    """Names, then values: Lightning's own checks on a Trainer built for nothing (a few ms), so a
    bad value is refused before any work instead of deep inside the run."""
    extra = extra_keys(cfg)
    check_names(extra)
    if "max_time" in extra:
        timer(extra["max_time"])
    rest = {k: v for k, v in extra.items() if k != "max_time"}
    if not rest:
        return
    try:
        with _silenced():
            L.Trainer(
                accelerator="cpu",
                devices=1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                **rest,
            )
    except Exception as e:  # Lightning's MisconfigurationException, or a TypeError / ValueError of a value
        given = ", ".join(f"trainer.{k}={v!r}" for k, v in rest.items())
        raise ConfigError(f"Lightning's Trainer refused {given}: {str(e).splitlines()[0]}") from None


def passthrough(cfg: DictConfig) -> dict:
    """The Trainer arguments given under `trainer` (checked by check()); max_time is a callback instead."""
    return {k: v for k, v in extra_keys(cfg).items() if k != "max_time"}


def callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks the pass-through asks for: the time limit of trainer.max_time."""
    limit = extra_keys(cfg).get("max_time")
    return [] if limit is None else [timer(limit)]


def timer(limit) -> OptimizerStepTimer:
    try:
        return OptimizerStepTimer(duration=limit)
    except Exception as e:
        raise ConfigError(
            f"trainer.max_time={limit!r}: {str(e).splitlines()[0]} Give DD:HH:MM:SS (00:01:30:00) or "
            "{hours: 1, minutes: 30}"
        ) from None


def time_limit_reached(trainer) -> bool:
    """Whether trainer.max_time ended training."""
    return any(
        isinstance(cb, Timer) and cb.time_remaining() is not None and cb.time_remaining() <= 0
        for cb in trainer.callbacks
    )


class OptimizerStepTimer(Timer):
    """Lightning's Timer (what Trainer(max_time=...) adds), looking at the clock only after the last
    micro-batch of an optimizer step: Lightning's own looks after every micro-batch, so under
    gradient accumulation it could stop halfway through a step, whose gradients no checkpoint holds
    and whose evaluations would then fall between steps. Stopping works as for FinalEvaluation:
    Lightning evaluates once more, then fit ends and the run writes last.ckpt and metrics.json.
    The elapsed time is kept in checkpoints, so the limit is the run's total training time across resumes."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


@contextlib.contextmanager
def _silenced():
    # the throwaway Trainer's banner lines and warnings would repeat the real one's
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
