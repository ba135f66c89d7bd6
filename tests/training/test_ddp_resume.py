"""A DDP run stopped and resumed trains every rank on the batches of an unbroken run: the
checkpoint holds each rank's sampler state, not rank 0's alone."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gptlab.data.datamodule import GPTDataModule

HERE = Path(__file__).parent
# lr_decay_iters fixed: the same schedule whether the run is started for 6 steps or resumed
ARGS = ["max_iters=6", "eval_interval=3", "eval_iters=2", "lr_decay_iters=6", "gradient_accumulation_steps=2"]


def _ddp(run_dir: Path, tiny: list[str], *overrides: str) -> None:
    # a script of ours as __main__: Lightning starts rank 1 by running it again with the same argv
    args = [*tiny, *ARGS, "trainer=ddp", "trainer.devices=2", *overrides]
    p = subprocess.run(
        [sys.executable, str(HERE / "ddp_resume_driver.py"), str(run_dir), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def _seen(run_dir: Path, rank: int) -> dict:
    return json.loads((run_dir / f"batches_rank{rank}.json").read_text())


@pytest.mark.slow
def test_a_resumed_ddp_run_draws_every_ranks_batches_as_an_unbroken_run(tmp_path, tiny):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _ddp(straight, tiny, "always_save_checkpoint=true")
    resumed.mkdir()
    shutil.copy(straight / "step3.ckpt", resumed / "last.ckpt")  # as a run stopped after step 3 leaves it
    _ddp(resumed, tiny, "resume=true", f"out_dir={resumed}")

    want = [_seen(straight, r) for r in (0, 1)]
    got = [_seen(resumed, r) for r in (0, 1)]
    assert want[0]["batches"] != want[1]["batches"]  # the ranks draw their own windows
    for r in (0, 1):
        after = [b for b in want[r]["batches"] if b[0] >= 3]
        assert len(after) == 6 and got[r]["batches"] == after, r  # steps 4-6, two micro-batches each
        assert got[r]["weights"] == want[r]["weights"], r  # and end on the same weights


def _dm(data_root, rank: int) -> GPTDataModule:
    class Trainer:
        global_rank = rank

        class accelerator:  # noqa: N801
            pass

    dm = GPTDataModule(data_root / "shakespeare_char", block_size=16, batch_size=4, seed=7)
    dm.trainer = Trainer()
    dm.setup()
    return dm


def test_the_checkpoint_holds_a_sampler_state_per_rank(data_root, monkeypatch):
    # the layout a 2-rank run saves (its all-gather stood in for): each rank resumes its own stream
    ranks = [_dm(data_root, r) for r in (0, 1)]
    drawn = [dm._train.sample()[0] for dm in ranks]  # drawn ahead by Lightning's fetcher
    own = [dm._own_state() for dm in ranks]
    monkeypatch.setattr("gptlab.data.datamodule._gather", lambda state: own)
    state = ranks[0].state_dict()
    assert list(state) == ["ranks"] and len(state["ranks"]) == 2
    assert set(state["ranks"][0]) == {"train", "eval"}

    for r in (0, 1):
        dm = _dm(data_root, r)
        dm.load_state_dict(state)
        assert (dm._train.sample()[0] == drawn[r]).all(), r
    # a third rank (more processes than the run had) branches its own stream off rank 0's
    extra = _dm(data_root, 2)
    extra.load_state_dict(state)
    assert not any((extra._train.sample()[0] == d).all() for d in drawn)
    # a checkpoint from before per-rank states ({"train", "eval"}: rank 0's) still resumes rank 0
    old = _dm(data_root, 0)
    old.load_state_dict(own[0])
    assert (old._train.sample()[0] == drawn[0]).all()
