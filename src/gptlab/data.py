"""Datasets: raw text -> token ids on disk -> random (X, Y) windows for training.

``prepare_dataset`` writes ``<root>/<name>/{train.bin, val.bin, meta.json}``: the first
``1 - val_fraction`` of the text for training, the rest for validation, ids as uint16 (uint32 when
the vocabulary does not fit in 16 bits). ``gptlab.datamodule`` samples batches from those files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptlab.errors import GptlabError
from gptlab.tokenizer import TokenizerError, build_tokenizer

# Named corpora: where each comes from and what it must hash to.
CORPORA = {
    "tinyshakespeare": {
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    },
}
MIRROR_ENV = "GPTLAB_DATA_MIRROR"  # a directory laid out as <mirror>/<corpus>/input.txt


class DataError(GptlabError):
    """A dataset that cannot be found, read or used; the message says how to fix it."""


@dataclass
class DataSpec:
    name: str  # folder under root that holds train.bin, val.bin and meta.json
    root: str = "data"
    source: str | None = None  # a named corpus (see CORPORA), or None when path is given
    path: str | None = None  # a text file (or a folder of .txt files) of the user's
    tokenizer: str = "char"  # "char" or a tiktoken encoding name ("gpt2")
    val_fraction: float = 0.1

    @property
    def dir(self) -> Path:
        return Path(self.root) / self.name


# --------------------------------------------------------------------------- raw text


def fetch_corpus(name: str, raw_dir: Path) -> Path:
    """Path of the named corpus's text, downloading it once into raw_dir.

    With GPTLAB_DATA_MIRROR=<dir> the file is read from <dir>/<name>/input.txt instead of the
    network (for offline machines and CI).
    """
    if name not in CORPORA:
        raise DataError(f"unknown corpus '{name}'; known: {', '.join(CORPORA)}. For your own text use data=text data.path=FILE")
    info = CORPORA[name]
    target = raw_dir / name / "input.txt"
    if target.exists() and _sha256(target) == info["sha256"]:
        return target
    mirror = os.environ.get(MIRROR_ENV)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        if mirror:
            src = Path(mirror) / name / "input.txt"
            if not src.is_file():
                raise DataError(f"{MIRROR_ENV}={mirror} is set but {src} does not exist; fix the path or unset it to download")
            shutil.copyfile(src, tmp)
        else:
            try:
                with urllib.request.urlopen(info["url"], timeout=60) as r, open(tmp, "wb") as f:
                    shutil.copyfileobj(r, f)
            except OSError as e:
                raise DataError(
                    f"could not download {name} from {info['url']} ({e}). If this machine is offline, set "
                    f"{MIRROR_ENV}=<dir> with {name}/input.txt inside, or train on a local file: "
                    "data=text data.path=FILE"
                ) from e
        if _sha256(tmp) != info["sha256"]:
            raise DataError(f"{name}: the fetched file's sha256 does not match the known one; the source may be corrupt")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def read_text(path: Path) -> str:
    """UTF-8 text of a file, or of every .txt file in a folder (sorted, joined by blank lines)."""
    if not path.exists():
        raise DataError(f"data.path '{path}' does not exist; give the path of a UTF-8 text file")
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"data.path '{path}' is a folder with no .txt files in it")
    texts = []
    for f in files:
        raw = f.read_bytes()
        if b"\x00" in raw:
            raise DataError(f"'{f}' looks binary (it contains NUL bytes); give a UTF-8 text file")
        try:
            texts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(
                f"'{f}' is not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from e
    text = "\n\n".join(texts)
    if not text.strip():
        raise DataError(f"'{path}' is empty; give a text file with something to learn from")
    return text


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- prepare


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def source_path(spec: DataSpec) -> Path:
    if spec.path:
        return Path(spec.path).expanduser()
    if spec.source:
        return fetch_corpus(spec.source, Path(spec.root) / "raw")
    raise DataError(f"data config '{spec.name}' names neither a source corpus nor a path; set data.path=FILE")


def prepare_dataset(spec: DataSpec, log=print) -> Path:
    """Tokenize the spec's text into <root>/<name>/; returns that folder.

    The folder is built under a temporary name and renamed into place, so an interrupted prepare
    never leaves a half-written dataset behind.
    """
    if not 0.0 < spec.val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be between 0 and 1, got {spec.val_fraction}")
    src = source_path(spec)
    text = read_text(src)
    try:
        tok = build_tokenizer(spec.tokenizer, text)
    except TokenizerError as e:
        raise DataError(str(e)) from e
    n = len(text)
    split = int(n * (1.0 - spec.val_fraction))
    dtype = token_dtype(tok.vocab_size)
    train_ids = tok.encode(text[:split])
    val_ids = tok.encode(text[split:])
    if len(train_ids) < 2 or len(val_ids) < 2:
        raise DataError(f"'{src}' is too short to split into train and val ({n} characters); give a longer text")

    out = spec.dir
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=out.parent))
    try:
        train_ids.astype(dtype).tofile(tmp / "train.bin")
        val_ids.astype(dtype).tofile(tmp / "val.bin")
        meta = {
            **tok.to_meta(),
            "dtype": dtype.name,
            "train_tokens": int(len(train_ids)),
            "val_tokens": int(len(val_ids)),
            "source": str(src),
            "source_sha256": _sha256(src) if src.is_file() else None,
            "val_fraction": spec.val_fraction,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log(
        f"prepared {out}: {tok.name} tokenizer, vocab {tok.vocab_size:,}, "
        f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens ({dtype.name})"
    )
    return out


def load_meta(data_dir: Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{data_dir} is not a prepared dataset (no meta.json); run python -m gptlab.prepare data=...")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); delete {data_dir} and prepare it again") from e


def is_prepared(spec: DataSpec) -> bool:
    d = spec.dir
    if not all((d / f).is_file() for f in ("train.bin", "val.bin", "meta.json")):
        return False
    meta = load_meta(d)
    if meta.get("tokenizer") != spec.tokenizer:
        return False
    # a user's text file that changed since it was prepared is prepared again
    if spec.path and Path(spec.path).is_file() and meta.get("source_sha256") != _sha256(Path(spec.path)):
        return False
    return True


def ensure_prepared(spec: DataSpec, log=print) -> Path:
    if is_prepared(spec):
        return spec.dir
    log(f"dataset {spec.dir} is not prepared yet; preparing it now")
    return prepare_dataset(spec, log=log)


def open_tokens(data_dir: Path, split: str, meta: dict) -> np.memmap:
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise DataError(f"{path} is missing; prepare the dataset again (python -m gptlab.prepare data=...)")
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")
