"""Rows of README's "Bad input" table not covered elsewhere: each mistake is refused before any
work with one message that names the fix, exit code 2, and nothing that looks like a finished run.

In process through train(), the same path the command line takes; tests/test_cli.py checks the
command-line side of the contract (one `error:` line, exit status 2, no traceback)."""

import json
import urllib.request

import numpy as np
import pytest
import torch

from gptlab.cli import common as cli
from gptlab.data.datamodule import GPTDataModule
from gptlab.data.dataset import DataError, DataSpec, prepare_dataset
from gptlab.errors import CheckpointError, ConfigError
from gptlab.training.run import train

RESULTS = ("metrics.json", "training.log", "best.ckpt", "last.ckpt")


def refused(cfg, run_dir, error, match):
    with pytest.raises(error, match=match) as e:
        train(cfg, run_dir)
    assert e.value.exit_code == 2
    assert not any((run_dir / name).exists() for name in RESULTS)  # nothing that looks like a result
    return e.value


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["n_layer=0"], "n_layer must be an integer >= 1, got 0"),
        (["n_head=-2"], "n_head must be an integer >= 1, got -2"),
        (["n_embd=0"], "n_embd must be an integer >= 1"),
        (["max_iters=-1"], "max_iters must be an integer >= 0"),
        (["eval_iters=0"], "eval_iters must be an integer >= 1"),
        (["gradient_accumulation_steps=0"], "gradient_accumulation_steps must be an integer >= 1"),
        (["max_iters=0"], "max_iters=0 trains nothing; give max_iters>0"),
        (["warmup_iters=50", "max_iters=10"], r"warmup_iters \(50\) > max_iters \(10\).*Use warmup_iters<=10"),
        (
            ["lr_decay_iters=3", "warmup_iters=5", "max_iters=10"],
            r"lr_decay_iters \(3\) < warmup_iters \(5\).*lr_decay_iters = max_iters",
        ),
        (["eval_sample_budget=5"], r"eval_sample_budget must be a share of the training time between 0 and 1.*got 5"),
    ],
)
def test_zero_negative_and_contradictory_sizes(compose, tmp_path, overrides, match):
    refused(compose("max_iters=10", *overrides), tmp_path, ConfigError, match)


def test_block_size_not_shorter_than_a_split(compose, tmp_path):
    refused(
        compose("block_size=111540", "max_iters=10"),
        tmp_path,
        DataError,
        r"not shorter than the val split \(111,540 tokens\).*block_size<=111539",
    )


def test_device_cuda_without_a_gpu(compose, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused(compose("device=cuda", "max_iters=10"), tmp_path, ConfigError, "no CUDA GPU is visible.*use device=cpu")


def test_wrong_data_path(compose, tmp_path):
    refused(
        compose("data=text", f"data.path={tmp_path / 'no_such.txt'}", "max_iters=10"),
        tmp_path / "run",
        DataError,
        "does not exist; give the path of a UTF-8 text file",
    )


def test_data_missing_offline_and_damaged(compose, tmp_path, monkeypatch):
    # not prepared, no mirror, no network
    monkeypatch.delenv("GPTLAB_DATA_MIRROR", raising=False)

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    refused(
        compose(f"data.root={tmp_path / 'empty_root'}", "max_iters=10"),
        tmp_path / "r1",
        DataError,
        "could not download tinyshakespeare.*set GPTLAB_DATA_MIRROR=<dir>.*data=text data.path=FILE",
    )
    # a prepared dataset whose meta.json was damaged
    src = tmp_path / "poem.txt"
    src.write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    out = prepare_dataset(DataSpec(name="poem", root=str(tmp_path), path=str(src)), log=lambda m: None)
    (out / "meta.json").write_text('{"vocab_size": 2')
    refused(
        compose("data=text", f"data.path={src}", "data.name=poem", f"data.root={tmp_path}", "max_iters=10"),
        tmp_path / "r2",
        DataError,
        "damaged gptlab dataset.*delete .* and prepare it again",
    )


@pytest.fixture(scope="module")
def char_run(tmp_path_factory, compose):
    """A 2-step run on Tiny Shakespeare (vocab 65) whose checkpoints the next tests misuse."""
    d = tmp_path_factory.mktemp("char_run")
    train(compose("max_iters=2", "eval_interval=2"), d)
    return d


def test_checkpoint_of_another_vocabulary(char_run, compose, tmp_path):
    src = tmp_path / "poem.txt"
    src.write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    refused(
        compose(
            "data=text",
            f"data.path={src}",
            f"data.root={tmp_path}",
            "max_iters=4",
            "init_from=resume",
            f"ckpt_path={char_run / 'last.ckpt'}",
        ),
        tmp_path / "run",
        CheckpointError,
        "vocab_size: checkpoint 65 vs config 28.*Use the settings and data the checkpoint was trained with",
    )


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_truncated_or_corrupt_checkpoint(char_run, compose, tmp_path, damage):
    good = (char_run / "last.ckpt").read_bytes()
    bad = {"truncated": good[: len(good) // 2], "garbage": bytes(range(256)) * 40, "empty": b""}[damage]
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.ckpt").write_bytes(bad)
    with pytest.raises(CheckpointError, match="not a readable checkpoint.*truncated or corrupt.*another checkpoint"):
        train(compose("max_iters=4", "init_from=resume"), run)
    assert not (run / "metrics.json").exists() and not (run / "training.log").exists()


def test_resume_without_a_checkpoint_or_a_folder(compose, tmp_path):
    refused(compose("max_iters=4", "init_from=resume"), tmp_path, ConfigError, "no checkpoint at .*give ckpt_path=FILE")
    with pytest.raises(ConfigError, match="resume=true continues a run or sweep in its folder: give out_dir="):
        cli.check_resume_args(["-m", "learning_rate=1e-3,2e-3", "resume=true"])
    cli.check_resume_args(["resume=true", "out_dir=outputs/x"])  # fine


def test_vocabulary_over_65535_is_stored_and_read_as_uint32(tmp_path):
    # 70,000 distinct characters: ids up to 69,999 would wrap around in 16 bits
    chars = [chr(c) for c in range(0x100, 0x100 + 75_000) if not 0xD800 <= c <= 0xDFFF][:70_000]
    src = tmp_path / "wide.txt"
    src.write_text("".join(chars) * 2, encoding="utf-8")
    out = prepare_dataset(DataSpec(name="wide", root=str(tmp_path), path=str(src)), log=lambda m: None)
    assert json.loads((out / "meta.json").read_text())["dtype"] == "uint32"
    dm = GPTDataModule(out, block_size=64, batch_size=256, seed=0)
    dm.setup()
    x, y = dm._train.sample()
    assert int(x.max()) > 65_535  # batches carry the high ids, not their 16-bit remainders
    # consecutive characters of the text have consecutive ids (mod the vocabulary) in every window
    assert np.all((y - x).numpy() % 70_000 == 1)
