"""Checks on a composed config, before any work starts: every key's type and range (one table,
SCHEMA, checked by one loop), then the settings that contradict each other. Each failure is one
ConfigError naming the key, the value and what is allowed."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gptlab.analysis import ANALYSES
from gptlab.config.device import DTYPES
from gptlab.config.loggers import logger_specs
from gptlab.data.dataset import DOCUMENT_KINDS
from gptlab.data.packing import BATCHING
from gptlab.errors import ConfigError
from gptlab.model import SWITCHES, GPTConfig

OPTIMIZERS = ("adamw", "muon")  # training.optimizers builds them
# torch.compile's modes: reduce-overhead adds CUDA graphs, max-autotune also searches kernel configs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LR_FIND_RULES = ("steepest", "minimum")  # how the LR finder reads a rate off its curve (training.lr_find)
REPORT_METRICS = ("final_train_loss", "final_val_loss", "gap", "best_val_loss")  # report.report's COLUMNS
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
# Lightning's strategies that make sense for one model on one or more GPUs (StrategyRegistry names)
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true", "fsdp")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# init_from: the two run modes, OpenAI's GPT-2 sizes by nanoGPT's names, a Hugging Face folder (hf:<folder>);
# anything else names a checkpoint file or run folder (training.pretrained reads them all)
RUN_MODES = ("scratch", "resume")
GPT2_WEIGHTS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class Rule:
    """What one key takes: `ok(value)` decides; `says` completes "<key> must be ..."."""

    ok: Callable[[Any], bool]
    says: str


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _or_null(ok: Callable[[Any], bool], null: bool) -> Callable[[Any], bool]:
    return (lambda v: v is None or ok(v)) if null else ok


def integer(lo: int, hi: int | None = None, null: bool = False, says: str = "") -> Rule:
    default = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    ok = _or_null(lambda v: _is_int(v) and v >= lo and (hi is None or v <= hi), null)
    return Rule(ok, says or default + (" or null" if null else ""))


def number(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False, null=False, says=""):
    """A finite int or float between lo and hi; *_open leaves that end out."""

    def ok(v) -> bool:
        if not _number(v):
            return False
        above = v > lo if lo_open else v >= lo
        return above and (hi is None or (v < hi if hi_open else v <= hi))

    if hi is None:
        default = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        default = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return Rule(_or_null(ok, null), says or default + (" or null" if null else ""))


def one_of(*choices: str, null: bool = False, says: str = "") -> Rule:
    ok = _or_null(lambda v: isinstance(v, str) and v in choices, null)
    return Rule(ok, says or f"one of {', '.join(choices)}" + (" or null" if null else ""))


def text(null: bool = False, says: str = "") -> Rule:
    """A name, a path or a sentence: a string (a number typed there, data.name=2024, is a name too)."""
    ok = _or_null(lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v) != "", null)
    return Rule(ok, says or ("text (a name or a path)" + (" or null" if null else "")))


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")  # yes/no/on/off refused: overwrite=no never means true
LEARNING_RATE = Rule(
    lambda v: v == "auto" or (_number(v) and v > 0), "> 0, or auto (a learning-rate range test picks it)"
)
DEVICES = Rule(
    # a count is needed up front: the global batch (batch x accumulation x processes) is logged before training
    lambda v: (
        (_is_int(v) and v >= 1) or (OmegaConf.is_list(v) and len(v) > 0 and all(_is_int(i) and i >= 0 for i in v))
    ),
    "a number of processes (1, 2, ...) or a list of GPU ids ([0,1])",
)
CALLBACKS = Rule(
    lambda v: (
        OmegaConf.is_dict(v)
        and all(c is None or (OmegaConf.is_dict(c) and isinstance(c.get("_target_"), str)) for c in v.values())
    ),
    "named nodes, each with _target_ set to a Lightning Callback's import path "
    "(+callbacks.swa._target_=lightning.pytorch.callbacks.WeightAveraging)",
)

# Every key of conf/train.yaml and its groups: key -> what it takes. validate() checks them in this
# order before anything else; tests/config/test_schema.py checks that no key is left out.
SCHEMA: dict[str, Rule] = {
    # I/O
    "out_dir": text(null=True),
    "eval_interval": integer(1),
    "log_interval": integer(1),
    "eval_iters": integer(1),
    "eval_only": BOOL,
    "always_save_checkpoint": BOOL,
    "init_from": text(
        says="scratch, resume, gpt2 | gpt2-medium | gpt2-large | gpt2-xl, hf:<folder>, or a checkpoint file or run "
        "folder to take the weights from"
    ),
    "ckpt_path": text(null=True),
    "overwrite": BOOL,
    "resume": BOOL,
    "export_weights": BOOL,
    # loggers: the logger group's nodes are checked against their classes (config/loggers.py)
    "wandb_log": BOOL,
    "wandb_project": text(says="text (a W&B project name)"),
    "wandb_run_name": text(null=True, says="text (a W&B run name) or null (the run folder's name)"),
    # data and batch
    "gradient_accumulation_steps": integer(1),
    "batch_size": integer(1),
    "eval_batch_size": integer(1, null=True, says="an integer >= 1, or null (the same as batch_size)"),
    "eval_merge": Rule(
        lambda v: v == "auto" or (_is_int(v) and v >= 1),
        "an integer >= 1 (evaluation batches per forward pass; 1: one at a time), or auto",
    ),
    "block_size": integer(1),
    # model
    "n_layer": integer(1),
    "n_head": integer(1),
    "n_embd": integer(1),
    "dropout": number(0, 1, hi_open=True),
    "bias": BOOL,
    # beyond the GPT-2 recipe (docs/modern.md)
    **{key: one_of(*allowed) for key, allowed in SWITCHES.items()},
    "rope_base": number(1, lo_open=True, says="> 1 (10000 is usual)"),
    "qk_norm": BOOL,
    "tie_embeddings": BOOL,
    "zero_init_proj": BOOL,
    "logit_softcap": number(0, lo_open=True, null=True, says="> 0 (Gemma 2 uses 30) or null (off)"),
    "optimizer": one_of(*OPTIMIZERS),
    "muon_lr": number(0, lo_open=True, says="> 0 (0.02 is usual)"),
    "muon_momentum": number(0, 1, hi_open=True, says="in [0, 1) (0.95 is usual)"),
    # AdamW and the schedule
    "learning_rate": LEARNING_RATE,
    "max_iters": integer(0),
    "weight_decay": number(0),
    "beta1": number(0, 1, hi_open=True),
    "beta2": number(0, 1, hi_open=True),
    "grad_clip": number(0, says=">= 0 (0 disables clipping)"),
    "decay_lr": BOOL,
    "warmup_iters": integer(0),
    "lr_decay_iters": integer(0),
    "min_lr": number(0),
    # system
    "device": Rule(lambda v: isinstance(v, str) and DEVICE.fullmatch(v) is not None, "auto, cpu, cuda, cuda:N or mps"),
    "dtype": one_of(*DTYPES),
    "compile": BOOL,
    "compile_backend": one_of("inductor", "aot_eager", "eager"),
    "compile_mode": one_of(*COMPILE_MODES),
    "pad_vocab": BOOL,
    "peak_tflops": number(0, lo_open=True, null=True, says="> 0 (TFLOP/s of one device: H100 bf16 989) or null"),
    "seed": integer(0, 2**32 - 1),
    "sample_tokens": integer(0),
    "eval_sample_tokens": integer(0),
    "eval_sample_budget": number(
        0,
        1,
        says="a share of the training time between 0 and 1 (0.01: samples take at most 1%; 1: a sample at "
        "every evaluation)",
    ),
    # monitor
    "monitor.enabled": BOOL,
    "monitor.grad_warn": number(0, says=">= 0 (0: never warn)"),
    "monitor.layer_interval": integer(0, says="an integer >= 0 (0: off)"),
    "monitor.histograms": BOOL,
    "monitor.layer_ratio": number(1, lo_open=True, says="> 1 (1000 is usual)"),
    "monitor.initial_loss_check": BOOL,
    "monitor.plateau_evals": integer(0, says="an integer >= 0 (0: off)"),
    # the learning-rate range test
    "lr_find.min_lr": number(0, lo_open=True),
    "lr_find.max_lr": number(0, lo_open=True),
    "lr_find.num_steps": integer(20, says="an integer >= 20 (100 is usual)"),
    "lr_find.diverge_threshold": number(
        1, lo_open=True, null=True, says="> 1 (4 is usual) or null to never stop early"
    ),
    "lr_find.rule": one_of(*LR_FIND_RULES),
    "lr_find.min_lr_ratio": number(
        0, 1, lo_open=True, null=True, says="in (0, 1] (0.1 is usual) or null to keep min_lr as set"
    ),
    # early stopping, augmentation
    "early_stopping.patience": integer(0, null=True, says="a whole number of evaluations (null or 0: off)"),
    "early_stopping.min_delta": number(0),
    "augment.mask_prob": number(0, 1, hi_open=True, says="in [0, 1) (0 turns token masking off)"),
    # experiments and their report
    "variant": text(null=True),
    "report.question": text(null=True),
    "report.analysis": one_of(*ANALYSES, null=True),
    "report.metric": one_of(*REPORT_METRICS),
    "report.goal": one_of("lower", "higher"),
    "report.baseline": text(null=True, says="key=value naming the baseline run, or null (the first run)"),
    "report.cost": one_of(*REPORT_METRICS, null=True),
    # data
    "data.name": text(null=True),
    "data.root": text(),
    "data.source": text(null=True),
    "data.path": text(null=True),
    "data.tokenizer": text(says="char or a tiktoken encoding name (gpt2)"),
    "data.val_fraction": number(0, 1, lo_open=True, hi_open=True, says="between 0 and 1 (0.1: the last 10%)"),
    "data.documents": one_of(*DOCUMENT_KINDS),
    "data.batching": one_of(*BATCHING),
    "data.bucket_batches": integer(1, says="an integer >= 1 (1: no length bucketing)"),
    # callbacks of the user's (built by the entry points: cli/train.py)
    "callbacks": CALLBACKS,
    # Lightning's Trainer
    "trainer.accelerator": one_of(*ACCELERATORS),
    "trainer.devices": DEVICES,
    "trainer.strategy": one_of(*STRATEGIES),
    "trainer.num_nodes": integer(1),
    "trainer.deterministic": BOOL,
}
BOOL_KEYS = tuple(k for k, rule in SCHEMA.items() if rule is BOOL)

# python -m gptlab.sample (conf/sample.yaml); ckpt is checked when it is read
SAMPLE: dict[str, Rule] = {
    "start": text(says="text, or FILE:path to read the prompt from a file"),
    "num_samples": integer(1),
    "max_new_tokens": integer(1),
    "temperature": number(0, lo_open=True, says="> 0 (< 1 sharper, > 1 more random)"),
    "top_k": integer(1, null=True, says="an integer >= 1, or null (all tokens)"),
    "seed": integer(0, 2**32 - 1),
    "device": SCHEMA["device"],
    "dtype": one_of(*DTYPES),
}
# python -m gptlab.inspect (conf/inspect.yaml): train's keys and these
INSPECT: dict[str, Rule] = {
    "split": one_of("train", "val"),
    "rows": integer(1),
    "show_tokens": integer(1),
}
_ABSENT = object()


def check_keys(cfg: DictConfig, table: dict[str, Rule]) -> None:
    """Each key of the table against its rule: the first one that fails is a ConfigError."""
    for key, rule in table.items():
        try:
            v = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        except OmegaConfBaseException as e:  # ${...} that does not resolve, or ??? never given
            raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
        if v is _ABSENT:
            raise ConfigError(f"{key} is missing from the config; give {key}=<value>")
        if not rule.ok(v):
            raise ConfigError(f"{key} must be {rule.says}, got {v!r}")


def validate(cfg: DictConfig) -> None:
    """Reject wrong, contradictory or impossible settings before any work starts."""
    check_keys(cfg, SCHEMA)
    _validate_run_mode(cfg)
    if cfg.max_iters == 0 and not cfg.eval_only:
        raise ConfigError("max_iters=0 trains nothing; give max_iters>0, or eval_only=true to only evaluate")
    if cfg.n_embd % cfg.n_head != 0:
        try:
            GPTConfig(n_embd=cfg.n_embd, n_head=cfg.n_head)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.learning_rate == "auto":
        _validate_auto_lr(cfg)  # min_lr is checked against the learning rate once the search chose it
    elif cfg.min_lr > cfg.learning_rate:
        raise ConfigError(f"min_lr must be between 0 and learning_rate ({cfg.learning_rate}), got {cfg.min_lr}")
    if not cfg.lr_find.min_lr < cfg.lr_find.max_lr:
        raise ConfigError(
            f"lr_find needs 0 < lr_find.min_lr < lr_find.max_lr, got min_lr={cfg.lr_find.min_lr}, "
            f"max_lr={cfg.lr_find.max_lr}"
        )
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
    if cfg.data.path is None and cfg.data.source is None:
        raise ConfigError("this data config needs a text file: data.path=FILE (for example data=text data.path=my.txt)")
    _validate_modern(cfg)
    _validate_compile(cfg)
    logger_specs(cfg)  # each logger's class, package and arguments


def starts_from_weights(cfg: DictConfig) -> bool:
    """init_from names weights to start from (GPT-2, a Hugging Face folder, a checkpoint), not a run mode."""
    return str(cfg.init_from) not in RUN_MODES


def _validate_run_mode(cfg: DictConfig) -> None:
    """overwrite starts over, resume continues, eval_only reads: at most one of them. Weights to
    start from begin a new run: no checkpoint to continue, no rate searched on a fresh model."""
    if starts_from_weights(cfg) and cfg.ckpt_path:
        raise ConfigError(
            f"init_from={cfg.init_from} starts a new run from those weights, ckpt_path={cfg.ckpt_path} continues a "
            "run from its checkpoint: drop one of them"
        )
    if starts_from_weights(cfg) and cfg.learning_rate == "auto":
        raise ConfigError(
            f"learning_rate=auto searches on a freshly initialised model, not on init_from={cfg.init_from}'s "
            "weights: give learning_rate (fine-tuning usually takes a small one, such as 3e-5)"
        )
    resumes = cfg.init_from == "resume" or cfg.resume
    if cfg.overwrite and resumes:
        raise ConfigError(
            "overwrite=true starts the run over, init_from=resume / resume=true continue it: drop one of them"
        )
    if cfg.overwrite and cfg.eval_only:
        raise ConfigError("eval_only=true never changes a run's files, so overwrite=true has nothing to do: drop it")


def _validate_auto_lr(cfg: DictConfig) -> None:
    if cfg.eval_only:
        raise ConfigError(
            "learning_rate=auto searches for a rate to train with; eval_only trains nothing: drop one of them"
        )
    if str(cfg.trainer.devices) != "1" or cfg.trainer.num_nodes != 1:
        raise ConfigError(
            "learning_rate=auto runs its search in one process; with several devices run python -m gptlab.lr_find "
            "first (same settings, trainer.devices=1) and give learning_rate=<its suggestion>"
        )


# ---------------------------------------------------------------- beyond the GPT-2 recipe (docs/modern.md)
# The keys' own ranges are SCHEMA rows; these are the checks across keys.


def _validate_compile(cfg: DictConfig) -> None:
    mode, backend = cfg.get("compile_mode", "default"), cfg.get("compile_backend", "inductor")
    if mode != "default" and backend != "inductor":
        # torch.compile's modes are inductor's settings; the trace-only backends have none
        raise ConfigError(f"compile_mode={mode} needs compile_backend=inductor (got {backend}); or drop compile_mode")


def _validate_modern(cfg: DictConfig) -> None:
    if cfg.pos_emb == "rope" and (cfg.n_embd // cfg.n_head) % 2:
        raise ConfigError(
            f"pos_emb=rope rotates pairs of channels: each head's width n_embd / n_head = {cfg.n_embd // cfg.n_head} "
            "must be even; change n_head or n_embd"
        )
    if cfg.optimizer != "muon":
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
