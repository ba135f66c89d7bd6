"""gptlab.train.train under DDP, with probes: `python tests/ddp_driver.py RUN_DIR override...`.

Used by tests/test_ddp.py (Lightning starts the other ranks by running this file again). Each
rank writes RUN_DIR/probe_rank<r>.json: the first rows of its first batch, how many gradient
all-reduces DDP made, how many optimizer steps ran, and its final weights' checksum.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from gptlab.cli.common import compose, setup_console_logging
from gptlab.training.run import train


class Probe(L.Callback):
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.allreduces = 0
        self.first_batch = None

    def on_train_start(self, trainer, pl_module):
        def counting_allreduce(state, bucket):
            self.allreduces += 1
            return default_hooks.allreduce_hook(None, bucket)

        if isinstance(trainer.strategy.model, torch.nn.parallel.DistributedDataParallel):
            trainer.strategy.model.register_comm_hook(None, counting_allreduce)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_batch is None:
            self.first_batch = batch[0][:4, :8].tolist()

    def on_train_end(self, trainer, pl_module):
        flat = torch.cat([p.detach().double().flatten() for p in pl_module.parameters()])
        probe = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "first_batch": self.first_batch,
            "allreduces": self.allreduces,
            "optimizer_steps": trainer.global_step,
            "weights": [float(flat.sum()), float(flat.abs().sum()), float(flat[-1])],
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / f"probe_rank{trainer.global_rank}.json").write_text(json.dumps(probe))


if __name__ == "__main__":
    setup_console_logging()
    run_dir = Path(sys.argv[1])
    train(compose("train", sys.argv[2:]), run_dir, callbacks=[Probe(run_dir)])
