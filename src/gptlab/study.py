"""The Optuna study of a hyperparameter search (hparams_search=..., docs/search.md).

One SQLite file in the sweep folder, <sweep>/optuna.db, holds the study: every trial, its
parameters, its state and value, the val losses a run reported on the way. The sweeper
(hydra_plugins/gptlab_optuna) creates and continues it, a run reports to its own trial (for
pruning), and the report reads it back; this module is the one that opens the file.

optuna is an optional extra (``pip install 'gptlab[optuna]'``): without it, importing this
module works and the first use raises a ConfigError that says how to install it.
"""

from __future__ import annotations

import math
from pathlib import Path

from gptlab.errors import ConfigError

try:
    import optuna
except ImportError:  # optional: gptlab[optuna]; need() says how to install it
    optuna = None

STUDY = "optuna.db"  # in the sweep folder
STUDY_NAME = "gptlab"  # one study per file: the name only has to be the same every time
PRUNERS = ("none", "median")


def need():
    """The optuna module, or a ConfigError naming the install command."""
    if optuna is None:
        raise ConfigError(
            "hparams_search needs optuna: pip install 'gptlab[optuna]' (in the repository: pip install -e '.[optuna]')"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # gptlab's own lines say what happens
    return optuna


def storage_url(sweep_dir: str | Path) -> str:
    return f"sqlite:///{(Path(sweep_dir) / STUDY).resolve()}"


def exists(sweep_dir: str | Path) -> bool:
    return (Path(sweep_dir) / STUDY).is_file()


def make_pruner(name: str, n_startup_trials: int, n_warmup_steps: int):
    """Optuna's pruner by name: none (every trial runs to its end) or median (stop a trial whose
    val loss at an evaluation is worse than the median of the earlier trials at that step)."""
    opt = need()
    if name == "none":
        return opt.pruners.NopPruner()
    if name == "median":
        return opt.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
    raise ConfigError(f"hydra.sweeper.pruner must be one of {', '.join(PRUNERS)}, got '{name}'")


def open_study(sweep_dir: str | Path, direction: str, seed: int | None, n_startup_trials: int, pruner=None):
    """The sweep folder's study with a TPE sampler: created, or loaded when the file exists.
    A loaded study's sampler is seeded with seed + the number of trials so far: with the seed
    alone, a resumed search would draw its first random trials again."""
    opt = need()
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    study = opt.create_study(
        storage=storage_url(sweep_dir), study_name=STUDY_NAME, direction=direction, pruner=pruner, load_if_exists=True
    )
    seed = None if seed is None else seed + len(study.get_trials(deepcopy=False))
    study.sampler = opt.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    return study


def load_study(sweep_dir: str | Path):
    """The study of a sweep folder, to read (the report)."""
    opt = need()
    if not exists(sweep_dir):
        raise ConfigError(f"no {STUDY} in {sweep_dir}: not the folder of a hparams_search sweep")
    return opt.load_study(study_name=STUDY_NAME, storage=storage_url(sweep_dir))


def trial(sweep_dir: str | Path, number: int, pruner=None):
    """Trial `number` of the sweep folder's study, as an optuna.Trial a run reports its val
    losses to: the sweeper asked for it in its own process and launched the run as job `number`."""
    opt = need()
    if not exists(sweep_dir):
        raise ConfigError(f"no {STUDY} in {sweep_dir}: not the folder of a hparams_search sweep")
    storage = opt.storages.RDBStorage(storage_url(sweep_dir))
    study = opt.load_study(study_name=STUDY_NAME, storage=storage, pruner=pruner)
    study_id = storage.get_study_id_from_name(STUDY_NAME)
    return opt.trial.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))


def finished(study) -> list:
    """The trials that ended: complete (a value, +inf for a diverged run), pruned or failed."""
    s = need().trial.TrialState
    return [t for t in study.get_trials(deepcopy=False) if t.state in (s.COMPLETE, s.PRUNED, s.FAIL)]


def running(study) -> list:
    """Trials asked for but never told: their run was stopped (a signal, a killed process)."""
    return study.get_trials(deepcopy=False, states=(need().trial.TrialState.RUNNING,))


def best(study):
    """The complete trial with the lowest finite value (the study's direction is minimize), or None."""
    done = study.get_trials(deepcopy=False, states=(need().trial.TrialState.COMPLETE,))
    done = [t for t in done if t.value is not None and math.isfinite(t.value)]
    return min(done, key=lambda t: t.value) if done else None
