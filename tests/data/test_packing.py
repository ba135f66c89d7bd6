"""Documents, packed rows and padded batches: what prepare records, what the samplers build, that
the model computes each document as if it were alone, and that training runs in both modes."""

import json

import numpy as np
import pytest
import tiktoken
import torch
import torch.nn.functional as F

from gptlab.cli.docstats import document_stats
from gptlab.cli.docstats import main as docstats_main
from gptlab.config import validate
from gptlab.data.datamodule import GPTDataModule
from gptlab.data.dataset import (
    DataError,
    DataSpec,
    ensure_prepared,
    is_prepared,
    load_meta,
    open_documents,
    prepare_dataset,
)
from gptlab.data.packing import IGNORE, PackedRows, PaddedBatches, document_mask, unpack_batch
from gptlab.errors import ConfigError
from gptlab.model import GPT, GPTConfig
from gptlab.training.run import train

QUIET = dict(log=lambda m: None)


def split_docs(d, split="train"):
    meta = load_meta(d)
    ids = np.fromfile(d / f"{split}.bin", dtype=meta["dtype"])
    off = open_documents(d, split, meta)
    return [ids[a:b] for a, b in zip(off[:-1], off[1:])], meta


def char_texts(d, split="train"):
    docs, meta = split_docs(d, split)
    chars = meta["chars"]
    return ["".join(chars[i] for i in doc) for doc in docs]


def tiny_model(block_size=64):
    torch.manual_seed(0)
    return GPT(
        GPTConfig(vocab_size=65, block_size=block_size, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False)
    ).eval()


# --------------------------------------------------------------------------- prepare


def test_tiny_shakespeare_speeches(data_root):
    d = data_root / "shakespeare_char"
    meta = load_meta(d)
    assert meta["documents"] == {"kind": "blank_lines", "train": 6283, "val": 940}
    texts = char_texts(d)
    assert texts[0] == "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    assert texts[1] == "All:\nSpeak, speak.\n\n"
    # the documents cover the split; each ends with its blank line (but the one cut by the val split)
    assert sum(map(len, texts)) == meta["train_tokens"]
    assert all(t.endswith("\n\n") and "\n\n" not in t[:-2] for t in texts[:-1])


def test_bpe_documents_match_the_char_documents(data_root, tmp_path):
    out = prepare_dataset(DataSpec(name="bpe", root=str(tmp_path), source="tinyshakespeare", tokenizer="gpt2"), **QUIET)
    enc = tiktoken.get_encoding("gpt2")
    docs, meta = split_docs(out)
    assert meta["train_tokens"] == 301_966  # the ids are those of encoding the whole text, as before
    assert [enc.decode(doc.tolist()) for doc in docs] == char_texts(data_root / "shakespeare_char")


def test_folder_of_files_one_document_each(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    texts = ["alpha one\n\nstill alpha", "beta " * 20, "gamma " * 40]
    for i, t in enumerate(texts):
        (folder / f"{i}.txt").write_text(t)
    out = prepare_dataset(
        DataSpec(name="f", root=str(tmp_path), path=str(folder), documents="files", val_fraction=0.2), **QUIET
    )
    train, val = char_texts(out, "train"), char_texts(out, "val")
    # a blank line inside a file does not start a document; the last file is cut by the val split
    assert train[:2] == [texts[0] + "\n\n", texts[1] + "\n\n"]
    assert len(train) == 3 and len(val) == 1 and train[2] + val[0] == texts[2]
    with pytest.raises(DataError, match="documents=files .* single file"):
        prepare_dataset(DataSpec(name="g", root=str(tmp_path), path=str(folder / "0.txt"), documents="files"), **QUIET)


def test_eot_token_files_and_marked_text(tmp_path):
    enc = tiktoken.get_encoding("gpt2")
    stories = [f"Story {i}: " + "once upon a time " * (i % 7 + 1) for i in range(40)]
    ids = [t for s in stories for t in [*enc.encode_ordinary(s), enc.eot_token]]
    np.array(ids, dtype=np.uint16).tofile(tmp_path / "owt.bin")  # nanoGPT's train.bin layout
    out = prepare_dataset(
        DataSpec(name="tok", root=str(tmp_path), path=str(tmp_path / "owt.bin"), tokenizer="gpt2", documents="eot"),
        **QUIET,
    )
    docs, meta = split_docs(out)
    assert meta["documents"]["kind"] == "eot" and meta["eot_token"] == enc.eot_token
    assert [enc.decode(d.tolist()) for d in docs[:3]] == [s + "<|endoftext|>" for s in stories[:3]]
    assert all(d[-1] == enc.eot_token for d in docs[:-1])

    # the same stories as a text with <|endoftext|> markers: the markers become the EOT token
    (tmp_path / "stories.txt").write_text("<|endoftext|>".join(stories))
    out = prepare_dataset(
        DataSpec(name="txt", root=str(tmp_path), path=str(tmp_path / "stories.txt"), tokenizer="gpt2", documents="eot"),
        **QUIET,
    )
    text_docs, _ = split_docs(out)
    assert [d.tolist() for d in text_docs[:5]] == [d.tolist() for d in docs[:5]]

    with pytest.raises(DataError, match="tokenizer=gpt2"):
        prepare_dataset(
            DataSpec(name="c", root=str(tmp_path), path=str(tmp_path / "stories.txt"), documents="eot"), **QUIET
        )
    (tmp_path / "plain.txt").write_text("no markers here " * 50)
    with pytest.raises(DataError, match="no <\\|endoftext\\|>"):
        prepare_dataset(
            DataSpec(name="p", root=str(tmp_path), path=str(tmp_path / "plain.txt"), tokenizer="gpt2", documents="eot"),
            **QUIET,
        )
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="odd number of bytes"):
        prepare_dataset(
            DataSpec(name="o", root=str(tmp_path), path=str(tmp_path / "odd.bin"), tokenizer="gpt2", documents="eot"),
            **QUIET,
        )
    assert not any((tmp_path / n).exists() for n in ("c", "p", "o"))


