"""Batches for training: random (X, Y) windows read through ``np.memmap`` from a prepared
dataset, so a dataset larger than memory trains the same way, wrapped in a LightningDataModule.
With batching=packed or padded the batches come from ``gptlab.packing`` instead."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from gptlab.data.dataset import DataError, load_meta, open_documents, open_tokens
from gptlab.data.packing import BATCHING, PackedRows, PaddedBatches, merge_batches
from gptlab.data.tokenizer import tokenizer_from_meta


class RandomWindows(IterableDataset):
    """Endless batches of random windows, as nanoGPT's get_batch: X = w[:-1], Y = w[1:] for
    windows w of block_size + 1 consecutive tokens starting at uniformly random offsets.

    Yields whole (X, Y) batches (the DataLoader runs with batch_size=None), gathered in one
    vectorised read from the memmap rather than a Python loop per row.
    """

    def __init__(self, path: Path, dtype: str, block_size: int, batch_size: int, seed: int, group: int = 1):
        super().__init__()
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.block_size, self.batch_size = block_size, batch_size
        # the offsets of `group` batches (one optimizer step's micro-batches) are drawn at once, so
        # that 16 x 4 accumulation sees exactly the 64 windows that a batch of 64 would
        self.group = max(1, int(group))
        self.rng = np.random.default_rng(seed)
        self.state_before_draw: dict | None = None  # the rng state before the latest draw
        self._starts: list[np.ndarray] = []  # offsets drawn for the rest of the current group
        self._offsets = np.arange(block_size + 1)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        # a fresh memmap per batch: pages read through a long-lived map stay counted in the
        # process's memory, which then looks like a leak over a long run (nanoGPT does the same)
        data = np.memmap(self.path, dtype=self.dtype, mode="r")
        if not self._starts:
            self.state_before_draw = self.rng.bit_generator.state
            starts = self.rng.integers(0, len(data) - self.block_size, size=self.batch_size * self.group)
            self._starts = list(starts.reshape(self.group, self.batch_size))
        starts = self._starts.pop(0)
        w = torch.from_numpy(data[starts[:, None] + self._offsets].astype(np.int64))
        return w[:, :-1], w[:, 1:]

    def __iter__(self):
        while True:
            yield self.sample()

    def state_dict(self) -> dict:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict) -> None:
        # checkpoints are taken between optimizer steps, where a group starts: draw it afresh
        self.rng.bit_generator.state = state
        self._starts = []


# eval_merge=auto: a merged evaluation forward holds at most this many tokens, and logits (tokens x
# vocabulary): about 0.5 GB of float32 logits and a few hundred MB of activations (no gradients are kept),
# well within what training the same model needs; GPT-2's vocabulary at block 1024 gets no merging
EVAL_MERGE_TOKENS = 2**17
EVAL_MERGE_LOGITS = 2**27


def auto_eval_merge(eval_iters: int, rows: int, block_size: int, vocab_size: int, on_gpu: bool = True) -> int:
    """eval_merge=auto: on a GPU the largest divisor k of eval_iters whose k batches of rows x block_size
    tokens stay within the budgets above. A divisor, so that every forward has the same shape
    (a compiled model then needs one evaluation graph). On a CPU 1: the forward itself is most of
    an evaluation there, and a larger one runs slower once its activations leave the caches
    (docs/performance.md, Evaluation)."""
    if not on_gpu:
        return 1
    tokens = rows * block_size
    most = max(1, min(EVAL_MERGE_TOKENS // tokens, EVAL_MERGE_LOGITS // (tokens * vocab_size)))
    return max(k for k in range(1, min(most, eval_iters) + 1) if eval_iters % k == 0)


class MergedBatches(IterableDataset):
    """One evaluation's `total` batches of a sampler, served `merge` at a time as one batch
    (packing.merge_batches): the sampler draws exactly the batches it draws unmerged, in the same
    order, so the windows are the same; the iterator ends after `total` batches, which is what
    ends the evaluation. merge=1 serves the sampler's own batches."""

    def __init__(self, sampler, total: int, merge: int):
        super().__init__()
        self.sampler, self.total, self.merge = sampler, int(total), max(1, int(merge))

    def __iter__(self):
        for start in range(0, self.total, self.merge):
            n = min(self.merge, self.total - start)
            if self.merge == 1:
                yield self.sampler.sample()
            else:
                yield merge_batches([self.sampler.sample() for _ in range(n)])


