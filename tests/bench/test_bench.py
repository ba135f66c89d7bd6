"""The side-by-side bench, the plain reference loop, and pad_vocab."""

import json

import pytest
import torch

from gptlab.bench import bench
from gptlab.model import GPT, GPTConfig
from gptlab.training.checkpoint import CheckpointError, check_compatible, load_model


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_plain_loop_trains_exactly_like_the_gptlab_path(compose, tmp_path, optimizer):
    """The bench compares like with like: same init, same batches, same optimizer and schedule,
    so both sides reach the same loss at the same step (no dropout here: nothing random but data)."""
    cfg = compose(
        "max_iters=12",
        "eval_interval=6",
        "learning_rate=1e-2",
        "gradient_accumulation_steps=2",
        f"optimizer={optimizer}",
    )
    a, b = bench.StepTimer(4, 8, cuda=False), bench.StepTimer(4, 8, cuda=False)
    ra = bench._run_gptlab(cfg, tmp_path / "a", a)
    rb = bench._run_plain(cfg, tmp_path / "b", b)
    assert a.seconds > 0 and b.seconds > 0
    assert a.loss == pytest.approx(b.loss, abs=1e-4)
    assert a.loss < 3.6  # it trained (4.17 at random)
    assert ra["final_val_loss"] == pytest.approx(rb["final_val_loss"], abs=1e-4)  # evaluation: the same windows too
    assert rb["flops_per_token"] > 0


def test_bench_command_alternates_sides_and_reports_ratios(tmp_path, tiny, capsys):
    out = tmp_path / "bench.json"
    # in process; each side runs in a subprocess of its own as always
    bench.main(
        [
            "--configs",
            "cpu",
            "--steps",
            "2,4",
            "--rounds",
            "1",
            "--intervals",
            "none",
            "--no-data",
            "--json",
            str(out),
            *tiny,
        ]
    )
    printed = capsys.readouterr().out
    assert "MFU against" in printed and "tokens/s ratio gptlab / plain: min" in printed
    report = json.loads(out.read_text())
    (b,) = report["benches"]
    assert [s["side"] for s in b["sides"]] == ["gptlab", "plain"]
    for side in b["sides"]:
        assert side["tokens_per_s"] > 0 and side["peak_rss_mb"] > 100 and 0 < side["mfu"] < 1
    gl, pl = (runs[0] for runs in b["runs"])
    assert gl["loss_at_end"] == pytest.approx(pl["loss_at_end"], abs=1e-4)  # the same training on both sides
    assert b["tokens_per_s_ratio"][0] == pytest.approx(gl["tokens_per_s"] / pl["tokens_per_s"])
    assert "taking turns of 1 steps" in printed
    assert len(gl["chunk_ms_per_step"]) == len(pl["chunk_ms_per_step"]) == 4  # one turn per timed step


def test_turns_interleave_the_two_processes(tmp_path, tiny):
    """While one side runs its turn the other is blocked: their turns never overlap in time."""
    sides = [bench.Side("gptlab"), bench.Side("plain")]
    cfgs = [bench.compose_run(bench.PRESETS["cpu"], s, tiny, 2, 6, "none") for s in sides]
    res = bench.run_round(sides, cfgs, tmp_path, 2, 6, 2, "r")
    assert [len(r["chunk_ms_per_step"]) for r in res] == [3, 3]
    spans = sorted((a, b, side.name) for side, r in zip(sides, res) for a, b in r["turns"])
    assert len(spans) == 6 and {s for *_, s in spans} == {"gptlab", "plain"}
    assert all(b1 <= a2 for (_, b1, _), (a2, _, _) in zip(spans, spans[1:]))  # no two turns at once
    order = [s for *_, s in spans]
    assert order == ["gptlab", "plain", "plain", "gptlab", "gptlab", "plain"]  # A B, B A, A B


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0,4"], "--steps takes WARMUP,TIMED, both at least 1, not '0,4'"),
        (["--steps", "4"], "--steps takes WARMUP,TIMED, both at least 1, not '4'"),
        (["--chunk", "-1"], "--chunk takes a number of steps (0: no turns), not -1"),
        (["--intervals", "sometimes"], "--intervals takes default, none or default,none, not 'sometimes'"),
    ],
)
def test_bench_refuses_bad_steps_and_chunks(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--configs", "cpu", *args, "--no-data"])
    assert e.value.code == 2  # argparse's usage error, before any work
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "usage:" in err


def test_data_preparation_speed(data_root):
    rows = dict(bench.data_speed(str(data_root)))
    assert len(rows) == 3 and all(r > 0.1 for r in rows.values())  # MB/s


def test_padded_vocabulary_never_produces_padding_ids():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32, vocab_multiple=64))
    assert m.lm_head.weight.shape[0] == m.transformer.wte.weight.shape[0] == 128
    x = torch.randint(0, 65, (2, 16))
    logits, loss = m(x, x)
    assert logits.shape == (2, 16, 65) and torch.isfinite(loss)
    with torch.no_grad():
        m.lm_head.weight[65:] += 10.0  # padding rows that would win every draw if they were offered
    out = m.eval().generate(x[:, :2], 30, temperature=5.0)
    assert int(out.max()) < 65
    assert GPTConfig(vocab_size=50257, vocab_multiple=64).padded_vocab_size == 50304


def test_pad_vocab_trains_saves_and_refuses_a_mismatched_resume(compose, tmp_path):
    from gptlab.training.run import train

    train(compose("pad_vocab=true", "max_iters=4", "eval_interval=4"), tmp_path)
    model, info = load_model(tmp_path / "last.ckpt")
    assert info["model_config"]["vocab_multiple"] == 64 and model.lm_head.weight.shape[0] == 128
    assert model(torch.zeros((1, 4), dtype=torch.long))[0].shape[-1] == 65
    with pytest.raises(CheckpointError, match="vocab_multiple: checkpoint 64 vs config 1"):
        check_compatible(info, {**info["model_config"], "vocab_multiple": 1}, "config")
    old = {**info, "model_config": {k: v for k, v in info["model_config"].items() if k != "vocab_multiple"}}
    check_compatible(old, {**info["model_config"], "vocab_multiple": 1}, "config")  # checkpoints from before the key


@pytest.mark.slow
def test_costs_table_runs(tmp_path, data_root, capsys):
    from gptlab.bench.costs import main

    rows = main([f"data.root={data_root}", "device=cpu"], rounds=1, json_path=str(tmp_path / "costs.json"))
    names = {r["what"] for r in rows}
    assert {"batch sampling", "AdamW step", "compile", "pad_vocab (GPT-2 BPE)", "evaluation"} <= names
    assert "needs a GPU" in capsys.readouterr().out


def test_costs_evaluation_row_compares_the_same_windows(data_root):
    from gptlab.bench.costs import main

    tiny = ["n_layer=1", "n_head=2", "n_embd=32", "block_size=32", "batch_size=8", "eval_iters=4"]
    rows = main([f"data.root={data_root}", "device=cpu", *tiny], rounds=1, only="evaluation")
    row = next(r for r in rows if r["what"] == "evaluation")
    # 7 evaluations a side, alternating; round i of both sides evaluates the same windows
    assert row["eval_merge"] == 4 and row["max_loss_diff"] < 1e-5
    assert row["before_ms"] > 0 and row["after_ms"] > 0 and len(row["speedup"]) == 3
