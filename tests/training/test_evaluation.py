"""Evaluation: batches merged into one forward pass (eval_merge) give the numbers that one batch at a
time gives (the same windows, each batch's mean over its own counted targets); the time evaluations
take (eval_s, eval_share) and the time to the best val loss (best_val_time_s)."""

import json
import logging

import lightning as L
import pytest
import torch

from gptlab.config import validate
from gptlab.data.datamodule import MergedBatches, auto_eval_merge
from gptlab.data.packing import IGNORE, merge_batches
from gptlab.errors import ConfigError
from gptlab.report.report import load_runs, table
from gptlab.training import run as run_mod


def _evaluations(compose, merge: int, *overrides: str, times: int = 2) -> list[dict]:
    """The losses of `times` evaluations in a row (the sampler streams run on between them)."""
    cfg = compose(f"eval_merge={merge}", "eval_iters=6", *overrides)
    data = run_mod.build_data(cfg)
    module = run_mod.build_module(cfg, data)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        limit_val_batches=int(cfg.eval_iters),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    out = []
    for _ in range(times):
        trainer.validate(module, datamodule=data.dm, verbose=False)
        out.append(dict(module.last_eval))
    return out


@pytest.mark.parametrize("batching", ["random", "packed", "padded"])
def test_merged_evaluation_gives_the_same_losses(compose, batching):
    # 6 batches a split: one at a time (the old path), 3 forwards of 2, 2 of 3 and one of all 6
    over = (f"data.batching={batching}",)
    one = _evaluations(compose, 1, *over)
    for merge in (2, 3, 6):
        merged = _evaluations(compose, merge, *over)
        for a, b in zip(one, merged):
            assert a.keys() == b.keys() == {"train", "val"}
            for split in a:
                assert b[split] == pytest.approx(a[split], abs=1e-5), (batching, merge, split)
    assert one[0] != one[1]  # the second evaluation drew other windows: the streams run on alike


def test_a_merge_that_does_not_divide_eval_iters_ends_with_a_shorter_forward(compose):
    # eval_iters=6 in forwards of 4 and 2: the same windows and means as one at a time
    one, merged = _evaluations(compose, 1, times=1), _evaluations(compose, 4, times=1)
    assert merged[0]["val"] == pytest.approx(one[0]["val"], abs=1e-5)


def test_merged_batches_hold_the_same_windows_in_the_same_order(compose):
    cfg = compose("data.batching=padded", "eval_iters=5")
    data = run_mod.build_data(cfg)
    data.dm.setup()
    sampler = data.dm._eval[1]
    state = sampler.state_dict()
    single = [sampler.sample() for _ in range(5)]
    sampler.load_state_dict(state)
    merged = list(MergedBatches(sampler, total=5, merge=2))
    assert [m["batches"] for m in merged] == [2, 2, 1]
    rows = [(b["x"][i], b["y"][i]) for b in single for i in range(len(b["x"]))]
    got = [(m["x"][i], m["y"][i]) for m in merged for i in range(len(m["x"]))]
    assert len(got) == len(rows)
    for (x, y), (mx, my) in zip(rows, got):
        # a shorter batch is padded on the right: inputs 0, targets IGNORE
        n = len(x)
        assert torch.equal(mx[:n], x) and torch.equal(my[:n], y)
        assert (my[n:] == IGNORE).all() and (mx[n:] == 0).all()
    assert sum(m["real"] for m in merged) == sum(b["real"] for b in single)


def test_random_windows_merge_into_a_dict_batch():
    x = torch.arange(12).view(3, 4)
    m = merge_batches([(x, x + 1), (x + 2, x + 3)])
    assert m["batches"] == 2 and torch.equal(m["x"], torch.cat([x, x + 2])) and torch.equal(m["y"][3:], x + 3)


def test_auto_merge_divides_eval_iters_within_the_token_budget():
    # the CPU recipe (12 x 64 tokens, vocab 65): all 20 batches in one forward
    assert auto_eval_merge(20, 12, 64, 65) == 20
    # the baby GPT (64 x 256 = 16,384 tokens): 8 batches (131,072 tokens), a divisor of 200
    assert auto_eval_merge(200, 64, 256, 65) == 8
    # GPT-2's vocabulary at block 1024, batch 12: the logits of one batch are over budget already
    assert auto_eval_merge(200, 12, 1024, 50304) == 1
    assert auto_eval_merge(7, 12, 64, 65) == 7 and auto_eval_merge(13, 64, 256, 65) == 1
    # on a CPU the forward is the cost, and larger ones are slower there: one batch at a time
    assert auto_eval_merge(20, 12, 64, 65, on_gpu=False) == 1


def test_eval_merge_is_checked(compose):
    with pytest.raises(ConfigError, match="eval_merge must be an integer >= 1"):
        validate(compose("eval_merge=0"))
    validate(compose("eval_merge=auto"))


def test_eval_time_share_and_time_to_best_val_in_metrics_and_report(compose, tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level("INFO", logger="gptlab"):
        m = run_mod.train(compose("max_iters=6", "eval_interval=2", "logger=[]"), run)
    assert 0 < m["eval_s"] < m["wall_time_s"]
    assert 0 < m["eval_share"] < 1
    best = min(m["evals"], key=lambda e: e["val_loss"])
    assert (m["best_step"], m["best_val_time_s"]) == (best["step"], best["wall_time_s"])
    assert 0 < m["best_val_time_s"] <= m["wall_time_s"]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("best val loss")]
    assert len(said) == 1 and "evaluation" in said[0] and " of the run, " in said[0]
    written = json.loads((run / "metrics.json").read_text())
    assert {k: written[k] for k in ("eval_s", "eval_share", "best_val_time_s")} == {
        k: m[k] for k in ("eval_s", "eval_share", "best_val_time_s")
    }
    # the report's table of runs shows both
    (r,) = load_runs(tmp_path)
    text = table([r], [])
    assert "| best at | eval share |" in text and f"| {m['eval_share']:.0%} |" in text

    # continued to step 10: the clock and the evaluation seconds count on from the checkpoint
    m2 = run_mod.train(compose("max_iters=10", "eval_interval=2", "logger=[]", "init_from=resume"), run)
    assert m2["eval_s"] > m["eval_s"] and 0 < m2["eval_share"] < 1
    assert m2["evals"][-1]["wall_time_s"] > m["evals"][-1]["wall_time_s"]
    assert m2["best_val_time_s"] <= m2["evals"][-1]["wall_time_s"]


def test_compiled_merged_evaluation_keeps_the_graphs_static(compose, tmp_path, caplog):
    # merged evaluation batches (4 x 8 rows) and training's (8 rows) each get a graph with a fixed
    # batch size: dynamo would otherwise make the training graph's batch size symbolic; no recompile
    # beyond the eager run's three graphs (training, evaluation, and the step-0 one under inference mode)
    torch._logging.set_logs(dynamic=logging.INFO)
    try:
        with caplog.at_level(logging.INFO, logger="torch.fx.experimental.symbolic_shapes"):
            cfg = compose(
                "compile=true", "compile_backend=eager", "eval_merge=4", "max_iters=6", "eval_interval=2", "logger=[]"
            )
            m = run_mod.train(cfg, tmp_path / "run")
    finally:
        torch._logging.set_logs()
    assert (m["compiled"], m["compiled_graphs"]) == (True, 3)
    symbols = [r.getMessage() for r in caplog.records if "create_symbol" in r.getMessage()]
    assert symbols == []
