"""Datasets: raw text -> token ids on disk -> random (X, Y) windows for training.

``prepare_dataset`` writes ``<root>/<name>/{train.bin, val.bin, meta.json}``: the first
``1 - val_fraction`` of the text for training, the rest for validation, ids as uint16 (uint32 when
the vocabulary does not fit in 16 bits). ``gptlab.datamodule`` samples batches from those files.

Beside each split it writes a document index, ``train_docs.bin`` / ``val_docs.bin``: int64 token
offsets where each document starts, then the split's length, so document i is
``ids[offsets[i]:offsets[i + 1]]``. The documents cover the split without gaps; each ends with its
own end marker (the blank line after a speech, the EOT token). Random windows ignore the index;
packed and padded batches (``gptlab.packing``) read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptlab.data.tokenizer import TokenizerError, build_tokenizer, tokenizer_from_meta
from gptlab.errors import GptlabError

# Named corpora: where each comes from and what it must hash to.
CORPORA = {
    "tinyshakespeare": {
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    },
}
MIRROR_ENV = "GPTLAB_DATA_MIRROR"  # a directory laid out as <mirror>/<corpus>/input.txt
# Where documents begin: after a run of blank lines (Tiny Shakespeare's speeches), at each .txt
# file of a folder, or after each end-of-text token (token files, or <|endoftext|> in a text).
DOCUMENT_KINDS = ("blank_lines", "files", "eot")
EOT_MARKER = "<|endoftext|>"
# Tokenizing a large text prints a progress line at most every PROGRESS_EVERY_S seconds (none for a
# text done sooner), after each piece of about PIECE_CHARS characters
PROGRESS_EVERY_S = 2.0
PIECE_CHARS = 1 << 22


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
    documents: str = "blank_lines"  # one of DOCUMENT_KINDS: where prepare records document starts

    @property
    def dir(self) -> Path:
        return Path(self.root) / self.name


# The files prepare writes into a dataset folder; nothing else is ever removed from one.
DATASET_FILES = ("train.bin", "val.bin", "meta.json", "train_docs.bin", "val_docs.bin")
RESERVED_NAMES = ("raw",)  # <root>/raw/ holds the downloaded corpora


# --------------------------------------------------------------------------- raw text


def fetch_corpus(name: str, raw_dir: Path) -> Path:
    """Path of the named corpus's text, downloading it once into raw_dir.

    With GPTLAB_DATA_MIRROR=<dir> the file is read from <dir>/<name>/input.txt instead of the
    network (for offline machines and CI).
    """
    if name not in CORPORA:
        raise DataError(
            f"unknown corpus '{name}'; known: {', '.join(CORPORA)}. For your own text use data=text data.path=FILE"
        )
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
                raise DataError(
                    f"{MIRROR_ENV}={mirror} is set but {src} does not exist; fix the path or unset it to download"
                )
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
            raise DataError(
                f"{name}: the fetched file's sha256 does not match the known one; the source may be corrupt"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def read_text(path: Path) -> str:
    """UTF-8 text of a file, or of every .txt file in a folder (sorted, joined by blank lines)."""
    return join_texts(read_texts(path), path)


def join_texts(texts: list[str], path: Path) -> str:
    text = "\n\n".join(texts)
    if not text.strip():
        raise DataError(f"'{path}' is empty; give a text file with something to learn from")
    return text


def read_texts(path: Path) -> list[str]:
    """The UTF-8 text of each file: the file itself, or every .txt file in a folder (sorted)."""
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
                f"'{f}' is not valid UTF-8 (byte {e.start}: {raw[e.start : e.start + 1]!r}); "
                "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from e
    return texts


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
    if spec.documents not in DOCUMENT_KINDS:
        raise DataError(f"data.documents must be one of {', '.join(DOCUMENT_KINDS)}, got '{spec.documents}'")
    src = source_path(spec)
    if spec.documents == "eot":
        tok, train_ids, val_ids, starts = _prepare_eot(src, spec, log)
        n = len(train_ids) + len(val_ids)
    else:
        tok, train_ids, val_ids, starts, n = _prepare_text(src, spec, log)
    if len(train_ids) < 2 or len(val_ids) < 2:
        raise DataError(f"'{src}' is too short to split into train and val ({n} characters); give a longer text")
    dtype = token_dtype(tok.vocab_size)

    out = spec.dir
    check_replaceable(out, spec, src)  # before any work is written: refuse to touch what is not ours
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=out.parent))
    try:
        meta = _write_dataset(tmp, spec, src, tok, dtype, (train_ids, val_ids), starts)
        _swap_in(tmp, out)
    finally:
        if tmp.exists():
            _remove_dataset(tmp)
    log(
        f"prepared {out}: {tok.name} tokenizer, vocab {tok.vocab_size:,}, "
        f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens ({dtype.name}); "
        f"documents ({spec.documents}): {len(starts[0]):,} train, {len(starts[1]):,} val"
    )
    return out


class Progress:
    """Progress lines while a text is tokenized: MB done of the total, and the rate so far."""

    def __init__(self, total_bytes: int, log, every: float | None = None):
        self.total, self.log = total_bytes, log
        self.every = PROGRESS_EVERY_S if every is None else every
        self.done = 0
        self.t0 = self.last = time.perf_counter()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / 1e6 / max(now - self.t0, 1e-9)
            self.log(
                f"tokenizing: {self.done / 1e6:,.1f} of {self.total / 1e6:,.1f} MB "
                f"({self.done / max(self.total, 1):.0%}), {rate:.1f} MB/s"
            )


def encode(tok, text: str, progress: Progress | None = None) -> np.ndarray:
    """tok.encode(text) piece by piece (the same ids: tok.pieces cuts where encoding is unchanged),
    reporting to progress after each piece."""
    parts = []
    for piece in tok.pieces(text, PIECE_CHARS):
        parts.append(np.asarray(tok.encode(piece), dtype=np.int64))
        if progress is not None:
            progress.advance(len(piece.encode("utf-8")))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def text_bytes(tok, ids: np.ndarray) -> int:
    """The UTF-8 bytes of text that ids stand for; end-of-text tokens, which mark where documents
    end rather than stand for text, count none."""
    ids = np.asarray(ids, dtype=np.int64)
    if tok.eot_token is not None:
        ids = ids[ids != tok.eot_token]
    return int(tok.byte_lengths(ids).sum())


def _prepare_text(src: Path, spec: DataSpec, log=print):
    """Documents separated by blank lines or given as files: (tokenizer, train ids, val ids,
    (train starts, val starts), characters); the val split is the text's last val_fraction."""
    texts = read_texts(src)
    if spec.documents == "files" and not src.is_dir():
        raise DataError(
            f"data.documents=files makes one document of each .txt file in a folder, but '{src}' is a single "
            "file; give data.path=FOLDER, or use data.documents=blank_lines"
        )
    text = join_texts(texts, src)
    try:
        tok = build_tokenizer(spec.tokenizer, text)
    except TokenizerError as e:
        raise DataError(str(e)) from e
    split = int(len(text) * (1.0 - spec.val_fraction))
    progress = Progress(len(text.encode("utf-8")), log)
    train_ids = encode(tok, text[:split], progress)
    val_ids = encode(tok, text[split:], progress)
    if spec.documents == "files":  # each file's joining blank line ends the document before it
        char_starts = np.cumsum([0] + [len(t) + 2 for t in texts[:-1]])
    else:
        char_starts = np.array([0] + [m.end() for m in re.finditer(r"\n(?:[ \t\r]*\n)+", text)])
    # the document that straddles the train/val cut becomes two: its tail starts the val split
    starts = (
        _token_starts(tok, text[:split], train_ids, char_starts[char_starts < split]),
        _token_starts(tok, text[split:], val_ids, char_starts[char_starts >= split] - split),
    )
    return tok, train_ids, val_ids, starts, len(text)


