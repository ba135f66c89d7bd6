"""hydra/sweeper=gptlab_optuna: a hyperparameter search with Optuna's TPE sampler, on Optuna's
ask-and-tell API, with the study in <sweep>/optuna.db (conf/hparams_search/, docs/search.md).

Why not Hydra's own hydra-optuna-sweeper: its last release, 1.3.0, pins optuna<3, so pip
installs optuna 2.10.1 (2021) next to SQLAlchemy 2. On Python 3.11 with numpy 2 and SQLAlchemy
2.1 an in-memory study runs, but a SQLite study cannot even be created: optuna 2.10's
RDBStorage fails with ``AssertionError`` at ``assert version is not None`` in
``get_current_version`` (alembic's version stamp is never committed under SQLAlchemy 2), and a
search that lives in a file is what makes it resumable. Beyond that, 1.3.0 runs n_trials *more*
trials each time it loads a stored study, numbers the new jobs from 0 again (over the earlier
job folders), and stops the whole sweep at the first job that returns no value
(max_failure_rate 0). docs/search.md has the commands and the full messages.

What this sweeper does:
- the search space is ``hydra.sweeper.params`` (Hydra's override grammar:
  ``tag(log, interval(1e-4, 1e-2))``, ``interval(0, 0.3)``, ``range(0, 201, 50)``,
  ``choice(a, b)``), plus any such value given on the command line; a plain ``key=value`` on
  the command line fixes that key for every trial;
- trials are asked n_jobs at a time, launched as Hydra jobs by the configured launcher, and told
  their run's result read from its folder: best_val_loss; +inf for a run that diverged (gptlab
  stops on a non-finite loss), so TPE learns to avoid that region; failed for a run that crashed.
  The search goes on either way;
- job number = trial number, so trial 7's run is the folder 7_trial and resume finds it again;
- ``resume=true out_dir=<sweep>`` loads the study, runs again the trials that were running when
  the sweep stopped (their runs continue from their checkpoints), then asks new ones until
  n_trials have finished (complete, pruned or failed);
- with ``pruner: median``, a run reports its val loss at each evaluation to its trial
  (gptlab.cli.train builds the callback) and stops early when the pruner says so.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from gptlab import study as st
from gptlab.cli.common import check_override_keys
from gptlab.cli.sweep import job_outcome
from gptlab.errors import ConfigError
from hydra_plugins.gptlab_optuna.config import GptlabOptunaConf

log = logging.getLogger("gptlab")
PRUNED_AT = "pruned_at_step"  # the trial's user attribute a pruned run sets (training/callbacks/pruning.py)
SPACE = "search_space"  # the study's user attribute: the space it was created with


def distribution(o: Override):
    """Optuna's distribution for one swept override: interval (floats; tag(log, ...) for a log
    scale), range (whole numbers, or floats, with a step) or choice / a,b,c (categories)."""
    opt = st.need()
    v, key = o.value(), o.get_key_element()
    if isinstance(v, IntervalSweep):
        log_scale = "log" in (v.tags or set())  # Hydra's interval is always a float one: range() for whole numbers
        return opt.distributions.FloatDistribution(float(v.start), float(v.end), log=log_scale)
    if isinstance(v, RangeSweep) and v.step and v.stop > v.start:
        last = v.start + v.step * math.ceil((v.stop - v.start) / v.step - 1)  # range's end is left out
        if all(isinstance(x, int) for x in (v.start, v.stop, v.step)):
            return opt.distributions.IntDistribution(v.start, int(last), step=v.step)
        return opt.distributions.FloatDistribution(float(v.start), float(last), step=float(v.step))
    if isinstance(v, ChoiceSweep) and v.list:
        return opt.distributions.CategoricalDistribution(list(v.list))
    raise ConfigError(
        f"search space '{key}={o.input_line.split('=', 1)[-1] if o.input_line else v}': give "
        "interval(lo, hi), tag(log, interval(lo, hi)), range(start, stop, step) or choice(a, b, ...)"
    )


def as_override(key: str, value) -> str:
    """key=value as Hydra reads it back: floats in full (the study holds the exact value)."""
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def trial_result(run_dir: Path) -> tuple[str, float | None, str]:
    """(state, value, what happened) for a finished job, from its run folder: complete with its
    best val loss; complete with +inf when it diverged (or ended without a finite val loss);
    failed when it crashed or wrote nothing."""
    out = job_outcome(run_dir)
    status = out["status"]
    if status == "ok":
        v = out.get("best_val_loss")
        if isinstance(v, (int, float)) and math.isfinite(v):
            return "complete", float(v), f"best val loss {v:.4f}"
        return "complete", math.inf, "no finite val loss: reported as +inf"
    if status == "diverged":
        return "complete", math.inf, f"diverged ({out.get('error', '')}): reported as +inf"
    return "fail", None, f"{status}: {out.get('error', 'no metrics.json')}"


class GptlabOptunaSweeper(Sweeper):
    def __init__(self, **conf: Any) -> None:
        self.conf = GptlabOptunaConf(**{k: v for k, v in conf.items() if k != "_target_"})
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list:
        c = self.conf
        if c.n_trials < 1 or c.n_jobs < 1:
            raise ConfigError(f"hydra.sweeper.n_trials and n_jobs must be at least 1, got {c.n_trials} and {c.n_jobs}")
        space, fixed = self.search_space(arguments)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        pruner = st.make_pruner(c.pruner, c.pruner_startup_trials, c.pruner_warmup_steps)
        study = self.open(sweep_dir, space, pruner)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's basic sweeper does
        pending = [t.number for t in st.running(study)]  # stopped runs: continue them first
        if pending:
            log.info(f"continuing the stopped trials {pending} of {sweep_dir / st.STUDY}")
        returns = []
        while (left := c.n_trials - len(st.finished(study))) > 0:
            if pending:
                numbers, pending = pending[:1], pending[1:]  # one at a time: job numbers must follow on
            else:
                numbers = [study.ask(space).number for _ in range(min(c.n_jobs, left))]
            returns += self.launch(study, numbers, fixed, sweep_dir)
        self.summary(study, sweep_dir)
        return returns

    def search_space(self, arguments: list[str]) -> tuple[dict, list[str]]:
        """{key: distribution} from hydra.sweeper.params and the command line's swept values,
        and the command line's fixed overrides (a fixed key leaves the search space)."""
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{k}={v}" for k, v in self.conf.params.items()]
        space, fixed = {}, {}  # the last value given for a key wins, as in Hydra
        for o in parser.parse_overrides(params + list(arguments)):
            key = o.get_key_element()
            if o.is_sweep_override():
                space[key] = o
                fixed.pop(key, None)
            else:
                space.pop(key, None)
                fixed[key] = o.input_line
        if not space:
            raise ConfigError(
                "the search has no parameters: give hydra.sweeper.params (hparams_search=shakespeare_optuna "
                "has an example) or swept values such as 'learning_rate=tag(log, interval(1e-4, 1e-2))'"
            )
        check_override_keys([f"{k}=0" for k in space])  # a misspelt key: 'did you mean', before any run
        return {k: distribution(o) for k, o in space.items()}, list(fixed.values())

    def open(self, sweep_dir: Path, space: dict, pruner):
        """The study: new, or the stored one with resume=true (which must search the same space)."""
        c, resume = self.conf, bool(OmegaConf.select(self.config, "resume", default=False))
        had = st.exists(sweep_dir)
        study = st.open_study(sweep_dir, c.direction, c.seed, c.n_startup_trials, pruner)
        described = {k: repr(d) for k, d in space.items()}
        if had and study.get_trials(deepcopy=False):
            if not resume:
                raise ConfigError(
                    f"{sweep_dir / st.STUDY} already holds a search of {len(study.trials)} trials: continue it with "
                    f"resume=true out_dir={sweep_dir}, or give another out_dir"
                )
            before = study.user_attrs.get(SPACE)
            if before is not None and before != described:
                raise ConfigError(
                    f"resume=true: the search space differs from the one {sweep_dir / st.STUDY} was made with "
                    f"({before}); resume with the same hydra.sweeper.params, or start a new search in another out_dir"
                )
            done = len(st.finished(study))
            log.info(f"resume=true: {done} of {c.n_trials} trials finished in {sweep_dir / st.STUDY}")
        study.set_user_attr(SPACE, described)
        return study

    def launch(self, study, numbers: list[int], fixed: list[str], sweep_dir: Path) -> list:
        """Run the trials' jobs (job number = trial number) and tell the study their results."""
        trials = {t.number: t for t in study.get_trials(deepcopy=False) if t.number in numbers}
        batch = [[*fixed, *(as_override(k, v) for k, v in trials[n].params.items())] for n in numbers]
        for n, overrides in zip(numbers, batch):
            log.info(f"trial {n}: {' '.join(overrides[len(fixed) :])}")
        self.validate_batch_is_legal(batch)
        returns = self.launcher.launch(batch, initial_job_idx=numbers[0])
        for n, ret in zip(numbers, returns):
            run_dir = Path(ret.hydra_cfg.hydra.runtime.output_dir) if ret.hydra_cfg else sweep_dir / f"{n}_trial"
            state, value, what = trial_result(run_dir)
            pruned = next(t for t in study.get_trials(deepcopy=False) if t.number == n).user_attrs.get(PRUNED_AT)
            opt = st.need()
            if pruned is not None and state == "complete":
                study.tell(n, state=opt.trial.TrialState.PRUNED)
                what = f"pruned at step {pruned}"
            elif state == "complete":
                study.tell(n, value)
            else:
                study.tell(n, state=opt.trial.TrialState.FAIL)
            log.info(f"trial {n}: {what}")
        return returns

    def summary(self, study, sweep_dir: Path) -> None:
        best = st.best(study)
        states = {}
        for t in st.finished(study):
            states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
        counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        line = f"search finished: {len(st.finished(study))} trials ({counts}) in {sweep_dir / st.STUDY}"
        if best is not None:
            line += f"; best: trial {best.number}, best val loss {best.value:.4f}, " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()
            )
        log.info(line)
