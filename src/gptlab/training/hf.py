"""Hugging Face's GPT-2 format, in and out: a folder with config.json and the weights, as
`save_pretrained` writes it and `GPT2LMHeadModel.from_pretrained` reads it.

In: OpenAI's GPT-2 weights by nanoGPT's names (gpt2, gpt2-medium, gpt2-large, gpt2-xl) from the
local Hugging Face cache (downloaded there when it can be), or any GPT-2 folder. Out: a gptlab run
as such a folder, with the GPT-2 tokenizer's files for GPT-2 BPE runs. The parameter names are the
same on both sides (gptlab keeps nanoGPT's, which are GPT-2's); GPT-2's four matmuls are Conv1D
modules there, whose weights are stored transposed.

transformers and safetensors are the optional extra gptlab[hf]; transformers is imported only
where it is used (it takes seconds to import, and training never needs it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from gptlab.config.checks import GPT2_WEIGHTS
from gptlab.data.tokenizer import TiktokenTokenizer
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model import GPTConfig
from gptlab.training.checkpoint import load_checkpoint, model_state_dict

log = logging.getLogger("gptlab")

# nanoGPT's names for OpenAI's GPT-2 sizes and their Hugging Face repositories; older downloads
# were cached under the bare name, so both are looked up
HUB_IDS = {name: f"openai-community/{name}" for name in GPT2_WEIGHTS}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # stored (in, out)
# GELU's two formulas, as transformers names them: gelu_new is GPT-2's tanh approximation
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
EXPORT_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new"}
TOKENIZER_KEY = "gptlab_tokenizer"  # config.json: the tokenizer a gptlab export was trained with
# what an export writes (a folder holding anything else is not replaced)
EXPORT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
}
GPT2_BPE = {"tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256}


def transformers():
    """The transformers package, or one message saying how to install it."""
    try:
        import transformers as tf  # only here: optional (gptlab[hf]) and slow to import

        tf.logging.set_verbosity_error()  # its load reports and progress bars repeat what gptlab says in one line
        tf.logging.disable_progress_bar()
        return tf
    except ImportError:
        raise ConfigError("Hugging Face weights need the transformers package: pip install 'gptlab[hf]'") from None


# ---------------------------------------------------------------------------- in


def locate(ref: str) -> Path:
    """The local folder of ref: a GPT-2 size (gpt2, ...) from the Hugging Face cache, downloaded
    into it first if it is not there and the Hub can be reached; or a folder (hf:<folder>)."""
    if ref not in HUB_IDS:
        folder = Path(ref).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"init_from=hf:{ref}: no config.json in '{folder}'; give a folder written by save_pretrained"
            )
        return folder
    transformers()  # the message to install it, before huggingface_hub's ImportError
    from huggingface_hub import snapshot_download  # only here: installed with transformers

    wanted = dict(allow_patterns=["*.json", "*.safetensors"])  # not the TF, Flax, Rust and ONNX copies
    for repo in (HUB_IDS[ref], ref):
        try:
            return Path(snapshot_download(repo, local_files_only=True, **wanted))
        except Exception:  # not cached under this name
            continue
    try:
        log.info(f"init_from={ref}: not in the local Hugging Face cache; downloading {HUB_IDS[ref]}")
        return Path(snapshot_download(HUB_IDS[ref], **wanted))
    except Exception as e:
        raise ConfigError(
            f"init_from={ref}: OpenAI's weights are not in the local Hugging Face cache "
            f"({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'}) and could "
            f"not be downloaded ({type(e).__name__}). Download them once where the Hub can be reached (python -c "
            f"\"from transformers import GPT2LMHeadModel; GPT2LMHeadModel.from_pretrained('{HUB_IDS[ref]}')\"), "
            "or give init_from=hf:<a folder written by save_pretrained>"
        ) from None


def read_config(folder: Path) -> dict:
    """The model shape of a GPT-2 folder as GPTConfig fields, and its tokenizer; refuses the GPT-2
    variants gptlab's model cannot compute."""
    try:
        c = transformers().AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise ConfigError(f"'{folder}' holds no readable Hugging Face config ({str(e).splitlines()[0]})") from None
    if c.model_type != "gpt2":
        raise ConfigError(f"'{folder}' holds a {c.model_type} model; gptlab loads GPT-2 models (model_type gpt2)")
    unsupported = {
        f"activation_function={c.activation_function}": c.activation_function not in ACTIVATIONS,
        f"n_inner={c.n_inner}": c.n_inner not in (None, 4 * c.n_embd),
        "scale_attn_weights=false": not c.scale_attn_weights,
        "scale_attn_by_inverse_layer_idx=true": c.scale_attn_by_inverse_layer_idx,
        "add_cross_attention=true": c.add_cross_attention,
        f"layer_norm_epsilon={c.layer_norm_epsilon}": c.layer_norm_epsilon != 1e-5,
    }
    if any(unsupported.values()):
        raise ConfigError(
            f"'{folder}': gptlab's GPT computes GPT-2 as OpenAI built it, not with "
            + ", ".join(k for k, v in unsupported.items() if v)
        )
    tokenizer = getattr(c, TOKENIZER_KEY, None)
    if tokenizer is None and c.vocab_size != GPT2_BPE["vocab_size"]:
        raise ConfigError(
            f"'{folder}': a vocabulary of {c.vocab_size:,} is not GPT-2's BPE (50,257) and the folder does not "
            "say which tokenizer it is (a gptlab export does); gptlab loads GPT-2 BPE models and its own exports"
        )
    shape = dict(
        vocab_size=c.vocab_size,
        block_size=c.n_positions,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_embd=c.n_embd,
        bias=True,
        mlp=ACTIVATIONS[c.activation_function],
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", True)),
    )
    return {"shape": shape, "tokenizer": tokenizer or GPT2_BPE}


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A GPT-2 folder's weights in gptlab's layout (float32), read by transformers itself."""
    try:
        hf = transformers().GPT2LMHeadModel.from_pretrained(str(folder))
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"could not load the weights in '{folder}': {str(e).splitlines()[0]}") from None
    out = {}
    for k, v in hf.state_dict().items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # older transformers keep the causal mask as a buffer: not a weight
        out[k] = (v.t() if k.endswith(CONV1D) else v).float().contiguous()
    return out


# ---------------------------------------------------------------------------- out


def unexportable(mc: dict) -> list[str]:
    """The switches of a model (GPTConfig fields) that transformers' GPT-2 cannot compute."""
    found = {
        "pos_emb=rope": mc.get("pos_emb", "learned") != "learned",
        "norm=rmsnorm": mc.get("norm", "layernorm") != "layernorm",
        "qk_norm=true": bool(mc.get("qk_norm")),
        f"mlp={mc.get('mlp')}": mc.get("mlp", "gelu") not in EXPORT_ACTIVATION,
        f"logit_softcap={mc.get('logit_softcap')}": mc.get("logit_softcap") is not None,
    }
    return [k for k, v in found.items() if v]


