"""`gptlab train [key=value ...]` / `python -m gptlab.train`: one run, or a sweep with `-m`.

The Hydra side of training: compose (the profile chosen first, everything else by the defaults
list), hand the job to ``gptlab.training.run.train``, and turn what ends a job -- a user's
mistake, a signal, a failure inside a sweep -- into one line and an exit status."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from gptlab import startup, study
from gptlab.cli import common
from gptlab.cli.sweep import clear_failure, record_failure, write_stopped_summary
from gptlab.config import validate
from gptlab.errors import ConfigError, GptlabError, RunInterrupted
from hydra_plugins.gptlab_optuna.sweeper import PRUNED_AT, GptlabOptunaSweeper

# Lightning and gptlab.training (~1-3 s, docs/performance.md "Start-up") load inside the functions
# that build a run: --help and a refused argument or config end before them

log = logging.getLogger("gptlab")

_ARGS: list[str] = []  # the command line as given (set by main), for the resume command
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def instantiate_callbacks(cfg: DictConfig) -> list:
    """The `callbacks` node's entries, built by Hydra's instantiate: each a Lightning Callback,
    given to the run after its own. Here, not in the library, because only cli/ knows Hydra."""
    nodes = {name: node for name, node in (cfg.get("callbacks") or {}).items() if node is not None}
    if not nodes:  # callbacks.<name>=null switches off one that a config file adds
        return []
    import lightning as L  # only here: Lightning loads when a config names callbacks

    from gptlab.training import passthrough

    built = []
    for name, node in nodes.items():
        if not OmegaConf.is_dict(node) or not isinstance(node.get("_target_"), str):
            raise ConfigError(
                f"callbacks.{name} has no _target_: give +callbacks.{name}._target_=<module.Class> "
                "of a Lightning Callback"
            )
        try:
            cb = instantiate(node)
        except InstantiationException as e:
            root = e
            while root.__cause__ is not None:  # Hydra wraps the ImportError or TypeError: name the first one
                root = root.__cause__
            what = "cannot import" if str(e).startswith("Error locating target") else "cannot build"
            raise ConfigError(
                f"callbacks.{name}: {what} {node._target_} ({type(root).__name__}: {str(root).splitlines()[0]}). "
                "Give _target_=<module.Class> of a Lightning Callback that Python can import, and only arguments "
                "its __init__ takes"
            ) from None
        if not isinstance(cb, L.Callback):
            raise ConfigError(
                f"callbacks.{name}: {node._target_} is not a Lightning Callback (lightning.pytorch.Callback)"
            )
        passthrough.check_callback(name, cb)
        built.append(cb)
    return built


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


def _announce(hc, multirun: bool) -> None:
    summary = common.profile_summary(hc.runtime.choices)
    if summary:
        log.info(summary)
    params = OmegaConf.select(hc, "sweeper.params", default=None)
    if not multirun and params and hc.runtime.choices.get("experiment"):
        log.info(
            f"experiment={hc.runtime.choices['experiment']}"
            f" declares a sweep ({', '.join(f'{k}: {v}' for k, v in params.items())}); "
            "this is one run with the file's own values -- add -m to run them all"
        )


def _search_callbacks(hc, multirun: bool) -> list:
    """A trial of hparams_search with a pruner: its run reports to its trial, the sweeper's job
    number being the trial number."""
    sw = hc.sweeper
    if not multirun or sw.get("_target_") != SWEEPER or sw.get("pruner", "none") == "none":
        return []
    from gptlab.training.callbacks.pruning import TrialPruning  # only here: it loads Lightning

    pruner = study.make_pruner(sw.pruner, int(sw.pruner_startup_trials), int(sw.pruner_warmup_steps))
    return [TrialPruning(study.trial(hc.sweep.dir, int(hc.job.num), pruner), PRUNED_AT)]


SWEEPER = f"{GptlabOptunaSweeper.__module__}.{GptlabOptunaSweeper.__name__}"


@hydra.main(version_base="1.3", config_path=str(common.CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from gptlab.training.run import train  # only here: the run's build steps load Lightning

    startup.mark("hydra")  # Hydra's job: the config again, the run folder, logging; gptlab.training's import
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    _announce(hc, multirun)
    # keys named on the command line or by the sweep: labels for TensorBoard's HPARAMS tab only
    hparam_keys = [o.lstrip("+~").split("=", 1)[0] for o in hc.overrides.task if "=" in o]
    try:
        clear_failure(run_dir)
        with _ranks_for_this_job(hc, run_dir):
            callbacks = [*instantiate_callbacks(cfg), *_search_callbacks(hc, multirun)]
            metrics = train(cfg, run_dir, callbacks=callbacks, hparam_keys=hparam_keys)
        return metrics.get("best_val_loss")  # what a Hydra sweeper would minimise
    except RunInterrupted as e:
        # a signal stops a whole sweep too; the same command with resume=true continues it
        common.ignore_further_interrupts()
        folder = Path(hc.sweep.dir).resolve() if multirun else run_dir
        if multirun:
            write_stopped_summary(folder)  # the sweep ends here: Hydra's on_multirun_end never runs
        print(
            f"{e.label}: {e.detail} Resume with:\n  {common.resume_command('gptlab.train', _ARGS, folder)}",
            file=sys.stderr,
            flush=True,
        )
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


@common.report_errors
def main(argv: list[str] | None = None) -> None:
    startup.mark("imports")  # Python's start and this module's imports (Hydra, torch, gptlab's config)
    args = common.translate_argv(sys.argv[1:] if argv is None else argv)
    common.check_override_keys(args)
    trainer_args = [o.key_or_group.split(".", 1)[1] for o in common.parse_overrides(args) if _trainer_key(o)]
    if trainer_args:
        from gptlab.training import passthrough  # only here: checks against L.Trainer, which loads Lightning

        passthrough.check_names(trainer_args)
    common.check_resume_args(args)
    _ARGS[:] = args
    if not any(a.startswith("-") for a in args):  # one run (not -m, --cfg, --help): no run folder for a mistake
        cfg = common.compose("train", args)
        validate(cfg)
        from gptlab.training import passthrough  # only here: a config refused above never loads Lightning

        passthrough.check(cfg)
        instantiate_callbacks(cfg)
        startup.mark("config")  # composing and checking it; the logger check imports Lightning
    sys.argv = [sys.argv[0], *common.resolve_profile(args), *common.sweep_folder_names(args)]
    # Hydra finds sweepers by walking the hydra_plugins package, which an editable install
    # (pip install -e .) hides from that walk: registered here, hparams_search works either way
    Plugins.instance().register(GptlabOptunaSweeper)
    _hydra_main()


def _trainer_key(o) -> bool:
    return o.key_or_group.startswith("trainer.") and o.key_or_group.count(".") == 1
