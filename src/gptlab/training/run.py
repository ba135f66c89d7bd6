"""One training run as a short sequence of named steps:

    settings (and init_from's weights) -> start (scratch, resume, finished) -> data -> learning rate -> model
             -> callbacks -> trainer -> fit -> results

``train(cfg, run_dir)`` runs them on a config Hydra composed; each step is a function of its own,
so tests, the LR finder (``find_learning_rate``) and the bench build runs from the same parts.
Nothing here knows Hydra's launcher or the command line: that is ``gptlab.cli.train``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from gptlab import startup
from gptlab.config import data_spec, model_config, plain, resolve_device, token_masking, validate
from gptlab.config.device import DeviceChoice
from gptlab.data.datamodule import GPTDataModule, auto_eval_merge
from gptlab.data.dataset import DataSpec, ensure_prepared, val_bytes_per_token
from gptlab.data.tokenizer import undecodable_ids
from gptlab.errors import ConfigError, RunInterrupted
from gptlab.model import Block, GPTConfig
from gptlab.rundir import (
    BEST,
    CONFIG,
    EVAL,
    EXPORT,
    LAST,
    METRICS,
    TRAINING_LOG,
    RunLock,
    clear_run,
    is_place_key,
    read_metrics,
    write_eval,
    write_failure,
    write_metrics,
)
from gptlab.training import flops, lr_find, memory, pretrained
from gptlab.training import passthrough as trainer_args
from gptlab.training.callbacks.logs import (
    EvalClock,
    EvalSamples,
    FinalEvaluation,
    NonFiniteGuard,
    ProgressLog,
    StartupLine,
    TrainingLog,
    duration,
    generate_sample,
)
from gptlab.training.callbacks.monitors import GradientMonitor, InitialLossCheck, LayerGradients, PlateauHint
from gptlab.training.checkpoint import (
    AtomicCheckpointIO,
    BestCheckpoint,
    check_compatible,
    check_resumable,
    checkpoint_step,
    export_weights,
    load_checkpoint,
    remove_partial_writes,
    resolve_checkpoint,
)
from gptlab.training.compiling import CompileWatch
from gptlab.training.loggers import LoggerRuns, build_loggers, closing, log_config, log_results, saved_runs
from gptlab.training.module import GPTModule
from gptlab.training.resume import FINISHED, RngState, StopOnSignal, resume_changes, starting_point
from gptlab.training.schedule import optim_config

log = logging.getLogger("gptlab")


@dataclass
class Run:
    """What every step of one run knows: its settings, folder, device, and where it starts."""

    cfg: DictConfig
    run_dir: Path
    device: DeviceChoice
    start: Path | str | None = None  # None: from scratch; else the checkpoint it continues
    source: pretrained.Source | None = None  # init_from=<weights>: what a new run starts from
    hparam_keys: Sequence[str] = ()
    memory_at_start: int = 0
    tokens_per_step: int = 0
    resume_step: int = 0
    changes: dict = field(default_factory=dict)  # settings changed at a resume: {key: (old, new)}
    logger_runs: dict = field(default_factory=dict)  # the W&B / MLflow runs a resumed run continues

    @property
    def on_gpu(self) -> bool:
        return self.device.accelerator == "gpu"


@dataclass
class Data:
    """The data step's result: the prepared dataset, its DataModule, token masking, model shape."""

    spec: DataSpec
    dm: GPTDataModule
    masking: object | None  # TokenMasking, or None unless augment.mask_prob > 0
    mconf: GPTConfig


@dataclass
class Parts:
    """The callbacks step's result: the callbacks, and the ones results are read from."""

    callbacks: list
    training_log: TrainingLog
    progress: ProgressLog
    monitors: list = field(default_factory=list)
    early_stop: EarlyStopping | None = None
    compile_watch: CompileWatch | None = None
    eval_clock: EvalClock | None = None


