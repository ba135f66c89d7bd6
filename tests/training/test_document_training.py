"""Packed and padded batches inside training: the loss GPTModule.training_step hands to backward
is the mean over every document's own tokens, each document computed as if it were alone, so
attention never crosses from one document into the next and positions restart at each one."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from gptlab.data.packing import IGNORE
from gptlab.model import GPT
from gptlab.training.run import train

# short speeches separated by blank lines: a row of 32 tokens holds several documents
SPEECHES = "ROMEO:\nHello there.\n\nJULIET:\nGood night, good night.\n\nNURSE:\nMadam!\n\n" * 40


def loss_of_each_document_alone(model: GPT, batch: dict) -> torch.Tensor:
    """Sum of every real target's loss, each document run alone at positions 0, 1, 2, ...,
    divided by the number of real targets."""
    x, y = batch["x"], batch["y"]
    docs = batch.get("doc", torch.zeros_like(x))  # padded rows hold one document each
    total = torch.zeros((), dtype=torch.float64)
    for r in range(x.size(0)):
        for d in docs[r].unique():
            real = (docs[r] == d) & (y[r] != IGNORE)  # a prefix of the document: it ends at its last target
            if real.any():
                logits, _ = model(x[r, real][None], y[r, real][None])
                total += F.cross_entropy(logits[0], y[r, real], reduction="sum").double()
    return total / int((y != IGNORE).sum())


class FirstStepLoss(L.Callback):
    """The first optimizer step's batch, the loss training_step returned for it, and the same loss
    recomputed document by document with the same weights (before the step changes them)."""

    def __init__(self):
        self.batch, self.loss, self.alone = None, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batch is None:
            self.batch = batch

    def on_before_backward(self, trainer, pl_module, loss):
        if self.loss is None:
            self.loss = float(loss.detach())
            with torch.no_grad():
                self.alone = float(loss_of_each_document_alone(pl_module.model, self.batch))


@pytest.mark.parametrize("batching", ["packed", "padded"])
def test_training_step_computes_each_document_alone(batching, compose, tmp_path):
    text = tmp_path / "speeches.txt"
    text.write_text(SPEECHES)
    cfg = compose(
        "data=text",
        f"data.path={text}",
        f"data.root={tmp_path / 'data'}",
        f"data.batching={batching}",
        "data.bucket_batches=1",  # padded: no sorting by length, so rows of different lengths meet
        "max_iters=2",
        "eval_interval=2",
        "eval_iters=1",
    )
    probe = FirstStepLoss()
    train(cfg, tmp_path / "run", callbacks=[probe])
    b = probe.batch
    if batching == "packed":
        assert (b["doc"][:, -1] > 0).any()  # rows holding more than one document
        assert (b["pos"] == 0).sum() > b["x"].size(0)  # and positions restart inside rows
    else:
        real = (b["y"] != IGNORE).sum(1)
        assert real.min() < real.max()  # rows of different lengths: the shorter ones padded
    assert probe.loss == pytest.approx(probe.alone, rel=1e-5)
