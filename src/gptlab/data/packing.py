"""Document-aware batches for corpora of separate documents: packed rows and padded batches.

Both read a prepared split and its document index (``gptlab.data.open_documents``) and yield
dict batches instead of nanoGPT's (X, Y) tuples:

    x     (B, T) input ids
    y     (B, T) next-token targets; IGNORE where nothing is to be predicted (padding, and a
          document's last token, whose next token belongs to another document)
    pos   (B, T) each token's position inside its document: 0 at every document start
    doc   (B, T) packed rows only: which document each token belongs to (for ``document_mask``)
    real  int, how many targets count in the loss; real / (B * T) is the padding efficiency

A document keeps its own end marker (the blank line after a speech, the EOT token) as its last
token, so the model learns to end a document; that token's target would be the next document's
first token, which a document cannot know, so it is ignored. Documents longer than block_size + 1
tokens are truncated in both modes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from gptlab.data.dataset import DataError

IGNORE = -100  # F.cross_entropy's default ignore_index: these targets add nothing to the loss
BATCHING = ("random", "packed", "padded")  # data.batching: nanoGPT's windows, or one of the two here


def document_mask(doc: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, 1, T, T) boolean attention mask, True where query t may attend
    key s: s is in t's document and not after it (block-diagonal causal). Built on the batch's
    device in one broadcast, not a (T, T) loop per row."""
    T = doc.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=doc.device).tril()
    same_doc = doc[:, :, None] == doc[:, None, :]
    return (same_doc & causal)[:, None]


