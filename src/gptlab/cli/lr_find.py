"""`gptlab lr-find [key=value ...]` / `python -m gptlab.lr_find`: the learning-rate range test
on the model and batches a training run with these settings would use (training.lr_find)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from gptlab.cli import common
from gptlab.config import validate
from gptlab.errors import GptlabError
from gptlab.training.run import find_learning_rate


@hydra.main(version_base="1.3", config_path=str(common.CONF_DIR), config_name="train")
def _hydra_main(cfg) -> float | None:
    try:
        found = find_learning_rate(cfg, Path(HydraConfig.get().runtime.output_dir))
    except GptlabError as e:  # one line instead of Hydra's "Error executing job" and a traceback
        print(f"{e.label}: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    print(f"suggested learning_rate={found['suggestion']:.3g}  (rule: {found['rule']})")
    return found["suggestion"]


@common.report_errors
def main(argv: list[str] | None = None) -> None:
    args = common.translate_argv(sys.argv[1:] if argv is None else argv)
    common.check_override_keys(args)
    if not any(a.startswith("-") for a in args):  # one run (not -m, --cfg, --help): no run folder for a mistake
        validate(common.compose("train", args))
    sys.argv = [sys.argv[0], *common.resolve_profile(args), *common.sweep_folder_names(args)]
    _hydra_main()
