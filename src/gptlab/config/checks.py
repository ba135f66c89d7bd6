"""Checks on a composed config, before any work starts: types, ranges and settings that
contradict each other. Each failure is one ConfigError naming the key, the value and the fix."""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

from gptlab.analysis import ANALYSES
from gptlab.config.device import DTYPES
from gptlab.data.dataset import DOCUMENT_KINDS
from gptlab.data.packing import BATCHING
from gptlab.errors import ConfigError
from gptlab.model import SWITCHES, GPTConfig

LR_FIND_RULES = ("steepest", "minimum")  # how the LR finder reads a rate off its curve (training.lr_find)


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1) -> None:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {v!r}")


# Keys that take only true or false: YAML's yes/no/on/off and other strings are refused, so that
# overwrite=no never counts as true.
BOOL_KEYS = (
    "eval_only",
    "always_save_checkpoint",
    "overwrite",
    "resume",
    "export_weights",
    "decay_lr",
    "compile",
    "pad_vocab",
    "bias",
    "monitor.enabled",
    "monitor.histograms",
    "monitor.initial_loss_check",
    "trainer.deterministic",
)


def _validate_bools(cfg: DictConfig) -> None:
    for key in BOOL_KEYS:
        v = OmegaConf.select(cfg, key, default=False)
        if not isinstance(v, bool):
            raise ConfigError(f"{key} must be true or false, got {v!r}")


def _validate_run_mode(cfg: DictConfig) -> None:
    """overwrite starts over, resume continues, eval_only reads: at most one of them."""
    resumes = cfg.init_from == "resume" or bool(cfg.get("resume"))
    if cfg.overwrite and resumes:
        raise ConfigError(
            "overwrite=true starts the run over, init_from=resume / resume=true continue it: drop one of them"
        )
    if cfg.overwrite and cfg.eval_only:
        raise ConfigError("eval_only=true never changes a run's files, so overwrite=true has nothing to do: drop it")


