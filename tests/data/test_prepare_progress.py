"""Preparing a large text: progress lines while it is tokenized, ids identical to one call on the
whole text, and the val split's bytes per token recorded in meta.json (or counted for old folders)."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from gptlab.data import dataset as ds
from gptlab.data.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return (Path(os.environ["GPTLAB_DATA_MIRROR"]) / "tinyshakespeare" / "input.txt").read_text()


def test_a_multi_mb_text_prints_progress_lines(shakespeare, tmp_path, monkeypatch):
    text = shakespeare * 4  # 4.5 MB
    (tmp_path / "big.txt").write_text(text)
    monkeypatch.setattr(ds, "PIECE_CHARS", 1 << 20)
    monkeypatch.setattr(ds, "PROGRESS_EVERY_S", 0.0)  # a line after every piece, however fast
    lines = []
    spec = ds.DataSpec(name="big", root=str(tmp_path / "data"), path=str(tmp_path / "big.txt"), tokenizer="char")
    ds.prepare_dataset(spec, log=lines.append)
    progress = [
        m for line in lines if (m := re.fullmatch(r"tokenizing: ([\d.]+) of ([\d.]+) MB \((\d+)%\), [\d.]+ MB/s", line))
    ]
    assert len(progress) >= 4, lines
    done = [float(m.group(1)) for m in progress]
    assert done == sorted(done) and {m.group(2) for m in progress} == {"4.5"}
    assert progress[-1].group(3) == "100"
    # the pieces encode to the ids of the whole text
    tok = build_tokenizer("char", text)
    meta = ds.load_meta(spec.dir)
    split = int(len(text) * 0.9)
    assert np.array_equal(ds.open_tokens(spec.dir, "train", meta), tok.encode(text[:split]))
    assert np.array_equal(ds.open_tokens(spec.dir, "val", meta), tok.encode(text[split:]))


def test_a_small_text_prints_none(shakespeare, tmp_path):
    (tmp_path / "small.txt").write_text(shakespeare[:200_000])
    lines = []
    spec = ds.DataSpec(name="small", root=str(tmp_path), path=str(tmp_path / "small.txt"), tokenizer="char")
    ds.prepare_dataset(spec, log=lines.append)
    assert not [line for line in lines if line.startswith("tokenizing:")]


def test_bpe_pieces_encode_as_the_whole(shakespeare, monkeypatch):
    monkeypatch.setattr(ds, "PIECE_CHARS", 50_000)
    tok = build_tokenizer("gpt2")
    assert len(tok.pieces(shakespeare, ds.PIECE_CHARS)) > 10
    assert np.array_equal(ds.encode(tok, shakespeare), tok.encode(shakespeare))


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_val_bytes_in_meta_and_for_folders_prepared_before(shakespeare, tmp_path, tokenizer):
    text = shakespeare[:300_000] + "\nNon-ASCII: café, naïve — ✓\n"
    (tmp_path / "t.txt").write_text(text)
    spec = ds.DataSpec(name="t", root=str(tmp_path), path=str(tmp_path / "t.txt"), tokenizer=tokenizer)
    ds.prepare_dataset(spec, log=lambda m: None)
    meta = ds.load_meta(spec.dir)
    val_text = text[int(len(text) * 0.9) :]
    assert meta["val_bytes"] == len(val_text.encode("utf-8"))
    per_token = ds.val_bytes_per_token(spec.dir, meta)
    assert per_token == pytest.approx(len(val_text.encode("utf-8")) / meta["val_tokens"])
    # a folder prepared before val_bytes existed: counted from val.bin, the same figure
    del meta["val_bytes"]
    (spec.dir / "meta.json").write_text(json.dumps(meta))
    assert ds.val_bytes_per_token(spec.dir, ds.load_meta(spec.dir)) == pytest.approx(per_token)
