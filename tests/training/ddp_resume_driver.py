"""gptlab's train() under DDP, recording what every rank trains on:
`python tests/training/ddp_resume_driver.py RUN_DIR override...`.

Used by test_ddp_resume.py (Lightning starts the other ranks by running this file again). Each
rank writes RUN_DIR/batches_rank<r>.json: for every training micro-batch, the optimizer step it
belongs to and a digest of its tokens, and its final weights' checksum. Rank 0 copies last.ckpt
to step3.ckpt once step 3's checkpoint is written (a run stopped there, for the resume to start from).
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import lightning as L
import torch

from gptlab.cli.common import compose
from gptlab.training.run import train


class Batches(L.Callback):
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.seen: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 3 and trainer.is_global_zero and not (self.run_dir / "step3.ckpt").exists():
            shutil.copy(self.run_dir / "last.ckpt", self.run_dir / "step3.ckpt")
        digest = hashlib.sha1(batch[0].cpu().numpy().tobytes()).hexdigest()[:16]
        self.seen.append([trainer.global_step, batch_idx, digest])

    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().double().flatten() for p in pl_module.parameters()])
        out = {"batches": self.seen, "weights": [float(flat.sum()), float(flat.abs().sum())]}
        (self.run_dir / f"batches_rank{trainer.global_rank}.json").write_text(json.dumps(out))


if __name__ == "__main__":
    run_dir = Path(sys.argv[1])
    train(compose("train", sys.argv[2:]), run_dir, callbacks=[Batches(run_dir)])