def unpack_batch(batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(x, y, keywords for GPT.forward) from a random-window (X, Y) tuple or a dict batch."""
    if not isinstance(batch, dict):
        x, y = batch
        return x, y, {}
    kw = {"pos": batch["pos"]} if "pos" in batch else {}  # merged random windows (merge_batches) have none
    if "doc" in batch:  # packed rows: attention stays inside each document
        kw["attn_mask"] = document_mask(batch["doc"])
    return batch["x"], batch["y"], kw


def merge_batches(batches: list) -> dict:
    """Several batches as one dict batch for a single forward pass; "batches" says how many, so the
    loss can still be averaged per original batch. Rows keep their order. Padded batches of different
    lengths are padded on the right to the longest (inputs 0, targets IGNORE, positions 0): the causal
    mask hides that padding from every real token, as it hides a batch's own."""
    if not isinstance(batches[0], dict):
        x, y = zip(*batches)
        return {"x": torch.cat(x), "y": torch.cat(y), "batches": len(batches)}
    T = max(b["x"].size(1) for b in batches)
    fill = {"x": 0, "y": IGNORE, "pos": 0}
    out = {}
    for key in batches[0]:
        if key == "real":
            out[key] = sum(b[key] for b in batches)
        elif key == "doc" and any(b[key].size(1) != T for b in batches):
            raise ValueError("packed rows all have block_size tokens; rows of different lengths cannot be merged")
        else:
            out[key] = torch.cat([F.pad(b[key], (0, T - b[key].size(1)), value=fill.get(key, 0)) for b in batches])
    out["batches"] = len(batches)
    return out


class _DocumentBatches(IterableDataset):
    """What both samplers share: the split on disk, its document offsets, a seeded generator."""

    def __init__(self, path: Path, dtype: str, offsets: np.ndarray, block_size: int, batch_size: int, seed):
        super().__init__()
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.block_size, self.batch_size = block_size, batch_size
        self.rng = np.random.default_rng(seed)
        self.state_before_draw: dict | None = None  # the state before the latest batch (see GPTDataModule)

    def _tokens(self) -> np.memmap:
        # a fresh memmap per batch, as RandomWindows (pages read through a long-lived map stay
        # counted in the process's memory)
        return np.memmap(self.path, dtype=self.dtype, mode="r")

    def __iter__(self):
        while True:
            yield self.sample()

    def sample(self) -> dict:
        self.state_before_draw = self.state_dict()
        return self.draw()

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


class PackedRows(_DocumentBatches):
    """Rows of exactly block_size tokens (+1 for the targets), filled with whole documents.

    Each row starts at a random document and runs on through the documents after it; the last
    one is cut at the row's end (its start is still seen with full context). ``doc`` lets
    ``document_mask`` keep attention inside each document, and ``pos`` restarts at each one, so
    every token is computed exactly as if its document were alone in the row.
    """

    def __init__(self, path, dtype, offsets, block_size, batch_size, seed):
        super().__init__(path, dtype, offsets, block_size, batch_size, seed)
        n = int(self.offsets[-1])
        # rows start only where a whole row fits before the split ends
        self.row_starts = self.offsets[:-1][self.offsets[:-1] <= n - block_size - 1]
        if len(self.row_starts) == 0:
            raise DataError(
                f"{self.path}: no document starts {block_size + 1} tokens before the end of the split"
                "; use a smaller block_size"
            )
        self._span = np.arange(block_size + 1)

    def draw(self) -> dict:
        first = self.row_starts[self.rng.integers(0, len(self.row_starts), size=self.batch_size)]
        p = first[:, None] + self._span  # (B, T + 1) token offsets into the split
        doc = np.searchsorted(self.offsets, p, side="right") - 1  # document of every token
        w = self._tokens()[p].astype(np.int64)
        y = w[:, 1:].copy()
        ends = doc[:, 1:] != doc[:, :-1]  # the target would be the next document's first token
        y[ends] = IGNORE
        pos = p[:, :-1] - self.offsets[doc[:, :-1]]
        return {
            "x": torch.from_numpy(w[:, :-1]),
            "y": torch.from_numpy(y),
            "pos": torch.from_numpy(pos),
            "doc": torch.from_numpy(doc[:, :-1] - doc[:, :1]),  # 0, 1, 2, ... within each row
            "real": int(ends.size - ends.sum()),
        }


class PaddedBatches(_DocumentBatches):
    """One whole document per row (truncated at block_size), right-padded to the longest row of
    the batch, with length bucketing.

    Bucketing: draw bucket_batches * batch_size documents at random, sort them by length, cut the
    sorted pool into batches and serve those in random order. Rows of one batch then have similar
    lengths, so little of each batch is padding; bucket_batches=1 is plain random batching.

    Padding comes after each document, so the causal mask already hides it from every real token:
    no (B, 1, T, T) mask is needed and the fused causal attention kernel stays in use. The padded
    positions' targets are IGNORE, so they are left out of the loss.
    """

    def __init__(self, path, dtype, offsets, block_size, batch_size, seed, bucket_batches: int = 16):
        super().__init__(path, dtype, offsets, block_size, batch_size, seed)
        self.bucket_batches = int(bucket_batches)
        lengths = np.diff(self.offsets)
        self.docs = np.flatnonzero(lengths >= 2)  # a one-token document has nothing to predict
        if len(self.docs) == 0:
            raise DataError(f"{self.path}: no document has two tokens or more; nothing to train on in padded batches")
        self.pairs = np.minimum(lengths[self.docs] - 1, block_size)  # (x, y) pairs per document
        self.pending: list[list[int]] = []  # batches of the current pool not served yet

    def _refill(self) -> None:
        pool = self.rng.integers(0, len(self.docs), size=self.bucket_batches * self.batch_size)
        pool = pool[np.argsort(self.pairs[pool], kind="stable")]
        batches = pool.reshape(self.bucket_batches, self.batch_size)
        self.pending = [batches[i].tolist() for i in self.rng.permutation(self.bucket_batches)]

    def draw(self) -> dict:
        if not self.pending:
            self._refill()
        return self.batch(np.array(self.pending.pop()))

    def batch(self, pick: np.ndarray) -> dict:
        """The padded batch of documents self.docs[pick]."""
        n = self.pairs[pick]
        T = int(n.max())
        t = np.arange(T + 1)
        inside = t <= n[:, None]  # (B, T + 1): tokens of the document that this row uses
        p = np.where(inside, self.offsets[self.docs[pick]][:, None] + t, 0)
        w = self._tokens()[p].astype(np.int64)
        real = inside[:, 1:]  # position t is real when its target t + 1 is inside the document
        return {
            "x": torch.from_numpy(np.where(real, w[:, :-1], 0)),
            "y": torch.from_numpy(np.where(real, w[:, 1:], IGNORE)),
            "pos": torch.from_numpy(np.where(real, t[:-1], 0)),
            "real": int(n.sum()),
        }

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pending": [list(b) for b in self.pending]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pending = [list(b) for b in state.get("pending", [])]


def padding_efficiency(batches) -> float:
    """Real tokens / slots over a sequence of batches (dicts from these samplers)."""
    real = slots = 0
    for b in batches:
        real += b["real"]
        slots += b["x"].numel()
    return real / slots