def train(
    cfg: DictConfig, run_dir: str | Path, callbacks: Sequence[L.Callback] = (), hparam_keys: Sequence[str] = ()
) -> dict:
    """Train (or, with eval_only, evaluate) as cfg says, writing into run_dir; returns the
    metrics.json dict (eval.json's for eval_only). No other run may use run_dir meanwhile: rank
    0 holds its lock. callbacks run after the run's own (the bench times steps through one);
    hparam_keys: more keys for TensorBoard's HPARAMS tab (a sweep's swept keys). The config's own
    `callbacks` node is built by the entry points (gptlab.train, the command line), which know Hydra."""
    run_dir = Path(run_dir)
    if startup.CLOCK.total is not None:  # an earlier run in this process (a sweep's job) reached step 0
        startup.restart()
    elif not startup.CLOCK.phases:  # called from Python, not through the command line's marks
        startup.mark("before train()")
    if not callbacks and any(v is not None for v in (cfg.get("callbacks") or {}).values()):
        raise ConfigError(
            "the config names callbacks (callbacks.*), which this function does not build: call gptlab.train(cfg, "
            "run_dir), which does, or pass them built: callbacks=[...]"
        )
    device = settings(cfg)  # before the lock: refused settings leave no trace, not even the folder
    source = pretrained.open_source(cfg)
    cfg = pretrained.adopt_shape(cfg, source)  # init_from=<weights>: their shape (a copy of cfg)
    with sigint_given_back(), RunLock(run_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext():
        run = Run(cfg, run_dir, device, source=source, hparam_keys=tuple(hparam_keys))
        if cfg.eval_only:
            return evaluate_only(cfg, run_dir, run.device, source)
        run.start = starting(cfg, run_dir)
        if run.start == FINISHED:
            return read_metrics(run_dir)
        memory.reset_peak(cuda=run.on_gpu)  # this run's own peak, even as job 4 of a sweep
        run.memory_at_start = memory.current(cuda=run.on_gpu)
        startup.mark("settings")  # checks, the device, init_from's weights opened, the run lock
        data = build_data(cfg)
        startup.mark("data")
        check_checkpoint(run, data)
        choose_learning_rate(run, data)
        # a run continued from its checkpoint gets its weights there, not from init_from's source
        module = build_module(cfg, data, source if run.start is None else None)
        startup.mark("model")
        run.tokens_per_step = describe(run, data, module)
        loggers = build_loggers(cfg, run_dir, run.resume_step if run.start else None, run.logger_runs)
        parts = build_callbacks(run, data, extra=callbacks)
        trainer = build_trainer(run, parts.callbacks, loggers)
        with closing(loggers):
            return fit(run, trainer, module, data, parts)


# ---------------------------------------------------------------------------- steps


def settings(cfg: DictConfig) -> DeviceChoice:
    """Check every setting before any work, and choose the device and precision."""
    _quiet_lightning()
    if rank_zero_only.rank != 0:
        log.setLevel(logging.WARNING)  # under DDP only rank 0 writes the console log
    validate(cfg)
    trainer_args.check(cfg)  # +trainer.<argument>=... : a Lightning Trainer argument, and a value it takes
    device = resolve_device(cfg)
    if device.accelerator == "gpu":
        torch.set_float32_matmul_precision("high")  # float32 matmuls on TF32 tensor cores (Ampere and newer)
    return device


def starting(cfg: DictConfig, run_dir: Path) -> Path | str | None:
    """Where the run starts: None (scratch), a checkpoint to continue, or FINISHED (resume=true
    found the run complete). overwrite=true first removes the earlier run's files."""
    if cfg.overwrite and rank_zero_only.rank == 0:
        removed = clear_run(run_dir)  # before anything is written: a later resume can never mix two runs
        if removed:
            names = ", ".join(p.name for p in removed[:6]) + (", ..." if len(removed) > 6 else "")
            log.info(f"overwrite=true: removed the earlier run's {len(removed)} files in {run_dir} ({names})")
    start = starting_point(run_dir, cfg.init_from, cfg.ckpt_path, bool(cfg.resume), bool(cfg.overwrite), False)
    if start == FINISHED:
        log.info(
            f"resume=true: {run_dir} already finished ({METRICS} is there); nothing to do "
            "(to train it further: init_from=resume with a larger max_iters)"
        )
    elif start is not None:
        log.info(f"continuing from {start}")
    remove_partial_writes(run_dir)  # leftovers of a write that a SIGKILL cut short
    return start


def build_data(cfg: DictConfig) -> Data:
    """The prepared dataset (prepared now if needed), its DataModule, token masking and the
    model's shape for its vocabulary (+1 for the [MASK] token when masking)."""
    spec = data_spec(cfg)
    batching = str(cfg.data.get("batching", "random"))
    ensure_prepared(spec, log=log.info, documents=batching != "random")
    dm = GPTDataModule(
        spec.dir,
        int(cfg.block_size),
        int(cfg.batch_size),
        seed=int(cfg.seed),
        batching=batching,
        bucket_batches=int(cfg.data.get("bucket_batches", 16)),
        accumulation=int(cfg.gradient_accumulation_steps),
        eval_batch_size=cfg.get("eval_batch_size"),
        eval_iters=int(cfg.eval_iters),
    )
    dm.check_block_size()
    masking = token_masking(cfg, dm.vocab_size)
    mconf = model_config(cfg, dm.vocab_size + (masking is not None))
    merge = cfg.get("eval_merge", 1)
    dm.eval_merge = (
        auto_eval_merge(
            dm.eval_iters,
            dm.eval_batch_size,
            dm.block_size,
            mconf.padded_vocab_size,
            on_gpu=resolve_device(cfg).accelerator == "gpu",
        )
        if merge == "auto"
        else min(int(merge), dm.eval_iters)
    )
    return Data(spec, dm, masking, mconf)


def check_checkpoint(run: Run, data: Data) -> None:
    """A checkpoint to continue from must hold training state and fit the model. Settings that
    changed since are applied and recorded, or refused (resume.resume_changes has the table)."""
    if run.start is None:
        return
    ckpt = load_checkpoint(run.start, mmap=True)
    check_resumable(ckpt, run.start)
    check_compatible(ckpt["gptlab"], data.mconf.to_dict(), "config")
    if run.cfg.learning_rate == "auto":
        # a resumed learning_rate=auto run keeps the rate its search chose
        saved = ckpt["gptlab"]["optim"]
        lr_find.use_learning_rate(run.cfg, saved["learning_rate"], saved["min_lr"], "the checkpoint's")
    run.resume_step = int(ckpt.get("global_step", 0))
    run.logger_runs = saved_runs(ckpt)
    run.changes = resume_changes(ckpt["gptlab"].get("config", {}), plain(run.cfg))
    if run.changes:
        log.info(
            f"resumed at step {run.resume_step} with changed settings (applied from here on, recorded in "
            f"{TRAINING_LOG} and {METRICS}): " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in run.changes.items())
        )


