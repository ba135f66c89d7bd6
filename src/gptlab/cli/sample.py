"""Generate text from a trained run: `python -m gptlab.sample ckpt=outputs/... start="To be"`."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from gptlab.cli import common as cli
from gptlab.config import SAMPLE, check_keys
from gptlab.data.tokenizer import tokenizer_from_meta, undecodable_ids
from gptlab.errors import ConfigError
from gptlab.training.checkpoint import load_model


def read_prompt(start: str) -> str:
    if start.startswith("FILE:"):
        path = Path(start[5:]).expanduser()
        if not path.is_file():
            raise ConfigError(f"prompt file '{path}' does not exist")
        return path.read_text(encoding="utf-8")
    return start


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible; use device=cpu")
    return name


def generate(
    ckpt: str,
    start: str,
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int,
    device: str = "auto",
    dtype: str = "auto",
) -> list[str]:
    dev = pick_device(device)
    model, info = load_model(ckpt, map_location=dev)
    tok = tokenizer_from_meta(info["tokenizer"])
    prompt = read_prompt(start)
    ids = tok.encode(prompt) if prompt else []
    if len(ids) == 0:
        if tok.eot_token is None:
            raise ConfigError("the prompt is empty; give start=TEXT")
        ids = [tok.eot_token]
    if dtype == "auto":
        dtype = "bfloat16" if dev.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    amp = (
        torch.autocast(device_type=dev.split(":")[0], dtype=getattr(torch, dtype))
        if dtype != "float32"
        else contextlib.nullcontext()
    )
    gen = torch.Generator(device=dev).manual_seed(seed)
    suppress = undecodable_ids(tok, model.config.vocab_size)  # e.g. [MASK] of a token-masking run
    x = torch.tensor([list(map(int, ids))] * 1, device=dev)
    out = []
    with torch.no_grad(), amp:
        for _ in range(num_samples):
            y = model.generate(
                x, max_new_tokens, temperature=temperature, top_k=top_k, generator=gen, suppress_tokens=suppress
            )
            out.append(tok.decode(y[0].tolist()))
    return out


@cli.report_errors
def main(argv: list[str] | None = None) -> None:
    args = cli.translate_argv(sys.argv[1:] if argv is None else argv)  # start=... is quoted there
    cli.check_override_keys(args, config_name="sample")
    cfg = cli.compose("sample", args)
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise ConfigError("give the run to sample from: ckpt=<run folder, .ckpt file or weights.safetensors>")
    check_keys(cfg, SAMPLE)
    samples = generate(
        str(cfg.ckpt),
        str(cfg.start),
        int(cfg.num_samples),
        int(cfg.max_new_tokens),
        float(cfg.temperature),
        cfg.top_k,
        int(cfg.seed),
        str(cfg.device),
        str(cfg.dtype),
    )
    for s in samples:
        print(s)
        print("---------------")
