"""`python -m gptlab.train`: the same as `gptlab train` (gptlab.cli.train). Also the Python API:
`from gptlab import train` then `train(cfg, run_dir)`: gptlab.training.run.train with the config's
`callbacks` entries built first (Hydra's instantiate, which only cli/ may call)."""

import sys
import types
from collections.abc import Sequence
from pathlib import Path

from gptlab.cli.train import instantiate_callbacks, main


def train(cfg, run_dir: str | Path, callbacks: Sequence = (), hparam_keys: Sequence[str] = ()) -> dict:
    """One run of cfg in run_dir (gptlab.training.run.train); returns metrics.json's dict. The
    config's callbacks run before the ones given here."""
    from gptlab.training import run  # only here: `python -m gptlab.train --help` and refusals skip Lightning

    return run.train(cfg, run_dir, callbacks=[*instantiate_callbacks(cfg), *callbacks], hparam_keys=hparam_keys)


class _CallableModule(types.ModuleType):
    # importing this module sets the package attribute gptlab.train to it, over the function of
    # the same name; calling the module calls the function, so `gptlab.train(cfg, run_dir)` and
    # `from gptlab.train import train` both work
    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