def choose_learning_rate(run: Run, data: Data) -> None:
    """learning_rate=auto on a fresh run: the range test on a fresh model picks it (lr_find.py)."""
    if run.cfg.learning_rate == "auto" and run.start is None:
        found = lr_find.run(run.cfg, data.dm, data.mconf, run.device, run.run_dir, data.masking)
        lr_find.use_suggestion(run.cfg, found)


def build_module(cfg: DictConfig, data: Data, source: pretrained.Source | None = None) -> GPTModule:
    """The LightningModule around a freshly initialised GPT (seeded), or one holding init_from's
    weights, with the settings stored in every checkpoint so tools can rebuild it without the config."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    tokenizer_meta = {k: v for k, v in data.dm.meta.items() if k in ("tokenizer", "vocab_size", "chars", "eot_token")}
    module = GPTModule(
        data.mconf,
        optim_config(cfg),
        compile=bool(cfg.compile),
        compile_backend=str(cfg.get("compile_backend", "inductor")),
        compile_mode=str(cfg.get("compile_mode", "default")),
        extra={"config": plain(cfg), "tokenizer": tokenizer_meta, "data_dir": str(data.spec.dir)},
        augment=data.masking,
    )
    if source is not None:
        pretrained.load_into(module.model, source, data.dm.meta)
    return module


def describe(run: Run, data: Data, module: GPTModule) -> int:
    """The run's summary lines; returns the tokens per optimizer step (all processes)."""
    cfg, device, run_dir = run.cfg, run.device, run.run_dir
    n_proc = (len(device.devices) if isinstance(device.devices, list) else int(device.devices)) * int(
        cfg.trainer.num_nodes
    )
    accum = int(cfg.gradient_accumulation_steps)
    tokens_per_step = int(cfg.batch_size) * int(cfg.block_size) * accum * n_proc
    log.info(
        f"model: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, vocab {data.mconf.vocab_size:,}, "
        f"{module.model.num_params() / 1e6:.2f}M parameters"
        f" | device {device.accelerator}, {device.dtype} ({device.precision})"
    )
    log.info(
        f"tokens per optimizer step: {cfg.batch_size} batch x {cfg.block_size} block x {accum} accum x "
        f"{n_proc} process(es) = {tokens_per_step:,} | run folder: {run_dir}"
    )
    if data.dm.batching != "random":
        docs = data.dm.meta["documents"]
        log.info(
            f"batching: {data.dm.batching} ({docs['kind']} documents: {docs['train']:,} train, {docs['val']:,} val); "
            "tokens/s counts real tokens, slots are at most the figure above"
        )
    return tokens_per_step