def test_old_dataset_keeps_random_windows_and_is_reprepared_for_documents(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("ROMEO:\nHello there.\n\nJULIET:\nGood night, good night.\n\n" * 50)
    spec = DataSpec(name="old", root=str(tmp_path), path=str(src))
    out = prepare_dataset(spec, **QUIET)
    before = (out / "train.bin").read_bytes()
    # as a dataset prepared before document indexes existed
    for s in ("train", "val"):
        (out / f"{s}_docs.bin").unlink()
    meta = load_meta(out)
    del meta["documents"]
    (out / "meta.json").write_text(json.dumps(meta))
    assert is_prepared(spec) and not is_prepared(spec, documents=True)
    dm = GPTDataModule(out, block_size=16, batch_size=2, batching="packed")
    with pytest.raises(DataError, match="Prepare it again"):
        dm.setup()
    ensure_prepared(spec, documents=True, **QUIET)
    assert is_prepared(spec, documents=True) and (out / "train.bin").read_bytes() == before
    assert load_meta(out)["documents"]["train"] == 90  # the first 90% of the 100 speeches


# --------------------------------------------------------------------------- batches


def test_packed_rows(data_root):
    d = data_root / "shakespeare_char"
    meta = load_meta(d)
    offsets = open_documents(d, "train", meta)
    b = PackedRows(d / "train.bin", "uint16", offsets, block_size=64, batch_size=16, seed=0).sample()
    x, y, pos, doc = b["x"], b["y"], b["pos"], b["doc"]
    assert x.shape == y.shape == pos.shape == doc.shape == (16, 64)
    assert (pos[:, 0] == 0).all() and (doc[:, 0] == 0).all()  # every row starts at a document
    new_doc = doc[:, 1:] != doc[:, :-1]
    assert torch.equal(pos[:, 1:] == 0, new_doc)  # positions restart exactly where a document does
    # the target is the next token, except at a document's last token
    assert torch.equal(y[:, :-1][~new_doc], x[:, 1:][~new_doc]) and (y[:, :-1][new_doc] == IGNORE).all()
    assert b["real"] == int((y != IGNORE).sum()) and new_doc.any()
    # the vectorised mask equals the definition, spelled out
    m = document_mask(doc)
    assert m.shape == (16, 1, 64, 64)
    r = 0
    naive = torch.tensor([[bool(doc[r, s] == doc[r, t] and s <= t) for s in range(64)] for t in range(64)])
    assert torch.equal(m[r, 0], naive)


def test_packed_document_computed_as_if_alone(data_root):
    d = data_root / "shakespeare_char"
    offsets = open_documents(d, "train", load_meta(d))
    sampler = PackedRows(d / "train.bin", "uint16", offsets, block_size=64, batch_size=32, seed=3)
    b = sampler.sample()
    row = int(torch.argmax(b["doc"][:, -1]))  # a row holding several documents
    doc = b["doc"][row]
    assert doc[-1] >= 1
    model = tiny_model()
    x, y, kw = unpack_batch({k: (v[row : row + 1] if torch.is_tensor(v) else v) for k, v in b.items()})
    with torch.no_grad():
        logits, _ = model(x, y, **kw)
        first = doc == 0
        # changing every other document of the row leaves the first one's logits as they were
        x2 = torch.where(first, x, (x + 11) % 65)
        logits2, _ = model(x2, y, **kw)
        assert torch.allclose(logits[0, first], logits2[0, first], atol=1e-5)
        # each document's logits equal those of the document run alone, at positions 0, 1, 2, ...
        second = doc == 1
        alone, _ = model(x[:, second], x[:, second])
        assert torch.allclose(logits[0, second], alone[0], atol=1e-5)
        # (without the mask and the positions the second document does see the first)
        plain, _ = model(x, y)
        assert not torch.allclose(plain[0, second], alone[0], atol=1e-3)


def test_padded_loss_equals_each_document_alone(data_root):
    d = data_root / "shakespeare_char"
    offsets = open_documents(d, "train", load_meta(d))
    sampler = PaddedBatches(d / "train.bin", "uint16", offsets, block_size=64, batch_size=8, seed=1, bucket_batches=1)
    b = sampler.sample()
    n = (b["y"] != IGNORE).sum(1)
    assert n.min() < n.max() == b["x"].shape[1]  # rows of different lengths, padded to the longest
    assert b["real"] == int(n.sum())
    model = tiny_model()
    with torch.no_grad():
        x, y, kw = unpack_batch(b)
        logits, loss = model(x, y, **kw)
        # every document run alone, unpadded; the padded batch's loss is the mean over all their tokens
        token_losses = [
            F.cross_entropy(model(x[i : i + 1, :k], y[i : i + 1, :k])[0][0], y[i, :k], reduction="sum")
            for i, k in enumerate(n.tolist())
        ]
        assert loss.item() == pytest.approx(sum(t.item() for t in token_losses) / n.sum().item(), rel=1e-5)
        # whatever the padding holds, the real tokens' logits do not change: it is masked
        pad = y == IGNORE
        logits2, loss2 = model(torch.where(pad, torch.randint(0, 65, x.shape), x), y, **kw)
        assert torch.allclose(logits[~pad], logits2[~pad], atol=1e-5) and loss2.item() == pytest.approx(
            loss.item(), rel=1e-6
        )


def test_bucketing_reduces_padding_on_shakespeare_speeches(data_root):
    s = document_stats(
        data_root / "shakespeare_char", block_size=256, batch_size=64, bucket_batches=16, seed=0, n_batches=64
    )
    eff = s["efficiency"]
    # measured: real tokens fill ~45% of a random batch of speeches, ~94% of a bucketed one
    assert eff["padded, no bucketing"] < 0.6 and eff["padded, bucket_batches=16"] > 0.85
    assert eff["packed"] > 0.95 and s["documents"] == 6283


def test_padded_sampler_state_resumes_the_same_batches(data_root):
    d = data_root / "shakespeare_char"
    a = GPTDataModule(d, block_size=32, batch_size=4, seed=5, batching="padded", bucket_batches=4)
    a.setup()
    drawn = [a._train.sample()["x"] for _ in range(6)]  # part-way through a pool
    # saved as before the latest batch (Lightning has drawn it ahead of the step it trains)
    state = a.state_dict()
    expected = [drawn[-1]] + [a._train.sample()["x"] for _ in range(4)]
    b = GPTDataModule(d, block_size=32, batch_size=4, seed=99, batching="padded", bucket_batches=4)
    b.setup()
    b.load_state_dict(state)
    assert all(torch.equal(e, b._train.sample()["x"]) for e in expected)


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("batching", ["packed", "padded"])
def test_short_training_run(batching, compose, tmp_path, caplog, tb_events):
    cfg = compose(f"data.batching={batching}", "max_iters=20", "eval_interval=10", "learning_rate=1e-2")
    with caplog.at_level("INFO", logger="gptlab"):
        metrics = train(cfg, tmp_path)
    assert metrics["iters"] == 20 and metrics["evals"][-1]["val_loss"] < metrics["evals"][0]["val_loss"]
    assert 0.5 < metrics["padding_efficiency"] <= 1.0 and metrics["tokens_per_s"] > 0
    assert f"batching: {batching}" in caplog.text and "padding efficiency" in caplog.text
    assert list(tb_events(tmp_path).scalars("perf/padding_efficiency")) == [5, 10, 15, 20]


def test_bad_batching_settings(compose):
    with pytest.raises(ConfigError, match="data.batching must be one of random, packed, padded"):
        validate(compose("data.batching=pack"))
    with pytest.raises(ConfigError, match="data.bucket_batches must be an integer >= 1"):
        validate(compose("data.bucket_batches=0"))
    with pytest.raises(ConfigError, match="data.documents must be one of blank_lines, files, eot"):
        validate(compose("data.documents=lines"))


def test_docstats_command(data_root, capsys):
    docstats_main([f"data.root={data_root}", "block_size=256", "batch_size=64", "profile=none"])
    out = capsys.readouterr().out
    assert (
        "6,283 documents (blank_lines)" in out and "padded, bucket_batches=16" in out and "padded, no bucketing" in out
    )


def test_padded_run_resumes_exactly(compose, tmp_path, tb_events):
    # the padded sampler's state includes the batches of its current pool not served yet
    args = ["data.batching=padded", "data.bucket_batches=4", "eval_interval=6", "log_interval=1", "lr_decay_iters=12"]
    train(compose(*args, "max_iters=12"), tmp_path / "straight")
    train(compose(*args, "max_iters=6"), tmp_path / "resumed")
    train(compose(*args, "max_iters=12", "init_from=resume"), tmp_path / "resumed")
    want, got = (tb_events(tmp_path / run).scalars("train/batch_loss") for run in ("straight", "resumed"))
    assert sorted(got) == list(range(1, 13))
    assert [got[s] for s in range(7, 13)] == pytest.approx([want[s] for s in range(7, 13)], abs=1e-6)
