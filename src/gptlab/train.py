"""Train a GPT: `python -m gptlab.train [key=value ...]`, or a sweep with `-m`.

The one place where config, data, model, callbacks and Lightning's Trainer meet. ``train()``
takes a composed config and a run folder, so tests and tools call it without Hydra's launcher.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from gptlab import cli, lr_find, memory
from gptlab.callbacks import EvalSamples, FinalEvaluation, NonFiniteGuard, ProgressLog, TrainingLog, generate_sample
from gptlab.checkpoint import (
    AtomicCheckpointIO,
    check_compatible,
    check_resumable,
    export_weights,
    load_checkpoint,
    remove_partial_writes,
    resolve_checkpoint,
    write_text_atomic,
)
from gptlab.config import (
    apply_cpu_scale,
    apply_profile,
    data_spec,
    model_config,
    optim_config,
    plain,
    resolve_device,
    token_masking,
    validate,
)
from gptlab.data import ensure_prepared
from gptlab.datamodule import GPTDataModule
from gptlab.errors import ConfigError, GptlabError, RunInterrupted
from gptlab.module import GPTModule
from gptlab.monitors import GradientMonitor, InitialLossCheck, LayerGradients, PlateauHint
from gptlab.resume import FINISHED, RngState, StopOnSignal, starting_point
from gptlab.rundir import BEST, CONFIG, EVAL, EXPORT, LAST, TRAINING_LOG, RunLock, clear_run
from gptlab.sweep import clear_failure, record_failure, write_failure
from gptlab.tokenizer import undecodable_ids

log = logging.getLogger("gptlab")


def _quiet_lightning() -> None:
    # Lightning's start-up banner (GPU/TPU available, ...) repeats what the run summary says
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")
    # GPTModule corrupts training inputs there on purpose (token masking), not the DataModule
    warnings.filterwarnings("ignore", ".*overridden `on_after_batch_transfer` in `LightningModule`.*")
    # the LR finder's temporary checkpoint (Lightning's Tuner)
    logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").setLevel(logging.WARNING)


def train(cfg: DictConfig, run_dir: str | Path, explicit: set[str] = frozenset(), lr_find_only: bool = False,
          callbacks: Sequence[L.Callback] = (), typed: set[str] | None = None) -> dict:
    """Train (or evaluate) as cfg says, writing into run_dir, which no other run may use meanwhile
    (under DDP rank 0 holds the lock for all). Returns the metrics.json dict; see _train."""
    lock = RunLock(Path(run_dir)) if rank_zero_only.rank == 0 else contextlib.nullcontext()
    with lock:
        return _train(cfg, Path(run_dir), explicit, lr_find_only, callbacks, typed)


def _train(cfg: DictConfig, run_dir: Path, explicit: set[str] = frozenset(), lr_find_only: bool = False,
           callbacks: Sequence[L.Callback] = (), typed: set[str] | None = None) -> dict:
    """Train (or evaluate) as cfg says, writing into run_dir. Returns the metrics.json dict.

    explicit: keys the user set (command line, or a chosen model/experiment/variant file); the CPU
    recipe leaves them alone. typed: keys on the command line itself; an experiment's cpu_scale
    leaves only these alone (default: explicit).
    lr_find_only: run only the learning-rate range test (python -m gptlab.lr_find) on the model and
    batches this config would train, and return its lr_find.json dict.
    callbacks are added after the run's own (the bench times steps through one)."""
    _quiet_lightning()
    typed = set(explicit if typed is None else typed)
    if rank_zero_only.rank != 0:
        log.setLevel(logging.WARNING)  # under DDP only rank 0 writes the console log
    run_dir = Path(run_dir)
    device = resolve_device(cfg)
    if device.accelerator == "gpu":
        torch.set_float32_matmul_precision("high")  # float32 matmuls on TF32 tensor cores (Ampere and newer)
    changed = apply_profile(cfg, cli.load_profile("cpu"), set(explicit), on_cpu=device.on_cpu)
    if changed:
        log.info(
            "training on CPU: the CPU recipe (conf/profiles/cpu.yaml) sets "
            + ", ".join(changed)
            + " -- any key you set yourself wins; profile=none turns this off"
        )
    scaled = apply_cpu_scale(cfg, typed, on_cpu=device.on_cpu)
    if scaled:
        log.info(
            "the experiment's CPU scale (its cpu_scale node) sets " + ", ".join(scaled)
            + " -- keys on the command line win; profile=none runs the guide's numbers"
        )
    validate(cfg)
    if cfg.eval_only and not lr_find_only:
        return evaluate_only(cfg, run_dir, device)
    if cfg.overwrite and not lr_find_only and trainer_rank_zero():
        removed = clear_run(run_dir)  # before anything is written: a later resume can never mix two runs
        if removed:
            log.info(f"overwrite=true: removed the earlier run's {len(removed)} files in {run_dir} "
                     f"({', '.join(p.name for p in removed[:6])}{', ...' if len(removed) > 6 else ''})")

    start = None if lr_find_only else starting_point(
        run_dir, cfg.init_from, cfg.ckpt_path, bool(cfg.get("resume")), bool(cfg.overwrite), bool(cfg.eval_only))
    if start == FINISHED:
        log.info(f"resume=true: {run_dir} already finished ({FINISHED} is there); nothing to do "
                 "(to train it further: init_from=resume with a larger max_iters)")
        return json.loads((run_dir / FINISHED).read_text())
    ckpt_path = start
    resume = ckpt_path is not None
    if resume:
        log.info(f"continuing from {ckpt_path}")
    remove_partial_writes(run_dir)  # leftovers of a write that a SIGKILL cut short
    memory.reset_peak(cuda=device.accelerator == "gpu")  # this run's own peak, even as job 4 of a sweep
    memory_at_start = memory.current(cuda=device.accelerator == "gpu")

    spec, dm, masking, mconf = build_data(cfg)
    batching = dm.batching
    resume_step = 0
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        if not cfg.eval_only:
            check_resumable(ckpt, ckpt_path)
        check_compatible(ckpt["gptlab"], mconf.to_dict(), "config")
        resume_step = int(ckpt.get("global_step", 0))
        saved_optim = ckpt["gptlab"]["optim"]
        del ckpt

    if cfg.learning_rate == "auto" and ckpt_path is not None:
        # a resumed learning_rate=auto run keeps the rate its search chose
        lr_find.use_learning_rate(cfg, saved_optim["learning_rate"], saved_optim["min_lr"], "the checkpoint's")
    elif cfg.learning_rate == "auto" or lr_find_only:
        found = lr_find.run(cfg, dm, mconf, device, run_dir, masking)  # on a fresh model: see lr_find.py
        if lr_find_only:
            return found.to_dict()
        lr_find.use_suggestion(cfg, found, set(explicit))

    module = build_module(cfg, spec, dm, mconf, masking)

    tr = cfg.trainer
    n_proc = (len(device.devices) if isinstance(device.devices, list) else int(device.devices)) * int(tr.num_nodes)
    accum = int(cfg.gradient_accumulation_steps)
    tokens_per_step = int(cfg.batch_size) * int(cfg.block_size) * accum * n_proc
    log.info(
        f"model: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, vocab {mconf.vocab_size:,}, "
        f"{module.model.num_params() / 1e6:.2f}M parameters | device {device.accelerator}, {device.dtype} ({device.precision})"
    )
    log.info(
        f"tokens per optimizer step: {cfg.batch_size} batch x {cfg.block_size} block x {accum} accum x "
        f"{n_proc} process(es) = {tokens_per_step:,} | run folder: {run_dir}"
    )
    if batching != "random":
        docs = dm.meta["documents"]
        log.info(
            f"batching: {batching} ({docs['kind']} documents: {docs['train']:,} train, {docs['val']:,} val); "
            "tokens/s counts real tokens, slots are at most the figure above"
        )

    training_log = TrainingLog(run_dir / TRAINING_LOG, append=resume, tokens_per_step=tokens_per_step)
    mon = cfg.monitor
    grad_monitor = (
        GradientMonitor(int(cfg.log_interval), float(mon.grad_warn), float(cfg.grad_clip)) if mon.enabled else None
    )
    progress = ProgressLog(int(cfg.log_interval), tokens_per_step, grad_monitor=grad_monitor)
    best_ckpt = ModelCheckpoint(
        dirpath=run_dir,
        filename=Path(BEST).stem,
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        save_last=bool(cfg.always_save_checkpoint),  # last.ckpt at every evaluation
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    monitors = []
    if mon.enabled:
        monitors.append(grad_monitor)  # before ProgressLog: it prints the norm this reads
        if int(mon.layer_interval) > 0:
            monitors.append(LayerGradients(int(mon.layer_interval), bool(mon.histograms), float(mon.layer_ratio)))
        if mon.initial_loss_check and not resume:
            monitors.append(InitialLossCheck(mconf.vocab_size))
        if int(mon.plateau_evals) > 0:
            monitors.append(PlateauHint(int(mon.plateau_evals)))
    callbacks = [
        training_log,
        *monitors,
        progress,
        NonFiniteGuard(int(cfg.log_interval), float(cfg.learning_rate), device.dtype),
        best_ckpt,
        FinalEvaluation(int(cfg.max_iters), int(cfg.eval_interval)),
        RngState(),
        StopOnSignal(run_dir / LAST),
        *callbacks,
    ]
    suppress = undecodable_ids(dm.tokenizer, mconf.vocab_size)  # padded rows and [MASK] are never sampled
    if int(cfg.eval_sample_tokens) > 0 and str(tr.strategy) != "fsdp":
        callbacks.append(EvalSamples(int(cfg.eval_sample_tokens), dm.tokenizer, int(cfg.seed), suppress,
                                     budget=float(cfg.eval_sample_budget)))
    early_stop = None
    if cfg.early_stopping.patience:
        # counts the evaluations during fit (not the step-0 one) without val loss < best - min_delta
        early_stop = EarlyStopping("val/loss", min_delta=float(cfg.early_stopping.min_delta), mode="min",
                                   patience=int(cfg.early_stopping.patience), check_on_train_epoch_end=False)
        callbacks.append(early_stop)
    # purge_step: TensorBoard hides what a killed run logged after the checkpoint resumed from,
    # so every curve continues from the checkpoint's step without a doubled stretch
    logger = TensorBoardLogger(save_dir=str(run_dir), name="", version="", default_hp_metric=False,
                               purge_step=resume_step + 1 if resume else None)
    trainer = L.Trainer(
        accelerator=device.accelerator,
        devices=device.devices,
        strategy=_strategy(str(tr.strategy)),
        num_nodes=int(tr.num_nodes),
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
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,  # ProgressLog prints every log_interval steps instead
        enable_model_summary=False,
        deterministic=bool(tr.deterministic),
        default_root_dir=str(run_dir),
        use_distributed_sampler=False,  # each rank draws its own random windows (GPTDataModule)
    )
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / CONFIG, resolve=True)
        (run_dir / FINISHED).unlink(missing_ok=True)  # written again only when this run completes

    t0 = time.time()
    on_gpu = device.accelerator == "gpu"
    try:
        if not resume:
            logger.log_hyperparams(_hparams(cfg, typed))
            trainer.validate(module, datamodule=dm, verbose=False)  # the step-0 evaluation
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
    except SIGTERMException:
        # Lightning's handler caught a SIGTERM outside the training steps (StopOnSignal covers
        # those); its exception would end the process with status 0, as if the run had finished
        raise RunInterrupted("SIGTERM outside the training steps; nothing new was saved.", signal.SIGTERM, str(run_dir)) from None
    except Exception as e:
        if trainer.is_global_zero and not isinstance(e, RunInterrupted):
            # what the run got to before it failed, for the sweep's summary and the report
            failed = _metrics(training_log, progress, trainer, module, time.time() - t0, cfg, tokens_per_step, on_gpu, memory_at_start)
            write_failure(run_dir, e, failed)
        raise
    if not cfg.always_save_checkpoint:
        trainer.save_checkpoint(run_dir / LAST, weights_only=False)  # full state: resumable
    wall = time.time() - t0

    metrics = _metrics(training_log, progress, trainer, module, wall, cfg, tokens_per_step, on_gpu, memory_at_start)
    metrics["stop_reason"], metrics["stop_message"] = _stop_reason(cfg, trainer, early_stop)
    for cb in monitors:
        if isinstance(cb, GradientMonitor) and cb.clipped_fraction is not None:
            metrics["grad_clipped_frac"] = cb.clipped_fraction
        elif isinstance(cb, InitialLossCheck) and cb.result:
            metrics.update(cb.result)
        elif isinstance(cb, LayerGradients) and cb.flagged:
            metrics["layer_warnings"] = cb.flagged
    if trainer.is_global_zero:
        # under FSDP the weights are sharded: rank 0 alone cannot run the model
        skip = int(cfg.sample_tokens) == 0 or str(tr.strategy) == "fsdp"
        metrics["sample"] = "" if skip else generate_sample(module.model, dm.tokenizer, int(cfg.sample_tokens), int(cfg.seed), suppress)
        metrics["checkpoint_bytes"] = _disk_report(run_dir, bool(cfg.get("export_weights")))
        write_text_atomic(run_dir / FINISHED, json.dumps(metrics, indent=1))  # last: marks the run finished
        best = metrics.get("best_val_loss")
        if best is not None:
            # the HParams dashboard: one row per run of a sweep, with its best val loss
            logger.log_hyperparams(_hparams(cfg, typed), metrics={
                "hp/best_val_loss": best, "hp/final_val_loss": metrics["final_val_loss"], "hp/final_train_loss": metrics["final_train_loss"]})
            logger.save()
            log.info(f"training stopped at step {metrics['iters']}: {metrics['stop_message']}")
            log.info(f"best val loss {best:.4f} at step {metrics['best_step']}; checkpoints in {run_dir}")
        if metrics.get("sample"):
            log.info("sample:\n" + metrics["sample"])
    return metrics


