"""Each single speed choice gptlab makes, measured on its own: `python -m gptlab.bench --costs`.

Every row does the same work two ways -- before (the cost) and after (what gptlab does) --
alternating A, B in one process for several rounds, and reports the median time of each and the
speed-up before / after (min / median / max over rounds). Rows that need a GPU say so on a CPU.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from gptlab.cli import common as cli
from gptlab.config import data_spec
from gptlab.data.datamodule import RandomWindows, auto_eval_merge
from gptlab.data.dataset import ensure_prepared, load_meta
from gptlab.model import GPT, GPTConfig


@dataclass
class Workload:
    """A model, its optimizer and a batch sampler on one device: the pieces a training step needs."""

    model: GPT
    opt: torch.optim.Optimizer
    windows: RandomWindows
    device: torch.device
    amp: object

    def batch(self, pinned: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.windows.sample()
        if self.device.type != "cuda":
            return x, y
        if pinned:
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)

    def step(self, x, y, fwd=None) -> torch.Tensor:
        with self.amp:
            _, loss = (self.model if fwd is None else fwd)(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss


def workload(
    data_dir: Path,
    shape: dict,
    device: torch.device,
    dtype: str = "float32",
    vocab_multiple: int = 1,
    optimizer: str = "auto",
) -> Workload:
    meta = load_meta(data_dir)
    torch.manual_seed(1337)
    cfg = GPTConfig(
        vocab_size=int(meta["vocab_size"]),
        block_size=shape["block_size"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        n_embd=shape["n_embd"],
        dropout=0.0,
        bias=False,
        vocab_multiple=vocab_multiple,
    )
    model = GPT(cfg).to(device)
    on_cuda = device.type == "cuda"
    kind = ("fused" if on_cuda else "foreach") if optimizer == "auto" else optimizer
    opt = torch.optim.AdamW(
        model.optimizer_groups(0.1),
        lr=1e-4,
        fused=kind == "fused" or None,
        foreach={"foreach": True, "loop": False}.get(kind),
    )
    windows = RandomWindows(data_dir / "train.bin", meta["dtype"], shape["block_size"], shape["batch_size"], seed=0)
    amp = torch.autocast(device.type, dtype=getattr(torch, dtype)) if dtype != "float32" else contextlib.nullcontext()
    return Workload(model, opt, windows, device, amp)


def _timed(fn, n: int, cuda: bool) -> float:
    """Seconds per call of fn, over n calls."""
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n


def ab(before, after, n: int, rounds: int, cuda: bool) -> dict:
    """Alternate before, after for `rounds` rounds (one warm-up call of each first)."""
    before(), after()
    tb, ta = [], []
    for _ in range(rounds):
        tb.append(_timed(before, n, cuda))
        ta.append(_timed(after, n, cuda))
    speedups = [b / a for b, a in zip(tb, ta)]
    return {
        "before_ms": 1000 * statistics.median(tb),
        "after_ms": 1000 * statistics.median(ta),
        "speedup": [min(speedups), statistics.median(speedups), max(speedups)],
    }


# --------------------------------------------------------------------------- the rows


def python_loop_batch(w: Workload) -> tuple[torch.Tensor, torch.Tensor]:
    """nanoGPT's get_batch: one slice, one copy and one tensor per row, then two torch.stack."""
    ds = w.windows
    data = np.memmap(ds.path, dtype=ds.dtype, mode="r")
    ix = torch.randint(len(data) - ds.block_size, (ds.batch_size,))
    x = torch.stack([torch.from_numpy(data[i : i + ds.block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + ds.block_size].astype(np.int64)) for i in ix])
    return x, y


def row_host_sync(w: Workload, n, rounds, cuda):
    step = {"i": 0}

    def train(sync_every: int):
        def fn():
            loss = w.step(*w.batch())
            step["i"] += 1
            if step["i"] % sync_every == 0:
                loss.item()  # a host sync: the CPU waits for the device to finish the step

        return fn

    return ab(train(1), train(10), n, rounds, cuda)


def row_sampler(w: Workload, n, rounds, cuda):
    return ab(lambda: python_loop_batch(w), w.windows.sample, n * 20, rounds, False)


def row_copies(w: Workload, n, rounds, cuda):
    return ab(lambda: w.step(*w.batch(pinned=False)), lambda: w.step(*w.batch(pinned=True)), n, rounds, cuda)


def row_eval(w: Workload, n, rounds, cuda):
    w.model.eval()
    x, y = w.batch()

    def with_grad():
        with w.amp:
            w.model(x, y)[1].float().item()

    def inference():
        with torch.inference_mode(), w.amp:
            w.model(x, y)[1].float().item()

    out = ab(with_grad, inference, n, rounds, cuda)
    w.model.train()
    return out