class GPTDataModule(L.LightningDataModule):
    """Train batches from train.bin; for evaluation, eval_iters batches from each of train.bin and
    val.bin (validation dataloader 0 is the train split, 1 the val split). Evaluation batches
    the same way as training: random, packed or padded."""

    SPLITS = ("train", "val")

    def __init__(
        self,
        data_dir: str | Path,
        block_size: int,
        batch_size: int,
        seed: int = 1337,
        batching: str = "random",
        bucket_batches: int = 16,
        accumulation: int = 1,
        eval_batch_size: int | None = None,
        eval_iters: int | None = None,
        eval_merge: int = 1,
    ):
        super().__init__()
        if batching not in BATCHING:
            raise DataError(f"data.batching must be one of {', '.join(BATCHING)}, got '{batching}'")
        self.data_dir = Path(data_dir)
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.batching, self.bucket_batches = batching, bucket_batches
        self.accumulation = accumulation  # micro-batches per optimizer step: random windows are drawn per step
        self.eval_batch_size = eval_batch_size or batch_size
        # batches per split and evaluation, and how many of them one forward pass takes (MergedBatches);
        # without eval_iters the evaluation loaders are endless and unmerged (the Trainer's limit ends them)
        self.eval_iters, self.eval_merge = eval_iters, max(1, int(eval_merge))
        self.meta = load_meta(self.data_dir)
        self.tokenizer = tokenizer_from_meta(self.meta)
        self.pin_memory = False
        self._train: RandomWindows | None = None
        self._eval: list[RandomWindows] | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def split_tokens(self, split: str) -> int:
        return len(open_tokens(self.data_dir, split, self.meta))

    def check_block_size(self) -> None:
        for split in self.SPLITS:
            n = self.split_tokens(split)
            if self.block_size >= n:
                raise DataError(
                    f"block_size={self.block_size} is not shorter than the {split} split ({n:,} tokens): "
                    f"a window needs block_size + 1 tokens. Use block_size<={n - 1} or a longer text."
                )

    def setup(self, stage: str | None = None) -> None:
        self.check_block_size()
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # one independent stream per (rank, role): DDP ranks draw different windows
        seeds = np.random.SeedSequence([self.seed, rank]).spawn(3)
        if self._train is None:
            self._train = self.sampler("train", seeds[0], group=self.accumulation)
            self._eval = [
                self.sampler("train", seeds[1], self.eval_batch_size),
                self.sampler("val", seeds[2], self.eval_batch_size),
            ]
        if self.trainer is not None:
            self.pin_memory = self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"

    def sampler(
        self, split: str, seed, batch_size: int | None = None, group: int = 1
    ) -> RandomWindows | PackedRows | PaddedBatches:
        args = (self.data_dir / f"{split}.bin", self.meta["dtype"])
        batch_size = batch_size or self.batch_size
        if self.batching == "random":
            return RandomWindows(*args, self.block_size, batch_size, seed, group=group)
        offsets = open_documents(self.data_dir, split, self.meta)
        if self.batching == "packed":
            return PackedRows(*args, offsets, self.block_size, batch_size, seed)
        return PaddedBatches(*args, offsets, self.block_size, batch_size, seed, self.bucket_batches)

    def _loader(self, ds: RandomWindows) -> DataLoader:
        # batch_size=None: the dataset already yields whole batches; no workers: sampling is one
        # vectorised read, cheaper than handing tensors across processes
        # its own generator: making an iterator draws a seed from it, and from torch's global RNG
        # (dropout's) otherwise -- a resumed run makes one more iterator than an unbroken one
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=None, num_workers=0, pin_memory=self.pin_memory, generator=gen)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._train)

    def val_dataloader(self) -> list[DataLoader]:
        if self.eval_iters is None:
            return [self._loader(ds) for ds in self._eval]
        return [self._loader(MergedBatches(ds, self.eval_iters, self.eval_merge)) for ds in self._eval]

    def state_dict(self) -> dict:
        # every rank's samplers' RNG positions, so that a resumed run draws on each rank the batches
        # it would have drawn. Lightning saves the state of rank 0's DataModule: under DDP the ranks'
        # states are gathered into it (every rank calls this as it writes a checkpoint)
        if self._train is None:
            return {}
        state = {"ranks": _gather(self._own_state())}
        return state if self.batching == "random" else {**state, "batching": self.batching}

    def _own_state(self) -> dict:
        # Lightning's fetcher draws one batch ahead of the step being trained (it prefetches from
        # loaders without a length), so the train stream is saved as it was before that batch: the
        # resumed run draws it again, as the batch of its first step
        train = self._train.state_before_draw or self._train.state_dict()
        return {"train": train, "eval": [ds.state_dict() for ds in self._eval]}

    def load_state_dict(self, state: dict) -> None:
        # a run resumed with another batching mode starts its new sampler fresh
        if not state or self._train is None or state.get("batching", "random") != self.batching:
            return
        ranks = state.get("ranks") or [state]  # checkpoints from before per-rank states: rank 0's only
        rank = self.trainer.global_rank if self.trainer is not None else 0
        own = ranks[rank] if rank < len(ranks) else ranks[0]
        self._train.load_state_dict(own["train"])
        for ds, s in zip(self._eval, own["eval"]):
            ds.load_state_dict(s)
        if rank >= len(ranks):
            # a rank the checkpoint has no state for (more processes than the run had): it
            # branches a new stream off rank 0's, so that it still draws its own windows
            for ds in (self._train, *self._eval):
                ds.rng = np.random.default_rng([rank, *ds.rng.integers(0, 2**63, size=2).tolist()])
                if isinstance(ds, PaddedBatches):
                    ds.pending = []  # rank 0's queued batches; this rank draws its own


def _gather(state: dict) -> list[dict]:
    """Every process's state, in rank order ([state] without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [state]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, state)
    return out
