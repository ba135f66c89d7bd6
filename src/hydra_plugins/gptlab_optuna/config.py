"""The config of hydra/sweeper=gptlab_optuna (the sweeper is sweeper.py). Apart from the sweeper
so that gptlab.cli can store it without importing gptlab.cli back: an editable install hides this
package from Hydra's plugin scan (docs/search.md), so gptlab.cli.common imports this module itself."""

from dataclasses import dataclass, field
from typing import Dict, Optional  # noqa: UP035 -- OmegaConf reads these annotations at runtime

from hydra.core.config_store import ConfigStore


@dataclass
class GptlabOptunaConf:
    _target_: str = "hydra_plugins.gptlab_optuna.sweeper.GptlabOptunaSweeper"
    direction: str = "minimize"  # of the value each trial reports: its run's best_val_loss
    n_trials: int = 20  # trials that must have finished (complete, pruned or failed) when the search ends
    n_jobs: int = 1  # trials launched together (hydra/launcher=joblib runs them in parallel)
    seed: Optional[int] = None  # noqa: UP045  # TPE's seed: the same seed and results give the same trials
    n_startup_trials: int = 10  # random trials before TPE's model takes over
    pruner: str = "none"  # none | median (stop a run whose val loss is worse than the median at that step)
    pruner_startup_trials: int = 5  # median: trials that finish before any is pruned
    pruner_warmup_steps: int = 0  # median: optimizer steps of a run before it can be pruned
    params: Dict[str, str] = field(default_factory=dict)  # noqa: UP006  # key: search space in Hydra's override grammar


ConfigStore.instance().store(group="hydra/sweeper", name="gptlab_optuna", node=GptlabOptunaConf, provider="gptlab")
