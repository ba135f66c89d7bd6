"""Checkpoint files: written atomically, read without executing pickled code.

A gptlab checkpoint is a Lightning checkpoint (weights, optimizer, loop state) with one extra
entry, ``"gptlab"``: the model's shape, the tokenizer, the step and the run's settings, all plain
values. That is enough for ``sample`` and the analysis tools to rebuild the model without the
config files or the dataset that produced it.

The weights-only export (``export_weights=true``, rundir.EXPORT) is a safetensors file: the GPT's
tensors, with that same ``"gptlab"`` entry as JSON in the file's metadata. Loading it reads tensors
and JSON only; no pickle, so a shared file cannot run code. Exports of older versions (a torch
pickle, rundir.EXPORT_PT) still load, with ``weights_only=True`` like every checkpoint.
"""

from __future__ import annotations

import codecs
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from gptlab.errors import CheckpointError
from gptlab.model import GPT, SWITCH_DEFAULTS, GPTConfig
from gptlab.rundir import BEST, EXPORT, EXPORT_PT, LAST, TMP_SUFFIX, write_atomic

MODEL_PREFIX = "model."  # the LightningModule holds the GPT as self.model
# a tied head is the token table itself: a weights file stores it once, under the embedding's name
HEAD, TOKEN_TABLE = "lm_head.weight", "transformer.wte.weight"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO, but the file appears only once it is complete.

    Lightning writes the final path directly; a run killed mid-write would leave a truncated
    last.ckpt behind and lose the previous good one. Here the bytes go to a temporary file in the
    same folder, are flushed to disk, and replace the target with one atomic rename.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        save_atomic(checkpoint, Path(path))


class BestCheckpoint(ModelCheckpoint):
    """best.ckpt: the weights of the lowest val loss so far (and last.ckpt at every evaluation
    with save_last). Lightning's ModelCheckpoint forgets the best score when a resumed run's
    folder has moved, and would then replace best.ckpt with a worse model; here the saved state
    is read for the folder as it is now, so moving a run folder changes nothing."""

    def __init__(self, run_dir: Path, save_last: bool = False):
        super().__init__(
            dirpath=run_dir,
            filename=Path(BEST).stem,
            monitor="val/loss",
            mode="min",
            save_top_k=1,
            save_last=save_last,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )

    @property
    def state_key(self) -> str:
        # the key under which Lightning's own ModelCheckpoint kept this state: checkpoints written
        # before this class existed keep their best score on resume
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            moved = lambda p: str(Path(self.dirpath) / Path(p).name) if p else p  # noqa: E731
            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                "best_model_path": moved(state_dict.get("best_model_path")),
                "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                "last_model_path": moved(state_dict.get("last_model_path")),
                "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()},
            }
        super().load_state_dict(state_dict)


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save(obj) to path through a temporary file in the same folder and an atomic rename."""
    write_atomic(Path(path), lambda f: torch.save(obj, f))


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete temporary files left by writes that a SIGKILL or power cut stopped midway (the
    cleanup in _write_atomic cannot run then). The complete files they were to replace are intact."""
    stale = sorted(Path(folder).glob(f".*{TMP_SUFFIX}")) if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def resolve_checkpoint(ref: str | Path) -> Path:
    """A checkpoint file, or a run folder (its best.ckpt, else its last.ckpt, else its weights export)."""
    p = Path(ref).expanduser()
    if p.is_dir():
        for name in (BEST, LAST, EXPORT, EXPORT_PT):
            if (p / name).is_file():
                return p / name
        raise CheckpointError(
            f"run folder '{p}' holds no {BEST}, {LAST} or {EXPORT}; did its training reach the first evaluation?"
        )
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint '{p}' does not exist; give a .ckpt file, a {EXPORT} file or a run folder under outputs/"
        )
    return p


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with their JSON header's length (8 bytes, little-endian), then the header."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 30


def _check_format(path: Path) -> None:
    """A text file (notes, a config, a log) given as a checkpoint is not one: say so, rather than
    call it corrupt or dangerous. Other bytes go to torch.load, whose errors say corrupt."""
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # not final: a character cut at byte 512 is fine
        text = bool(head) and b"\0" not in head  # a zip archive or a pickle holds NUL bytes at its start
    except UnicodeDecodeError:
        text = False
    if text:
        raise CheckpointError(
            f"'{path}' is a text file, not a checkpoint (checkpoints are the .ckpt files a run writes: "
            "best.ckpt, last.ckpt); give a run folder or one of its .ckpt files"
        )


