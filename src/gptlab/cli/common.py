"""What every entry point shares: where conf/ is, nanoGPT-style arguments, unknown-key checks,
composing a config without a run folder, and turning errors into one line and an exit code."""

from __future__ import annotations

import contextlib
import difflib
import errno
import functools
import logging
import os
import re
import shlex
import signal
import sys
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override, OverrideType
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import hydra_plugins.gptlab_optuna.config  # noqa: F401 -- stores hydra/sweeper=gptlab_optuna (docs/search.md)
from gptlab.errors import ConfigError, GptlabError

# conf/ ships inside the wheel as gptlab/conf; in a source checkout (and an editable install) it is
# the repository's own conf/ at the top, where people read and edit it
_PACKAGE = Path(__file__).resolve().parents[1]
CONF_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parents[1] / "conf"
GROUPS = ("data", "model", "trainer", "experiment", "variant", "profile", "hparams_search", "logger")
# group -> (one of them, all of them), for "unknown experiment 'x' ... The experiments: ..."
GROUP_NAMES = {
    "data": ("data config", "data configs"),
    "model": ("model", "models"),
    "trainer": ("trainer", "trainers"),
    "experiment": ("experiment", "experiments"),
    "variant": ("variant", "variants"),
    "profile": ("profile", "profiles"),
    "hparams_search": ("hyperparameter search", "hyperparameter searches"),
    "logger": ("logger", "loggers"),
    "hydra/launcher": ("launcher", "launchers"),
}
# Keys whose value is free text (a prompt, a sentence): quoted for Hydra's parser, which would
# otherwise read [ ] { } # , and non-ASCII characters as syntax
FREE_TEXT = ("start", "report.question")
# Nodes under which a `+` may add keys that no config defines: trainer (Lightning Trainer arguments,
# checked against its signature by training/passthrough.py) and callbacks (named _target_ nodes)
OPEN_NODES: tuple[str, ...] = ("trainer", "callbacks")

# For conf/train.yaml's run folders. ${pid:}: two runs or sweeps started in the same second on one
# machine get different folders (cached like Hydra's ${now:}, so every job of a sweep agrees).
# ${if_null:a,b}: b when a is null (oc.select falls back only for missing keys, not null ones).
OmegaConf.register_new_resolver("pid", lambda: os.getpid(), use_cache=True, replace=True)
OmegaConf.register_new_resolver("if_null", lambda value, default: default if value is None else value, replace=True)
# ${when:cond,a,b}: a if cond else b (eval_only keeps Hydra's files and log apart from a run's own)
OmegaConf.register_new_resolver("when", lambda cond, a, b: a if cond is True else b, replace=True)


def sweep_dir(experiment: str | None, date: str, time: str, pid: int) -> str:
    """A sweep's folder: outputs/<experiment>/<date>_<time>_<pid>, or outputs/multirun/<date>/<time>_<pid>."""
    return f"outputs/{experiment}/{date}_{time}_{pid}" if experiment else f"outputs/multirun/{date}/{time}_{pid}"


def run_name(override_dirname: str) -> str:
    """A sweep job's folder name from Hydra's override_dirname: a variant by its name alone
    (variant=large_lr -> large_lr), first; the other swept settings as key=value."""
    parts = [p for p in str(override_dirname).split(",") if p]
    variants = [p.split("=", 1)[1] for p in parts if p.startswith("variant=")]
    return ",".join(variants + [p for p in parts if not p.startswith("variant=")]) or "run"


OmegaConf.register_new_resolver("sweep_dir", sweep_dir, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)

log = logging.getLogger("gptlab")


def translate_argv(args: list[str]) -> list[str]:
    """Accept nanoGPT's command line: `--max_iters=1000` -> `max_iters=1000`; its config file
    argument `config/train_shakespeare_char.py` is gptlab's default and is dropped."""
    out = []
    for a in args:
        if a.endswith(".py") and "=" not in a:
            if Path(a).name == "train_shakespeare_char.py":
                continue
            raise ConfigError(
                f"'{a}': nanoGPT config files are not read"
                "; pass its settings as key=value overrides or use experiment=..."
            )
        if a.startswith("--") and "=" in a and not a.startswith("--config"):
            a = a[2:]
        key, eq, value = a.partition("=")
        if eq and key.lstrip("+") in FREE_TEXT and not _quoted(value):
            a = f"{key}={hydra_quote(value)}"
        out.append(a)
    # Hydra's parser takes its flags only before the overrides: `key=value -m` would be refused
    multirun = [a for a in out if a in ("-m", "--multirun")]
    return multirun + [a for a in out if a not in ("-m", "--multirun")]


