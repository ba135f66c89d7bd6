"""From a validated config to the plain values and small dataclasses the library takes: the
dataset, the model's shape, token masking. Knows OmegaConf, not Hydra."""

from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gptlab.data.augment import TokenMasking
from gptlab.data.dataset import DataSpec
from gptlab.errors import ConfigError
from gptlab.model import GPTConfig


def data_spec(cfg: DictConfig) -> DataSpec:
    d = cfg.data
    name = d.get("name")
    if not name:
        # the file's path in the name: two texts called input.txt in different folders never share one
        path = Path(str(d.path)).expanduser()
        where = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
        name = f"text_{path.stem}_{where}_{d.tokenizer}"
    return DataSpec(
        name=str(name),
        root=str(d.root),
        source=d.get("source"),
        path=d.get("path"),
        tokenizer=str(d.tokenizer),
        val_fraction=float(d.val_fraction),
        documents=str(d.get("documents", "blank_lines")),
    )


def model_config(cfg: DictConfig, vocab_size: int) -> GPTConfig:
    try:
        return GPTConfig(
            vocab_size=vocab_size,
            block_size=int(cfg.block_size),
            n_layer=int(cfg.n_layer),
            n_head=int(cfg.n_head),
            n_embd=int(cfg.n_embd),
            dropout=float(cfg.dropout),
            bias=bool(cfg.bias),
            vocab_multiple=64 if cfg.get("pad_vocab") else 1,
            # beyond the GPT-2 recipe (docs/modern.md); a config without these keys is GPT-2's
            pos_emb=str(cfg.get("pos_emb", "learned")),
            rope_base=float(cfg.get("rope_base", 10000.0)),
            norm=str(cfg.get("norm", "layernorm")),
            qk_norm=bool(cfg.get("qk_norm", False)),
            mlp=str(cfg.get("mlp", "gelu")),
            tie_embeddings=bool(cfg.get("tie_embeddings", True)),
            zero_init_proj=bool(cfg.get("zero_init_proj", False)),
            logit_softcap=None if cfg.get("logit_softcap") is None else float(cfg.logit_softcap),
        )
    except ValueError as e:
        raise ConfigError(str(e)) from None


def token_masking(cfg: DictConfig, data_vocab_size: int) -> TokenMasking | None:
    """The augmentation's settings, or None when augment.mask_prob is 0. [MASK] takes the first id
    after the data's vocabulary, so the model's vocabulary is one larger."""
    p = float(cfg.augment.mask_prob)
    if p == 0:
        return None
    return TokenMasking(p, mask_token=data_vocab_size, vocab_size=data_vocab_size, seed=int(cfg.seed))


def plain(cfg: DictConfig) -> dict:
    """The config as plain, resolved Python values (safe to store in a checkpoint)."""
    return OmegaConf.to_container(cfg, resolve=True)