def _validator(cfg, merge: int | None):
    """A function that runs one evaluation through Lightning's validation loop, as training does
    (eval_merge=merge; None: what auto gives on a GPU), and returns its (train, val) losses."""
    # only here: Lightning's Trainer, which the other rows do without
    import lightning as L

    from gptlab.training import run as run_mod

    cfg = cfg.copy()
    cfg.eval_merge = merge or 1
    device = run_mod.settings(cfg)
    data = run_mod.build_data(cfg)
    dm = data.dm
    if merge is None:
        # what eval_merge=auto gives on a GPU, on whatever device this is
        dm.eval_merge = auto_eval_merge(dm.eval_iters, dm.eval_batch_size, dm.block_size, data.mconf.padded_vocab_size)
    module = run_mod.build_module(cfg, data)
    trainer = L.Trainer(
        accelerator=device.accelerator,
        devices=1,
        precision=device.precision,
        limit_val_batches=int(cfg.eval_iters),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )

    def evaluate() -> tuple[float, float]:
        trainer.validate(module, datamodule=data.dm, verbose=False)
        return module.last_eval["train"], module.last_eval["val"]

    return evaluate, data.dm.eval_merge


def row_evaluation(cfg, rounds: int, cuda: bool) -> dict:
    """One evaluation (eval_iters batches of each split) one batch per forward, against as many per
    forward as eval_merge=auto takes on a GPU (on a CPU auto stays at 1; this row shows why).
    Both sides start from the same seed and evaluate once per round, so round i of each sees the
    same windows; the note gives the largest difference of their losses."""
    old, _ = _validator(cfg, 1)
    new, k = _validator(cfg, None)
    losses = {"old": [], "new": []}
    out = ab(lambda: losses["old"].append(old()), lambda: losses["new"].append(new()), 1, rounds, cuda)
    diff = max(abs(a - b) for pa, pb in zip(losses["old"], losses["new"]) for a, b in zip(pa, pb))
    out["note"] = f"{cfg.eval_iters} batches x 2 splits; {k} batches per forward; losses differ by <= {diff:.1e}"
    return {**out, "eval_merge": k, "max_loss_diff": diff}


def row_optimizer(make, n, rounds, cuda):
    before, after = make("foreach" if cuda else "loop"), make("fused" if cuda else "foreach")
    for w in (before, after):
        w.model(*w.batch())[1].backward()  # gradients to step with
    return ab(before.opt.step, after.opt.step, n * 5, rounds, cuda)


def row_tf32(w: Workload, n, rounds, cuda):
    def at(precision):
        def fn():
            torch.set_float32_matmul_precision(precision)
            w.step(*w.batch())

        return fn

    out = ab(at("highest"), at("high"), n, rounds, cuda)
    torch.set_float32_matmul_precision("high")
    return out


def row_flash(w: Workload, n, rounds, cuda):
    def math():
        with sdpa_kernel(SDPBackend.MATH):
            w.step(*w.batch())

    out = ab(math, lambda: w.step(*w.batch()), n, rounds, cuda)
    # which attention kernel the default path ran
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        w.step(*w.batch())
        torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    out["note"] = (
        "flash kernel ran"
        if any("flash" in s.lower() for s in names)
        else "no flash kernel seen: " + ", ".join(sorted(s for s in names if "attention" in s.lower())[:3])
    )
    return out


def row_compile(w: Workload, n, rounds, cuda):
    compiled = torch.compile(w.model)
    t = time.perf_counter()
    w.step(*w.batch(), fwd=compiled)  # the first call compiles
    first = time.perf_counter() - t
    out = ab(lambda: w.step(*w.batch()), lambda: w.step(*w.batch(), fwd=compiled), n, rounds, cuda)
    out["note"] = f"first compiled step {first:.1f} s"
    return out


def row_pad_vocab(make, n, rounds, cuda):
    plain, padded = make(1), make(64)
    out = ab(lambda: plain.step(*plain.batch()), lambda: padded.step(*padded.batch()), n, rounds, cuda)
    out["note"] = f"vocab {plain.model.config.vocab_size:,} vs {padded.model.config.padded_vocab_size:,}"
    return out


# --------------------------------------------------------------------------- entry (via gptlab.bench)

CPU_SHAPE = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch_size": 12}  # the CPU recipe
GPU_SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "batch_size": 64}  # the baby GPT


