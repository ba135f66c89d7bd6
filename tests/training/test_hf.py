"""gptlab's model as a Hugging Face GPT-2 folder (training/hf.py): transformers loads it and computes
the same logits; GPT-2's tokenizer files encode as tiktoken does; models transformers' GPT-2
cannot compute are refused; the destination is never clobbered and appears whole or not at all."""

import json

import pytest
import tiktoken
import torch

from gptlab.errors import ConfigError
from gptlab.model import GPT, GPTConfig
from gptlab.training import hf, pretrained
from gptlab.training.checkpoint import load_model, save_weights

transformers = pytest.importorskip("transformers")

BPE = {"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256}
TEXT = "ROMEO:\nBut, soft!  what light through yonder window breaks?\n\tIt is the east — and Juliet.\n¿Über? 日本"


def weights_file(folder, tokenizer=BPE, seed=0, **shape):
    """A random gptlab model as a weights file (what export_weights writes), biases and norms off their init."""
    torch.manual_seed(seed)
    mc = GPTConfig(
        **{**dict(vocab_size=tokenizer["vocab_size"], block_size=32, n_layer=2, n_head=2, n_embd=32), **shape}
    )
    model = GPT(mc)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    path = folder / "weights.safetensors"
    save_weights(model.state_dict(), {"model_config": mc.to_dict(), "tokenizer": tokenizer}, path)
    return path


def same_logits(src, folder, vocab):
    ours, _ = load_model(src)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    x = torch.randint(0, vocab, (3, 32))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x, x)[0], rtol=0, atol=1e-5)
    return theirs


@pytest.mark.parametrize(
    "shape",
    [
        {},  # GPT-2's recipe with gptlab's exact GELU
        {"mlp": "gelu_tanh"},  # OpenAI's GELU
        {"bias": False, "vocab_multiple": 64},  # zero biases; the padding rows dropped
        {"tie_embeddings": False},  # the head's own matrix: tie_word_embeddings=false
    ],
    ids=["gelu", "gelu_tanh", "nobias_padded", "untied"],
)
def test_transformers_loads_the_export_with_the_same_logits(tmp_path, shape):
    src = weights_file(tmp_path, **shape)
    files = hf.export(src, tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    theirs = same_logits(src, tmp_path / "hf", 50257)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vocab_size"] == 50257 and theirs.lm_head.weight.shape[0] == 50257
    assert config["activation_function"] == ("gelu_new" if shape.get("mlp") == "gelu_tanh" else "gelu")
    assert config.get("tie_word_embeddings", True) is shape.get("tie_embeddings", True)
    if shape.get("bias") is False:
        assert not theirs.transformer.h[0].attn.c_attn.bias.any() and not theirs.transformer.ln_f.bias.any()


def test_the_tokenizer_files_encode_as_tiktoken(tmp_path):
    hf.export(weights_file(tmp_path), tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    enc = tiktoken.get_encoding("gpt2")
    text = TEXT + (tmp_path.parent / "..").resolve().as_posix() + " 1234567 ..." * 3
    assert tok(text)["input_ids"] == enc.encode_ordinary(text)
    assert tok.decode(enc.encode_ordinary(text)) == text
    assert tok.eos_token_id == 50256 and len(tok) == 50257


def test_a_character_level_export_has_no_tokenizer_files_and_loads_back(tmp_path, compose, data_root):
    meta = json.loads((data_root / "shakespeare_char" / "meta.json").read_text())
    chars = {"tokenizer": "char", "vocab_size": 65, "chars": meta["chars"]}
    src = weights_file(tmp_path, tokenizer=chars)
    files = hf.export(src, tmp_path / "hf")
    assert (
        not {"tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} & set(files)
        and "model.safetensors" in files
    )
    same_logits(src, tmp_path / "hf", 65)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())[hf.TOKENIZER_KEY] == chars
    # and back: the export names its characters, so init_from=hf: takes it on the same char data
    cfg = compose(f"init_from=hf:{tmp_path / 'hf'}")
    source = pretrained.open_source(cfg)
    assert source.tokenizer == chars and source.shape["mlp"] == "gelu"


def test_what_transformers_gpt2_cannot_compute_is_refused_in_one_message(tmp_path):
    src = weights_file(tmp_path, pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", logit_softcap=30.0)
    with pytest.raises(ConfigError) as e:
        hf.export(src, tmp_path / "hf")
    assert "pos_emb=rope, norm=rmsnorm, qk_norm=true, mlp=swiglu, logit_softcap=30.0" in str(e.value)
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ConfigError, match="mlp=relu2"):
        hf.export(weights_file(tmp_path, mlp="relu2"), tmp_path / "hf")


def test_the_destination_is_never_clobbered(tmp_path, monkeypatch):
    src = weights_file(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds files that are not an earlier gptlab export"):
        hf.export(src, mine)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    with pytest.raises(ConfigError, match="is a file"):
        hf.export(src, mine / "notes.txt")
    # an earlier export is replaced; a write that fails leaves the earlier one whole and no leftovers
    hf.export(src, tmp_path / "hf")
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    monkeypatch.setattr(hf, "_write_gpt2_tokenizer", lambda folder: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        hf.export(weights_file(tmp_path, seed=1), tmp_path / "hf")
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before
    monkeypatch.undo()
    hf.export(weights_file(tmp_path, seed=1), tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() != before["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "mine", "weights.safetensors"]  # no temporary folders


def test_without_transformers_one_message_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"pip install 'gptlab\[hf\]'"):
        hf.export(weights_file(tmp_path), tmp_path / "hf")
