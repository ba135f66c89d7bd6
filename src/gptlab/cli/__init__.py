"""The entry points: the console script's commands, nanoGPT-style arguments, composing configs,
the one error boundary, and the Hydra sweep callback.

Importing this package (every command does, before anything else of its own) keeps torchmetrics,
which Lightning imports, from importing matplotlib.pyplot and transformers (see lean_torchmetrics)."""

import importlib.util
import sys

# torchmetrics' flags (torchmetrics/utilities/imports.py) for the optional packages it imports at
# import time when they are installed; gptlab uses no torchmetrics metric that needs them
UNUSED_BY_GPTLAB = ("_MATPLOTLIB", "_TRANSFORMERS")


def lean_torchmetrics() -> bool:
    """Lightning imports torchmetrics, and torchmetrics imports matplotlib.pyplot and transformers
    at import time whenever they are installed (for Metric.plot and BERTScore / InfoLM, which
    gptlab never calls): ~2.4 s and ~55 MB of a training process (docs/performance.md, Start-up).
    torchmetrics has no switch for this, so its flags module is loaded first and those flags are
    set to "not installed", which is what torchmetrics does when they are not. In a gptlab
    command, Metric.plot() then raises torchmetrics' "matplotlib is required" error; gptlab's own
    figures import matplotlib themselves. Does nothing once torchmetrics is imported, or where its
    flags module is not where torchmetrics 1.x keeps it. Returns whether the flags were set."""
    if "torchmetrics" in sys.modules or "torchmetrics.utilities.imports" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchmetrics")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return False
    path = f"{spec.submodule_search_locations[0]}/utilities/imports.py"
    flags_spec = importlib.util.spec_from_file_location("torchmetrics.utilities.imports", path)
    if flags_spec is None:
        return False
    try:
        flags = importlib.util.module_from_spec(flags_spec)
        sys.modules[flags_spec.name] = flags  # torchmetrics' own imports of it find this one
        flags_spec.loader.exec_module(flags)
    except Exception:  # another layout or version: torchmetrics imports as it always does
        sys.modules.pop(flags_spec.name, None)
        return False
    for name in dir(flags):
        flag = getattr(flags, name)
        if name.startswith(UNUSED_BY_GPTLAB) and hasattr(flag, "_check_available"):  # a RequirementCache
            flag.available = False  # its cached answer, which it then never checks again
    return True


lean_torchmetrics()
