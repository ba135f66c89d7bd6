"""init_from=<weights>: a new run that starts from trained weights instead of a random
initialisation, with a fresh optimizer and schedule at step 0 (fine-tuning).

The weights are OpenAI's GPT-2 (init_from=gpt2 | gpt2-medium | gpt2-large | gpt2-xl), a Hugging Face
GPT-2 folder (init_from=hf:<folder>), or a gptlab run (init_from=<checkpoint file, weights file or
run folder>). Their model shape wins over the configured one; block_size may be smaller than the
weights' (the position table is cropped), dropout is the run's own. The data must use the tokenizer
the weights were trained with. Every value either loads or is refused: none starts from scratch.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gptlab.config.checks import GPT2_WEIGHTS, HF_PREFIX, starts_from_weights
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model import GPT, SWITCH_DEFAULTS
from gptlab.training import hf
from gptlab.training.checkpoint import load_checkpoint, model_state_dict, resolve_checkpoint

log = logging.getLogger("gptlab")

# the model keys the weights decide (GPTConfig fields that are also config keys); block_size and
# dropout stay the run's, vocab_size is the data's
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "bias", *SWITCH_DEFAULTS)
TABLES = ("transformer.wte.weight", "lm_head.weight")  # one row per token id


@dataclass
class Source:
    """Where init_from's weights are and what they are: the GPTConfig fields they fix and the
    tokenizer (a meta.json dict) they were trained with."""

    init_from: str
    kind: str  # "hf" (a GPT-2 folder) or "gptlab" (a checkpoint or weights file)
    path: Path
    shape: dict
    tokenizer: dict


def open_source(cfg: DictConfig) -> Source | None:
    """The weights init_from names, their shape and tokenizer read (not yet their tensors); None
    for init_from=scratch / resume."""
    if not starts_from_weights(cfg):
        return None
    ref = str(cfg.init_from)
    if ref in GPT2_WEIGHTS or ref.startswith(HF_PREFIX):
        name = ref.removeprefix(HF_PREFIX)
        if not name:
            raise ConfigError("init_from=hf: needs a folder: init_from=hf:<folder written by save_pretrained>")
        folder = hf.locate(name)
        found = hf.read_config(folder)
        return Source(ref, "hf", folder, found["shape"], found["tokenizer"])
    path = Path(ref).expanduser()
    if not path.exists():
        raise ConfigError(
            f"init_from={ref}: no such file or folder. init_from takes scratch, resume, "
            f"{' | '.join(GPT2_WEIGHTS)}, hf:<folder>, or a checkpoint (.ckpt), weights file or run folder"
        )
    path = resolve_checkpoint(path)
    info = load_checkpoint(path, mmap=True)["gptlab"]  # mmap: only the metadata is read now
    shape = {**SWITCH_DEFAULTS, "vocab_multiple": 1, **info["model_config"]}
    return Source(ref, "gptlab", path, shape, info.get("tokenizer", {}))


def adopt_shape(cfg: DictConfig, source: Source | None) -> DictConfig:
    """cfg with the weights' model shape (a copy; cfg itself is left as it was). Refuses a
    block_size longer than the weights' position table and data of another kind of tokenizer."""
    if source is None:
        return cfg
    cfg = copy.deepcopy(cfg)
    learned = source.shape.get("pos_emb", "learned") == "learned"
    if learned and int(cfg.block_size) > int(source.shape["block_size"]):
        raise ConfigError(
            f"block_size={cfg.block_size} is longer than init_from={source.init_from}'s position table "
            f"({source.shape['block_size']}); give block_size<={source.shape['block_size']}"
        )
    _check_tokenizer_kind(source, str(cfg.data.tokenizer))
    changed = []
    for key in SHAPE_KEYS:
        new = source.shape.get(key, SWITCH_DEFAULTS.get(key))
        if cfg.get(key) != new:
            changed.append(f"{key} {cfg.get(key)} -> {new}")
            OmegaConf.update(cfg, key, new, force_add=True)
    if changed:
        log.info(f"init_from={source.init_from}: the model takes the weights' shape: " + ", ".join(changed))
    return cfg


def load_into(model: GPT, source: Source, data_meta: dict) -> None:
    """Copy the source's weights into a freshly built model of the adopted shape. Rows past the
    tokenizer's vocabulary (pad_vocab's padding, token masking's [MASK]) keep their fresh values."""
    check_tokenizer(source, data_meta)
    theirs = hf.read_weights(source.path) if source.kind == "hf" else model_state_dict(load_checkpoint(source.path))
    V, T = int(data_meta["vocab_size"]), model.config.block_size
    ours = model.state_dict()
    missing = sorted(set(ours) - set(theirs))
    if missing:
        raise CheckpointError(
            f"init_from={source.init_from} holds no {', '.join(missing[:4])}: not this model's weights"
        )
    with torch.no_grad():
        for k, p in ours.items():
            v = theirs[k]
            if k in TABLES:
                p, v = p[:V], v[:V]
            elif k == "transformer.wpe.weight":
                v = v[:T]  # a shorter context: the first block_size positions (as nanoGPT crops)
            if p.shape != v.shape:
                raise CheckpointError(
                    f"init_from={source.init_from}: {k} is {tuple(v.shape)} there, {tuple(p.shape)} in this model"
                )
            p.copy_(v)
    log.info(
        f"init_from={source.init_from}: weights loaded from {source.path} (a fresh optimizer and schedule, step 0)"
    )


def describe_tokenizer(meta: dict) -> str:
    if meta.get("tokenizer") == "char":
        return f"a character vocabulary of {len(meta.get('chars', []))}"
    return f"the {meta.get('tokenizer')} tokenizer ({meta.get('vocab_size', '?'):,} tokens)"


def _check_tokenizer_kind(source: Source, data_tokenizer: str) -> None:
    """Before preparing anything: char data for BPE weights (or the other way round) is refused."""
    if source.tokenizer.get("tokenizer") != data_tokenizer:
        raise ConfigError(
            f"init_from={source.init_from} was trained with {describe_tokenizer(source.tokenizer)}, but this run's "
            f"data uses data.tokenizer={data_tokenizer}: {_fix(source.tokenizer)}"
        )


def check_tokenizer(source: Source, data_meta: dict) -> None:
    """The data's tokenizer must be the one the weights were trained with, id for id."""
    a, b = source.tokenizer, data_meta
    same = a.get("tokenizer") == b.get("tokenizer") and a.get("vocab_size") == b.get("vocab_size")
    if same and a.get("tokenizer") == "char":
        same = list(a.get("chars", [])) == list(b.get("chars", []))
    if not same:
        raise ConfigError(
            f"init_from={source.init_from} was trained with {describe_tokenizer(a)}, this run's data has "
            f"{describe_tokenizer(b)}{' (other characters)' if a.get('tokenizer') == 'char' else ''}: {_fix(a)}"
        )


def _fix(meta: dict) -> str:
    if meta.get("tokenizer") == "gpt2":
        return "use GPT-2 BPE data (data=shakespeare, or data=text data.tokenizer=gpt2)"
    if meta.get("tokenizer") == "char":
        return "use the data the weights were trained on (a character vocabulary is the text's own characters)"
    return f"use data prepared with data.tokenizer={meta.get('tokenizer')}"
