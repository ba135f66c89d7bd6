"""The LightningModule: loss, the optimizer (AdamW, or Muon + AdamW), the LR schedule, evaluation.

The training loop itself (accumulation, clipping, precision, devices) is Lightning's Trainer;
this class only says what one step computes.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from typing import Any

import lightning as L
import torch

from gptlab.data.augment import TokenMasking, corrupt_inputs
from gptlab.data.packing import IGNORE, unpack_batch
from gptlab.model import GPT, GPTConfig
from gptlab.training.compiling import compile_model
from gptlab.training.loggers import log_metrics
from gptlab.training.optimizers import build_optimizer
from gptlab.training.scalars import ScalarSeries
from gptlab.training.schedule import OptimConfig


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
        augment: TokenMasking | None = None,
        compile_backend: str = "inductor",
        compile_mode: str = "default",
    ):
        super().__init__()
        self.model = GPT(model_config)
        self.optim = optim
        self.compile_model = compile
        self.compile_backend = compile_backend
        self.compile_mode = compile_mode
        # plain values stored in every checkpoint (run settings, tokenizer) so tools need no config
        self.extra = dict(extra or {})
        self.augment = augment  # token masking of training inputs (gptlab.augment), or None
        # training loss summed on the device between log points: no host sync per step
        self._train_loss_sum: torch.Tensor | None = None
        self._train_loss_count = 0
        self._eval_sums: dict[int, list] = {}
        self.last_eval: dict[str, float] = {}
        # gradient norms of the optimizer steps since the last read, on the device (see pop_grad_stats)
        self._grad_norms = ScalarSeries()
        self.keep_grad_norms = False  # set by the callback that reads them (GradientMonitor)
        self._clip_val = 0.0
        self.last_grad_norm: torch.Tensor | None = None

    # ------------------------------------------------------------------ model

    def configure_model(self) -> None:
        if self.compile_model and "_compiled" not in self.__dict__:
            # kept out of the module tree so state_dict keys stay free of '_orig_mod.'; compile_model
            # resets dynamo first, so a sweep's earlier jobs cannot use up this run's recompile limit
            self.__dict__["_compiled"] = compile_model(self.model, self.compile_backend, self.compile_mode)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, **kw):
        fn = self.__dict__.get("_compiled")
        if fn is None:
            return self.model(idx, targets, **kw)
        # merged evaluation batches (eval_merge) are larger than training's: each keeps its batch size as a
        # constant of its own graph, rather than dynamo making the training graph's batch size symbolic
        for t in (idx, targets):
            if t is not None:
                torch._dynamo.mark_static(t, 0)
        return fn(idx, targets, **kw)

    # ------------------------------------------------------------------ training

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor] | dict, batch_idx: int) -> torch.Tensor:
        x, y, kw = unpack_batch(batch)
        _, loss = self(x, y, **kw)
        d = loss.detach()
        # a copy, not the loss itself: under CUDA graphs (compile_mode=reduce-overhead) the next step
        # writes its loss into the same memory
        self._train_loss_sum = d.clone() if self._train_loss_sum is None else self._train_loss_sum + d
        self._train_loss_count += 1
        return loss  # Lightning divides it by gradient_accumulation_steps before backward

    def pop_train_loss(self) -> torch.Tensor | None:
        """Mean training loss since the last call, as a device tensor (reading it syncs)."""
        if self._train_loss_sum is None:
            return None
        mean = self._train_loss_sum / self._train_loss_count
        self._train_loss_sum, self._train_loss_count = None, 0
        return mean

    # ------------------------------------------------------------------ gradients

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Called by Lightning once per optimizer step, after backward (and after unscaling under
        float16). The total gradient norm is computed once here and serves both clipping and
        monitoring -- Lightning's own clipping would compute it a second time."""
        params = [p for p in self.parameters() if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0, foreach=True)
        clip = float(gradient_clip_val or 0.0)
        if clip > 0:
            # takes the parameters (it scales their .grad), and the norm computed above
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm, foreach=True)
        self.last_grad_norm = norm.detach()
        self._clip_val = clip
        if self.keep_grad_norms:
            # kept on the device, nothing read back; pop_grad_stats reduces them in one go
            # (GradientMonitor, every log_interval)
            self._grad_norms.append(self.last_grad_norm)

    def pop_grad_stats(self) -> dict[str, float] | None:
        """Gradient-norm statistics since the last call: last, mean and max norm, and the share
        of optimizer steps that were clipped. Reading them is one host sync."""
        if not len(self._grad_norms):
            return None
        n = self._grad_norms.values()
        finite = torch.isfinite(n)
        # a non-finite norm is a step float16's grad scaler skips (or divergence, which the
        # NonFiniteGuard reports); keep it out of the mean and max
        fn = torch.where(finite, n, torch.zeros_like(n))
        clipped = (fn > self._clip_val).sum() if self._clip_val > 0 else torch.zeros_like(fn[0])
        last, total, mx, n_clipped, nonfinite = torch.stack(
            [n[-1], fn.sum(), fn.max(), clipped.float(), (~finite).sum().float()]
        ).tolist()
        steps = float(len(n))
        self._grad_norms.clear()
        finite_steps = max(steps - nonfinite, 1.0)
        return {
            "last": last,
            "mean": total / finite_steps,
            "max": mx,
            "clipped": n_clipped,
            "clipped_frac": n_clipped / steps,
            "nonfinite": nonfinite,
            "steps": steps,
        }

    # ------------------------------------------------------------------ augmentation

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # token masking: training batches only, already on the device; evaluation sees clean inputs
        if self.augment is not None and self.trainer.training:
            batch = corrupt_inputs(batch, self.augment, self.global_rank)
        return batch

    # ------------------------------------------------------------------ evaluation

    def on_validation_epoch_start(self) -> None:
        self._eval_sums = {}

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y, kw = unpack_batch(batch)
        merged = batch.get("batches", 1) if isinstance(batch, dict) else 1
        if merged == 1:
            _, loss = self(x, y, **kw)
            total = loss.detach().float()
        else:
            # k batches in one forward (MergedBatches): each batch's mean over its own counted
            # targets, as its forward alone would give, so ignored (padding) targets weigh as before
            _, per_target = self(x, y, reduction="none", **kw)
            sums = per_target.detach().float().view(merged, -1).sum(1)
            counts = (y != IGNORE).view(merged, -1).sum(1)
            total = (sums / counts).sum()
        # kept on the device: the only host read is the mean at the evaluation's end
        s = self._eval_sums.setdefault(dataloader_idx, [torch.zeros((), device=x.device), 0])
        s[0] += total
        s[1] += merged

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
            split: float(metrics[name])
            for name, split in (("train/loss", "train"), ("val/loss", "val"))
            if name in metrics
        }
        if not self.trainer.sanity_checking:
            log_metrics(self.trainer, {f"{k}/loss": v for k, v in self.last_eval.items()}, step=self.global_step)

    # ------------------------------------------------------------------ optimizer

    def configure_optimizers(self):
        # AdamW, or Muon + AdamW joined into one optimizer (optimizers.py)
        opt = build_optimizer(self.model, self.optim, on_cuda=self.device.type == "cuda")
        # each parameter group's own peak rate times the schedule's factor: Muon's follows the same curve
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
        if self._train_loss_sum is not None:
            # the loss mean in progress (steps since the last progress line): after a resume the
            # next line averages the same steps as it would have without the stop
            checkpoint["train_loss_pending"] = [self._train_loss_sum.detach().float().cpu(), self._train_loss_count]
        if self.augment is not None:
            checkpoint["augment"] = self.augment.state_dict()  # the masking RNG, for an exact resume

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pending = checkpoint.get("train_loss_pending")
        if pending:
            self._train_loss_sum, self._train_loss_count = pending[0], int(pending[1])
        if self.augment is not None and "augment" in checkpoint:
            self.augment.load_state_dict(checkpoint["augment"])
