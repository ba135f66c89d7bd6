import json

import numpy as np
import pytest
from tiktoken.load import read_file_cached

from gptlab.data.tokenizer import CharTokenizer, TiktokenTokenizer, TokenizerError, tokenizer_from_meta


def test_char_roundtrip_and_sorted_ids():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == sorted(set("hello world"))
    ids = tok.encode("hello")
    assert ids.tolist() == [tok.stoi[c] for c in "hello"]
    assert tok.decode(ids) == "hello"
    again = tokenizer_from_meta(tok.to_meta())
    assert again.decode(again.encode("world")) == "world"


def test_char_handles_non_ascii_and_rejects_unknown():
    tok = CharTokenizer.from_text("naïve — 東京")
    assert tok.decode(tok.encode("東京 naïve")) == "東京 naïve"
    with pytest.raises(TokenizerError, match="not in this character vocabulary"):
        tok.encode("xyz")


def test_gpt2_bpe_known_ids():
    tok = TiktokenTokenizer("gpt2")
    assert tok.encode("Hello world").tolist() == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot_token == 50256
    assert tok.decode([15496, 995]) == "Hello world"


def test_threaded_bpe_equals_single_call():
    import tiktoken

    # blank lines, indented lines and long runs exercise the chunk boundaries
    text = "First Citizen:\nBefore we proceed\n\n  any further, hear me speak.\n\n\nAll:\nSpeak, speak.\n" * 4000
    tok = TiktokenTokenizer("gpt2")
    expected = tiktoken.get_encoding("gpt2").encode_ordinary(text)
    assert np.array_equal(tok.encode(text), np.asarray(expected))


def test_gpt2_vocab_and_merges_are_gpt2s_own_files():
    """Rebuilt from tiktoken's ranks alone, they equal OpenAI's encoder.json and vocab.bpe (the files
    tiktoken built its gpt2 encoding from; read here from its cache)."""
    vocab, merges = TiktokenTokenizer("gpt2").vocab_and_merges()
    url = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
    assert vocab == json.loads(read_file_cached(url + "encoder.json"))
    lines = read_file_cached(url + "vocab.bpe").decode("utf-8").split("\n")[1:]  # after "#version: 0.2"
    assert merges == [tuple(line.split(" ")) for line in lines if line]
    assert len(vocab) == 50257 and len(merges) == 50000
