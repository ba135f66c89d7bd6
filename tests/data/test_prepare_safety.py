"""Preparing data never loses the user's files: prepare deletes only what it wrote, datasets of
different tokenizers never share a folder, and a damaged or half-written dataset is prepared
again or refused."""

import json

import numpy as np
import pytest

from gptlab.data.dataset import (
    DataError,
    DataSpec,
    ensure_prepared,
    is_prepared,
    load_meta,
    open_tokens,
    prepare_dataset,
)

QUIET = {"log": lambda m: None}


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_never_deletes_the_users_own_folder(tmp_path, run_cli):
    """The adversarial case: the dataset's folder is the one holding the user's text."""
    mine = tmp_path / "mydata"
    mine.mkdir()
    (mine / "input.txt").write_text("to be or not to be\n" * 200)
    (mine / "notes.md").write_text("my notes")
    before = snapshot(mine)
    p = run_cli(
        "gptlab.prepare", "data=text", f"data.path={mine / 'input.txt'}", f"data.root={tmp_path}", "data.name=mydata"
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "inside the dataset folder" in p.stderr
    assert snapshot(mine) == before


@pytest.mark.parametrize("name", [".", "..", "raw", "a/b", ""])
def test_prepare_refuses_a_name_that_is_not_one_folder(tmp_path, name):
    text = tmp_path / "t.txt"
    text.write_text("abc def\n" * 100)
    (tmp_path / "keep.txt").write_text("keep")
    with pytest.raises(DataError, match="plain folder name"):
        prepare_dataset(DataSpec(name=name, root=str(tmp_path), path=str(text)), **QUIET)
    assert (tmp_path / "keep.txt").read_text() == "keep"


def test_prepare_refuses_a_folder_it_did_not_write(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("abc def\n" * 100)
    other = tmp_path / "data" / "mine"
    other.mkdir(parents=True)
    (other / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match=r"thesis.tex.*not a prepared gptlab dataset"):
        prepare_dataset(DataSpec(name="mine", root=str(tmp_path / "data"), path=str(text)), **QUIET)
    assert (other / "thesis.tex").read_text() == "years of work"


def test_a_gpt2_prepare_never_touches_the_char_dataset(tmp_path, compose):
    """data.tokenizer=gpt2 over the char config gets its own folder; named the same, it is refused."""
    root = tmp_path / "data"
    char = compose(f"data.root={root}").data
    bpe = compose(f"data.root={root}", "data.tokenizer=gpt2").data
    assert (char.name, bpe.name) == ("shakespeare_char", "shakespeare_gpt2")
    from gptlab.config import data_spec

    char_dir = ensure_prepared(data_spec(compose(f"data.root={root}")), **QUIET)
    before = snapshot(char_dir)
    clash = DataSpec(name="shakespeare_char", root=str(root), source="tinyshakespeare", tokenizer="gpt2")
    with pytest.raises(DataError, match="holds another dataset.*data.name="):
        prepare_dataset(clash, **QUIET)
    assert snapshot(char_dir) == before


def test_a_damaged_dataset_is_prepared_again_or_refused(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat\n" * 300)
    spec = DataSpec(name="t", root=str(tmp_path / "data"), path=str(text))
    out = prepare_dataset(spec, **QUIET)
    good = (out / "train.bin").read_bytes()
    meta = load_meta(out)
    (out / "train.bin").write_bytes(good[:100])  # truncated
    with pytest.raises(DataError, match="damaged.*train.bin has 100 bytes"):
        open_tokens(out, "train", meta)
    assert not is_prepared(spec)
    ensure_prepared(spec, **QUIET)  # ours: prepared again
    assert (out / "train.bin").read_bytes() == good
    (out / "meta.json").write_text(json.dumps({"vocab_size": 20}))  # keys missing
    with pytest.raises(DataError, match="meta.json is damaged"):
        load_meta(out)


def test_prepare_replaces_its_own_dataset_atomically(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("one two three\n" * 300)
    spec = DataSpec(name="t", root=str(tmp_path / "data"), path=str(text))
    prepare_dataset(spec, **QUIET)
    text.write_text("four five six\n" * 300)
    out = prepare_dataset(spec, **QUIET)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["t"]  # no leftovers beside it
    ids = np.fromfile(out / "train.bin", dtype=np.uint16)
    assert load_meta(out)["vocab_size"] == len(set("four five six\n")) and ids.max() < 11
