"""Experiment 7 (conf/experiment/exp7_modern.yaml): the GPT-2 recipe, each switch alone and all
together, two seeds each, composes into the expected jobs at both scales; its report section
prices each change against the seed-to-seed spread, per step and per second."""

import json

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from gptlab import analysis as an
from gptlab.cli import common as cli
from gptlab.config import validate
from gptlab.report import report

SETTINGS = [
    "gpt2_recipe",
    "modern_rope",
    "modern_rmsnorm",
    "modern_qk_norm",
    "modern_relu2",
    "modern_swiglu",
    "modern_untied",
    "modern_zero_init",
    "modern_softcap",
    "modern_muon",
    "modern_all",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def jobs(*cli_args: str) -> list[list[str]]:
    """The override list of every job `python -m gptlab.train experiment=exp7_modern -m` launches."""
    with initialize_config_dir(config_dir=str(cli.CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", ["experiment=exp7_modern"], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    overrides = OverridesParser.create().parse_overrides([*params, "experiment=exp7_modern", *cli_args])
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return batch


def job_config(overrides: list[str], cpu: bool):
    cfg = cli.compose("train", [*overrides, "device=cpu"] if cpu else [*overrides, "profile=gpu"])
    validate(cfg)
    return cfg


def switches(c) -> tuple:
    return (c.pos_emb, c.norm, c.qk_norm, c.mlp, c.tie_embeddings, c.zero_init_proj, c.logit_softcap, c.optimizer)


GPT2 = ("learned", "layernorm", False, "gelu", True, False, None, "adamw")
ALONE = {  # each variant's one change from the GPT-2 recipe
    "modern_rope": ("rope", *GPT2[1:]),
    "modern_rmsnorm": (GPT2[0], "rmsnorm", *GPT2[2:]),
    "modern_qk_norm": (*GPT2[:2], True, *GPT2[3:]),
    "modern_relu2": (*GPT2[:3], "relu2", *GPT2[4:]),
    "modern_swiglu": (*GPT2[:3], "swiglu", *GPT2[4:]),
    "modern_untied": (*GPT2[:4], False, *GPT2[5:]),
    "modern_zero_init": (*GPT2[:5], True, *GPT2[6:]),
    "modern_softcap": (*GPT2[:6], 15, GPT2[7]),
    "modern_muon": (*GPT2[:7], "muon"),
}


@pytest.mark.parametrize("cpu", [False, True], ids=["gpu-scale", "cpu-scale"])
def test_exp7_runs_each_switch_alone_and_all_together_with_two_seeds(cpu):
    runs = jobs()
    named = [
        (next(o for o in r if o.startswith("variant=")), next(o for o in r if o.startswith("seed="))) for r in runs
    ]
    assert named == [(f"variant={v}", f"seed={s}") for v in SETTINGS for s in (1337, 1338)]
    configs = [job_config(r, cpu) for r in runs if "seed=1337" in r]  # composing is slow: one seed per setting
    assert [c.variant for c in configs] == SETTINGS
    by_variant = {c.variant: switches(c) for c in configs}
    assert by_variant["gpt2_recipe"] == GPT2
    assert {v: by_variant[v] for v in ALONE} == ALONE
    assert by_variant["modern_all"] == ("rope", "rmsnorm", True, "relu2", False, True, 15, "muon")
    # the same token budget for every run
    assert len({(c.max_iters, c.batch_size, c.block_size, c.gradient_accumulation_steps) for c in configs}) == 1
    first = configs[0]
    if cpu:
        assert (first.n_layer, first.n_head, first.n_embd, first.block_size, first.batch_size) == (4, 4, 128, 64, 12)
        assert first.max_iters < 2000 and first.eval_iters == 10
    else:
        assert (first.n_layer, first.n_head, first.n_embd, first.max_iters) == (6, 6, 384, 2000)
    assert first.report.analysis == "modern" and first.report.baseline == "variant=gpt2_recipe"
    # a third seed from the command line
    assert len(jobs("seed=1337,1338,1339")) == 33


def write_run(sweep, job, variant, seed, floor, seconds_per_step, params=800_000):
    """A finished run folder as gptlab writes it: val loss falls towards `floor`; evaluations every
    100 of 500 steps, each with the wall time it was taken at."""
    d = sweep / f"{job}_{variant}"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(f"- variant={variant}\n- seed={seed}\n")
    rep = {"question": "which change buys the most?", "analysis": "modern", "baseline": "variant=gpt2_recipe"}
    (d / "config.yaml").write_text(json.dumps({"variant": variant, "seed": seed, "max_iters": 500, "report": rep}))
    evals = [
        {"step": s, "train_loss": floor + 2.0 * 0.5 ** (s / 100), "wall_time_s": 2.0 + s * seconds_per_step}
        for s in range(0, 501, 100)
    ]
    for e in evals:
        e["val_loss"] = e["train_loss"] + 0.05
    m = {
        "status": "ok",
        "iters": 500,
        "max_iters": 500,
        "evals": evals,
        "final_train_loss": evals[-1]["train_loss"],
        "final_val_loss": evals[-1]["val_loss"],
        "best_val_loss": evals[-1]["val_loss"],
        "best_step": 500,
        "tokens_per_s": 768 / seconds_per_step,
        "wall_time_s": evals[-1]["wall_time_s"] + 1.0,
        "peak_memory_bytes": 400_000_000,
        "peak_memory_kind": "rss",
        "params": params,
        "vocab_size": 65,
    }
    (d / "metrics.json").write_text(json.dumps(m))


def test_the_report_prices_each_change_against_the_seed_spread(tmp_path):
    # baseline floors 1.80 / 1.82 (range 0.02); rope clearly better (1.70, 1.71) at the same speed;
    # rmsnorm within the spread (1.805, 1.815) but faster; muon better (1.75, 1.76) and slower per step
    runs = [
        ("gpt2_recipe", [1.80, 1.82], 0.10),
        ("modern_rope", [1.70, 1.71], 0.10),
        ("modern_rmsnorm", [1.805, 1.815], 0.08),
        ("modern_muon", [1.75, 1.76], 0.30),
    ]
    job = 0
    for variant, floors, spp in runs:
        for seed, floor in zip((1337, 1338), floors):
            write_run(tmp_path, job, variant, seed, floor, spp)
            job += 1
    text = report.report(tmp_path)
    # the baseline's final val loss: mean of 1.80 + 0.0625 + 0.05 and 1.82 + 0.0625 + 0.05 = 1.9225
    assert "its final val loss (mean over seeds) is 1.9225" in text
    row = next(ln for ln in text.splitlines() if ln.startswith("| modern_rope |"))
    # rope: 1.75 + 2 * 0.5^(s/100) <= 1.9225 from step 400 on, at 2 + 400 * 0.1 s
    assert row.startswith("| modern_rope | 1.8175 (range 0.0100, 2 seeds) | -0.1050 | yes | 42 s |"), row
    row = next(ln for ln in text.splitlines() if ln.startswith("| modern_rmsnorm |"))
    assert "| -0.0000 | no | 42 s (1/2 seeds) |" in row  # the seed with floor 1.815 never gets there
    assert "| yes | 152 s |" in next(
        ln for ln in text.splitlines() if ln.startswith("| modern_muon |")
    )  # slower per step
    assert "| 52 s (its last evaluation) |" in next(ln for ln in text.splitlines() if ln.startswith("| gpt2_recipe |"))
    verdict = next(ln for ln in text.splitlines() if ln.startswith("**Verdict:**"))
    assert "better than gpt2_recipe beyond the seed spread: modern_rope (-0.1050), modern_muon (-0.0550)" in verdict
    assert "within the spread: modern_rmsnorm" in verdict and "Most per step: **modern_rope**" in verdict
    assert (
        "Most per second: **modern_rope** reached gpt2_recipe's final val loss in 42 s, 81% of gpt2_recipe's 52 s"
        in verdict
    )
    assert (tmp_path / "modern.png").read_bytes()[:8] == PNG_MAGIC


def test_one_seed_cannot_be_told_from_noise(tmp_path):
    write_run(tmp_path, 0, "gpt2_recipe", 1337, 1.8, 0.1)
    write_run(tmp_path, 1, "modern_rope", 1337, 1.7, 0.1)
    verdict = next(ln for ln in report.report(tmp_path).splitlines() if ln.startswith("**Verdict:**"))
    assert "cannot separate the changes from seed noise: each setting needs at least two seeds" in verdict


def test_seed_statistics():
    a, b = an.over_seeds([1.70, 1.71, None]), an.over_seeds([1.80, 1.82])
    assert (a.n, a.mean, round(a.spread, 6)) == (2, pytest.approx(1.705), 0.01)
    assert an.beyond_spread(a, b) is True
    assert an.beyond_spread(an.over_seeds([1.805, 1.815]), b) is False
    assert an.beyond_spread(an.over_seeds([1.5]), b) is None
    assert an.time_to_reach([(1.0, 2.0), (5.0, 1.9), (9.0, 1.8)], 1.9) == 5.0
    assert an.time_to_reach([(1.0, 2.0)], 1.9) is None
