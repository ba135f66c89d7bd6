"""The loggers a config asks for: the nodes of the `logger` group (conf/logger/, one `_target_`
each: any of Lightning's Logger classes) and nanoGPT's wandb_log=true, checked before any work
starts. training/loggers.py builds them for a run, adding what only the run knows (its folder,
the step it resumes from, the W&B / MLflow run it continues)."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from gptlab.errors import ConfigError

WANDB = "lightning.pytorch.loggers.WandbLogger"

# Loggers that need packages gptlab does not install by default: class name -> (modules, extra).
# MLflow's store without a server is SQLite (its file store is refused by MLflow 3), which
# mlflow-skinny reaches only with SQLAlchemy and Alembic installed beside it.
EXTRAS = {
    "WandbLogger": (("wandb",), "wandb"),
    "MLFlowLogger": (("mlflow", "sqlalchemy", "alembic"), "mlflow"),
}

# Loggers that hand their other keyword arguments on: class name -> what takes them
FORWARDS = {"WandbLogger": "wandb.init", "TensorBoardLogger": "torch.utils.tensorboard.SummaryWriter"}


@dataclass(frozen=True)
class LoggerSpec:
    """One logger as the config gives it: its name under logger., its class and its arguments
    (a null argument: the run's default, filled in by training/loggers.py)."""

    name: str
    cls: type
    kwargs: dict


def logger_specs(cfg: DictConfig) -> list[LoggerSpec]:
    """The loggers cfg asks for, in order, each checked: its class imports, is a Lightning logger,
    its package is installed and it takes every argument given. wandb_log=true adds W&B's."""
    nodes = cfg.get("logger")
    if nodes is None:  # logger=[]: no logger chosen
        nodes = OmegaConf.create({})
    if not OmegaConf.is_dict(nodes):
        raise ConfigError(
            "logger must be chosen from conf/logger/ (logger=tensorboard, logger=[tensorboard,csv], logger=[]), "
            f"got {nodes!r}"
        )
    specs = [_spec(str(name), node) for name, node in nodes.items()]
    if cfg.get("wandb_log") and not any(s.cls.__name__ == "WandbLogger" for s in specs):
        # nanoGPT's switch: the node logger/wandb.yaml holds, with the same two keys
        node = {"_target_": WANDB, "project": cfg.wandb_project, "name": cfg.wandb_run_name, "save_dir": None}
        specs.append(_spec("wandb", OmegaConf.create(node), why="wandb_log=true"))
    return specs


def _spec(name: str, node, why: str | None = None) -> LoggerSpec:
    where = why or f"logger.{name}"
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        raise ConfigError(f"{where} must be a node with _target_: <a Lightning logger class> (see conf/logger/)")
    kwargs = OmegaConf.to_container(node, resolve=True)
    target = kwargs.pop("_target_")
    special = sorted(k for k in kwargs if str(k).startswith("_"))
    if special:
        raise ConfigError(f"{where}: {', '.join(special)} is not supported; give _target_ and the class's arguments")
    cls = locate(str(target), where)
    from lightning.pytorch.loggers import Logger  # only here: a config refused earlier never loads Lightning

    if not (isinstance(cls, type) and issubclass(cls, Logger)):
        raise ConfigError(f"{where}._target_: '{target}' is not a Lightning logger (lightning.pytorch.loggers.Logger)")
    _check_installed(cls, why or f"logger={name}")
    _check_arguments(cls, kwargs, where)
    return LoggerSpec(name, cls, kwargs)


def locate(target: str, where: str):
    """The object a dotted path names. By hand, not hydra.utils.get_class: library code never
    imports Hydra, and training.run.train (which the Python API and every sweep job call) must
    build the loggers the config names, with arguments only the run knows."""
    module, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"{where}._target_: cannot import '{target}' ({e})") from None


def _check_installed(cls: type, what: str) -> None:
    modules, extra = EXTRAS.get(cls.__name__, ((), None))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"{what} needs the {', '.join(missing)} package{'s' if len(missing) > 1 else ''}: "
            f"pip install 'gptlab[{extra}]'"
        )


def _arguments(fn) -> tuple[list[str], bool]:
    """The keyword arguments fn takes by name, and whether it takes any other (**kwargs)."""
    params = inspect.signature(fn).parameters.values()
    named = [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _check_arguments(cls: type, kwargs: dict, where: str) -> None:
    """Every argument given is one the class takes, or the library it hands **kwargs to: a typo
    is refused now, not once the logger is first used, mid-run."""
    known, open_ = _arguments(cls.__init__)
    if all(k in known for k in kwargs):
        return  # the library it forwards to (TensorBoard's writer: its package's import) is not needed
    if open_ and cls.__name__ in FORWARDS:
        more, open_ = _arguments(locate(FORWARDS[cls.__name__], where))
        known += [k for k in more if k not in known]
    if open_:
        return
    for k in kwargs:
        if k not in known:
            close = difflib.get_close_matches(str(k), known, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"{where}.{k}: {cls.__name__} takes no argument '{k}'.{hint} It takes: {', '.join(known)}"
            )
