"""gptlab: train GPT language models with PyTorch Lightning and Hydra, nanoGPT-style.

The Python API, imported lazily so that `import gptlab` stays cheap:

    from gptlab import compose, train
    cfg = compose("max_iters=200", "profile=cpu")   # conf/train.yaml with overrides, as the CLI composes it
    metrics = train(cfg, "outputs/mine")           # a run in that folder; returns metrics.json's dict

Layout: model.py (the GPT, torch only), errors.py, rundir.py (the run folder's files) and
analysis.py (the guide's verdicts) at the bottom; config/, data/, training/, report/ and bench/
above them; cli/ and the `python -m gptlab.<command>` modules on top (docs/architecture.md).
"""

import importlib

from gptlab import startup  # noqa: F401 -- first: where /proc cannot be read, its clock starts at this import

__version__ = "0.1.0"
__all__ = ["compose", "train", "__version__"]


def compose(*overrides: str, config: str = "train"):
    """A config composed from conf/<config>.yaml and key=value overrides, the profile chosen as
    the command line chooses it (profile=auto: cpu or gpu from the hardware)."""
    # only here: `import gptlab` stays cheap; Hydra and torch load when a config is asked for
    from gptlab.cli.common import compose as _compose

    return _compose(config, list(overrides))


def __getattr__(name: str):
    if name == "train":  # the gptlab.train module, which calls as gptlab.training.run.train
        return importlib.import_module("gptlab.train")
    raise AttributeError(f"module 'gptlab' has no attribute {name!r}")
