"""A run's loggers: built from the config's (config/loggers.py) with what only the run knows --
its folder, the step it resumes from, the W&B and MLflow runs it continues -- and the calls the
callbacks log through, so that no callback asks which loggers a run has.

What each logger takes beyond scalars: TensorBoard everything (HPARAMS tab, TEXT, histograms);
W&B the config, text samples as tables and histograms; MLflow the config as params and samples
as text artifacts; CSV the config (hparams.yaml). What a logger cannot take is skipped, and the
run says so in one line at its start."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from gptlab.config.loggers import LoggerSpec, logger_specs
from gptlab.errors import ConfigError

log = logging.getLogger("gptlab")

RUNS_KEY = "logger_runs"  # in checkpoints: {"wandb": run id, "mlflow": run id}, continued on resume
MLFLOW_DB, MLFLOW_ARTIFACTS = "mlflow.db", "mlartifacts"  # the run folder's own MLflow store
CSV_METRICS = "metrics.csv"  # Lightning's CSVLogger's file, in its log_dir (<run>/csv/)
BY_TOKENS = "by_tokens/"  # the losses against tokens seen (TrainingLog)
# Loggers whose files drop, at a resume, what a killed run logged after the checkpoint (TensorBoard's
# purge_step, the CSV rows kept below): what came before is written to them again (TrainingLog)
PURGING = (TensorBoardLogger, CSVLogger)
HISTOGRAMS = (TensorBoardLogger, WandbLogger)
TEXT = (TensorBoardLogger, WandbLogger, MLFlowLogger)


def build_loggers(
    cfg: DictConfig, run_dir: Path, resume_step: int | None = None, runs: dict | None = None
) -> list[Logger]:
    """The loggers cfg names, each writing into the run folder unless told otherwise.
    resume_step: the step of the checkpoint a resumed run continues; runs: the W&B / MLflow run ids
    that checkpoint recorded (the same runs continue)."""
    specs = logger_specs(cfg)
    if any(issubclass(s.cls, MLFlowLogger) for s in specs):
        # MLflow sets its own log level when imported: without this, a new store's set-up prints its
        # INFO lines (creating tables, migrations) on the console. A level the user set is kept.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    loggers = []
    for spec in specs:
        if issubclass(spec.cls, MLFlowLogger) and rank_zero_only.rank != 0:
            # only rank 0 logs; MLflow's client opens (and, the first time, creates) its store when
            # built, which ranks started together (torchrun, SLURM) would race for
            continue
        kwargs = _arguments(spec, Path(run_dir), resume_step, runs or {})
        with warnings.catch_warnings():
            # a resumed run's csv/ folder is not empty: its rows are kept (below), not lost
            warnings.filterwarnings("ignore", ".*exists and is not empty.*")
            try:
                lg = spec.cls(**kwargs)
            except ModuleNotFoundError as e:  # a logger config/loggers.EXTRAS does not know (Comet, Neptune...)
                raise ConfigError(f"logger={spec.name}: {e}") from None
        if isinstance(lg, CSVLogger) and resume_step is not None:
            _keep_csv_rows(lg, resume_step)
        loggers.append(lg)
    _quiet()
    _say_what_is_skipped(cfg, specs, loggers)
    return loggers


def _arguments(spec: LoggerSpec, run_dir: Path, resume_step: int | None, runs: dict) -> dict:
    kw = dict(spec.kwargs)
    unset = lambda key: kw.get(key) is None  # noqa: E731 -- null in the config: the run's default
    if issubclass(spec.cls, (TensorBoardLogger, CSVLogger, WandbLogger)) and unset("save_dir"):
        kw["save_dir"] = str(run_dir)
    if issubclass(spec.cls, TensorBoardLogger) and resume_step is not None and unset("purge_step"):
        # TensorBoard hides what a killed run logged after the checkpoint it resumes from, so every
        # curve continues from the checkpoint's step without a doubled stretch
        kw["purge_step"] = resume_step + 1
    if issubclass(spec.cls, WandbLogger):
        if unset("name"):
            kw["name"] = run_dir.resolve().name
        if runs.get("wandb") and unset("id") and unset("version"):
            kw["id"] = runs["wandb"]  # Lightning asks wandb.init for resume="allow": the same run continues
    if issubclass(spec.cls, MLFlowLogger):
        if unset("run_name"):
            kw["run_name"] = run_dir.resolve().name
        if unset("tracking_uri"):
            kw["tracking_uri"] = os.environ.get("MLFLOW_TRACKING_URI")
        if not kw["tracking_uri"]:
            # SQLite needs no server; MLflow 3 refuses its file store (./mlruns) unless told otherwise
            kw["tracking_uri"] = f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"
            if unset("artifact_location"):
                kw["artifact_location"] = str((run_dir / MLFLOW_ARTIFACTS).resolve())
        if runs.get("mlflow") and unset("run_id"):
            kw["run_id"] = runs["mlflow"]
    return kw


def _keep_csv_rows(lg: CSVLogger, resume_step: int) -> None:
    """Lightning's CSV writer deletes an existing metrics.csv when it starts; a resumed run keeps
    the rows up to its checkpoint's step, as TensorBoard's purge_step keeps the events."""
    path = Path(lg.log_dir) / CSV_METRICS
    if rank_zero_only.rank != 0 or not path.is_file():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
    for r in rows:
        # by_tokens/ rows are counted in tokens, not steps: TrainingLog writes them all again
        kept = {
            k: float(v) for k, v in r.items() if k != "step" and v not in ("", None) and not k.startswith(BY_TOKENS)
        }
        if kept:
            lg.log_metrics(kept, step=int(r["step"]))


def _quiet() -> None:
    # MLflow imported earlier in this process (a sweep's previous job), and Lightning's
    # "Experiment ... not found. Creating it." on every new store
    for name, level in (("mlflow", logging.WARNING), ("alembic", logging.WARNING)):
        logging.getLogger(name).setLevel(level)
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)


def _say_what_is_skipped(cfg: DictConfig, specs: Sequence[LoggerSpec], loggers: Sequence[Logger]) -> None:
    """One line naming the extras some logger cannot take (histograms, text samples)."""
    if rank_zero_only.rank != 0:
        return
    mon = cfg.monitor
    wants = {
        "histograms": bool(mon.enabled and int(mon.layer_interval) > 0 and mon.histograms),
        "text samples": int(cfg.eval_sample_tokens) > 0,
    }
    takes = {"histograms": HISTOGRAMS, "text samples": TEXT}
    skipped = {
        spec.name: [what for what, on in wants.items() if on and not isinstance(lg, takes[what])]
        for spec, lg in zip(specs, loggers)
    }
    skipped = {name: what for name, what in skipped.items() if what}
    if skipped:
        log.info(
            "loggers: "
            + "; ".join(f"{name} takes no {' or '.join(what)}" for name, what in skipped.items())
            + "; skipped there (TensorBoard and W&B take both)"
        )


# ---------------------------------------------------------------------------- what callbacks log


def log_metrics(trainer: L.Trainer, metrics: dict, step: int, replay: bool = False) -> None:
    """Scalars at step, to every logger. replay: only to those that dropped what followed a
    resumed checkpoint (PURGING), so that the others never get a value twice."""
    for lg in trainer.loggers:
        if not replay or isinstance(lg, PURGING):
            lg.log_metrics(metrics, step=step)


def log_by_tokens(trainer: L.Trainer, metrics: dict, step: int, tokens: int, replay: bool = False) -> None:
    """Scalars against tokens seen (by_tokens/...): their step is the token count, except in W&B,
    whose runs share one step axis (trainer/global_step): there they go at the optimizer step,
    with tokens_seen beside them to plot against."""
    for lg in trainer.loggers:
        if replay and not isinstance(lg, PURGING):
            continue
        if isinstance(lg, WandbLogger):
            lg.log_metrics({**metrics, "tokens_seen": tokens}, step=step)
        else:
            lg.log_metrics(metrics, step=tokens)


def takes_histograms(trainer: L.Trainer) -> bool:
    return any(isinstance(lg, HISTOGRAMS) for lg in trainer.loggers)


@rank_zero_only
def log_text(trainer: L.Trainer, tag: str, caption: str, text: str, step: int) -> None:
    """A generated text under tag: TensorBoard's TEXT tab, a W&B table, an MLflow text artifact
    (<tag>/step_<step>.txt)."""
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            # TensorBoard renders markdown: four spaces make a code block that keeps the line breaks
            body = "\n".join("    " + line for line in text.splitlines())
            lg.experiment.add_text(tag, f"{caption}:\n\n{body}", step)
        elif isinstance(lg, WandbLogger):
            lg.log_text(tag, columns=["step", "caption", "text"], data=[[step, caption, text]], step=step)
        elif isinstance(lg, MLFlowLogger):
            lg.experiment.log_text(lg.run_id, f"{caption}:\n\n{text}\n", f"{tag}/step_{step:07d}.txt")


@rank_zero_only
def log_histogram(trainer: L.Trainer, tag: str, values: torch.Tensor, step: int, bins: int = 64) -> None:
    """A histogram of values at step: TensorBoard's HISTOGRAMS tab and W&B's histograms."""
    h = histogram(values, bins)
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            _add_tensorboard_histogram(lg.experiment, tag, h, step)
        elif isinstance(lg, WandbLogger):
            import wandb  # only here: optional (gptlab[wandb]), installed wherever a WandbLogger exists

            lg.log_metrics({tag: wandb.Histogram(np_histogram=(h["counts"], h["edges"]))}, step=step)


def histogram(values: torch.Tensor, bins: int = 64) -> dict:
    """Bucket counts taken where the values are (torch.histc), read to the host once. Loggers'
    own histograms (SummaryWriter.add_histogram) copy every value to the host as float64 and sort
    it: ~5 ms per layer group for the CPU recipe's model, 144 ms for its 30 histograms, and a copy
    of all the weights from a GPU."""
    v = values.detach().float().flatten()
    lo, hi, total, squares = torch.stack([v.min(), v.max(), v.sum(), v.pow(2).sum()]).tolist()
    width = (hi - lo) or max(abs(lo), 1e-12)  # all values equal (a fresh LayerNorm's weights): one bucket around them
    left = lo if hi > lo else lo - width / 2
    counts = torch.histc(v, bins=bins, min=left, max=left + width).tolist()
    edges = [left + width * i / bins for i in range(bins + 1)]
    h = {"min": lo, "max": hi, "num": v.numel(), "sum": total, "sum_squares": squares}
    return {**h, "counts": counts, "edges": edges}


def add_histogram(writer, tag: str, values: torch.Tensor, step: int, bins: int = 64) -> None:
    """histogram() written to a TensorBoard SummaryWriter."""
    _add_tensorboard_histogram(writer, tag, histogram(values, bins), step)


def _add_tensorboard_histogram(writer, tag: str, h: dict, step: int) -> None:
    writer.add_histogram_raw(
        tag,
        min=h["min"],
        max=h["max"],
        num=h["num"],
        sum=h["sum"],
        sum_squares=h["sum_squares"],
        bucket_limits=h["edges"][1:],  # the right edge of each bucket
        bucket_counts=h["counts"],
        global_step=step,
    )


def log_config(trainer: L.Trainer, shown: dict, config: dict) -> None:
    """At a run's start: TensorBoard's HPARAMS tab gets the keys in `shown` (all ~90 would bury
    the swept ones); the others the whole config (W&B's config, MLflow's params, hparams.yaml)."""
    for lg in trainer.loggers:
        lg.log_hyperparams(shown if isinstance(lg, TensorBoardLogger) else config)


def log_results(trainer: L.Trainer, shown: dict, metrics: dict, step: int) -> None:
    """At a run's end: the HPARAMS row with its results (TensorBoard), the results as metrics
    at the last step (the others), then everything written out."""
    for lg in trainer.loggers:
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(shown, metrics=metrics)
        else:
            lg.log_metrics(metrics, step=step)
        lg.save()


# ---------------------------------------------------------------------------- runs across resumes


class LoggerRuns(L.Callback):
    """Keeps the W&B and MLflow run ids in every checkpoint, so that a resumed run logs into the
    same runs (build_loggers' `runs`, read back with saved_runs)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        runs = {}
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger) and lg.version:
                runs["wandb"] = str(lg.version)
            elif isinstance(lg, MLFlowLogger) and lg.run_id:
                runs["mlflow"] = str(lg.run_id)
        if runs:
            checkpoint[RUNS_KEY] = runs


def saved_runs(ckpt: dict) -> dict:
    return dict(ckpt.get(RUNS_KEY) or {})


@contextlib.contextmanager
def closing(loggers: Sequence[Logger]) -> Iterator[None]:
    """Ends the W&B run with the run's outcome: W&B keeps one run per process open until told,
    and the next job of a sweep in this process would log into it."""
    try:
        yield
    except BaseException:
        _finish_wandb(loggers, exit_code=1)
        raise
    _finish_wandb(loggers, exit_code=0)


def _finish_wandb(loggers: Sequence[Logger], exit_code: int) -> None:
    if rank_zero_only.rank != 0 or not any(isinstance(lg, WandbLogger) for lg in loggers):
        return
    import wandb  # only here: optional (gptlab[wandb]), installed wherever a WandbLogger exists

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
