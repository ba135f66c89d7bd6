"""The bench's reference: the guide's training loop written out by hand in plain PyTorch.

get_batch, forward, loss / accumulation, backward, clip, step, zero_grad -- with the same model
init, batches, optimizer, schedule and evaluation as gptlab's training path, and nothing of
Lightning. ``python -m gptlab.bench`` times this against ``gptlab.training.run.train`` to show what
the framework costs. It is deliberately the one training loop outside the LightningModule.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from gptlab.config import data_spec, model_config, resolve_device
from gptlab.data.dataset import load_meta
from gptlab.model import GPT
from gptlab.training.optimizers import build_optimizer
from gptlab.training.schedule import optim_config


# One function of ~110 lines on purpose, like nanoGPT's train.py: the reference loop reads top to
# bottom (data, model, optimizer, evaluation, the loop) with nothing hidden behind calls.
def train_plain(cfg: DictConfig, run_dir: Path, on_step=None) -> dict:
    """Train as cfg says (same keys as gptlab.train); on_step(step, loss) is called after every
    optimizer step. Returns the last training and evaluation losses."""
    choice = resolve_device(cfg)
    device = torch.device("cuda" if choice.accelerator == "gpu" else "cpu")
    on_cuda = device.type == "cuda"
    if on_cuda:
        torch.set_float32_matmul_precision("high")  # as gptlab.train does on CUDA
    dtype = choice.dtype
    spec = data_spec(cfg)
    meta = load_meta(spec.dir)
    block_size, batch_size = int(cfg.block_size), int(cfg.batch_size)
    accum, max_iters = int(cfg.gradient_accumulation_steps), int(cfg.max_iters)
    eval_interval, eval_iters, log_interval = int(cfg.eval_interval), int(cfg.eval_iters), int(cfg.log_interval)

    # the same streams as GPTDataModule on rank 0: training windows, then the train and val
    # windows used for evaluation, so both sides see identical batches
    seeds = np.random.SeedSequence([int(cfg.seed), 0]).spawn(3)
    rng = {
        "train": np.random.default_rng(seeds[0]),
        "eval_train": np.random.default_rng(seeds[1]),
        "val": np.random.default_rng(seeds[2]),
    }
    offsets = np.arange(block_size + 1)

    def get_batch(stream: str) -> tuple[torch.Tensor, torch.Tensor]:
        split = "val" if stream == "val" else "train"
        data = np.memmap(spec.dir / f"{split}.bin", dtype=np.dtype(meta["dtype"]), mode="r")
        ix = rng[stream].integers(0, len(data) - block_size, size=batch_size)
        w = torch.from_numpy(data[ix[:, None] + offsets].astype(np.int64))
        x, y = w[:, :-1], w[:, 1:]
        if on_cuda:  # pinned memory lets the copy run while the GPU is still busy
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x, y

    torch.manual_seed(int(cfg.seed))
    model = GPT(model_config(cfg, int(meta["vocab_size"]))).to(device)
    fwd = torch.compile(model) if cfg.compile else model
    optim = optim_config(cfg)
    # the same optimizer as gptlab's (AdamW, or Muon + AdamW with optimizer=muon); each group's peak
    # rate is kept, so the schedule below scales learning_rate and muon_lr alike
    optimizer = build_optimizer(model, optim, on_cuda)
    peaks = [group["lr"] for group in optimizer.param_groups]
    amp = torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype != "float32" else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "float16")

    @torch.no_grad()
    def estimate_loss() -> dict[str, float]:
        model.eval()
        out = {}
        for name, stream in (("train", "eval_train"), ("val", "val")):
            total = torch.zeros((), device=device)
            for _ in range(eval_iters):
                x, y = get_batch(stream)
                with amp:
                    _, loss = fwd(x, y)
                total += loss.float()
            out[name] = float(total / eval_iters)
        model.train()
        return out

    def save_checkpoint(step: int, losses: dict) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "iter_num": step, "losses": losses}
        torch.save(state, run_dir / "ckpt.pt")

    losses = estimate_loss()  # step 0
    best_val = losses["val"]
    loss = None
    t_log = time.perf_counter()
    for step in range(max_iters):
        lr = optim.lr_at(step)
        for group, peak in zip(optimizer.param_groups, peaks):
            group["lr"] = peak * lr / optim.learning_rate
        for _ in range(accum):
            x, y = get_batch("train")
            with amp:
                _, loss = fwd(x, y)
            scaler.scale(loss / accum).backward()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg.grad_clip))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        if done % log_interval == 0:
            now = time.perf_counter()
            ms = 1000 * (now - t_log) / log_interval
            print(f"iter {done}: loss {loss.item():.4f}, {ms:.1f} ms/step, lr {lr:.2e}", flush=True)
            t_log = now
        if on_step is not None:
            on_step(done, loss)
        if done % eval_interval == 0 or done == max_iters:
            losses = estimate_loss()
            print(f"step {done}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
            if losses["val"] < best_val:
                best_val = losses["val"]
                save_checkpoint(done, losses)
            t_log = time.perf_counter()
    return {
        "final_train_loss": losses["train"],
        "final_val_loss": losses["val"],
        "flops_per_token": model.flops_per_token(),
    }