def build_monitors(cfg: DictConfig, vocab_size: int, resume: bool) -> list[L.Callback]:
    """The guide's debugging checks that monitor.* turns on (README: Debugging and monitoring)."""
    mon = cfg.monitor
    if not mon.enabled:
        return []
    monitors = [GradientMonitor(int(cfg.log_interval), float(mon.grad_warn), float(cfg.grad_clip))]
    if int(mon.layer_interval) > 0:
        monitors.append(LayerGradients(int(mon.layer_interval), bool(mon.histograms), float(mon.layer_ratio)))
    if mon.initial_loss_check and not resume:
        monitors.append(InitialLossCheck(vocab_size))
    if int(mon.plateau_evals) > 0:
        monitors.append(PlateauHint(int(mon.plateau_evals)))
    return monitors


def build_callbacks(run: Run, data: Data, extra: Sequence[L.Callback] = ()) -> Parts:
    """Every callback of a training run, in the order Lightning must call them."""
    cfg, run_dir, resume = run.cfg, run.run_dir, run.start is not None
    training_log = TrainingLog(
        run_dir / TRAINING_LOG,
        append=resume,
        tokens_per_step=run.tokens_per_step,
        resumed=(run.resume_step, run.changes) if run.changes else None,
        bits=val_bits(data),
    )
    # trained weights (a resume, init_from=<weights>) are not expected to start at the random-guess loss
    monitors = build_monitors(cfg, data.mconf.vocab_size, resume or run.source is not None)
    grad_monitor = next((m for m in monitors if isinstance(m, GradientMonitor)), None)
    peak, peak_source = flops.training_peak(
        run.device.accelerator, run.device.dtype, cfg.get("peak_tflops"), _first(run.device)
    )
    if peak is not None or run.on_gpu:
        log.info(f"MFU against {peak_source}" if peak is not None else peak_source)
    progress = ProgressLog(int(cfg.log_interval), run.tokens_per_step, grad_monitor=grad_monitor, peak_flops=peak)
    compile_watch = CompileWatch(bool(cfg.compile))  # first_step_s; a fallback to eager, said and recorded
    callbacks = [
        StartupLine(),
        training_log,
        *monitors,  # before ProgressLog: it prints the gradient norm GradientMonitor reads
        progress,
        NonFiniteGuard(int(cfg.log_interval), float(cfg.learning_rate), run.device.dtype),
        BestCheckpoint(run_dir, save_last=bool(cfg.always_save_checkpoint)),
        FinalEvaluation(int(cfg.max_iters), int(cfg.eval_interval)),
        RngState(),
        LoggerRuns(),
        StopOnSignal(run_dir / LAST),
        *trainer_args.callbacks(cfg),  # trainer.max_time's timer
        compile_watch,
        *extra,
    ]
    if int(cfg.eval_sample_tokens) > 0 and str(cfg.trainer.strategy) != "fsdp":
        suppress = undecodable_ids(data.dm.tokenizer, data.mconf.vocab_size)  # padded rows and [MASK]
        callbacks.append(
            EvalSamples(
                int(cfg.eval_sample_tokens),
                data.dm.tokenizer,
                int(cfg.seed),
                suppress,
                budget=float(cfg.eval_sample_budget),
            )
        )
    eval_clock = EvalClock()  # after EvalSamples: a sample is part of the evaluation it follows
    callbacks.append(eval_clock)
    early_stop = None
    if cfg.early_stopping.patience:
        # counts the evaluations during fit (not the step-0 one) without val loss < best - min_delta
        early_stop = EarlyStopping(
            "val/loss",
            min_delta=float(cfg.early_stopping.min_delta),
            mode="min",
            patience=int(cfg.early_stopping.patience),
            check_on_train_epoch_end=False,
        )
        callbacks.append(early_stop)
    return Parts(callbacks, training_log, progress, monitors, early_stop, compile_watch, eval_clock)


