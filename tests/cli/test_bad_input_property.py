"""Property-based: override sets drawn from the schema (wrong types, out-of-range numbers, random
strings, unknown keys, misspelt group names) given to the entry points' main, in process. Every
draw ends with exit status 0 or 2, no traceback, and nothing written outside the run's own folder
(the data root, a tmp home and the working directory are compared before and after).

The work after the checks -- training, the LR search, preparing, sampling -- is replaced by a
stand-in, so a valid draw costs a composition, not a run; tests/cli/test_user_errors.py runs the
real thing for each class of mistake."""

import contextlib
import io
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptlab.cli import common as cli
from gptlab.cli import lr_find, prepare, sample
from gptlab.cli import train as train_cli
from gptlab.config import SAMPLE, SCHEMA
from gptlab.training import run as run_mod

PATHS = {"out_dir", "ckpt_path", "data.root", "data.path", "data.name"}  # fixed by the test: where things go
KEYS = sorted(set(SCHEMA) - PATHS)
GROUPS = {g: options for g, options in cli.group_options().items()}

numbers = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(lambda f: repr(float(f))),
)
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=0, max_size=12)
values = st.one_of(numbers, words, st.sampled_from(["true", "false", "null", "yes", "[]", "[1,2]", "{a: 1}", "auto"]))


def misspelt(name: str) -> st.SearchStrategy[str]:
    return st.integers(0, max(0, len(name) - 1)).map(lambda i: name[:i] + name[i + 1 :] or "x")


@st.composite
def overrides(draw, keys: list[str]) -> list[str]:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "value", "value", "unknown", "group", "added"]))
        if kind == "value":
            out.append(f"{draw(st.sampled_from(keys))}={draw(values)}")
        elif kind == "unknown":
            out.append(f"{draw(st.from_regex(r'[a-z][a-z_]{2,12}', fullmatch=True))}_x=1")
        elif kind == "added":
            out.append(f"+{draw(st.sampled_from(keys))}={draw(values)}")
        else:
            group = draw(st.sampled_from(sorted(GROUPS)))
            out.append(f"{group}={draw(misspelt(draw(st.sampled_from(GROUPS[group]))))}")
    return out


def snapshot(*folders: Path, skip: Path) -> dict:
    files = {}
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file() and skip not in p.parents:
                s = p.stat()
                files[p] = (s.st_size, s.st_mtime_ns)
    return files


@pytest.fixture
def place(data_root, tmp_path, monkeypatch):
    """A working directory, a home and a run folder of their own; the work replaced by stand-ins."""
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    # cli.train imports train from gptlab.training.run when a run starts: replace it there
    monkeypatch.setattr(run_mod, "train", lambda cfg, run_dir, **k: {"best_val_loss": 1.0})
    monkeypatch.setattr(lr_find, "find_learning_rate", lambda cfg, run_dir: {"suggestion": 1e-3, "rule": "steepest"})
    monkeypatch.setattr(prepare, "prepare_dataset", lambda spec: None)
    monkeypatch.setattr(sample, "generate", lambda *a, **k: ["text"])
    return tmp_path


def run(main, argv: list[str], where: Path, data_root: Path) -> None:
    before = snapshot(data_root, where / "home", where / "cwd", skip=where / "run")
    err = io.StringIO()
    argv0 = list(sys.argv)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv[:] = argv0
    assert code in (0, 2), (argv, code, err.getvalue()[-2000:])
    assert "Traceback" not in err.getvalue(), (argv, err.getvalue()[-3000:])
    if code == 2:
        assert err.getvalue().startswith("error: ") and err.getvalue().count("\n") == 1, (argv, err.getvalue())
    assert snapshot(data_root, where / "home", where / "cwd", skip=where / "run") == before, argv


COMMON = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,  # the same draws on every run: CI is reproducible
    database=None,  # nothing written into the repository (.hypothesis/)
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@COMMON
@given(drawn=overrides(KEYS))
def test_train_and_lr_find(place, data_root, drawn):
    base = ["profile=none", "device=cpu", f"data.root={data_root}", f"out_dir={place / 'run'}"]
    run(train_cli.main, [*base, *drawn], place, data_root)
    run(lr_find.main, [*base, *drawn], place, data_root)


@COMMON
@given(drawn=overrides(KEYS))
def test_prepare(place, data_root, drawn):
    run(prepare.main, [f"data.root={data_root}", *drawn], place, data_root)


@settings(COMMON, max_examples=20)
@given(drawn=st.lists(st.builds("{}={}".format, st.sampled_from(sorted(SAMPLE)), values), min_size=1, max_size=3))
def test_sample(place, data_root, drawn):
    run(sample.main, [f"ckpt={place / 'run'}", *drawn], place, data_root)