def trainer_rank_zero() -> bool:
    return rank_zero_only.rank == 0


def build_data(cfg: DictConfig):
    """The prepared dataset (preparing it if needed), its DataModule, the token masking (None
    unless augment.mask_prob > 0) and the model's shape for its vocabulary."""
    spec = data_spec(cfg)
    batching = str(cfg.data.get("batching", "random"))
    ensure_prepared(spec, log=log.info, documents=batching != "random")
    dm = GPTDataModule(
        spec.dir, int(cfg.block_size), int(cfg.batch_size), seed=int(cfg.seed),
        batching=batching, bucket_batches=int(cfg.data.get("bucket_batches", 16)),
        accumulation=int(cfg.gradient_accumulation_steps), eval_batch_size=cfg.get("eval_batch_size"),
    )
    dm.check_block_size()
    masking = token_masking(cfg, dm.vocab_size)
    mconf = model_config(cfg, dm.vocab_size + (masking is not None))  # + the [MASK] token
    return spec, dm, masking, mconf


def build_module(cfg: DictConfig, spec, dm: GPTDataModule, mconf, masking) -> GPTModule:
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    tokenizer_meta = {k: v for k, v in dm.meta.items() if k in ("tokenizer", "vocab_size", "chars", "eot_token")}
    return GPTModule(
        mconf,
        optim_config(cfg),
        compile=bool(cfg.compile),
        extra={"config": plain(cfg), "tokenizer": tokenizer_meta, "data_dir": str(spec.dir)},
        augment=masking,
    )


