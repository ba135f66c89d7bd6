"""Tokenizers: a character table, and GPT-2's byte-pair encoding through tiktoken.

Both save to and load from the ``meta.json`` dict written beside a prepared dataset (JSON, so
that opening a dataset can never run code, unlike nanoGPT's meta.pkl).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import tiktoken

from gptlab.errors import GptlabError


class TokenizerError(GptlabError):
    """Text the tokenizer cannot encode, or an encoding that cannot be loaded."""


class CharTokenizer:
    """One token per distinct character of the training text, ids in sorted character order."""

    name = "char"

    def __init__(self, chars: list[str]):
        if not chars:
            raise TokenizerError("a character vocabulary needs at least one character")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        # encode through a lookup table indexed by code point: one numpy gather for the whole text
        # instead of a Python dict lookup per character
        self._table = np.full(max(map(ord, self.chars)) + 1, -1, dtype=np.int64)
        self._table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))
        self._itos = np.array(self.chars, dtype=object)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def eot_token(self) -> int | None:
        return None

    def encode(self, text: str) -> np.ndarray:
        # UTF-32 gives one fixed-width code point per character, viewed directly as integers
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        unknown = codes >= len(self._table)
        ids = np.where(unknown, -1, self._table[np.minimum(codes, len(self._table) - 1)])
        if (ids < 0).any():
            missing = sorted({chr(c) for c in codes[ids < 0]})
            shown = ", ".join(repr(c) for c in missing[:10])
            raise TokenizerError(
                f"text contains {len(missing)} character(s) not in this character vocabulary: {shown}. "
                "Use only characters seen in the training text, or prepare the data with tokenizer=gpt2."
            )
        return ids

    def decode(self, ids) -> str:
        return "".join(self._itos[np.asarray(ids, dtype=np.int64)])

    def pieces(self, text: str, size: int) -> list[str]:
        """text cut into pieces of about size characters that encode to the ids of the whole."""
        return [text[i : i + size] for i in range(0, len(text), size)] or [text]

    def byte_lengths(self, ids: np.ndarray) -> np.ndarray:
        """UTF-8 bytes each token stands for (to map text offsets to token offsets)."""
        if not hasattr(self, "_nbytes"):
            self._nbytes = np.array([len(c.encode("utf-8")) for c in self.chars], dtype=np.int64)
        return self._nbytes[ids]

    def to_meta(self) -> dict:
        return {"tokenizer": "char", "vocab_size": self.vocab_size, "chars": self.chars}


class TiktokenTokenizer:
    """GPT-2 BPE (50,257 tokens, <|endoftext|> = 50256) or another tiktoken encoding."""

    def __init__(self, encoding: str = "gpt2"):
        self.name = encoding
        try:
            self.enc = tiktoken.get_encoding(encoding)
        except Exception as e:  # tiktoken downloads the BPE files on first use
            raise TokenizerError(
                f"could not load the tiktoken encoding '{encoding}': {e}. tiktoken downloads its BPE files "
                "once; offline, point TIKTOKEN_CACHE_DIR at a directory that holds them."
            ) from e

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    @property
    def eot_token(self) -> int | None:
        return self.enc.eot_token

    def encode(self, text: str) -> np.ndarray:
        """Encode ordinary text (special-token strings are treated as plain text).

        Large texts are cut into chunks (see _split_at_line_starts) that tiktoken's batch encoder
        encodes on several threads; the ids equal those of one call on the whole text.
        """
        chunks = _split_at_line_starts(text, 1 << 16)
        if len(chunks) == 1:
            return np.asarray(self.enc.encode_ordinary(text), dtype=np.int64)
        parts = self.enc.encode_ordinary_batch(chunks, num_threads=min(8, os.cpu_count() or 1))
        return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])

    def decode(self, ids) -> str:
        return self.enc.decode([int(i) for i in ids])

    def pieces(self, text: str, size: int) -> list[str]:
        """text cut into pieces of about size characters that encode to the ids of the whole."""
        return _split_at_line_starts(text, size)

    def byte_lengths(self, ids: np.ndarray) -> np.ndarray:
        """UTF-8 bytes each token stands for (to map text offsets to token offsets)."""
        if not hasattr(self, "_nbytes"):
            self._nbytes = np.zeros(self.vocab_size, dtype=np.int64)
            for i in range(self.vocab_size):
                try:
                    self._nbytes[i] = len(self.enc.decode_single_token_bytes(i))
                except KeyError:  # some encodings leave unused ids between ranks
                    pass
        return self._nbytes[ids]

    def to_meta(self) -> dict:
        return {"tokenizer": self.name, "vocab_size": self.vocab_size, "eot_token": self.eot_token}

    def vocab_and_merges(self) -> tuple[dict[str, int], list[tuple[str, str]]]:
        """The encoding as GPT-2's vocab.json and merges.txt spell it (bytes as byte_to_unicode's
        characters): {token: id}, special tokens included, and the merges in rank order. tiktoken
        keeps only each token's rank; the pair a token was merged from is found by running BPE on its
        bytes with the lower ranks alone, which must end in exactly two parts."""
        spell = byte_to_unicode()
        specials = {self.enc.encode_single_token(s): s for s in self.enc.special_tokens_set}
        ranks = {}
        for i in range(self.enc.n_vocab):
            if i not in specials:
                with contextlib.suppress(KeyError):  # some encodings leave unused ids between ranks
                    ranks[self.enc.decode_single_token_bytes(i)] = i
        vocab = {"".join(spell[b] for b in token): i for token, i in ranks.items()}
        vocab.update({s: i for i, s in specials.items()})
        merges = []
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            if len(token) == 1:
                continue
            parts = _bpe_parts(token, ranks, rank)
            if len(parts) != 2:
                raise TokenizerError(f"token {token!r} of '{self.name}' is not the merge of two lower-ranked tokens")
            merges.append(tuple("".join(spell[b] for b in p) for p in parts))
        return vocab, merges


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, the characters its vocab.json and merges.txt use:
    the printable Latin-1 bytes stand for themselves, the other 68 get code points 256, 257, ... in
    byte order (so no token is spelt with whitespace or control characters)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    others = iter(range(256, 512))
    return {b: chr(b) if b in printable else chr(next(others)) for b in range(256)}


def _bpe_parts(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    """token's bytes merged as BPE merges them (lowest rank first), using ranks below `below` only."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        found = [(ranks.get(a + b, below), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(found)
        if rank >= below:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _split_at_line_starts(text: str, target: int) -> list[str]:
    """Cut text into chunks of about `target` characters, only after a newline that has a
    non-space character on both sides: there GPT-2's pre-tokenizer always makes "\n" a token of
    its own, so encoding the chunks separately gives the same ids as encoding the whole."""
    chunks, start, n = [], 0, len(text)
    while n - start > target:
        cut = text.find("\n", start + target)
        while cut != -1 and (cut + 1 >= n or text[cut + 1].isspace() or text[cut - 1].isspace()):
            cut = text.find("\n", cut + 1)
        if cut == -1:
            break
        chunks.append(text[start : cut + 1])
        start = cut + 1
    chunks.append(text[start:])
    return chunks


def build_tokenizer(kind: str, text: str | None = None):
    """A fresh tokenizer for preparing data: 'char' (needs the text) or a tiktoken encoding name."""
    if kind == "char":
        if text is None:
            raise TokenizerError("a char tokenizer is built from the training text")
        return CharTokenizer.from_text(text)
    return TiktokenTokenizer(kind)


def undecodable_ids(tokenizer, model_vocab_size: int) -> list[int]:
    """Ids a model can emit but the tokenizer cannot decode -- those past its vocabulary, such as
    the [MASK] token added for token-masking augmentation. Sampling suppresses them."""
    return list(range(tokenizer.vocab_size, model_vocab_size))


def tokenizer_from_meta(meta: dict):
    """The tokenizer a dataset (or a checkpoint) was prepared with, from its meta dict."""
    kind = meta.get("tokenizer")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind:
        return TiktokenTokenizer(kind)
    raise TokenizerError(f"meta has no 'tokenizer' entry: {sorted(meta)}")
