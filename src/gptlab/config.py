"""From a composed config to validated settings: the CPU profile, up-front checks, the device
and precision, and the small dataclasses the library takes. Knows OmegaConf, not Hydra."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from gptlab.analysis import ANALYSES
from gptlab.augment import TokenMasking
from gptlab.data import DOCUMENT_KINDS, DataSpec
from gptlab.errors import ConfigError
from gptlab.model import GPTConfig
from gptlab.packing import BATCHING
from gptlab.schedule import OptimConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
# dtype -> Lightning precision. Mixed precision keeps float32 master weights; float16 also gets a
# gradient scaler from Lightning's 16-mixed plugin (GPU only).
PRECISION = {"float32": "32-true", "bfloat16": "bf16-mixed", "float16": "16-mixed"}


def _cpu_profile_on(cfg: DictConfig, on_cpu: bool) -> bool:
    mode = cfg.profile
    if mode not in ("auto", "cpu", "none"):
        raise ConfigError(f"profile must be auto, cpu or none, got '{mode}'")
    return mode == "cpu" or (mode == "auto" and on_cpu)


def apply_profile(cfg: DictConfig, profile: dict, explicit: set[str], on_cpu: bool) -> list[str]:
    """Apply the CPU recipe to the keys the user did not set. Returns what it changed."""
    if not _cpu_profile_on(cfg, on_cpu):
        return []
    changed = []
    with open_dict(cfg):
        for key, value in profile.items():
            if key in explicit or cfg.get(key) == value:
                continue
            changed.append(f"{key}={value}")
            cfg[key] = value
    return changed


def _flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_cpu_scale(cfg: DictConfig, typed: set[str], on_cpu: bool) -> list[str]:
    """An experiment's CPU scale: where the CPU profile is on (no GPU, or profile=cpu), the values
    in its `cpu_scale` node replace the experiment's own -- the guide's numbers are meant for a
    GPU -- except for keys typed on the command line. Returns what it changed."""
    scale = cfg.get("cpu_scale")
    if not scale or not _cpu_profile_on(cfg, on_cpu):
        return []
    changed = []
    for key, value in _flatten(OmegaConf.to_container(scale)).items():
        if OmegaConf.select(cfg, key, default="<missing>") == "<missing>":
            raise ConfigError(f"cpu_scale sets '{key}', which is not a config key; the keys are listed in conf/train.yaml")
        if key in typed or key.split(".")[0] in typed or OmegaConf.select(cfg, key) == value:
            continue
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)
        changed.append(f"{key}={value}")
    return changed


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1) -> None:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {v!r}")


# Keys that take only true or false: YAML's yes/no/on/off and other strings are refused, so that
# overwrite=no never counts as true.
BOOL_KEYS = ("eval_only", "always_save_checkpoint", "overwrite", "resume", "export_weights", "decay_lr", "compile",
             "pad_vocab", "bias", "monitor.enabled", "monitor.histograms", "monitor.initial_loss_check",
             "trainer.deterministic")


def _validate_bools(cfg: DictConfig) -> None:
    for key in BOOL_KEYS:
        v = OmegaConf.select(cfg, key, default=False)
        if not isinstance(v, bool):
            raise ConfigError(f"{key} must be true or false, got {v!r}")


def _validate_run_mode(cfg: DictConfig) -> None:
    """overwrite starts over, resume continues, eval_only reads: at most one of them."""
    resumes = cfg.init_from == "resume" or bool(cfg.get("resume"))
    if cfg.overwrite and resumes:
        raise ConfigError("overwrite=true starts the run over, init_from=resume / resume=true continue it: drop one of them")
    if cfg.overwrite and cfg.eval_only:
        raise ConfigError("eval_only=true never changes a run's files, so overwrite=true has nothing to do: drop it")


def validate(cfg: DictConfig) -> None:
    """Reject contradictory or impossible settings before any work starts."""
    _validate_bools(cfg)
    if cfg.init_from not in ("scratch", "resume"):
        raise ConfigError(f"init_from must be scratch or resume, got '{cfg.init_from}'")
    _validate_run_mode(cfg)
    for key in ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps"):
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
        raise ConfigError(f"eval_sample_budget={budget} must be a share of the training time between 0 and 1 "
                          "(0.01: samples take at most 1%; 1: a sample at every evaluation)")
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
        raise ConfigError(f"learning_rate must be > 0, or auto (a learning-rate range test picks it), got {cfg.learning_rate}")
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
    devices = cfg.trainer.devices
    if not (OmegaConf.is_list(devices) or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)):
        # a count is needed up front: the global batch (batch x accumulation x processes) is logged before training
        raise ConfigError(f"trainer.devices must be a number of processes (1, 2, ...) or a list of GPU ids ([0,1]), got {devices!r}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate_auto_lr(cfg: DictConfig) -> None:
    if cfg.eval_only:
        raise ConfigError("learning_rate=auto searches for a rate to train with; eval_only trains nothing: drop one of them")
    if str(cfg.trainer.devices) != "1" or int(cfg.trainer.num_nodes) != 1:
        raise ConfigError(
            "learning_rate=auto runs its search in one process; with several devices run python -m gptlab.lr_find "
            "first (same settings, trainer.devices=1) and give learning_rate=<its suggestion>"
        )
    if float(cfg.min_lr) < 0:
        raise ConfigError(f"min_lr must be >= 0, got {cfg.min_lr}")


def _validate_lr_find(n: DictConfig) -> None:
    from gptlab.lr_find import RULES

    if not (_number(n.min_lr) and _number(n.max_lr) and 0 < float(n.min_lr) < float(n.max_lr)):
        raise ConfigError(f"lr_find needs 0 < lr_find.min_lr < lr_find.max_lr, got min_lr={n.min_lr}, max_lr={n.max_lr}")
    if isinstance(n.num_steps, bool) or not isinstance(n.num_steps, int) or n.num_steps < 20:
        raise ConfigError(f"lr_find.num_steps must be an integer >= 20 (100 is usual), got {n.num_steps!r}")
    if n.diverge_threshold is not None and not (_number(n.diverge_threshold) and float(n.diverge_threshold) > 1):
        raise ConfigError(f"lr_find.diverge_threshold must be > 1 (4 is usual) or null to never stop early, got {n.diverge_threshold}")
    if n.rule not in RULES:
        raise ConfigError(f"lr_find.rule must be one of {', '.join(RULES)}, got '{n.rule}'")


def _validate_early_stopping(n: DictConfig) -> None:
    if n.patience is not None and (isinstance(n.patience, bool) or not isinstance(n.patience, int) or n.patience < 0):
        raise ConfigError(f"early_stopping.patience must be a whole number of evaluations (null or 0: off), got {n.patience!r}")
    if not _number(n.min_delta) or float(n.min_delta) < 0:
        raise ConfigError(f"early_stopping.min_delta must be >= 0, got {n.min_delta}")


@dataclass
class DeviceChoice:
    accelerator: str  # Lightning accelerator
    devices: int | list[int]
    precision: str  # Lightning precision
    dtype: str  # the dtype name it came from

    @property
    def on_cpu(self) -> bool:
        return self.accelerator == "cpu"


def resolve_device(cfg: DictConfig) -> DeviceChoice:
    device = str(cfg.device)
    tr = cfg.trainer
    accelerator, devices = tr.accelerator, tr.devices
    has_cuda = torch.cuda.is_available()
    if device.startswith("cuda"):
        if not has_cuda:
            raise ConfigError(
                f"device={device} but no CUDA GPU is visible (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda is not None}); use device=cpu, or install a CUDA build of torch"
            )
        accelerator = "gpu"
        if ":" in device:
            devices = [int(device.split(":")[1])]
    elif device in ("cpu", "mps"):
        accelerator = device
    elif accelerator == "auto":
        accelerator = "gpu" if has_cuda else "cpu"
    if accelerator == "gpu" and not has_cuda:
        raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible; use trainer=cpu or device=cpu")
    if str(tr.strategy).startswith("fsdp") and accelerator != "gpu":
        raise ConfigError("trainer=fsdp needs CUDA GPUs (Lightning's FSDP does not run on the CPU); on the CPU use trainer=ddp")

    dtype = str(cfg.dtype)
    if dtype == "auto":
        dtype = "bfloat16" if accelerator == "gpu" and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "float16" and accelerator == "cpu":
        # Lightning has no float16 AMP on CPU and would quietly train in bfloat16 instead
        raise ConfigError("dtype=float16 needs a GPU (Lightning has no float16 mixed precision on CPU); on CPU use dtype=bfloat16 or dtype=float32")
    return DeviceChoice(accelerator, devices, PRECISION[dtype], dtype)


def data_spec(cfg: DictConfig) -> DataSpec:
    d = cfg.data
    name = d.get("name")
    if not name:
        # the file's path in the name: two texts called input.txt in different folders never share one
        path = Path(str(d.path)).expanduser()
        where = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        name = f"text_{path.stem}_{where}_{d.tokenizer}"
    return DataSpec(
        name=str(name),
        root=str(d.root),
        source=d.get("source"),
        path=d.get("path"),
        tokenizer=str(d.tokenizer),
        val_fraction=float(d.val_fraction),
        documents=str(d.get("documents", "blank_lines")),
    )


def model_config(cfg: DictConfig, vocab_size: int) -> GPTConfig:
    try:
        return GPTConfig(
            vocab_size=vocab_size,
            block_size=int(cfg.block_size),
            n_layer=int(cfg.n_layer),
            n_head=int(cfg.n_head),
            n_embd=int(cfg.n_embd),
            dropout=float(cfg.dropout),
            bias=bool(cfg.bias),
            vocab_multiple=64 if cfg.get("pad_vocab") else 1,
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def token_masking(cfg: DictConfig, data_vocab_size: int) -> TokenMasking | None:
    """The augmentation's settings, or None when augment.mask_prob is 0. [MASK] takes the first id
    after the data's vocabulary, so the model's vocabulary is one larger."""
    p = float(cfg.augment.mask_prob)
    if p == 0:
        return None
    return TokenMasking(p, mask_token=data_vocab_size, vocab_size=data_vocab_size, seed=int(cfg.seed))


def optim_config(cfg: DictConfig) -> OptimConfig:
    return OptimConfig(
        learning_rate=float(cfg.learning_rate),
        weight_decay=float(cfg.weight_decay),
        beta1=float(cfg.beta1),
        beta2=float(cfg.beta2),
        decay_lr=bool(cfg.decay_lr),
        warmup_iters=int(cfg.warmup_iters),
        lr_decay_iters=int(cfg.lr_decay_iters),
        min_lr=float(cfg.min_lr),
    )


def plain(cfg: DictConfig) -> dict:
    """The config as plain, resolved Python values (safe to store in a checkpoint)."""
    return OmegaConf.to_container(cfg, resolve=True)