def _eval_checkpoint(cfg: DictConfig, run_dir: Path) -> Path | None:
    """What eval_only evaluates: ckpt_path, else the run folder's best.ckpt (else last.ckpt),
    else nothing (a fresh model: the loss before training)."""
    if cfg.ckpt_path:
        return resolve_checkpoint(cfg.ckpt_path)
    if (run_dir / BEST).is_file() or (run_dir / LAST).is_file():
        return resolve_checkpoint(run_dir)
    if cfg.init_from == "resume":
        raise ConfigError(f"eval_only=true init_from=resume: {run_dir} holds no checkpoint; give ckpt_path=FILE")
    return None


def evaluate_only(cfg: DictConfig, run_dir: Path, device) -> dict:
    """eval_only=true: one evaluation of a checkpoint (or of a fresh model), written to eval.json.
    A run's training.log, metrics.json, config.yaml, checkpoints and TensorBoard events are
    never touched: evaluating a finished run leaves its history as it was."""
    ckpt = _eval_checkpoint(cfg, run_dir)
    spec, dm, masking, mconf = build_data(cfg)
    step = 0
    if ckpt is not None:
        c = load_checkpoint(ckpt)
        check_compatible(c["gptlab"], mconf.to_dict(), "config")
        step = int(c.get("global_step", c["gptlab"].get("step", 0)))
        del c
    module = build_module(cfg, spec, dm, mconf, masking)
    trainer = L.Trainer(
        accelerator=device.accelerator, devices=device.devices, strategy=_strategy(str(cfg.trainer.strategy)),
        num_nodes=int(cfg.trainer.num_nodes), precision=device.precision, limit_val_batches=int(cfg.eval_iters),
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(run_dir), use_distributed_sampler=False,
    )
    what = str(ckpt) if ckpt else "a freshly initialised model (no checkpoint in the run folder)"
    log.info(f"eval_only: evaluating {what} on {cfg.eval_iters} batches per split")
    trainer.validate(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None, weights_only=True, verbose=False)
    ev = module.last_eval
    result = {"status": "eval_only", "checkpoint": str(ckpt) if ckpt else None, "step": step,
              "train_loss": ev.get("train"), "val_loss": ev.get("val"), "eval_iters": int(cfg.eval_iters),
              "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if trainer.is_global_zero:
        write_text_atomic(run_dir / EVAL, json.dumps(result, indent=1))
        log.info(f"step {step}: train loss {result['train_loss']:.4f}, val loss {result['val_loss']:.4f} "
                 f"(eval_only; written to {run_dir / EVAL})")
    return result


def _disk_report(run_dir: Path, export: bool) -> dict[str, int]:
    """Write the weights-only export if asked, and report what the run's checkpoints take."""
    if export:
        src = run_dir / BEST if (run_dir / BEST).is_file() else run_dir / LAST
        export_weights(src, run_dir / EXPORT)
    sizes = {n: (run_dir / n).stat().st_size for n in (LAST, BEST, EXPORT) if (run_dir / n).is_file()}
    log.info("checkpoints: " + ", ".join(f"{n} {b / 1e6:.1f} MB" for n, b in sizes.items()) + f" in {run_dir}")
    return sizes


def _strategy(name: str):
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        from gptlab.model import Block

        # one FSDP unit per transformer block: a block's whole weights exist only while it runs;
        # "full" checkpoints are gathered on rank 0 into one file that load_model reads as usual
        return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full")
    return name


# The hyperparameters experiments vary; TensorBoard's HPARAMS tab shows these and any key set on
# the command line or by a sweep (all ~80 keys would bury the swept ones)
HPARAMS = ("variant", "learning_rate", "batch_size", "gradient_accumulation_steps", "block_size", "n_layer", "n_head",
           "n_embd", "dropout", "weight_decay", "max_iters", "warmup_iters", "decay_lr", "lr_decay_iters", "min_lr",
           "grad_clip", "seed", "augment.mask_prob")


def _hparams(cfg: DictConfig, typed: set[str] = frozenset()) -> dict:
    where = {"out_dir", "resume", "device", "profile", "data.root", "init_from", "ckpt_path", "overwrite"}  # not hyperparameters
    keys = list(HPARAMS) + sorted(k for k in typed if k not in HPARAMS and k not in where)
    out = {}
    for k in keys:
        v = OmegaConf.select(cfg, k, default=None)
        if OmegaConf.is_config(v):
            continue  # a whole group (data=...): its keys are in config.yaml
        out[k] = "None" if v is None else v
    return out


def _metrics(training_log: TrainingLog, progress: ProgressLog, trainer, module, wall: float, cfg: DictConfig,
             tokens_per_step: int, on_gpu: bool, memory_at_start: int = 0) -> dict:
    best = training_log.best()
    last = training_log.history[-1] if training_log.history else {}
    finite_train = [r["train_loss"] for r in training_log.history if math.isfinite(r["train_loss"])]
    peak, kind = memory.peak(cuda=on_gpu)
    steps = int(trainer.global_step)
    return {
        "status": "ok",
        "iters": steps,
        "max_iters": int(cfg.max_iters),
        "final_train_loss": last.get("train_loss"),
        "final_val_loss": last.get("val_loss"),
        "best_val_loss": best["val_loss"] if best else None,
        "best_train_loss": min(finite_train) if finite_train else None,
        "best_step": best["step"] if best else None,
        "evals": training_log.history,
        "train_curve": progress.curve,  # [step, mean training loss over the log_interval before it]
        "tokens_per_step": tokens_per_step,  # slots: packed/padded batches hold fewer real tokens
        "tokens_seen": steps * tokens_per_step,
        "tokens_per_s": progress.tokens_per_second,
        "padding_efficiency": progress.padding_efficiency,
        "wall_time_s": round(wall, 2),
        "peak_memory_bytes": peak,  # this run's peak: GPU allocator (cuda) or resident set size (rss)
        "peak_memory_kind": kind,
        "memory_at_start_bytes": memory_at_start,  # before data and model: imported code, the sweep's earlier jobs' leftovers
        "params": module.model.num_params(),
        "vocab_size": module.model.config.vocab_size,
    }


def _stop_reason(cfg: DictConfig, trainer, early_stop: EarlyStopping | None) -> tuple[str, str]:
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
    return "stopped", f"stopped at step {trainer.global_step} before max_iters={cfg.max_iters}"


_ARGS: list[str] = []  # the command line as given (set by main), for the resume command

DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def _ranks_for_this_job(hc, run_dir: Path):
    """DDP inside a Hydra multirun. Lightning starts ranks 1..N-1 by running this command again
    (sys.argv) with hydra.run.dir=<HydraConfig run.dir> appended; under -m that would start the
    whole sweep once more in every rank. Here each job's ranks are started as a single run of
    that job's overrides, in the job's folder; afterwards the process group and the launcher's
    environment variables are removed, so the next job starts its own ranks."""
    argv, env = list(sys.argv), {k: os.environ.get(k) for k in DDP_ENV}
    if hc.mode == RunMode.MULTIRUN:
        sys.argv = [sys.argv[0], *hc.overrides.task]
        with read_write(hc), open_dict(hc):
            hc.run.dir = str(run_dir)
    try:
        yield
    finally:
        sys.argv = argv
        if env["LOCAL_RANK"] is None:  # this process launched the ranks (not torchrun, SLURM or a parent rank)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for k in DDP_ENV:
                os.environ.pop(k, None)


@hydra.main(version_base="1.3", config_path=str(cli.CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    multirun = hc.mode == RunMode.MULTIRUN
    params = OmegaConf.select(hc, "sweeper.params", default=None)
    if not multirun and params and hc.runtime.choices.get("experiment"):
        log.info(f"experiment={hc.runtime.choices['experiment']} declares a sweep ({', '.join(f'{k}: {v}' for k, v in params.items())}); "
                 "this is one run with the file's own values -- add -m to run them all")
    try:
        clear_failure(run_dir)
        with _ranks_for_this_job(hc, run_dir):
            metrics = train(cfg, run_dir, cli.explicit_keys(overrides), typed=cli.typed_keys(overrides))
        return metrics.get("best_val_loss")  # what a Hydra sweeper would minimise
    except RunInterrupted as e:
        # a signal stops a whole sweep too; the same command with resume=true continues it
        folder = Path(hc.sweep.dir).resolve() if multirun else run_dir
        print(f"{e.label}: {e.detail} Resume with:\n  {cli.resume_command('gptlab.train', _ARGS, folder)}",
              file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except Exception as e:
        if isinstance(e, GptlabError):
            # one line instead of Hydra's "Error executing job" and a traceback
            print(f"{e.label}: {e}", file=sys.stderr, flush=True)
        if not multirun:
            if isinstance(e, GptlabError):
                sys.exit(e.exit_code)
            raise
        if not isinstance(e, GptlabError):
            log.exception(f"run {run_dir.name} failed")
        # in a sweep the other runs go on; SweepReport lists this one when the sweep ends
        record_failure(run_dir, e)
        return None
    finally:
        # sequential multirun jobs share this process: free the last job's model and buffers
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@cli.report_errors
def main() -> None:
    args = cli.translate_argv(sys.argv[1:])
    cli.check_override_keys(args)
    cli.check_resume_args(args)
    _ARGS[:] = args
    sys.argv = [sys.argv[0], *args, *cli.sweep_folder_names(args)]
    _hydra_main()


if __name__ == "__main__":
    main()
