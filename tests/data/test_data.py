import json

import numpy as np
import pytest
import torch

from gptlab.data.datamodule import GPTDataModule, RandomWindows
from gptlab.data.dataset import DataError, DataSpec, fetch_corpus, prepare_dataset, read_text


def test_tiny_shakespeare_char_facts(data_root):
    d = data_root / "shakespeare_char"
    meta = json.loads((d / "meta.json").read_text())
    assert meta["tokenizer"] == "char" and meta["vocab_size"] == 65 and meta["dtype"] == "uint16"
    assert meta["train_tokens"] == 1_003_854 and meta["val_tokens"] == 111_540
    train = np.fromfile(d / "train.bin", dtype=np.uint16)
    assert len(train) == 1_003_854
    # the first line of Tiny Shakespeare decodes back from the ids
    chars = meta["chars"]
    assert "".join(chars[i] for i in train[:14]) == "First Citizen:"


def test_bpe_prepare(tmp_path):
    out = prepare_dataset(
        DataSpec(name="bpe", root=str(tmp_path), source="tinyshakespeare", tokenizer="gpt2"), log=lambda m: None
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] == 50257 and meta["eot_token"] == 50256
    assert meta["train_tokens"] == 301_966 and meta["val_tokens"] == 36_059  # nanoGPT's figures


def test_vocab_over_65535_uses_uint32(tmp_path):
    # 70,000 distinct characters (skipping the surrogate range) force 32-bit ids
    chars = [chr(c) for c in range(0x100, 0x100 + 75_000) if not 0xD800 <= c <= 0xDFFF][:70_000]
    src = tmp_path / "wide.txt"
    src.write_text("".join(chars) * 2, encoding="utf-8")
    out = prepare_dataset(
        DataSpec(name="wide", root=str(tmp_path), path=str(src), tokenizer="char"), log=lambda m: None
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] == 70_000 and meta["dtype"] == "uint32"
    ids = np.fromfile(out / "train.bin", dtype=np.uint32)
    assert ids.max() == 69_999  # not wrapped around at 65,536
    assert "".join(meta["chars"][i] for i in ids[:5]) == "".join(chars[:5])


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"   \n\n", "empty"), (b"abc\x00\x01\x02", "binary"), (b"caf\xe9 au lait", "not valid UTF-8")],
)
def test_bad_text_files(tmp_path, content, message):
    f = tmp_path / "in.txt"
    f.write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_text(f)
    assert not (tmp_path / "out").exists()


def test_missing_path_and_offline_without_mirror(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        read_text(tmp_path / "nope.txt")
    monkeypatch.setenv("GPTLAB_DATA_MIRROR", str(tmp_path / "no_mirror_here"))
    with pytest.raises(DataError, match="GPTLAB_DATA_MIRROR"):
        fetch_corpus("tinyshakespeare", tmp_path / "raw")


def test_windows_are_shifted_by_one(data_root):
    d = data_root / "shakespeare_char"
    ds = RandomWindows(d / "train.bin", "uint16", block_size=32, batch_size=8, seed=0)
    x, y = ds.sample()
    assert x.shape == y.shape == (8, 32) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])  # Y is X moved one token to the left
    data = torch.from_numpy(np.fromfile(d / "train.bin", dtype=np.uint16).astype(np.int64))
    # the offsets the sampler's generator drew for this batch, replayed from its recorded state
    replay = np.random.default_rng()
    replay.bit_generator.state = ds.state_before_draw
    starts = replay.integers(0, len(data) - 32, size=8)
    assert len(set(starts.tolist())) == 8
    for row, start in enumerate(starts.tolist()):
        # row r is the window of the split at the r-th offset; its target the same window one token on
        assert torch.equal(x[row], data[start : start + 32]), row
        assert torch.equal(y[row], data[start + 1 : start + 33]), row


def test_sampler_is_seeded_and_ranks_differ(data_root):
    d = data_root / "shakespeare_char"
    a = GPTDataModule(d, block_size=16, batch_size=4, seed=7)
    b = GPTDataModule(d, block_size=16, batch_size=4, seed=7)
    a.setup()
    b.setup()
    xa, _ = a._train.sample()
    xb, _ = b._train.sample()
    assert torch.equal(xa, xb)

    class FakeTrainer:
        global_rank = 1

        class accelerator:  # noqa: N801
            pass

    c = GPTDataModule(d, block_size=16, batch_size=4, seed=7)
    c.trainer = FakeTrainer()
    c.setup()
    xc, _ = c._train.sample()
    assert not torch.equal(xa, xc)


def test_block_size_must_be_shorter_than_split(tmp_path):
    src = tmp_path / "short.txt"
    src.write_text("abcdefghij" * 20)
    out = prepare_dataset(DataSpec(name="short", root=str(tmp_path), path=str(src)), log=lambda m: None)
    dm = GPTDataModule(out, block_size=20, batch_size=2)
    with pytest.raises(DataError, match="block_size=20 is not shorter than the val split"):
        dm.check_block_size()