def build_trainer(run: Run, callbacks: list, loggers: Sequence = ()) -> L.Trainer:
    """Lightning's Trainer: devices, precision, accumulation, clipping, the evaluation rhythm,
    and the loggers (training/loggers.py builds them)."""
    cfg, device, run_dir = run.cfg, run.device, run.run_dir
    accum = int(cfg.gradient_accumulation_steps)
    return L.Trainer(
        accelerator=device.accelerator,
        devices=device.devices,
        strategy=strategy(str(cfg.trainer.strategy)),
        num_nodes=int(cfg.trainer.num_nodes),
        precision=device.precision,
        max_steps=int(cfg.max_iters),  # optimizer steps, as nanoGPT's max_iters
        max_epochs=-1,  # the train loader never ends; max_steps stops the run
        accumulate_grad_batches=accum,
        gradient_clip_val=float(cfg.grad_clip) or None,
        gradient_clip_algorithm="norm",
        # val_check_interval counts micro-batches: eval_interval optimizer steps = x accum batches
        val_check_interval=int(cfg.eval_interval) * accum,
        check_val_every_n_epoch=None,
        limit_val_batches=int(cfg.eval_iters),
        num_sanity_val_steps=0,
        log_every_n_steps=int(cfg.log_interval),
        logger=list(loggers) or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
        enable_progress_bar=False,  # ProgressLog prints every log_interval steps instead
        enable_model_summary=False,
        deterministic=bool(cfg.trainer.deterministic),
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,  # each rank draws its own random windows (GPTDataModule)
        **trainer_args.passthrough(cfg),  # +trainer.<argument>=... (training/passthrough.py)
    )


def fit(run: Run, trainer: L.Trainer, module: GPTModule, data: Data, parts: Parts) -> dict:
    """The step-0 evaluation (fresh runs), training and the final checkpoint; then results()."""
    cfg, run_dir = run.cfg, run.run_dir
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / CONFIG, resolve=True)
        (run_dir / METRICS).unlink(missing_ok=True)  # written again only when this run completes
    t0, sigint = time.time(), signal.getsignal(signal.SIGINT)
    try:
        if run.start is None:
            log_config(trainer, hparams(cfg, run.hparam_keys), {k: v for k, v in plain(cfg).items() if k != "logger"})
            trainer.validate(module, datamodule=data.dm, verbose=False)  # the step-0 evaluation
        trainer.fit(module, datamodule=data.dm, ckpt_path=str(run.start) if run.start else None, weights_only=True)
    except SystemExit:
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        # Lightning turns a KeyboardInterrupt -- a second Ctrl-C, which StopOnSignal answers by
        # stopping at once -- into exit status 1 with SIGINT ignored from then on; here it becomes
        # RunInterrupted (130) with the command that continues from the last checkpoint saved
        with contextlib.suppress(ValueError):  # only the main thread sets handlers
            signal.signal(signal.SIGINT, sigint)
        raise RunInterrupted(
            "SIGINT stopped training at once (a second Ctrl-C, or one before training began); nothing new was saved.",
            signal.SIGINT,
            str(run_dir),
        ) from None
    except SIGTERMException:
        # Lightning's handler caught a SIGTERM outside the training steps (StopOnSignal covers
        # those); its exception would end the process with status 0, as if the run had finished
        raise RunInterrupted(
            "SIGTERM outside the training steps; nothing new was saved.", signal.SIGTERM, str(run_dir)
        ) from None
    except Exception as e:
        if trainer.is_global_zero and not isinstance(e, RunInterrupted):
            # what the run got to before it failed, for the sweep's summary and the report
            write_failure(run_dir, e, measurements(run, trainer, module, parts, time.time() - t0))
        raise
    if not cfg.always_save_checkpoint:
        trainer.save_checkpoint(run_dir / LAST, weights_only=False)  # full state: resumable
    return results(run, trainer, module, data, parts, time.time() - t0)


