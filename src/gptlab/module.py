"""The LightningModule: loss, AdamW with its parameter groups, the LR schedule, evaluation.

The training loop itself (accumulation, clipping, precision, devices) is Lightning's Trainer;
this class only says what one step computes.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from typing import Any

import lightning as L
import torch

from gptlab.model import GPT, GPTConfig
from gptlab.packing import unpack_batch
from gptlab.schedule import OptimConfig


def _lr_factor(step: int, optim: OptimConfig) -> float:
    # LambdaLR multiplies the base rate (learning_rate) by this factor
    return optim.lr_at(step) / optim.learning_rate


class GPTModule(L.LightningModule):
    def __init__(
        self,
        model_config: GPTConfig,
        optim: OptimConfig,
        compile: bool = False,
        extra: dict | None = None,
    ):
        super().__init__()
        self.model = GPT(model_config)
        self.optim = optim
        self.compile_model = compile
        # plain values stored in every checkpoint (run settings, tokenizer) so tools need no config
        self.extra = dict(extra or {})
        # training loss summed on the device between log points: no host sync per step
        self._train_loss_sum: torch.Tensor | None = None
        self._train_loss_count = 0
        self._eval_sums: dict[int, list] = {}
        self.last_eval: dict[str, float] = {}

    # ------------------------------------------------------------------ model

    def configure_model(self) -> None:
        if self.compile_model and "_compiled" not in self.__dict__:
            # kept out of the module tree so state_dict keys stay free of '_orig_mod.'
            self.__dict__["_compiled"] = torch.compile(self.model)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, **kw):
        fn = self.__dict__.get("_compiled", self.model)
        return fn(idx, targets, **kw)

    # ------------------------------------------------------------------ training

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor] | dict, batch_idx: int) -> torch.Tensor:
        x, y, kw = unpack_batch(batch)
        _, loss = self(x, y, **kw)
        d = loss.detach()
        self._train_loss_sum = d if self._train_loss_sum is None else self._train_loss_sum + d
        self._train_loss_count += 1
        return loss  # Lightning divides it by gradient_accumulation_steps before backward

    def pop_train_loss(self) -> torch.Tensor | None:
        """Mean training loss since the last call, as a device tensor (reading it syncs)."""
        if self._train_loss_sum is None:
            return None
        mean = self._train_loss_sum / self._train_loss_count
        self._train_loss_sum, self._train_loss_count = None, 0
        return mean

    # ------------------------------------------------------------------ evaluation

    def on_validation_epoch_start(self) -> None:
        self._eval_sums = {}

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y, kw = unpack_batch(batch)
        _, loss = self(x, y, **kw)
        s = self._eval_sums.setdefault(dataloader_idx, [torch.zeros((), device=loss.device), 0])
        s[0] += loss.detach().float()
        s[1] += 1

    def on_validation_epoch_end(self) -> None:
        # dataloader 0 samples the train split, 1 the val split (see GPTDataModule)
        names = {0: "train/loss", 1: "val/loss"}
        for idx, (total, count) in self._eval_sums.items():
            # sync_dist: under DDP every rank evaluated its own batches; report their mean.
            # logger=False: Lightning would stamp these with the micro-batch counter (one less than
            # the optimizer step here); they are written below at the optimizer step instead.
            self.log(names[idx], total / count, sync_dist=True, prog_bar=False, logger=False)
        metrics = self.trainer.callback_metrics
        self.last_eval = {
            split: float(metrics[name]) for name, split in (("train/loss", "train"), ("val/loss", "val")) if name in metrics
        }
        if self.logger is not None and not self.trainer.sanity_checking:
            self.logger.log_metrics({f"{k}/loss": v for k, v in self.last_eval.items()}, step=self.global_step)

    # ------------------------------------------------------------------ optimizer

    def configure_optimizers(self):
        groups = self.model.optimizer_groups(self.optim.weight_decay)
        on_cuda = self.device.type == "cuda"
        # fused kernels on CUDA; elsewhere foreach (one batched kernel per group, not a loop per tensor)
        opt = torch.optim.AdamW(
            groups,
            lr=self.optim.learning_rate,
            betas=(self.optim.beta1, self.optim.beta2),
            fused=True if on_cuda else None,
            foreach=None if on_cuda else True,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(_lr_factor, optim=self.optim))
        # interval="step": the rate changes per optimizer step, not per micro-batch or epoch
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gptlab"] = {
            "model_config": self.model.config.to_dict(),
            "optim": asdict(self.optim),
            "step": int(self.global_step),
            "eval": dict(self.last_eval),
            **self.extra,
        }
