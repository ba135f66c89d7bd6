"""nanoGPT's own train.py as the bench's third side, and the whole-command comparison.

The nanoGPT checkout is found next to the repository (CI clones it beside a `shared` folder:
repo/../shared/anchors/nanoGPT) or at GPTLAB_NANOGPT_DIR; without one those tests skip."""

import ast
import json
import os
import pickle
from pathlib import Path

import pytest

from gptlab.bench import bench, nanogpt

# nanoGPT's train.py defaults for the keys the bench passes, by type: its configurator refuses others
NANOGPT_TYPES = {"grad_clip": float, "dropout": float, "bias": bool, "max_iters": int, "learning_rate": float}


@pytest.fixture(scope="module")
def nanogpt_dir() -> Path:
    env = os.environ.get("GPTLAB_NANOGPT_DIR")
    home = Path(env) if env else Path(__file__).resolve().parents[3] / "shared/anchors/nanoGPT"
    if not (home / "train.py").is_file():
        pytest.skip(f"no nanoGPT checkout at {home} (set GPTLAB_NANOGPT_DIR)")
    return home


def test_bench_with_nanogpt_reports_three_sides_taking_turns(tmp_path, tiny, nanogpt_dir, capsys):
    out = tmp_path / "bench.json"
    args = ["--configs", "cpu", "--steps", "2,4", "--rounds", "1", "--intervals", "none", "--no-data"]
    bench.main([*args, "--nanogpt", str(nanogpt_dir), "--json", str(out), *tiny])
    printed = capsys.readouterr().out
    assert "tokens/s ratio gptlab / nanoGPT: min" in printed and "tokens/s ratio gptlab / plain: min" in printed
    (b,) = json.loads(out.read_text())["benches"]
    assert [s["side"] for s in b["sides"]] == ["gptlab", "plain", "nanoGPT"]
    for side in b["sides"]:
        assert side["tokens_per_s"] > 0 and side["peak_rss_mb"] > 100 and 0 < side["mfu"] < 1
    assert [a["side"] for a in b["against"]] == ["plain", "nanoGPT"]
    assert b["tokens_per_s_ratio"] == b["against"][0]["tokens_per_s_ratio"]  # A / B keeps its place
    gl, _, ng = (runs[0] for runs in b["runs"])
    assert b["against"][1]["tokens_per_s_ratio"][0] == pytest.approx(gl["tokens_per_s"] / ng["tokens_per_s"])
    assert 2.5 < ng["loss_at_end"] < 4.4  # parsed from its `iter 5: loss ...` line (ln 65 = 4.17 at random)
    assert ng["own_ms_per_step"] > 0 and ng["cpu_ms_per_step"] > 0 and len(ng["chunk_ms_per_step"]) == 4
    assert ng["final_eval_step"] == 6 and 2.5 < ng["final_val_loss"] < 4.4  # after the window, as the others'
    # the turns: never two at once, in order and back (A B C, C B A, ...)
    spans = sorted((a, b, i) for i, runs in enumerate(b["runs"]) for a, b in runs[0]["turns"])
    assert all(b1 <= a2 for (_, b1, _), (a2, _, _) in zip(spans, spans[1:]))
    assert [i for *_, i in spans] == [0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0]


@pytest.mark.slow  # ~20 s: two whole commands, gptlab.train's start-up included
def test_whole_commands_against_nanogpt(tmp_path, data_root, nanogpt_dir, capsys):
    out = tmp_path / "whole.json"
    small = ["n_layer=2", "n_head=2", "n_embd=32", "block_size=32", "batch_size=8", "warmup_iters=2"]
    short = ["max_iters=4", "eval_interval=2", "eval_iters=2", "sample_tokens=0", "eval_sample_tokens=0"]
    bench.main(
        ["--whole", "--nanogpt", str(nanogpt_dir), "--rounds", "1", "--json", str(out)]
        + small
        + short
        + [
            f"data.root={data_root}",
            "device=cpu",
        ]
    )
    printed = capsys.readouterr().out
    assert "wall-time ratio gptlab / nanoGPT: min" in printed
    report = json.loads(out.read_text())
    (pair,) = report["pairs"]
    g, n = pair["gptlab"], pair["nanoGPT"]
    assert g["wall_s"] > 0 and n["wall_s"] > 0 and report["wall_ratio"] == [g["wall_s"] / n["wall_s"]]
    assert 2.5 < g["final_val_loss"] < 4.4 and 2.5 < n["final_val_loss"] < 4.4
    assert "--n_layer=2" in report["nanogpt_args"] and "--max_iters=4" in report["nanogpt_args"]


def test_nanogpt_arguments_have_its_types_and_its_data_layout(compose, tmp_path):
    cfg = compose("grad_clip=1", "dropout=0")
    args = dict(a[2:].split("=", 1) for a in nanogpt.flags(cfg))
    for key, kind in NANOGPT_TYPES.items():
        assert type(ast.literal_eval(args[key])) is kind, key  # what its configurator asserts
    assert args["device"] == "cpu" and args["dtype"] == "float32" and args["dataset"] == "shakespeare_char"
    # its cosine divides by lr_decay_iters - warmup_iters: never zero
    short = dict(a[2:].split("=", 1) for a in nanogpt.flags(compose("max_iters=4", "warmup_iters=4")))
    assert (short["warmup_iters"], short["lr_decay_iters"]) == ("4", "5")
    home = tmp_path / "nano"
    home.mkdir()
    (home / "configurator.py").write_text("")
    d = nanogpt.workdir(cfg, tmp_path / "run", home)
    meta = pickle.loads((d / "data/shakespeare_char/meta.pkl").read_bytes())
    assert meta["vocab_size"] == 65 and meta["itos"][meta["stoi"]["a"]] == "a"
    assert (d / "data/shakespeare_char/train.bin").stat().st_size == 2 * 1_003_854  # uint16 tokens


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "no train.py, model.py, configurator.py there; give the folder of a nanoGPT checkout"),
        (["--steps", "2,5", "--chunk", "2"], "give timed steps (5) that --chunk (2) divides"),
        (["--chunk", "0"], "--nanogpt takes turns; --chunk 0 (whole runs) is what --whole compares"),
    ],
)
def test_bench_refuses_a_folder_without_nanogpt_and_turns_it_cannot_take(tmp_path, tiny, args, message, capsys):
    home = tmp_path / "empty"
    home.mkdir()
    if args:  # a folder with the three files: the refusal is about the turns
        for f in nanogpt.REQUIRED:
            (home / f).write_text("")
    with pytest.raises(SystemExit) as e:
        bench.main(["--configs", "cpu", "--nanogpt", str(home), "--no-data", *args, *tiny])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_nanogpt_side_refuses_what_its_train_py_cannot_do(compose):
    with pytest.raises(nanogpt.ConfigError, match="nanoGPT's train.py has no pos_emb=rope; leave pos_emb at learned"):
        nanogpt.check_expressible(compose("pos_emb=rope"))


def test_whole_needs_nanogpt_and_no_steps(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--whole", "--rounds", "1"])
    assert e.value.code == 2 and "--whole times the CPU recipe's whole command" in capsys.readouterr().err