def validate(cfg: DictConfig) -> None:
    """Reject contradictory or impossible settings before any work starts."""
    _validate_bools(cfg)
    if cfg.init_from not in ("scratch", "resume"):
        raise ConfigError(f"init_from must be scratch or resume, got '{cfg.init_from}'")
    _validate_run_mode(cfg)
    for key in (
        "batch_size",
        "block_size",
        "n_layer",
        "n_head",
        "n_embd",
        "eval_interval",
        "log_interval",
        "eval_iters",
        "gradient_accumulation_steps",
    ):
        _positive_int(cfg, key)
    if cfg.get("eval_batch_size") is not None:
        _positive_int(cfg, "eval_batch_size")
    analysis = OmegaConf.select(cfg, "report.analysis", default=None)
    if analysis is not None and analysis not in ANALYSES:
        # caught here, before the sweep trains, rather than by the report afterwards
        raise ConfigError(f"report.analysis must be one of {', '.join(ANALYSES)} or null, got '{analysis}'")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "sample_tokens", "eval_sample_tokens"):
        _positive_int(cfg, key, minimum=0)
    budget = cfg.get("eval_sample_budget", 0.01)
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or not 0 <= budget <= 1:
        raise ConfigError(
            f"eval_sample_budget={budget} must be a share of the training time between 0 and 1 "
            "(0.01: samples take at most 1%; 1: a sample at every evaluation)"
        )
    if cfg.max_iters == 0 and not cfg.eval_only:
        raise ConfigError("max_iters=0 trains nothing; give max_iters>0, or eval_only=true to only evaluate")
    if cfg.n_embd % cfg.n_head != 0:
        try:
            GPTConfig(n_embd=cfg.n_embd, n_head=cfg.n_head)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if not 0.0 <= float(cfg.dropout) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.learning_rate == "auto":
        _validate_auto_lr(cfg)  # min_lr is checked against the learning rate once the search chose it
    elif not _number(cfg.learning_rate) or not float(cfg.learning_rate) > 0:
        raise ConfigError(
            f"learning_rate must be > 0, or auto (a learning-rate range test picks it), got {cfg.learning_rate}"
        )
    elif float(cfg.min_lr) < 0 or float(cfg.min_lr) > float(cfg.learning_rate):
        raise ConfigError(f"min_lr must be between 0 and learning_rate ({cfg.learning_rate}), got {cfg.min_lr}")
    _validate_lr_find(cfg.lr_find)
    _validate_early_stopping(cfg.early_stopping)
    p = cfg.augment.mask_prob
    if not _number(p) or not 0.0 <= float(p) < 1.0:
        raise ConfigError(f"augment.mask_prob must be in [0, 1) (0 turns token masking off), got {p}")
    for key in ("beta1", "beta2"):
        if not 0.0 <= float(cfg[key]) < 1.0:
            raise ConfigError(f"{key} must be in [0, 1), got {cfg[key]}")
    if float(cfg.weight_decay) < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if float(cfg.grad_clip) < 0:
        raise ConfigError(f"grad_clip must be >= 0 (0 disables clipping), got {cfg.grad_clip}")
    if cfg.warmup_iters > cfg.max_iters and not cfg.eval_only:
        raise ConfigError(
            f"warmup_iters ({cfg.warmup_iters}) > max_iters ({cfg.max_iters}): training would end before the "
            f"learning rate reaches its peak. Use warmup_iters<={cfg.max_iters} or more max_iters."
        )
    if cfg.decay_lr and cfg.lr_decay_iters < cfg.warmup_iters:
        raise ConfigError(
            f"lr_decay_iters ({cfg.lr_decay_iters}) < warmup_iters ({cfg.warmup_iters}): the decay would end "
            f"before warmup does. Usually lr_decay_iters = max_iters ({cfg.max_iters})."
        )
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got '{cfg.dtype}'")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", str(cfg.device)):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got '{cfg.device}'")
    if cfg.data.get("path") is None and cfg.data.get("source") is None:
        raise ConfigError("this data config needs a text file: data.path=FILE (for example data=text data.path=my.txt)")
    batching, bucket = cfg.data.get("batching", "random"), cfg.data.get("bucket_batches", 16)
    if batching not in BATCHING:
        raise ConfigError(f"data.batching must be one of {', '.join(BATCHING)}, got '{batching}'")
    if cfg.data.get("documents", "blank_lines") not in DOCUMENT_KINDS:
        raise ConfigError(f"data.documents must be one of {', '.join(DOCUMENT_KINDS)}, got '{cfg.data.documents}'")
    if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
        raise ConfigError(f"data.bucket_batches must be an integer >= 1 (1: no length bucketing), got {bucket!r}")
    _validate_modern(cfg)
    devices = cfg.trainer.devices
    if not (
        OmegaConf.is_list(devices) or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)
    ):
        # a count is needed up front: the global batch (batch x accumulation x processes) is logged before training
        raise ConfigError(
            f"trainer.devices must be a number of processes (1, 2, ...) or a list of GPU ids ([0,1]), got {devices!r}"
        )


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate_auto_lr(cfg: DictConfig) -> None:
    if cfg.eval_only:
        raise ConfigError(
            "learning_rate=auto searches for a rate to train with; eval_only trains nothing: drop one of them"
        )
    if str(cfg.trainer.devices) != "1" or int(cfg.trainer.num_nodes) != 1:
        raise ConfigError(
            "learning_rate=auto runs its search in one process; with several devices run python -m gptlab.lr_find "
            "first (same settings, trainer.devices=1) and give learning_rate=<its suggestion>"
        )
    if float(cfg.min_lr) < 0:
        raise ConfigError(f"min_lr must be >= 0, got {cfg.min_lr}")


