"""Model FLOPs utilisation (MFU): the FLOP/s training achieves over the FLOP/s the hardware could do.

The FLOPs per token are the model's own estimate (``GPT.flops_per_token``, PaLM's 6N + 12·L·H·Q·T);
the peak is a GPU's dense figure from its data sheet (GPU_PEAKS), or ``peak_tflops=`` given by the
user. Progress lines (training.callbacks.logs.ProgressLog) and the bench both read it from here.
Imports torch only: the bench's parent process must not load Lightning.
"""

from __future__ import annotations

import re
import time

import torch

# Dense peak FLOP/s per GPU from the vendors' data sheets (no sparsity): bf16 / fp16 tensor cores,
# and TF32 for float32 matmuls (training sets float32 matmul precision "high"). Matched by the words
# of torch.cuda.get_device_name(), most specific first ("NVIDIA H100 PCIe" before "NVIDIA H100 80GB HBM3").
GPU_PEAKS = {
    ("H200",): {"bfloat16": 989e12, "float16": 989e12, "tf32": 494e12},
    ("H100", "PCIe"): {"bfloat16": 756e12, "float16": 756e12, "tf32": 378e12},
    ("H100",): {"bfloat16": 989e12, "float16": 989e12, "tf32": 494e12},
    ("A100",): {"bfloat16": 312e12, "float16": 312e12, "tf32": 156e12},
    ("L40S",): {"bfloat16": 362e12, "float16": 362e12, "tf32": 183e12},
    ("L4",): {"bfloat16": 121e12, "float16": 121e12, "tf32": 60e12},
}


def table_peak(device_name: str, dtype: str) -> float | None:
    """The data-sheet peak of one GPU for training in dtype (float32 uses TF32), or None if not listed."""
    words = set(re.split(r"[^A-Za-z0-9]+", device_name))
    key = "tf32" if dtype == "float32" else dtype
    for chip, peaks in GPU_PEAKS.items():
        if set(chip) <= words:
            return peaks.get(key)
    return None


def training_peak(
    accelerator: str, dtype: str, override_tflops: float | None, index: int = 0
) -> tuple[float | None, str]:
    """The per-device peak FLOP/s a training run's MFU is measured against, and where it comes from:
    peak_tflops when given; else the GPU's table entry; else None -- no MFU. CPUs have no data-sheet
    figure, and a matmul rate measured at start would cost a second of every run and move with
    whatever else the machine runs; the bench measures one when asked (peak_flops)."""
    if override_tflops is not None:
        return float(override_tflops) * 1e12, f"peak_tflops={override_tflops:g}"
    if accelerator != "gpu" or not torch.cuda.is_available():
        return None, f"no MFU on {accelerator}: no data-sheet peak (give peak_tflops=<TFLOP/s> to have one)"
    name = torch.cuda.get_device_name(index)
    peak = table_peak(name, dtype)
    if peak is None:
        return None, f"no MFU: {name} is not in gptlab's table of GPU peaks (give peak_tflops=<TFLOP/s>)"
    return peak, f"{name}, {dtype} dense peak {peak / 1e12:g} TFLOP/s from the data sheet"


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """The share of peak_flops (all devices together) that tokens_per_s of training uses."""
    return tokens_per_s * flops_per_token / peak_flops


def peak_flops(on_cuda: bool, dtype: str) -> tuple[float, str]:
    """The bench's peak: the table's, else a matmul rate measured now (the bench can afford it)."""
    if on_cuda:
        name = torch.cuda.get_device_name()
        peak = table_peak(name, dtype)
        if peak is not None:
            return peak, f"{name}, {'tf32' if dtype == 'float32' else dtype} dense peak from the data sheet"
        return measured_matmul_peak(
            "cuda", torch.bfloat16 if dtype != "float32" else torch.float32, 8192
        ), f"{name}: measured {dtype} matmul peak (chip not in the table)"
    threads = torch.get_num_threads()
    peak = measured_matmul_peak("cpu", torch.float32, 1024)
    return (
        peak,
        f"CPU, {threads} threads: best float32 1024x1024 matmul rate measured now (no data-sheet peak for CPUs)",
    )


def measured_matmul_peak(device: str, dtype: torch.dtype, n: int, reps: int = 30) -> float:
    """The best FLOP/s of an n x n matmul over reps tries."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(reps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