def _quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""


def hydra_quote(text: str) -> str:
    """text as a quoted value of Hydra's override grammar that OmegaConf reads back unchanged:
    backslashes before a quote, ${ or the end doubled, quotes escaped, ${ kept from interpolating."""
    text = re.sub(r"(\\+)(?='|\$\{|$)", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("'", "\\'").replace("${", "\\${") + "'"


SWEEP_FUNCTIONS = ("range(", "choice(", "interval(", "glob(")


def is_sweep_value(value: str) -> bool:
    """Whether an override's value makes Hydra's -m run several jobs (a,b or range(...) ...)."""
    v = value.strip()
    if v.startswith(SWEEP_FUNCTIONS):
        return True
    depth, quote = 0, None
    for ch in v:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def sweep_folder_names(args: list[str]) -> list[str]:
    """In a multirun, name each job's folder after the swept settings only (0_learning_rate=1e-3),
    not after every override: fixed ones would make long names, and paths among them nested folders."""
    if not any(a in ("-m", "--multirun") for a in args):
        return []
    fixed = {"out_dir", "experiment", "profile", "device", "seed", "resume"}  # as conf/train.yaml's exclude_keys
    for a in args:
        if "=" in a and not a.startswith("-") and not a.startswith("hydra"):
            key, value = a.split("=", 1)
            if not is_sweep_value(value):
                fixed.add(key.lstrip("+~"))
    return [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(sorted(fixed))}]"]


