"""Pruning for a hyperparameter search (hparams_search=..., docs/search.md): each evaluation's
val loss goes to the run's Optuna trial, and the run stops when the trial's pruner says so.

Written here rather than taken from optuna-integration's PyTorchLightningPruningCallback: that
one raises TrialPruned out of the Trainer, which gptlab's sweep would record as a failed run;
this one stops the run as early stopping does (it finishes with its metrics.json and
checkpoints) and marks the trial, which the sweeper then tells Optuna was pruned. The trial is
any object with Optuna's Trial methods report, should_prune and set_user_attr: this layer
never imports optuna."""

from __future__ import annotations

import logging
import math

import lightning as L

log = logging.getLogger("gptlab")


class TrialPruning(L.Callback):
    def __init__(self, trial, mark: str):
        self.trial = trial
        self.mark = mark  # the trial's user attribute that says at which step it was pruned
        self.reported: set[int] = set()
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.pruned_at is not None:
            return  # the step-0 evaluation is the same for every trial; after a prune, nothing more
        if trainer.world_size > 1:
            return  # only rank 0 of a search job knows its trial: pruning is for single-process runs
        step, val = trainer.global_step, trainer.callback_metrics.get("val/loss")
        if val is None or step in self.reported or not math.isfinite(float(val)):
            return  # a non-finite loss is NonFiniteGuard's to stop
        self.reported.add(step)
        self.trial.report(float(val), step)
        if self.trial.should_prune():
            self.pruned_at = step
            self.trial.set_user_attr(self.mark, step)
            trainer.should_stop = True
            log.info(f"trial {self.trial.number} pruned at step {step}: val loss {float(val):.4f}")
