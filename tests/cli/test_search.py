"""hparams_search: gptlab's Optuna sweeper (src/hydra_plugins/gptlab_optuna), its study in
<sweep>/optuna.db, resume, diverged and failed trials, pruning, and the report's search section."""

import math

import pytest

optuna = pytest.importorskip("optuna")

from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402

from gptlab import study as st  # noqa: E402
from gptlab.errors import ConfigError, NonFiniteLossError  # noqa: E402
from gptlab.rundir import write_failure, write_metrics  # noqa: E402
from gptlab.training.callbacks.pruning import TrialPruning  # noqa: E402
from gptlab.training.run import train  # noqa: E402
from hydra_plugins.gptlab_optuna.sweeper import distribution, trial_result  # noqa: E402

D = optuna.distributions


def parsed(text: str):
    return distribution(OverridesParser.create().parse_override(text))


def test_hydra_sweep_values_become_optuna_distributions():
    assert parsed("learning_rate=tag(log, interval(1e-4, 1e-2))") == D.FloatDistribution(1e-4, 1e-2, log=True)
    assert parsed("dropout=interval(0.0, 0.3)") == D.FloatDistribution(0.0, 0.3)
    assert parsed("n_layer=interval(2, 8)") == D.FloatDistribution(2.0, 8.0)  # Hydra's interval is a float one
    assert parsed("n_layer=range(2, 9)") == D.IntDistribution(2, 8)
    # range leaves its end out, as Python's does: 0, 50, ..., 200
    assert parsed("warmup_iters=range(0, 201, 50)") == D.IntDistribution(0, 200, step=50)
    assert parsed("warmup_iters=range(0, 200, 50)") == D.IntDistribution(0, 150, step=50)
    assert parsed("optimizer=choice(adamw, muon)") == D.CategoricalDistribution(["adamw", "muon"])
    assert parsed("batch_size=8,16") == D.CategoricalDistribution([8, 16])
    with pytest.raises(ConfigError, match=r"give interval\(lo, hi\)"):
        parsed("data.path=glob(*.txt)")


def test_a_diverged_run_is_plus_inf_a_crashed_one_failed(tmp_path):
    ok, diverged, crashed, nothing = (tmp_path / n for n in ("ok", "diverged", "crashed", "nothing"))
    write_metrics(ok, {"status": "ok", "best_val_loss": 2.5})
    write_failure(diverged, NonFiniteLossError("loss is nan at step 30"))
    write_failure(crashed, RuntimeError("out of memory"))
    nothing.mkdir()
    assert trial_result(ok)[:2] == ("complete", 2.5)
    assert trial_result(diverged)[:2] == ("complete", math.inf)
    assert trial_result(crashed)[:2] == ("fail", None)
    assert trial_result(nothing)[:2] == ("fail", None)


def test_a_run_reports_to_its_trial_and_stops_when_pruned(compose, tmp_path):
    """A real tiny run with a pruner that prunes at the first report: it stops after its first
    evaluation, finishes with metrics.json, and marks its trial."""
    study = optuna.create_study(storage=st.storage_url(tmp_path), study_name=st.STUDY_NAME)
    study.ask()
    trial = st.trial(tmp_path, 0, optuna.pruners.ThresholdPruner(upper=0.0))
    metrics = train(compose("max_iters=20", "eval_interval=5"), tmp_path / "0_trial", [TrialPruning(trial, "pruned")])
    frozen = study.get_trials()[0]
    assert metrics["status"] == "ok" and metrics["iters"] == 5
    assert list(frozen.intermediate_values) == [5] and frozen.user_attrs == {"pruned": 5}
    assert frozen.intermediate_values[5] == pytest.approx(metrics["evals"][1]["val_loss"], abs=1e-6)


def test_without_optuna_a_search_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setattr(st, "optuna", None)  # as when `import optuna` failed
    with pytest.raises(ConfigError, match=r"hparams_search needs optuna: pip install 'gptlab\[optuna\]'"):
        st.open_study(tmp_path, "minimize", 1, 1)
    assert not (tmp_path / "optuna.db").exists()


def test_an_existing_study_is_not_overwritten_without_resume(tiny, run_cli, tmp_path):
    study = st.open_study(tmp_path, "minimize", 1, 1)
    study.tell(study.ask(), 3.0)
    p = run_cli("gptlab.train", "-m", "hparams_search=shakespeare_optuna", f"out_dir={tmp_path}", *tiny)
    assert p.returncode == 2, p.stderr
    db = tmp_path / "optuna.db"
    assert f"error: {db} already holds a search of 1 trials: continue it with resume=true" in p.stderr
    assert "Traceback" not in p.stderr and len(st.load_study(tmp_path).trials) == 1


def test_a_search_space_hydra_cannot_sample_is_one_line(tiny, run_cli, tmp_path):
    search = ("gptlab.train", "-m", "hparams_search=shakespeare_optuna", f"out_dir={tmp_path}")
    p = run_cli(*search, *tiny, "data.path=glob(*)")
    assert p.returncode == 2 and "error: search space 'data.path=glob(*)': give interval(lo, hi)" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "optuna.db").exists()


@pytest.mark.slow
def test_a_four_trial_search_resumed_after_two(tiny, run_cli, tmp_path):
    """2 trials, then the same command with resume=true and n_trials=4: the study holds 4
    complete trials, each with its own parameters and its own run folder, and the report draws
    the study's figures."""
    sweep = tmp_path / "search"
    args = [
        "gptlab.train",
        "-m",
        "hparams_search=shakespeare_optuna",
        f"out_dir={sweep}",
        *tiny,
        "max_iters=6",
        "eval_interval=3",
        "warmup_iters=range(0, 3)",  # the config's 0-200 would not fit 6 steps; the command line wins
    ]
    first = run_cli(*args, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr
    study = st.load_study(sweep)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    second = run_cli(*args, "resume=true", "hydra.sweeper.n_trials=4")
    assert second.returncode == 0, second.stderr
    assert "resume=true: 2 of 4 trials finished" in second.stdout + second.stderr
    study = st.load_study(sweep)
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # a resumed seed draws new trials
    # tiny's dropout=0.0 on the command line takes dropout out of the search
    assert set(trials[0].params) == {"learning_rate", "weight_decay", "warmup_iters"}
    for t in trials:
        assert (sweep / f"{t.number}_trial" / "metrics.json").is_file()
        assert t.value == pytest.approx(trial_result(sweep / f"{t.number}_trial")[1])
    p = run_cli("gptlab.report", str(sweep))
    assert p.returncode == 0, p.stderr
    assert (sweep / "optuna_history.png").stat().st_size > 0 and (sweep / "optuna_importances.png").stat().st_size > 0
    best = min(trials, key=lambda t: t.value)
    assert f"**Best trial:** {best.number} (run `{best.number}_trial`), best val loss **{best.value:.4f}**" in p.stdout
