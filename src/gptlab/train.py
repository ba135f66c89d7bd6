"""`python -m gptlab.train`: the same as `gptlab train` (gptlab.cli.train). Also the Python API:
`from gptlab import train` then `train(cfg, run_dir)` (gptlab.training.run.train)."""

import sys
import types

from gptlab.cli.train import main
from gptlab.training.run import train


class _CallableModule(types.ModuleType):
    # importing this module sets the package attribute gptlab.train to it, over the function of
    # the same name; calling the module calls the function, so `gptlab.train(cfg, run_dir)` and
    # `from gptlab.train import train` both work
    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