def results(run: Run, trainer: L.Trainer, module: GPTModule, data: Data, parts: Parts, wall: float) -> dict:
    """metrics.json (written last: it marks the run finished), the export, the HPARAMS row and
    the final sample."""
    cfg, run_dir = run.cfg, run.run_dir
    metrics = measurements(run, trainer, module, parts, wall)
    metrics["stop_reason"], metrics["stop_message"] = stop_reason(cfg, trainer, parts.early_stop)
    if not trainer.is_global_zero:
        return metrics
    # under FSDP the weights are sharded: rank 0 alone cannot run the model
    skip = int(cfg.sample_tokens) == 0 or str(cfg.trainer.strategy) == "fsdp"
    suppress = undecodable_ids(data.dm.tokenizer, data.mconf.vocab_size)
    metrics["sample"] = (
        ""
        if skip
        else generate_sample(module.model, data.dm.tokenizer, int(cfg.sample_tokens), int(cfg.seed), suppress)
    )
    metrics["checkpoint_bytes"] = disk_report(run_dir, bool(cfg.get("export_weights")))
    write_metrics(run_dir, metrics)
    best = metrics.get("best_val_loss")
    if best is not None:
        # the HParams dashboard: one row per run of a sweep, with its best val loss
        log_results(
            trainer,
            hparams(cfg, run.hparam_keys),
            {
                "hp/best_val_loss": best,
                "hp/final_val_loss": metrics["final_val_loss"],
                "hp/final_train_loss": metrics["final_train_loss"],
            },
            step=metrics["iters"],
        )
        log.info(f"training stopped at step {metrics['iters']}: {metrics['stop_message']}")
        log.info(f"best val loss {best:.4f} at step {metrics['best_step']}{_when(metrics)}; checkpoints in {run_dir}")
    if metrics.get("sample"):
        log.info("sample:\n" + metrics["sample"])
    return metrics


# ---------------------------------------------------------------------------- the other uses of the steps


def evaluate_only(cfg: DictConfig, run_dir: Path, device: DeviceChoice, source=None) -> dict:
    """eval_only=true: one evaluation of a checkpoint, of init_from's weights, or of a fresh model,
    written to eval.json. A run's training.log, metrics.json, config.yaml, checkpoints and
    TensorBoard events are never touched: evaluating a finished run leaves its history as it was."""
    ckpt = None if source is not None else _eval_checkpoint(cfg, run_dir)
    data = build_data(cfg)
    step = 0
    if ckpt is not None:
        check_compatible(load_checkpoint(ckpt, mmap=True)["gptlab"], data.mconf.to_dict(), "config")
        step = checkpoint_step(ckpt)
    module = build_module(cfg, data, source)
    trainer = L.Trainer(
        accelerator=device.accelerator,
        devices=device.devices,
        strategy=strategy(str(cfg.trainer.strategy)),
        num_nodes=int(cfg.trainer.num_nodes),
        precision=device.precision,
        limit_val_batches=int(cfg.eval_iters),
        plugins=cluster_plugins(),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,
    )
    what = str(ckpt) if ckpt else "a freshly initialised model (no checkpoint in the run folder)"
    what = f"init_from={cfg.init_from}" if source is not None else what
    log.info(f"eval_only: evaluating {what} on {cfg.eval_iters} batches per split")
    trainer.validate(
        module, datamodule=data.dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True, verbose=False
    )
    ev = module.last_eval
    result = {
        "status": "eval_only",
        "checkpoint": str(ckpt) if ckpt else (str(source.path) if source is not None else None),
        "step": step,
        "train_loss": ev.get("train"),
        "val_loss": ev.get("val"),
        "eval_iters": int(cfg.eval_iters),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if trainer.is_global_zero:
        write_eval(run_dir, result)
        log.info(
            f"step {step}: train loss {result['train_loss']:.4f}, val loss {result['val_loss']:.4f} "
            f"(eval_only; written to {run_dir / EVAL})"
        )
    return result


def _eval_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """What eval_only evaluates: ckpt_path, else the run folder's best.ckpt (else last.ckpt),
    else nothing (a fresh model: the loss before training)."""
    if cfg.ckpt_path in ("last", "best"):
        return resolve_checkpoint(run_dir / (LAST if cfg.ckpt_path == "last" else BEST))
    if cfg.ckpt_path:
        return resolve_checkpoint(cfg.ckpt_path)
    if (run_dir / BEST).is_file() or (run_dir / LAST).is_file():
        return resolve_checkpoint(run_dir)
    if cfg.init_from == "resume":
        raise ConfigError(f"eval_only=true init_from=resume: {run_dir} holds no checkpoint; give ckpt_path=FILE")
    return None


def find_learning_rate(cfg: DictConfig, run_dir: str | Path) -> dict:
    """`gptlab lr-find`: the range test alone, on the model and batches this config would train;
    writes lr_find.png and lr_find.json to run_dir and returns the latter's dict."""
    run_dir = Path(run_dir)
    device = settings(cfg)
    with sigint_given_back(), RunLock(run_dir) if rank_zero_only.rank == 0 else contextlib.nullcontext():
        if cfg.init_from != "scratch" or cfg.eval_only or cfg.ckpt_path:
            raise ConfigError("lr_find trains a fresh model: drop init_from=resume / ckpt_path / eval_only")
        data = build_data(cfg)
        return lr_find.run(cfg, data.dm, data.mconf, device, run_dir, data.masking).to_dict()


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def sigint_given_back():
    """Lightning answers a KeyboardInterrupt inside fit, validate or the Tuner by ignoring SIGINT
    from then on; the caller -- a sweep's next job, a notebook -- gets its own handler back however
    the run ended."""
    sigint = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, TypeError):  # not the main thread; a handler set outside Python
            signal.signal(signal.SIGINT, sigint)


