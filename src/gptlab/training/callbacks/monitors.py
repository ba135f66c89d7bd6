"""Debugging checks from the guide, as Lightning callbacks that run by default where cheap:
gradient-norm monitoring, per-layer gradient visualisation, the initial-loss check and a
plateau hint. Each reads the device only at its interval."""

from __future__ import annotations

import logging
import math

import lightning as L
import torch

from gptlab.analysis import diagnose
from gptlab.training.loggers import log_histogram, log_metrics, takes_histograms

log = logging.getLogger("gptlab")


# ---------------------------------------------------------------------- layer groups


def layer_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """GPT parameters grouped as a person reads the model: token embedding (which is also the
    output head, the weights are tied), position embedding, each block's attention, MLP and
    layer norms, the final layer norm. Order follows the forward pass."""
    groups: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():  # tied weights appear once
        parts = name.split(".")
        if parts[0] == "transformer" and parts[1] == "h":
            i, sub = parts[2], parts[3]
            key = f"h{i}.ln" if sub.startswith("ln") else f"h{i}.{sub}"
        elif parts[0] == "transformer":
            key = {"wte": "wte/head", "wpe": "wpe", "ln_f": "ln_f"}.get(parts[1], parts[1])
        else:
            key = parts[0]  # lm_head when untied
        groups.setdefault(key, []).append(p)
    return groups


# ---------------------------------------------------------------------- callbacks


class GradientMonitor(L.Callback):
    """Every log_interval steps: total gradient norm before clipping (last, mean, max since the
    previous line), the share of steps that were clipped, and a warning when the norm exceeds
    `warn_above` (the guide's threshold is 10). The norm itself is computed once per step by
    GPTModule.configure_gradient_clipping and stays on the device until read here."""

    def __init__(self, log_interval: int, warn_above: float, grad_clip: float):
        self.log_interval = max(1, int(log_interval))
        self.warn_above = float(warn_above or 0.0)
        self.grad_clip = float(grad_clip or 0.0)
        self.latest: dict | None = None
        self.total_steps = 0.0
        self.total_clipped = 0.0
        self.warnings = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.keep_grad_norms = True  # the module collects each step's norm for this callback

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0 or trainer.global_step % self.log_interval != 0:
            return
        st = pl_module.pop_grad_stats()
        if st is None:
            return
        self.latest = st
        self.total_steps += st["steps"]
        self.total_clipped += st["clipped"]
        log_metrics(
            trainer,
            {
                "train/grad_norm": st["last"],
                "grad/norm_mean": st["mean"],
                "grad/norm_max": st["max"],
                "grad/clipped_frac": st["clipped_frac"],
            },
            step=trainer.global_step,
        )
        if self.warn_above > 0 and st["max"] > self.warn_above and trainer.is_global_zero:
            self.warnings += 1
            if self.warnings == 1 or self.warnings % 50 == 0:  # say it, then only now and then
                fix = "lower learning_rate" + ("" if self.grad_clip else ", or enable clipping with grad_clip=1.0")
                log.warning(
                    f"warning: gradient norm {st['max']:.1f} at step {trainer.global_step} exceeds {self.warn_above:g} "
                    f"({self.warnings} time(s) so far): training may be unstable; {fix}"
                )

    @property
    def clipped_fraction(self) -> float | None:
        return self.total_clipped / self.total_steps if self.total_steps else None


