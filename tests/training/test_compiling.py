"""compile=true across a -m sweep: every job runs compiled, and a fallback to eager is said and recorded.

The sweeps run as a user types them: `python -m gptlab.train -m ...`, whose jobs Hydra's basic launcher
runs one after another in one process -- where dynamo's guards for GPT.forward would pile up."""

import json
import subprocess
import sys

import pytest
import torch

from gptlab.config.checks import validate
from gptlab.errors import ConfigError
from gptlab.training import compiling
from gptlab.training import run as run_mod

# 9 jobs, each a different model width and block length: each is a new set of shapes for dynamo
SHAPES = ["n_embd=16,32,48", "block_size=16,32,24"]


def _sweep(tiny, tmp_path, *extra: str) -> tuple[list[dict], str]:
    args = [
        "-m",
        *(o for o in tiny if not o.startswith(("n_embd=", "block_size="))),  # swept below
        "n_layer=1",
        *SHAPES,
        "dropout=0.1",  # dropout on in training, off in evaluation: both modes compile
        "max_iters=2",
        "eval_interval=2",
        "eval_iters=1",
        "compile=true",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *extra,
    ]
    p = subprocess.run(
        [sys.executable, "-m", "gptlab.train", *args], capture_output=True, text=True, cwd=tmp_path, timeout=900
    )
    assert p.returncode == 0, p.stderr[-3000:]
    folders = [d for d in (tmp_path / "sweep").iterdir() if d.is_dir() and d.name[0].isdigit()]
    folders.sort(key=lambda d: int(d.name.split("_")[0]))
    return [json.loads((d / "metrics.json").read_text()) | {"job": d.name} for d in folders], p.stdout + p.stderr


def _check_all_compiled(jobs: list[dict], log: str) -> None:
    assert len(jobs) == 9
    for m in jobs:
        assert (m["job"], m["compiled"], m["compile_fallback"]) == (m["job"], True, None)
        assert m["compiled_graphs"] >= 1, m["job"]
        assert m["iters"] == 2
    assert "hit config.recompile_limit" not in log
    assert "UNCOMPILED" not in log
    # time to each job's first optimizer step, compiling included (-s shows them)
    print("first_step_s:", {m["job"]: m["first_step_s"] for m in jobs})


def test_every_job_of_a_compiled_sweep_runs_compiled(tiny, tmp_path):
    # dynamo's tracing and guards without inductor's code generation (compile_backend=eager): the
    # recompile limit is dynamo's, whatever the backend; without the reset job 3 already falls back
    jobs, log = _sweep(tiny, tmp_path, "compile_backend=eager")
    _check_all_compiled(jobs, log)


@pytest.mark.slow
def test_every_job_of_an_inductor_sweep_runs_compiled(tiny, tmp_path):
    # the same 9 jobs with inductor generating C++ kernels on the CPU (minutes on 2 cores)
    jobs, log = _sweep(tiny, tmp_path)
    _check_all_compiled(jobs, log)


def test_a_fallback_to_eager_is_said_and_recorded(compose, tmp_path, caplog):
    # a limit of 1: the evaluation graph (no grad) after the training graph is one recompile too many
    # config.patch, not monkeypatch: undoing a monkeypatch deletes the key from dynamo's config module
    cfg = compose("compile=true", "compile_backend=eager", "max_iters=2", "eval_interval=1", "eval_iters=1")
    with caplog.at_level("WARNING", logger="gptlab"), torch._dynamo.config.patch(recompile_limit=1):
        m = run_mod.train(cfg, tmp_path / "run")
    assert m["compiled"] is False
    assert m["compile_fallback"].startswith("torch._dynamo hit config.recompile_limit (1); function: 'forward'")
    said = [r.getMessage() for r in caplog.records if "UNCOMPILED" in r.getMessage()]
    assert len(said) == 1 and m["compile_fallback"] in said[0]
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (written["compiled"], written["compile_fallback"]) == (False, m["compile_fallback"])


def test_an_eager_run_records_no_compile(compose, tmp_path):
    m = run_mod.train(compose("max_iters=2", "eval_interval=2", "eval_iters=1"), tmp_path / "run")
    assert (m["compiled"], m["compile_fallback"], m["compiled_graphs"]) == (False, None, 0)
    assert m["first_step_s"] > 0


def test_compile_mode_reaches_torch_compile(monkeypatch):
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.append(kw) or model)
    model = torch.nn.Linear(2, 2)
    compiling.compile_model(model, "inductor", "reduce-overhead")
    compiling.compile_model(model, "eager", "default")  # torch.compile takes no mode beside a trace-only backend
    assert seen == [{"backend": "inductor", "mode": "reduce-overhead"}, {"backend": "eager"}]


def test_compile_mode_needs_inductor(compose):
    with pytest.raises(ConfigError, match="compile_mode=max-autotune needs compile_backend=inductor"):
        validate(compose("compile=true", "compile_backend=eager", "compile_mode=max-autotune"))