def _quiet_lightning() -> None:
    # Lightning's start-up banner (GPU/TPU available, ...) repeats what the run summary says
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.seed",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")
    # GPTModule corrupts training inputs there on purpose (token masking), not the DataModule
    warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer` in `LightningModule`.*")
    # the LR finder's temporary checkpoint (Lightning's Tuner)
    logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").setLevel(logging.WARNING)


def _when(metrics: dict) -> str:
    """' (after 2m31s; evaluation 12% of the run, 18.2 s)': time to the best val loss, eval share."""
    parts = []
    if metrics.get("best_val_time_s") is not None:
        parts.append(f"after {duration(metrics['best_val_time_s'])}")
    if metrics.get("eval_share") is not None:
        parts.append(f"evaluation {metrics['eval_share']:.0%} of the run, {metrics['eval_s']:.1f} s")
    return f" ({'; '.join(parts)})" if parts else ""


def disk_report(run_dir: Path, export: bool) -> dict[str, int]:
    """Write the weights-only export if asked, and report what the run's checkpoints take."""
    if export:
        src = run_dir / BEST if (run_dir / BEST).is_file() else run_dir / LAST
        export_weights(src, run_dir / EXPORT)
    sizes = {n: (run_dir / n).stat().st_size for n in (LAST, BEST, EXPORT) if (run_dir / n).is_file()}
    log.info("checkpoints: " + ", ".join(f"{n} {b / 1e6:.1f} MB" for n, b in sizes.items()) + f" in {run_dir}")
    return sizes


def val_bits(data: Data) -> tuple[str, float]:
    """Bits per character for char tokens; per byte of the val text for BPE (its bytes per token)."""
    if data.dm.meta.get("tokenizer") == "char":
        return "bpc", 1.0
    return "bpb", val_bytes_per_token(data.spec.dir, data.dm.meta)


def _first(device: DeviceChoice) -> int:
    return device.devices[0] if isinstance(device.devices, list) else 0  # cuda:N's N


def cluster_plugins() -> list:
    """Under SLURM: Lightning's SLURM environment without its auto-requeue, whose SIGUSR1 handler
    saves mid-step to hpc_ckpt_N.ckpt -- a file the run folder's tools do not know and that Lightning
    loads into any later run of the folder started without a checkpoint (overwrite=true included).
    StopOnSignal handles SIGUSR1 / SIGUSR2 instead (docs/scaling-out.md, "Requeued jobs")."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def strategy(name: str):
    if name == "fsdp":
        # one FSDP unit per transformer block: a block's whole weights exist only while it runs;
        # "full" checkpoints are gathered on rank 0 into one file that load_model reads as usual
        return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full")
    return name


# The hyperparameters experiments vary; TensorBoard's HPARAMS tab shows these and any swept key
# (all ~80 keys would bury the swept ones)
HPARAMS = (
    "variant",
    "learning_rate",
    "batch_size",
    "gradient_accumulation_steps",
    "block_size",
    "n_layer",
    "n_head",
    "n_embd",
    "dropout",
    "weight_decay",
    "max_iters",
    "warmup_iters",
    "decay_lr",
    "lr_decay_iters",
    "min_lr",
    "grad_clip",
    "seed",
    "augment.mask_prob",
)


def hparams(cfg: DictConfig, extra: Sequence[str] = ()) -> dict:
    keys = list(HPARAMS) + sorted(k for k in set(extra) if k not in HPARAMS and not is_place_key(k))
    out = {}
    for k in keys:
        v = OmegaConf.select(cfg, k, default=None)
        if OmegaConf.is_config(v):
            continue  # a whole group (data=...): its keys are in config.yaml
        out[k] = "None" if v is None else v
    return out


def measurements(run: Run, trainer, module: GPTModule, parts: Parts, wall: float) -> dict:
    """What metrics.json records of a run (finished or not)."""
    cfg, tokens_per_step = run.cfg, run.tokens_per_step
    history = parts.training_log.history
    best = parts.training_log.best()
    last = history[-1] if history else {}
    finite_train = [r["train_loss"] for r in history if math.isfinite(r["train_loss"])]
    peak, kind = memory.peak(cuda=run.on_gpu)
    steps = int(trainer.global_step)
    m = {
        "status": "ok",
        "iters": steps,
        "max_iters": int(cfg.max_iters),
        "final_train_loss": last.get("train_loss"),
        "final_val_loss": last.get("val_loss"),
        "best_val_loss": best["val_loss"] if best else None,
        "best_train_loss": min(finite_train) if finite_train else None,
        "best_step": best["step"] if best else None,
        # wall time from the run's start to the end of the evaluation that gave the best val loss
        "best_val_time_s": best.get("wall_time_s") if best else None,
        "evals": history,
        "train_curve": parts.progress.curve,  # [step, mean training loss over the log_interval before it]
        "tokens_per_step": tokens_per_step,  # slots: packed/padded batches hold fewer real tokens
        "tokens_seen": steps * tokens_per_step,
        "tokens_per_s": parts.progress.tokens_per_second,
        "mfu": parts.progress.mfu,  # null without a peak (CPUs; GPUs not in training/flops.py's table)
        "padding_efficiency": parts.progress.padding_efficiency,
        "wall_time_s": round(wall, 2),
        "dtype": run.device.dtype,  # resolved (auto: bfloat16 or float32): the report's rounding floor reads it
        "peak_memory_bytes": peak,  # this run's peak: GPU allocator (cuda) or resident set size (rss)
        "peak_memory_kind": kind,
        "memory_at_start_bytes": run.memory_at_start,  # before data and model: imported code, earlier jobs' leftovers
        "params": module.model.num_params(),
        "vocab_size": module.model.config.vocab_size,
    }
    m.update(startup.CLOCK.results())  # startup_s (null if the run stopped before step 0) and its phases
    if parts.eval_clock is not None:
        m.update(parts.eval_clock.results())  # eval_s, eval_share
    if parts.compile_watch is not None:
        m.update(parts.compile_watch.results())  # compiled, compile_fallback, compiled_graphs, first_step_s
    m.update(parts.training_log.val_units(m["final_val_loss"], m["best_val_loss"]))  # ppl, bpc / bpb
    if parts.training_log.resumes:
        m["resumes"] = parts.training_log.resumes  # settings changed at a resume: [{step, changed: {key: [old, new]}}]
    for cb in parts.monitors:
        if isinstance(cb, GradientMonitor) and cb.clipped_fraction is not None:
            m["grad_clipped_frac"] = cb.clipped_fraction
        elif isinstance(cb, InitialLossCheck) and cb.result:
            m.update(cb.result)
        elif isinstance(cb, LayerGradients) and cb.flagged:
            m["layer_warnings"] = cb.flagged
    return m


def stop_reason(cfg: DictConfig, trainer, early_stop: EarlyStopping | None) -> tuple[str, str]:
    """Why training ended: a short code for tools and a sentence for people."""
    if trainer.interrupted:
        return "interrupted", f"interrupted at step {trainer.global_step}"
    if early_stop is not None and early_stop.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
        return "early_stopping", (
            f"early stopping after {early_stop.wait_count} evaluations without a val loss improvement of at least "
            f"{cfg.early_stopping.min_delta:g} (early_stopping.patience={cfg.early_stopping.patience})"
        )
    if early_stop is not None and early_stop.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
        return "early_stopping", f"early stopping: {early_stop.stopping_reason_message}"
    if trainer.global_step >= int(cfg.max_iters):
        return "max_iters", f"max_iters={cfg.max_iters} reached"
    if trainer_args.time_limit_reached(trainer):
        return "max_time", f"trainer.max_time={cfg.trainer.max_time} reached (training time, evaluations included)"
    return "stopped", f"stopped at step {trainer.global_step} before max_iters={cfg.max_iters}"