def _validate_lr_find(n: DictConfig) -> None:
    if not (_number(n.min_lr) and _number(n.max_lr) and 0 < float(n.min_lr) < float(n.max_lr)):
        raise ConfigError(
            f"lr_find needs 0 < lr_find.min_lr < lr_find.max_lr, got min_lr={n.min_lr}, max_lr={n.max_lr}"
        )
    if isinstance(n.num_steps, bool) or not isinstance(n.num_steps, int) or n.num_steps < 20:
        raise ConfigError(f"lr_find.num_steps must be an integer >= 20 (100 is usual), got {n.num_steps!r}")
    if n.diverge_threshold is not None and not (_number(n.diverge_threshold) and float(n.diverge_threshold) > 1):
        raise ConfigError(
            f"lr_find.diverge_threshold must be > 1 (4 is usual) or null to never stop early, got {n.diverge_threshold}"
        )
    ratio = n.get("min_lr_ratio", 0.1)
    if ratio is not None and not (_number(ratio) and 0 < float(ratio) <= 1):
        raise ConfigError(
            f"lr_find.min_lr_ratio must be in (0, 1] (0.1 is usual) or null to keep min_lr as set, got {ratio!r}"
        )
    if n.rule not in LR_FIND_RULES:
        raise ConfigError(f"lr_find.rule must be one of {', '.join(LR_FIND_RULES)}, got '{n.rule}'")


def _validate_early_stopping(n: DictConfig) -> None:
    if n.patience is not None and (isinstance(n.patience, bool) or not isinstance(n.patience, int) or n.patience < 0):
        raise ConfigError(
            f"early_stopping.patience must be a whole number of evaluations (null or 0: off), got {n.patience!r}"
        )
    if not _number(n.min_delta) or float(n.min_delta) < 0:
        raise ConfigError(f"early_stopping.min_delta must be >= 0, got {n.min_delta}")


# ---------------------------------------------------------------- beyond the GPT-2 recipe (docs/modern.md)
# The architecture switches and the optimizer choice, checked in one block of their own.

OPTIMIZERS = ("adamw", "muon")  # training.optimizers builds them
MODERN_BOOL_KEYS = ("qk_norm", "tie_embeddings", "zero_init_proj")


def _validate_modern(cfg: DictConfig) -> None:
    for key, allowed in SWITCHES.items():
        if cfg.get(key, allowed[0]) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {cfg.get(key)!r}")
    for key in MODERN_BOOL_KEYS:
        if not isinstance(cfg.get(key, False), bool):
            raise ConfigError(f"{key} must be true or false, got {cfg.get(key)!r}")
    base = cfg.get("rope_base", 10000)
    if not _number(base) or not base > 1:
        raise ConfigError(f"rope_base must be a number > 1 (10000 is usual), got {base!r}")
    cap = cfg.get("logit_softcap")
    if cap is not None and not (_number(cap) and cap > 0):
        raise ConfigError(f"logit_softcap must be a number > 0 (Gemma 2 uses 30) or null (off), got {cap!r}")
    if cfg.get("pos_emb") == "rope" and isinstance(cfg.n_head, int) and (cfg.n_embd // cfg.n_head) % 2:
        raise ConfigError(
            f"pos_emb=rope rotates pairs of channels: each head's width n_embd / n_head = {cfg.n_embd // cfg.n_head} "
            "must be even; change n_head or n_embd"
        )
    _validate_optimizer(cfg)


def _validate_optimizer(cfg: DictConfig) -> None:
    optimizer = cfg.get("optimizer", "adamw")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    lr, momentum = cfg.get("muon_lr", 0.02), cfg.get("muon_momentum", 0.95)
    if not (_number(lr) and lr > 0):
        raise ConfigError(f"muon_lr must be > 0 (0.02 is usual), got {lr!r}")
    if not (_number(momentum) and 0 <= momentum < 1):
        raise ConfigError(f"muon_momentum must be in [0, 1) (0.95 is usual), got {momentum!r}")
    if optimizer != "muon":
        return
    if str(cfg.trainer.strategy) == "fsdp":
        # FSDP hands the optimizer flattened 1-D shards: Muon's matrices would no longer be matrices
        raise ConfigError(
            "optimizer=muon needs whole 2-D weights; FSDP shards them: use trainer=ddp, or optimizer=adamw"
        )
    if cfg.learning_rate == "auto":
        raise ConfigError(
            "learning_rate=auto searches one rate for one optimizer; with optimizer=muon give learning_rate "
            "(AdamW's) and muon_lr"
        )