def export(src: str | Path, dst: str | Path) -> list[str]:
    """Write the model of a run folder, checkpoint or weights file as a Hugging Face GPT-2 folder;
    returns the names of the files written. dst must be new, empty, or an earlier export (which is
    replaced); the folder appears complete or not at all (written beside it, then renamed)."""
    ckpt = load_checkpoint(src)
    info = ckpt["gptlab"]
    mc = GPTConfig(**info["model_config"]).to_dict()
    refused = unexportable(mc)
    if refused:
        raise ConfigError(
            f"'{src}' cannot be exported to Hugging Face's GPT-2: its model uses {', '.join(refused)}, which "
            "transformers' GPT2LMHeadModel does not compute (it exports GPT-2's recipe: learned positions, "
            "LayerNorm, GELU, no QK-norm, no soft-cap)"
        )
    dst = Path(dst).expanduser()
    _check_destination(dst)
    tf = transformers()
    tokenizer = info.get("tokenizer", {})
    config = tf.GPT2Config(
        vocab_size=mc["vocab_size"],
        n_positions=mc["block_size"],
        n_embd=mc["n_embd"],
        n_layer=mc["n_layer"],
        n_head=mc["n_head"],
        activation_function=EXPORT_ACTIVATION[mc["mlp"]],
        resid_pdrop=mc["dropout"],
        embd_pdrop=mc["dropout"],
        attn_pdrop=mc["dropout"],
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=mc["tie_embeddings"],
        bos_token_id=tokenizer.get("eot_token"),
        eos_token_id=tokenizer.get("eot_token"),
        architectures=["GPT2LMHeadModel"],
        **{TOKENIZER_KEY: tokenizer},
    )
    hf = tf.GPT2LMHeadModel(config)
    hf.load_state_dict(_to_hf(model_state_dict(ckpt), hf.state_dict(), mc), strict=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        hf.save_pretrained(str(tmp))
        if tokenizer.get("tokenizer") == "gpt2":
            _write_gpt2_tokenizer(tmp)
        _replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(p.name for p in dst.iterdir())


def _to_hf(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], mc: dict) -> dict[str, torch.Tensor]:
    """gptlab's weights under GPT2LMHeadModel's names and shapes: Conv1D weights transposed, the
    padding rows of pad_vocab dropped, zero biases for a bias=false model."""
    V, out = mc["vocab_size"], {}
    for k, like in theirs.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            out[k] = like  # a causal-mask buffer of older transformers, not a weight
        elif k in ours:
            v = ours[k].t() if k.endswith(CONV1D) else ours[k]
            out[k] = v[:V] if k in ("transformer.wte.weight", "lm_head.weight") else v
        elif k.endswith(".bias"):
            out[k] = torch.zeros_like(like)  # bias=false: GPT-2 always adds one; zero adds nothing
        else:
            raise CheckpointError(f"the checkpoint has no weight for GPT-2's {k}")
    return out


