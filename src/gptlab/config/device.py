"""Where a run trains: the Lightning accelerator, devices and precision that the `device`,
`dtype` and `trainer` keys ask for, checked against the hardware that is there."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from gptlab.errors import ConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")
# dtype -> Lightning precision. Mixed precision keeps float32 master weights; float16 also gets a
# gradient scaler from Lightning's 16-mixed plugin (GPU only).
PRECISION = {"float32": "32-true", "bfloat16": "bf16-mixed", "float16": "16-mixed"}


@dataclass
class DeviceChoice:
    accelerator: str  # Lightning accelerator
    devices: int | list[int]
    precision: str  # Lightning precision
    dtype: str  # the dtype name it came from

    @property
    def on_cpu(self) -> bool:
        return self.accelerator == "cpu"


def resolve_device(cfg: DictConfig) -> DeviceChoice:
    device = str(cfg.device)
    tr = cfg.trainer
    accelerator, devices = tr.accelerator, tr.devices
    has_cuda = torch.cuda.is_available()
    if device.startswith("cuda"):
        if not has_cuda:
            raise ConfigError(
                f"device={device} but no CUDA GPU is visible (torch {torch.__version__}, "
                f"CUDA build: {torch.version.cuda is not None}); use device=cpu, or install a CUDA build of torch"
            )
        accelerator = "gpu"
        if ":" in device:
            devices = [int(device.split(":")[1])]
    elif device in ("cpu", "mps"):
        accelerator = device
    elif accelerator == "auto":
        accelerator = "gpu" if has_cuda else "cpu"
    if accelerator == "gpu" and not has_cuda:
        raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible; use trainer=cpu or device=cpu")
    if str(tr.strategy).startswith("fsdp") and accelerator != "gpu":
        raise ConfigError(
            "trainer=fsdp needs CUDA GPUs (Lightning's FSDP does not run on the CPU); on the CPU use trainer=ddp"
        )

    dtype = str(cfg.dtype)
    if dtype == "auto":
        dtype = "bfloat16" if accelerator == "gpu" and torch.cuda.is_bf16_supported() else "float32"
    if dtype == "float16" and accelerator == "cpu":
        # Lightning has no float16 AMP on CPU and would quietly train in bfloat16 instead
        raise ConfigError(
            "dtype=float16 needs a GPU (Lightning has no float16 mixed precision on CPU)"
            "; on CPU use dtype=bfloat16 or dtype=float32"
        )
    return DeviceChoice(accelerator, devices, PRECISION[dtype], dtype)