class LayerGradients(L.Callback):
    """Every `interval` optimizer steps: gradient norm per layer group (before clipping), the
    update-to-weight ratio of each group (||w_after - w_before|| / ||w_before||, which should sit
    around 1e-3 with Adam), TensorBoard histograms of gradients and weights, and a warning naming
    any layer whose gradients vanish or explode relative to the others."""

    def __init__(self, interval: int, histograms: bool = True, ratio: float = 1000.0):
        self.interval = int(interval)
        self.histograms = histograms
        self.ratio = ratio
        self._before: dict[str, list[torch.Tensor]] | None = None
        self.flagged: dict[str, int] = {}  # layer verdict -> first step it was seen

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step + 1  # the step about to be taken, counted as global_step will count it
        if self.interval <= 0 or step % self.interval != 0:
            return
        groups = layer_groups(pl_module.model)
        norms = {}
        with torch.no_grad():
            sq = {k: sum(p.grad.float().pow(2).sum() for p in ps if p.grad is not None) for k, ps in groups.items()}
            values = torch.stack(
                [torch.as_tensor(v, dtype=torch.float32, device=pl_module.device) for v in sq.values()]
            )
            norms = dict(zip(sq, values.sqrt().tolist()))  # one host sync per interval
            self._before = {k: [p.detach().clone() for p in ps] for k, ps in groups.items()}
        log_metrics(trainer, {f"grad_layer/{k}": v for k, v in norms.items()}, step=step)
        if self.histograms and takes_histograms(trainer):
            for k, ps in groups.items():
                grads = [p.grad.detach().flatten() for p in ps if p.grad is not None]
                if grads:
                    log_histogram(trainer, f"grad_hist/{k}", torch.cat(grads), step)
                log_histogram(trainer, f"weight_hist/{k}", torch.cat([p.detach().flatten() for p in ps]), step)
        for verdict in diagnose(norms, self.ratio):
            if verdict not in self.flagged:
                self.flagged[verdict] = step
                if trainer.is_global_zero:
                    log.warning(f"warning: step {step}: layer {verdict}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._before is None or (batch_idx + 1) % trainer.accumulate_grad_batches != 0:
            return
        groups = layer_groups(pl_module.model)
        with torch.no_grad():
            ratios = {}
            for k, before in self._before.items():
                delta = sum((p.detach().float() - b.float()).pow(2).sum() for p, b in zip(groups[k], before))
                base = sum(b.float().pow(2).sum() for b in before)
                ratios[k] = (delta.sqrt() / base.sqrt().clamp_min(1e-12)).item()
        self._before = None
        log_metrics(trainer, {f"update_ratio/{k}": v for k, v in ratios.items()}, step=trainer.global_step)

    def state_dict(self) -> dict:
        return {"flagged": dict(self.flagged)}

    def load_state_dict(self, state: dict) -> None:
        self.flagged = dict(state.get("flagged", {}))


class InitialLossCheck(L.Callback):
    """At the step-0 evaluation: the untrained model should be about as unsure as a uniform
    guess, val loss ~ -ln(1/vocab_size). Far from it usually means a bug in initialisation or data."""

    def __init__(self, vocab_size: int, tolerance: float = 0.5):
        self.expected = math.log(vocab_size)
        self.vocab_size = vocab_size
        self.tolerance = tolerance
        self.result: dict | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.result is not None or trainer.global_step != 0 or "val" not in pl_module.last_eval:
            return
        val = pl_module.last_eval["val"]
        self.result = {"initial_val_loss": val, "random_guess_loss": self.expected}
        log_metrics(trainer, {"init/val_loss": val, "init/random_guess_loss": self.expected}, step=0)
        if not trainer.is_global_zero:
            return
        diff = val - self.expected
        if abs(diff) <= self.tolerance:
            log.info(
                f"initial val loss {val:.4f} vs random guess -ln(1/{self.vocab_size}) = {self.expected:.4f}"
                ": as expected"
            )
            return
        why = (
            "the untrained model is confidently wrong: weights initialised too large (logits far from uniform)"
            if diff > 0
            else "the untrained model already predicts well: targets may leak into the inputs (check that Y is X "
            "shifted by one with python -m gptlab.inspect), or the vocabulary is far larger than the tokens used"
        )
        log.warning(
            f"warning: initial val loss {val:.4f} differs from the random-guess loss {self.expected:.4f}"
            f" by {diff:+.2f} "
            f"(more than {self.tolerance}): {why}."
        )


class PlateauHint(L.Callback):
    """Once per run, when val loss has not improved for `patience` evaluations: the guide's
    checklist for a loss that will not go down (FAQ Q1), or for overfitting (Q3) when the train
    loss is still falling."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience = int(patience)
        self.min_delta = min_delta
        self.best = math.inf
        self.best_step = 0
        self.since = 0
        self.train_at_best = math.inf
        self.fired = False

    def on_validation_end(self, trainer, pl_module) -> None:
        ev = pl_module.last_eval
        if self.patience <= 0 or self.fired or "val" not in ev or trainer.sanity_checking:
            return
        if ev["val"] < self.best - self.min_delta:
            self.best, self.best_step, self.since = ev["val"], trainer.global_step, 0
            self.train_at_best = ev.get("train", math.inf)
            return
        self.since += 1
        if self.since < self.patience:
            return
        self.fired = True
        if not trainer.is_global_zero:
            return
        head = (
            f"hint: val loss has not improved for {self.since} evaluations (best {self.best:.4f} at step "
            f"{self.best_step}, now {ev['val']:.4f})."
        )
        if ev.get("train", math.inf) < self.train_at_best - 0.05:
            log.warning(
                head + " Train loss is still falling, so the model is overfitting (guide, Q3): raise dropout "
                "(e.g. 0.2), weight_decay (e.g. 0.1), use a smaller model (n_layer -2), more data, or stop early "
                "(early_stopping.patience=N does it; best.ckpt already holds the best weights)."
            )
        else:
            log.warning(
                head + " Checklist (guide, Q1): 1) learning rate too small? try 10x learning_rate; "
                "2) data aligned? python -m gptlab.inspect shows X and Y side by side; 3) model too small? "
                "raise n_layer or n_embd; 4) gradients present?"
                " see train/grad_norm in TensorBoard or python -m gptlab.gradviz <run>."
            )

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "since": self.since,
            "train_at_best": self.train_at_best,
            "fired": self.fired,
        }

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