def _write_dataset(folder: Path, spec: DataSpec, src: Path, tok, dtype, ids: tuple, starts: tuple) -> dict:
    """train.bin, val.bin, <split>_docs.bin (document starts, then the split's length) and
    meta.json into folder; returns the meta."""
    train_ids, val_ids = ids
    train_ids.astype(dtype).tofile(folder / "train.bin")
    val_ids.astype(dtype).tofile(folder / "val.bin")
    for split_name, split_ids, st in (("train", train_ids, starts[0]), ("val", val_ids, starts[1])):
        np.append(st, len(split_ids)).astype(np.int64).tofile(folder / f"{split_name}_docs.bin")
    meta = {
        **tok.to_meta(),
        "dtype": dtype.name,
        "train_tokens": int(len(train_ids)),
        "val_tokens": int(len(val_ids)),
        "val_bytes": text_bytes(tok, val_ids),  # UTF-8 bytes of the val text: bits per byte (val_bytes_per_token)
        "source": str(src),
        "source_id": source_id(spec),
        "source_sha256": _sha256(src) if src.is_file() else None,
        "val_fraction": spec.val_fraction,
        "documents": {"kind": spec.documents, "train": len(starts[0]), "val": len(starts[1])},
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
    return meta


def source_id(spec: DataSpec) -> str:
    """What a dataset was made from: a named corpus, or the resolved path of the user's text."""
    return f"corpus:{spec.source}" if spec.source and not spec.path else str(Path(spec.path).expanduser().resolve())


def check_name(spec: DataSpec) -> None:
    """data.name is one folder under data.root: not a path, not the root itself, not raw/."""
    name = spec.name
    if not name or name in (".", "..") or "/" in name or os.sep in name or name in RESERVED_NAMES:
        raise DataError(
            f"data.name='{name}' must be a plain folder name under data.root ({spec.root}), such as my_text_char; "
            f"not a path, '.', '..' or {', '.join(RESERVED_NAMES)}"
        )


def check_replaceable(out: Path, spec: DataSpec, src: Path | None = None) -> None:
    """Refuse unless out is absent, an empty folder, or a gptlab dataset of the same text and
    tokenizer: prepare replaces only what it wrote itself, never a folder of the user's."""
    check_name(spec)
    if src is not None and out.resolve() in (src.resolve(), *src.resolve().parents):
        raise DataError(f"data.path '{src}' is inside the dataset folder {out}; choose another data.name or data.root")
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise DataError(
            f"{out} exists and is not a folder; gptlab writes datasets only into folders it created. "
            "Move it, or choose another data.name"
        )
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    foreign = [n for n in entries if n not in DATASET_FILES]
    meta = _read_meta_or_none(out)
    if not foreign and meta is None:
        raise DataError(
            f"{out} looks like a damaged gptlab dataset (its meta.json is unreadable or incomplete); "
            f"delete {out} and prepare it again"
        )
    if foreign or meta is None:
        what = f"files gptlab did not write ({', '.join(foreign[:5])})" if foreign else "no readable meta.json"
        raise DataError(
            f"{out} holds {what}: it is not a prepared gptlab dataset, so prepare will not replace it. "
            "Choose another data.name (or data.root), or move those files"
        )
    theirs = (meta.get("tokenizer"), meta.get("source_id"))
    ours = (spec.tokenizer, source_id(spec))
    if theirs[0] != ours[0] or (theirs[1] is not None and theirs[1] != ours[1]) or _val_fraction_differs(meta, spec):
        raise DataError(
            f"{out} holds another dataset ({meta.get('tokenizer')} tokens of {theirs[1] or meta.get('source')}, "
            f"val_fraction {meta.get('val_fraction')}); this one is {ours[0]} tokens of {ours[1]}, val_fraction "
            f"{spec.val_fraction}. Give it its own folder: data.name=<another name>"
        )


def _val_fraction_differs(meta: dict, spec: DataSpec) -> bool:
    return meta.get("val_fraction") is not None and float(meta["val_fraction"]) != float(spec.val_fraction)


def _read_meta_or_none(folder: Path) -> dict | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "dtype" in meta and "tokenizer" in meta else None


def _swap_in(new: Path, out: Path) -> None:
    """Put the freshly written folder at out. An old dataset there is renamed aside first and
    removed only after the new one is in place, so a stop midway never loses both."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old.{os.getpid()}")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        _remove_dataset(old)


def _remove_dataset(folder: Path) -> None:
    """Remove a dataset folder prepare wrote: its known files, then the folder if that empties it."""
    for name in DATASET_FILES:
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass  # something else is in it: leave it


def _token_starts(tok, text: str, ids: np.ndarray, char_starts: np.ndarray) -> np.ndarray:
    """Token index where each document starts: the first token that starts at or after the
    document's first character. Compared as UTF-8 byte offsets, which both sides can compute;
    the token ids stay those of encoding the whole text, so random windows see the same data."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    char_bytes = 1 + (codes >= 0x80) + (codes >= 0x800) + (codes >= 0x10000)
    char_at = np.concatenate([[0], np.cumsum(char_bytes)])
    token_at = np.concatenate([[0], np.cumsum(tok.byte_lengths(ids))[:-1]])
    starts = np.unique(np.concatenate([[0], np.searchsorted(token_at, char_at[char_starts])]))
    return starts[starts < len(ids)]


def _prepare_eot(src: Path, spec: DataSpec, log=print):
    """Documents separated by the end-of-text token: token files as nanoGPT writes them (uint16
    ids, EOT after each document), or a text with <|endoftext|> between documents."""
    if spec.tokenizer == "char":
        raise DataError(
            "data.documents=eot needs a tokenizer with an end-of-text token: use data.tokenizer=gpt2, "
            "or data.documents=blank_lines|files for char-level"
        )
    try:
        tok = build_tokenizer(spec.tokenizer)
    except TokenizerError as e:
        raise DataError(str(e)) from e
    eot = tok.eot_token
    token_files = [src] if src.suffix == ".bin" else sorted(src.rglob("*.bin")) if src.is_dir() else []
    if token_files:
        ids = np.concatenate([_read_token_file(f, tok.vocab_size) for f in token_files])
        if not (ids == eot).any():
            raise DataError(
                f"'{src}' holds no end-of-text token ({eot}); data.documents=eot needs it after each document"
            )
    else:
        text = read_text(src)
        pieces = text.split(EOT_MARKER)
        if len(pieces) == 1:
            raise DataError(
                f"'{src}' has no {EOT_MARKER} between documents; data.documents=eot needs it "
                "(or use data.documents=blank_lines, or files for a folder)"
            )
        progress = Progress(len(text.encode("utf-8")), log)
        parts = []
        for i, piece in enumerate(pieces):
            parts.append(encode(tok, piece, progress))
            if i < len(pieces) - 1:
                parts.append(np.array([eot], dtype=np.int64))
        ids = np.concatenate(parts)
    split = int(len(ids) * (1.0 - spec.val_fraction))
    train_ids, val_ids = ids[:split], ids[split:]
    starts = []
    for part in (train_ids, val_ids):
        st = np.unique(np.concatenate([[0], np.flatnonzero(part == eot) + 1]))
        starts.append(st[st < len(part)])
    return tok, train_ids, val_ids, tuple(starts)


def _read_token_file(path: Path, vocab_size: int) -> np.ndarray:
    if path.stat().st_size % 2:
        raise DataError(
            f"'{path}' has an odd number of bytes; token files hold uint16 ids (nanoGPT's train.bin layout)"
        )
    ids = np.fromfile(path, dtype=np.uint16).astype(np.int64)
    if len(ids) and ids.max() >= vocab_size:
        raise DataError(
            f"'{path}' holds id {ids.max()}, outside the tokenizer's vocabulary of {vocab_size:,}; check data.tokenizer"
        )
    return ids


def load_meta(data_dir: Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{data_dir} is not a prepared dataset (no meta.json); run python -m gptlab.prepare data=...")
    meta = _read_meta_or_none(Path(data_dir))
    if meta is None:
        raise DataError(
            f"{path} is damaged (not JSON, or without dtype/tokenizer); prepare the dataset again: "
            "python -m gptlab.prepare data=..."
        )
    return meta


def val_bytes_per_token(data_dir: Path, meta: dict) -> float:
    """UTF-8 bytes of the val text per val token (for bits per byte): meta.json's val_bytes, or, for a
    dataset prepared before that was recorded, counted from val.bin and the tokenizer."""
    n = int(meta["val_tokens"])
    nbytes = meta.get("val_bytes")
    if nbytes is None:
        nbytes = text_bytes(tokenizer_from_meta(meta), open_tokens(Path(data_dir), "val", meta))
    return nbytes / max(n, 1)


def is_prepared(spec: DataSpec, documents: bool = False) -> bool:
    """Whether spec.dir holds this dataset, complete. documents=True: with spec's document index too."""
    d = spec.dir
    if not all((d / f).is_file() for f in ("train.bin", "val.bin", "meta.json")):
        return False
    meta = _read_meta_or_none(d)
    if meta is None or meta.get("tokenizer") != spec.tokenizer or _val_fraction_differs(meta, spec):
        return False  # prepare then replaces it if it is ours, or refuses
    if meta.get("source_id") not in (None, source_id(spec)) or size_problem(d, meta):
        return False
    # a dataset prepared before document indexes existed still serves random windows; packed or
    # padded batches, eot documents (whose ids differ) or another kind of document prepare it again
    recorded = (meta.get("documents") or {}).get("kind")
    if recorded != spec.documents and (recorded is not None or documents or spec.documents == "eot"):
        return False
    if recorded and not all((d / f"{s}_docs.bin").is_file() for s in ("train", "val")):
        return False
    # a user's text file that changed since it was prepared is prepared again
    if spec.path and Path(spec.path).is_file() and meta.get("source_sha256") != _sha256(Path(spec.path)):
        return False
    return True


def ensure_prepared(spec: DataSpec, log=print, documents: bool = False) -> Path:
    if is_prepared(spec, documents):
        return spec.dir
    log(f"dataset {spec.dir} is not prepared yet (or lacks its {spec.documents} document index); preparing it now")
    return prepare_dataset(spec, log=log)


def size_problem(data_dir: Path, meta: dict) -> str | None:
    """Why a prepared dataset's token files do not match meta.json (truncated, or another
    dataset's), or None when their sizes agree."""
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in ("train", "val"):
            path = Path(data_dir) / f"{split}.bin"
            want = int(meta[f"{split}_tokens"]) * itemsize
            if not path.is_file():
                return f"{path.name} is missing"
            if path.stat().st_size != want:
                return f"{path.name} has {path.stat().st_size:,} bytes where meta.json says {want:,}"
    except (KeyError, TypeError, ValueError) as e:
        return f"meta.json lacks or garbles {e}"
    return None


def open_tokens(data_dir: Path, split: str, meta: dict) -> np.memmap:
    path = Path(data_dir) / f"{split}.bin"
    problem = size_problem(data_dir, meta)
    if problem:
        raise DataError(
            f"{data_dir} is damaged ({problem}); prepare it again: python -m gptlab.prepare data=... "
            "(training re-prepares a damaged dataset of its own)"
        )
    return np.memmap(path, dtype=np.dtype(meta["dtype"]), mode="r")


def open_documents(data_dir: Path, split: str, meta: dict) -> np.ndarray:
    """The split's document offsets: document i is tokens[offsets[i]:offsets[i + 1]]."""
    path = Path(data_dir) / f"{split}_docs.bin"
    if not path.is_file() or not meta.get("documents"):
        raise DataError(
            f"{data_dir} has no document index ({path.name}); it was prepared before documents were recorded. "
            "Prepare it again: python -m gptlab.prepare data=..."
            " (training does so itself for data.batching=packed|padded)"
        )
    offsets = np.fromfile(path, dtype=np.int64)
    n = int(meta[f"{split}_tokens"])
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) <= 0).any():
        raise DataError(f"{path} does not index the {split} split ({n:,} tokens); prepare the dataset again")
    return offsets