def _write_gpt2_tokenizer(folder: Path) -> None:
    """GPT-2's tokenizer files, written by transformers from the vocabulary and merges that tiktoken's
    gpt2 encoding holds (offline: tiktoken's cached files are all it needs)."""
    vocab, merges = TiktokenTokenizer("gpt2").vocab_and_merges()
    with tempfile.TemporaryDirectory() as src:
        Path(src, "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        Path(src, "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8"
        )
        # decode gives tiktoken's text back: no "clean-up" of spaces before punctuation (transformers 4's default)
        tok = transformers().GPT2TokenizerFast.from_pretrained(src, clean_up_tokenization_spaces=False)
    tok.model_max_length = json.loads((folder / "config.json").read_text())["n_positions"]
    tok.save_pretrained(str(folder))


def _check_destination(dst: Path) -> None:
    """dst may be new, an empty folder, or an earlier export; never a folder of other files."""
    if not dst.exists():
        return
    if not dst.is_dir():
        raise ConfigError(f"'{dst}' is a file; give a folder to export into")
    names = {p.name for p in dst.iterdir()}
    if not names:
        return
    others = sorted(n for n in names if n not in EXPORT_FILES or not (dst / n).is_file())
    earlier = "config.json" in names and TOKENIZER_KEY in _json(dst / "config.json")
    if others or not earlier:
        shown = ", ".join((others or sorted(names))[:5])
        raise ConfigError(
            f"'{dst}' holds files that are not an earlier gptlab export ({shown}); export into a new or empty "
            "folder (nothing in it is replaced)"
        )


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _replace(tmp: Path, dst: Path) -> None:
    """tmp becomes dst by renames in one folder: an earlier export is moved aside first and
    removed only once the new one is in place."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