def _yaml_keys(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    node = OmegaConf.load(path)
    return {k for k in node.keys() if k not in ("defaults", "hydra")}


@functools.cache  # the files do not change while a process runs (a test calls this hundreds of times)
def known_keys(config_name: str = "train") -> dict[str, frozenset[str]]:
    """Top-level keys, and the keys under data., trainer. and train.yaml's own nodes, that the
    shipped configs define (sample.yaml: its own keys, no groups)."""
    if config_name == "sample":
        return {"": frozenset(_yaml_keys(CONF_DIR / "sample.yaml"))}
    top = _yaml_keys(CONF_DIR / "train.yaml") | set(GROUPS)
    for f in (CONF_DIR / "model").glob("*.yaml"):
        top |= _yaml_keys(f)
    nested = {
        "data": set().union(*(_yaml_keys(f) for f in (CONF_DIR / "data").glob("*.yaml"))),
        "trainer": _yaml_keys(CONF_DIR / "trainer" / "default.yaml"),
        # logger.<name>.<argument>: each logger file holds one node named after it; its arguments
        # are checked against the logger's class once composed (config/loggers.py)
        "logger": set().union(*(_yaml_keys(f) for f in (CONF_DIR / "logger").glob("*.yaml"))),
    }
    # the nodes of train.yaml itself (lr_find., early_stopping., augment., report.)
    train = OmegaConf.load(CONF_DIR / "train.yaml")
    nested |= {k: set(v.keys()) for k, v in train.items() if k != "hydra" and OmegaConf.is_dict(v)}
    if config_name == "inspect":
        top |= _yaml_keys(CONF_DIR / "inspect.yaml")
    return {k: frozenset(v) for k, v in {"": top, **nested}.items()}


@functools.cache
def group_options() -> dict[str, list[str]]:
    """The names each config group offers: conf/'s files and Hydra's own (hydra/launcher: basic, ...)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return {g: loader.get_group_options(g) for g in GROUP_NAMES}


def parse_overrides(overrides: list[str]) -> list[Override]:
    """Hydra's own parse of the key=value arguments: a syntax error becomes one line saying how to quote."""
    # flags (-m, --cfg job) and their values are Hydra's; its parser reads the overrides only
    args = [o for o in overrides if o.startswith("~") or ("=" in o and not o.startswith("-"))]
    try:
        return OverridesParser.create().parse_overrides(args)
    except HydraException as e:
        where = f"cannot read '{e.override}': " if getattr(e, "override", None) else ""
        raise ConfigError(
            f"{where}{hydra_message(e)}. Quote a value with spaces or any of []{{}}(),#=' characters: key='a value' "
            "(in the shell: \"key='a value'\")"
        ) from None


def check_override_keys(overrides: list[str], extra: set[str] = frozenset(), config_name: str = "train") -> None:
    """Before composing: the arguments parse, every key is one the configs define (a 'did you
    mean' instead of Hydra's advice to add it with '+'), and every group choice names a file that
    exists -- experiment=, variant= and the other groups are optional, so Hydra itself would run
    the defaults. `extra`: top-level keys an entry point's own config adds."""
    keys = {**known_keys(config_name), "": known_keys(config_name)[""] | set(extra)}
    options = group_options() if config_name != "sample" else {}
    for o in parse_overrides(overrides):
        key = o.key_or_group
        if key.startswith("hydra.") or (key.startswith("hydra/") and key not in options):
            continue  # Hydra's own settings (hydra.verbose=true, hydra.sweep.dir=...)
        if key in options:
            if o.type != OverrideType.DEL:
                _check_choices(key, o, options[key])
            continue
        head, _, rest = key.partition(".")
        if head not in keys[""]:
            _unknown(key, keys[""] | {f"{h}.{k}" for h in keys if h for k in keys[h]})
        if rest and head in keys and rest.split(".")[0] not in keys[head] and head not in OPEN_NODES:
            _unknown(key, {f"{head}.{k}" for k in keys[head]})


def _check_choices(group: str, o: Override, options: list[str]) -> None:
    if isinstance(o.value(), Glob):
        return  # glob(...) picks among the names that exist
    if o.is_sweep_override():
        names = list(o.sweep_string_iterator())
    elif isinstance(o.value(), list):  # several configs of one group: logger=[tensorboard,csv]
        names = [str(v) for v in o.value()]
    else:
        names = [o.get_value_element_as_str()]
    for name in names:
        if name in options or name == "null" or (CONF_DIR / group / f"{name}.yaml").is_file():
            continue
        one, all_ = GROUP_NAMES[group]
        close = difflib.get_close_matches(name, options, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown {one} '{name}'.{hint} The {all_}: {', '.join(options)} (conf/{group}/)")


def _unknown(key: str, known: set[str]) -> None:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown config key '{key}'.{hint} The keys are listed in conf/train.yaml and the README.")


def check_resume_args(args: list[str]) -> None:
    """resume=true continues what is in a folder, so the folder must be named."""
    values = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    if values.get("resume", "").lower() == "true" and values.get("out_dir", "null") in ("null", ""):
        raise ConfigError(
            "resume=true continues a run or sweep in its folder: give out_dir=<that folder> "
            "(the line printed when the run stopped shows the whole command)"
        )


def resume_command(module: str, args: list[str], out_dir: Path) -> str:
    """The command that continues a stopped run or sweep: the same arguments, resume=true, and
    its folder (in place of any out_dir / init_from / ckpt_path / overwrite given before)."""
    drop = ("out_dir=", "resume=", "init_from=", "ckpt_path=", "overwrite=")
    kept = [a for a in args if not a.lstrip("+").startswith(drop)]
    return shlex.join(["python", "-m", module, *kept, "resume=true", f"out_dir={out_dir}"])


def resolve_profile(overrides: list[str], cuda: bool | None = None) -> list[str]:
    """Choose the profile group before Hydra composes (the one choice made in Python): profile=auto,
    or no profile= at all, becomes profile=cpu where training will run on the CPU (no CUDA GPU,
    device=cpu, trainer=cpu or trainer.accelerator=cpu) and profile=gpu elsewhere. Everything else
    -- which of the recipe's, experiment's and scale's values win -- is Hydra's defaults list."""
    kv = dict(o.lstrip("+").split("=", 1) for o in overrides if "=" in o and not o.startswith(("~", "-")))
    if kv.get("profile", "auto") != "auto":
        return overrides
    if cuda is None:
        import torch  # only here: the commands that never train should not pay for importing it

        cuda = torch.cuda.is_available()
    device = kv.get("device", "auto")
    accelerator = kv.get("trainer.accelerator", "cpu" if kv.get("trainer") == "cpu" else "auto")
    on_cpu = device == "cpu" or (device == "auto" and (accelerator == "cpu" or (accelerator == "auto" and not cuda)))
    kept = [o for o in overrides if o.lstrip("+").split("=", 1)[0] != "profile"]
    return [*kept, f"profile={'cpu' if on_cpu else 'gpu'}"]


PROFILE_GROUPS = ("recipe", "model", "data", "scale", "variant_scale")
PROFILED = ("train", "inspect")  # the configs with a profile group (inspect.yaml extends train.yaml)


def profile_summary(choices) -> str | None:
    """One line naming the files the CPU profile added, from HydraConfig's runtime.choices (an
    optional entry whose file does not exist is listed there too, hence the is_file check)."""
    if choices.get("profile") != "cpu":
        return None
    picked = []
    for group in sorted(choices):
        head, value = group.split("/")[0], choices[group]
        if head not in PROFILE_GROUPS or not value or not (CONF_DIR / group / f"{value}.yaml").is_file():
            continue
        if (head == "model" and value != "cpu") or (head == "data" and not str(value).endswith("/cpu")):
            continue  # chosen by the user or an experiment, not by the profile
        picked.append(f"{group}/{value}.yaml")
    return (
        "training on CPU: the CPU profile adds conf/"
        + ", conf/".join(picked)
        + " -- anything you choose wins; profile=gpu runs the config as written (--cfg job shows the result)"
    )


def compose(config_name: str, overrides: list[str]):
    """Compose a config with Hydra's compose API: no run folder, no logging setup."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            if config_name in PROFILED:
                overrides = resolve_profile(overrides)
            return hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(hydra_message(e)) from e


def hydra_message(e: Exception) -> str:
    """Hydra's or OmegaConf's error as one line: its first lines and its cause's, no links."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip() and "hydra.cc/docs" not in line]
    cause = e.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        lines = lines[:1] + [str(cause).splitlines()[0]]
    return " ".join(lines[:2]).rstrip(".") or type(e).__name__


# OSErrors that are the machine's or the user's, not gptlab's: a full disk, a folder without write
# permission, a file where a folder should be (out_dir=notes.txt). Any other OSError is a bug.
USER_ERRNOS = {
    errno.ENOSPC: "the disk is full: free some space, or give out_dir=<a folder on another disk>",
    errno.EDQUOT: "the disk quota is used up: free some space, or give out_dir=<a folder elsewhere>",
    errno.EACCES: "no permission: give a folder you can write to (out_dir=..., data.root=...)",
    errno.EPERM: "no permission: give a folder you can write to (out_dir=..., data.root=...)",
    errno.EROFS: "the file system is read-only: give a folder you can write to (out_dir=..., data.root=...)",
    errno.EEXIST: "a file is in the way where a folder should be: give another path",
    errno.ENOTDIR: "a file is in the way where a folder should be: give another path",
    errno.EISDIR: "a folder was given where a file is needed",
    errno.ENAMETOOLONG: "the path is too long: give a shorter one",
}
EXIT_INTERRUPTED = 128 + signal.SIGINT  # the shell's code for a process ended by Ctrl-C (130)


def ignore_further_interrupts() -> None:
    """Once a stop is under way, a second or third Ctrl-C must not break it into a traceback."""
    with contextlib.suppress(ValueError):  # only the main thread may set handlers
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _exit(label: str, message: str, code: int):
    print(f"{label}: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def _hydra_errors_raised():
    # hydra.main prints its own errors (a trimmed traceback, exit status 1) unless HYDRA_FULL_ERROR
    # is set; set, they reach report_errors like any other error
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


def report_errors(fn):
    """The one boundary for the user's mistakes, around every entry point: a GptlabError, a Hydra
    or OmegaConf error (bad override syntax, a value that does not fit) and an OSError of the
    machine (USER_ERRNOS) become one 'error: ...' line on stderr and the documented exit status
    (2; a GptlabError its own); Ctrl-C becomes 'stopped: ...' and 130. Anything else is a bug
    and keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _hydra_errors_raised():
                return fn(*args, **kwargs)
        except KeyboardInterrupt:
            ignore_further_interrupts()
            _exit("stopped", "interrupted by SIGINT (Ctrl-C)", EXIT_INTERRUPTED)
        except GptlabError as e:
            if e.exit_code >= 128:
                ignore_further_interrupts()
            _exit(e.label, str(e), e.exit_code)
        except (HydraException, OmegaConfBaseException) as e:
            _exit("error", hydra_message(e), ConfigError.exit_code)
        except OSError as e:
            if e.errno not in USER_ERRNOS:
                raise
            where = f"'{e.filename}': " if e.filename else ""
            _exit("error", f"{where}{e.strerror} -- {USER_ERRNOS[e.errno]}", ConfigError.exit_code)

    return wrapper


def setup_console_logging() -> None:
    """For entry points that do not go through hydra.main: plain INFO lines on stdout."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("gptlab").setLevel(logging.INFO)