def _unreadable(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"'{path}' is not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
        "it may be truncated or corrupt. Use another checkpoint of the run (best.ckpt / last.ckpt)."
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """Load a checkpoint dict with ``weights_only=True``: only tensors and plain Python values
    are accepted, so a file crafted to run code when unpickled is refused instead of obeyed.
    mmap=True maps the tensors instead of reading them (cheap when only the metadata is needed)."""
    path = resolve_checkpoint(path)
    if _is_safetensors(path):
        return load_weights(path, map_location)
    _check_format(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load '{path}': it contains Python objects other than tensors and plain values, "
            f"which could run code when loaded ({str(e).splitlines()[0]}). Only load checkpoints written by gptlab."
        ) from e
    except RuntimeError as e:
        if "Attempting to deserialize object on" in str(e):  # a good file, saved on a device not here
            raise CheckpointError(
                f"'{path}' holds tensors for a device this machine does not have ({str(e).split('. ')[0]}); "
                "load it with device=cpu (map_location='cpu')"
            ) from e
        raise _unreadable(path, e) from e
    except (EOFError, zipfile.BadZipFile, OSError, KeyError, IndexError, ValueError) as e:
        raise _unreadable(path, e) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "gptlab" not in ckpt:
        raise CheckpointError(f"'{path}' is not a gptlab checkpoint (no 'state_dict' / 'gptlab' entries)")
    return ckpt


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a checkpoint was written at, without reading its tensors."""
    ckpt = load_checkpoint(path, mmap=True)
    return int(ckpt.get("global_step", ckpt["gptlab"].get("step", 0)))


def check_resumable(ckpt: dict, path: str | Path) -> None:
    """Raise unless the checkpoint holds the training state a resume needs (not an export)."""
    if not {"optimizer_states", "loops"} <= set(ckpt):
        raise CheckpointError(
            f"'{path}' holds weights only (an export_weights file), no optimizer or loop state, so a run "
            "cannot continue from it. Resume from the run's last.ckpt / best.ckpt, or sample from it."
        )


def export_weights(src: str | Path, dst: str | Path) -> Path:
    """Write a checkpoint's model for sharing: the plain GPT state_dict, the model shape and the
    tokenizer (the 'gptlab' entry), and no optimizer or loop state -- about a third of the size
    of a training checkpoint. A safetensors file (see save_weights); sample and init_from read it."""
    ckpt = load_checkpoint(src)
    info = {**ckpt["gptlab"], "exported_from": Path(src).name}
    save_weights(model_state_dict(ckpt), info, Path(dst))
    return Path(dst)


def save_weights(state_dict: dict[str, torch.Tensor], info: dict, path: Path) -> None:
    """A GPT's weights as safetensors, atomically; info (plain values: the 'gptlab' entry) goes into
    the file's metadata as JSON, so the one file rebuilds the model."""
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if info.get("model_config", {}).get("tie_embeddings", True):
        tensors.pop(HEAD, None)  # safetensors stores no shared tensors; load_weights ties it again
    data = safetensors.torch.save(tensors, metadata={"format": "pt", "gptlab": json.dumps(info)})
    write_atomic(Path(path), lambda f: f.write(data))


def load_weights(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """A weights file of save_weights as a checkpoint dict: {'state_dict': ..., 'gptlab': ...}."""
    try:
        with safetensors.safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except Exception as e:  # safetensors raises its own SafetensorError for a damaged file
        raise _unreadable(path, e) from e
    if "gptlab" not in meta:
        raise CheckpointError(
            f"'{path}' is a safetensors file without gptlab's metadata (model shape, tokenizer); a Hugging Face "
            "model folder loads with init_from=hf:<its folder>"
        )
    info = json.loads(meta["gptlab"])
    if HEAD not in tensors and TOKEN_TABLE in tensors:
        tensors[HEAD] = tensors[TOKEN_TABLE]  # the tied head (save_weights stored it once)
    return {"state_dict": tensors, "gptlab": info}


def model_state_dict(ckpt: dict) -> dict[str, torch.Tensor]:
    """The GPT's own weights from a checkpoint: Lightning's 'model.' prefix and torch.compile's
    '_orig_mod.' removed, so the weights load into a plain GPT whether or not it was compiled."""
    out = {}
    for k, v in ckpt["state_dict"].items():
        if k.startswith(MODEL_PREFIX):
            k = k[len(MODEL_PREFIX) :]
        out[k.replace("_orig_mod.", "")] = v
    return out


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Rebuild the GPT stored in a checkpoint; returns (model in eval mode, the 'gptlab' entry)."""
    ckpt = load_checkpoint(path, map_location)
    info = ckpt["gptlab"]
    model = GPT(GPTConfig(**info["model_config"]))
    try:
        model.load_state_dict(model_state_dict(ckpt))
    except RuntimeError as e:
        raise CheckpointError(f"weights in '{path}' do not match the model shape it records: {e}") from e
    model.to(map_location)
    model.eval()
    return model, info


def check_compatible(info: dict, model_config: dict, what: str) -> None:
    """Raise unless a checkpoint's model shape equals the one configured (resume / fine-tune)."""
    # checkpoints from before pad_vocab and the architecture switches: their model is the default one
    saved = {"vocab_multiple": 1, **SWITCH_DEFAULTS, **info.get("model_config", {})}
    now = {**SWITCH_DEFAULTS, **model_config}
    diffs = [
        f"{k}: checkpoint {saved.get(k)} vs {what} {now.get(k)}"
        for k in ("vocab_size", "vocab_multiple", "n_layer", "n_head", "n_embd", "block_size", "bias", *SWITCH_DEFAULTS)
        if saved.get(k) != now.get(k)
    ]
    if diffs:
        raise CheckpointError(
            "the checkpoint does not fit this model/data (" + "; ".join(diffs) + "). "
            "Use the settings and data the checkpoint was trained with, or start from scratch (init_from=scratch)."
        )