def main(overrides: list[str], rounds: int = 3, json_path: str | None = None, only: str | None = None) -> list[dict]:
    cli.check_override_keys(overrides)
    base = cli.compose("train", ["profile=none", *overrides])
    cuda = torch.cuda.is_available() and str(base.device) != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    char_dir = ensure_prepared(data_spec(base), log=print)
    bpe_dir = ensure_prepared(
        data_spec(cli.compose("train", ["profile=none", *overrides, "data=shakespeare"])), log=print
    )
    shape = GPU_SHAPE if cuda else CPU_SHAPE
    amp_dtype = "bfloat16" if cuda else "float32"
    n = 20 if cuda else 10  # calls per timing
    if cuda:
        torch.set_float32_matmul_precision("high")
    rows = cost_rows(char_dir, bpe_dir, shape, device, amp_dtype, n, rounds, cuda)
    # the evaluation of a training run as the recipe of this machine runs it: the CPU recipe (20 batches
    # of 12 x 64), or the baby GPT (200 batches of 64 x 256) in bfloat16; more rounds: one call is one evaluation
    recipe = cli.compose("train", ["profile=gpu" if cuda else "profile=cpu", "logger=[]", *overrides])
    rows.append(
        (
            "evaluation",
            "a forward per batch",
            "eval_merge=auto (GPU)",
            lambda: row_evaluation(recipe, max(rounds, 7), cuda),
        )
    )
    rows = [r for r in rows if only is None or only in r[0]]
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"\n== single costs on {where}, model {shape['n_layer']}/{shape['n_head']}/{shape['n_embd']} "
        f"block {shape['block_size']} "
        f"batch {shape['batch_size']}, {amp_dtype}; {rounds} rounds alternating before/after"
    )
    report = measure(rows)
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1))
    return report


def cost_rows(char_dir: Path, bpe_dir: Path, shape: dict, device, amp_dtype: str, n: int, rounds: int, cuda: bool):
    """(what, before, after, measure) per single cost; measure returns None where it needs a GPU."""
    w = workload(char_dir, shape, device, amp_dtype)
    return [
        ("host sync (loss.item())", "every step", "every 10 steps", lambda: row_host_sync(w, n, rounds, cuda)),
        (
            "batch sampling",
            "a Python loop per row",
            "one vectorised memmap gather",
            lambda: row_sampler(w, n, rounds, cuda),
        ),
        (
            "host->device copy",
            "pageable, blocking",
            "pinned, non_blocking",
            lambda: row_copies(w, n, rounds, cuda) if cuda else None,
        ),
        ("evaluation batch", "autograd on", "inference_mode", lambda: row_eval(w, n, rounds, cuda)),
        (
            "AdamW step",
            "foreach" if cuda else "for-loop per tensor",
            "fused" if cuda else "foreach",
            lambda: row_optimizer(
                lambda kind: workload(char_dir, shape, device, amp_dtype, optimizer=kind), n, rounds, cuda
            ),
        ),
        (
            "float32 matmuls",
            "full fp32",
            "TF32 ('high')",
            lambda: row_tf32(workload(char_dir, shape, device, "float32"), n, rounds, cuda) if cuda else None,
        ),
        (
            "attention (bf16)",
            "SDPA math kernel",
            "SDPA default (flash)",
            lambda: row_flash(w, n, rounds, cuda) if cuda else None,
        ),
        (
            "compile",
            "eager",
            "torch.compile",
            lambda: row_compile(workload(char_dir, shape, device, amp_dtype), n, rounds, cuda),
        ),
        (
            "pad_vocab (GPT-2 BPE)",
            "vocab 50,257",
            "padded to 50,304",
            lambda: row_pad_vocab(
                lambda m: workload(bpe_dir, shape, device, amp_dtype, vocab_multiple=m), n, rounds, cuda
            ),
        ),
    ]


def measure(rows) -> list[dict]:
    """Runs each row's measurement and prints its line of the table."""
    print(f"   {'what':<26} {'before':<22} {'after':<30} {'ms before':>10} {'ms after':>9}  speed-up min/median/max")
    report = []
    for what, before, after, fn in rows:
        res = fn()
        if res is None:
            print(f"   {what:<26} {before:<22} {after:<30} {'needs a GPU':>20}")
            continue
        s = res["speedup"]
        print(
            f"   {what:<26} {before:<22} {after:<30} {res['before_ms']:10.3f} {res['after_ms']:9.3f}  "
            f"{s[0]:.2f} / {s[1]:.2f} / {s[2]:.2f}  {res.get('note', '')}",
            flush=True,
        )
        report.append({"what": what, "before": before, "after": after, **res})
    return report
