"""init_from=<weights>: a Hugging Face GPT-2 folder, OpenAI's names through the Hugging Face cache,
and gptlab's own checkpoints, weights files and run folders -- each loads exactly, trains from
step 0 with a fresh optimizer, or is refused with one message."""

import json
import math

import pytest
import torch

from gptlab.errors import CheckpointError, ConfigError
from gptlab.rundir import EXPORT, EXPORT_PT
from gptlab.training import pretrained
from gptlab.training.checkpoint import load_checkpoint, load_model, model_state_dict
from gptlab.training.run import build_data, build_module, train

transformers = pytest.importorskip("transformers")

BPE_RUN = ("data=shakespeare", "max_iters=2", "eval_interval=2", "warmup_iters=0", "batch_size=4")


def tiny_gpt2(folder, seed=0, **config):
    """A random 2-layer GPT-2 with GPT-2's vocabulary, saved as save_pretrained writes it."""
    torch.manual_seed(seed)
    cfg = {**dict(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257), **config}
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg)).eval()
    with torch.no_grad():  # biases and norms away from their 0 / 1 init: a wrong mapping of them shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(folder))
    return model


def loaded(cfg):
    """What train() builds from cfg before its first step: the config with the weights' shape, and the model."""
    source = pretrained.open_source(cfg)
    cfg = pretrained.adopt_shape(cfg, source)
    return cfg, build_module(cfg, build_data(cfg), source).model.eval()


@pytest.mark.parametrize("tied", [True, False])
def test_an_hf_folder_loads_with_the_same_logits(compose, bpe_root, tmp_path, tied):
    hf = tiny_gpt2(tmp_path / "hf", tie_word_embeddings=tied)
    cfg, model = loaded(compose(f"init_from=hf:{tmp_path / 'hf'}", "data=shakespeare", f"data.root={bpe_root}"))
    # the shape is the weights' (the tiny overrides said 2/2/32 too; mlp and bias differ from them)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.bias, cfg.mlp) == (2, 2, 32, True, "gelu_tanh")
    assert cfg.tie_embeddings is tied and model.config.block_size == 32  # cropped from 64
    x = torch.randint(0, 50257, (3, 32))
    with torch.no_grad():
        ours, _ = model(x, x)
        theirs = hf(x).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_the_shape_comes_from_the_weights(compose, bpe_root, tmp_path):
    tiny_gpt2(tmp_path / "hf", n_layer=3, n_embd=48, n_head=4)
    cfg, model = loaded(compose(f"init_from=hf:{tmp_path / 'hf'}", "data=shakespeare", f"data.root={bpe_root}"))
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (3, 4, 48) and len(model.transformer.h) == 3


def test_fine_tuning_from_an_hf_folder_trains_from_step_0(compose, bpe_root, tmp_path):
    hf = tiny_gpt2(tmp_path / "hf")
    cfg = compose(f"init_from=hf:{tmp_path / 'hf'}", *BPE_RUN, f"data.root={bpe_root}", "learning_rate=1e-6")
    cfg.min_lr = 0.0
    metrics = train(cfg, tmp_path / "run")
    assert metrics["iters"] == 2 and [e["step"] for e in metrics["evals"]] == [0, 2]
    ckpt = load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert ckpt["global_step"] == 2 and ckpt["optimizer_states"][0]["state"][0]["step"] == 2  # a fresh AdamW
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "initial_val_loss" not in saved  # trained weights are not checked against the random-guess loss
    # two steps of 1e-6 moved every weight by about 1e-6 from GPT-2's: loaded, then trained
    ours = model_state_dict(ckpt)["transformer.h.0.attn.c_attn.weight"]
    theirs = hf.state_dict()["transformer.h.0.attn.c_attn.weight"].t()
    assert 0 < (ours - theirs).abs().max() < 1e-5


def test_init_from_gpt2_reads_the_hugging_face_cache(run_cli, tiny, bpe_root, tmp_path, monkeypatch):
    """OpenAI's names resolve through Hugging Face's own cache layout, offline; a size not there is refused."""
    snapshot = tmp_path / "hub" / "models--openai-community--gpt2" / "snapshots" / ("0" * 40)
    tiny_gpt2(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = [*tiny, *BPE_RUN, f"data.root={bpe_root}"]
    r = run_cli("gptlab.train", "init_from=gpt2", f"out_dir={tmp_path / 'run'}", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"init_from=gpt2: weights loaded from {snapshot}" in r.stderr + r.stdout
    r = run_cli("gptlab.train", "init_from=gpt2-medium", f"out_dir={tmp_path / 'medium'}", *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "init_from=gpt2-medium: OpenAI's weights are not in the local Hugging Face cache" in r.stderr
    assert not list(tmp_path.glob("medium/*.ckpt"))


# ---------------------------------------------------------------------------- gptlab's own weights


@pytest.fixture(scope="module")
def char_run(tmp_path_factory, compose):
    d = tmp_path_factory.mktemp("char_run")
    train(compose("max_iters=40", "eval_interval=20", "learning_rate=1e-2", "export_weights=true"), d)
    return d


def test_a_run_folder_gives_its_weights_and_shape_to_a_new_run(char_run, compose, tmp_path):
    # the config asks for another shape; the checkpoint's wins
    cfg, model = loaded(compose(f"init_from={char_run}", "n_layer=4", "n_embd=64", "block_size=16", "max_iters=2"))
    assert (cfg.n_layer, cfg.n_embd) == (2, 32)
    best, _ = load_model(char_run / "best.ckpt")
    x = torch.randint(0, 65, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(x, x)[0], best(x, x)[0])
    metrics = train(cfg, tmp_path / "run")
    assert metrics["iters"] == cfg.max_iters and metrics["evals"][0]["step"] == 0
    # fine-tuning starts where the run left off: its step-0 loss is the trained one, not ln(65)
    assert metrics["evals"][0]["val_loss"] < math.log(65) - 0.5


@pytest.mark.parametrize("name", ["last.ckpt", EXPORT, EXPORT_PT])
def test_checkpoints_and_weights_files_load_exactly(char_run, compose, tmp_path, name):
    path = char_run / name
    if name == EXPORT_PT:  # what export_weights wrote before safetensors: a torch pickle
        ckpt = load_checkpoint(char_run / "best.ckpt")
        torch.save({"state_dict": model_state_dict(ckpt), "gptlab": ckpt["gptlab"]}, tmp_path / name)
        path = tmp_path / name
    _, model = loaded(compose(f"init_from={path}"))
    want, _ = load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), want.state_dict().values()))


def test_token_masking_and_pad_vocab_keep_their_own_rows(char_run, compose):
    _, model = loaded(compose(f"init_from={char_run}", "augment.mask_prob=0.1", "pad_vocab=true"))
    best, _ = load_model(char_run / "best.ckpt")
    table = model.transformer.wte.weight
    assert table.shape[0] == 128 and torch.equal(table[:65], best.transformer.wte.weight)  # 65 + [MASK], padded


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data=shakespeare"], "was trained with a character vocabulary of 65, but this run's data uses "),
        (
            ["data=text", "data.path=README.md"],
            r"this run's data has a character vocabulary of \d+ \(other characters\)",
        ),
        (["block_size=64"], r"block_size=64 is longer than init_from=.*'s position table \(32\)"),
    ],
)
def test_weights_that_do_not_fit_the_data_are_refused(char_run, compose, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(compose(f"init_from={char_run}", *overrides), tmp_path / "run")
    assert not list(tmp_path.glob("run/*.ckpt")) and not (tmp_path / "run" / "metrics.json").exists()


def test_char_data_for_gpt2_weights_is_refused(compose, tmp_path):
    tiny_gpt2(tmp_path / "hf")
    with pytest.raises(ConfigError, match=r"the gpt2 tokenizer \(50,257 tokens\).*data=shakespeare"):
        train(compose(f"init_from=hf:{tmp_path / 'hf'}"), tmp_path / "run")


@pytest.mark.parametrize(
    "init_from, extra, error, message",
    [
        ("nowhere/run", [], ConfigError, "init_from=nowhere/run: no such file or folder"),
        ("hf:", [], ConfigError, "init_from=hf: needs a folder"),
        ("hf:{tmp}", [], ConfigError, "no config.json in"),
        ("{tmp}", [], CheckpointError, "holds no best.ckpt, last.ckpt or weights.safetensors"),
        ("{tmp}/notes.txt", [], CheckpointError, "is a text file, not a checkpoint"),
        ("{run}", ["ckpt_path=last"], ConfigError, "drop one of them"),
        ("{run}", ["learning_rate=auto"], ConfigError, "learning_rate=auto searches on a freshly initialised model"),
    ],
)
def test_every_init_from_loads_or_is_refused(char_run, compose, tmp_path, init_from, extra, error, message):
    (tmp_path / "notes.txt").write_text("not weights\n")
    value = init_from.format(tmp=tmp_path, run=char_run)
    with pytest.raises(error, match=message):
        train(compose(f"init_from={value}", *extra), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_gpt2_variants_are_refused(compose, bpe_root, tmp_path):
    tiny_gpt2(tmp_path / "hf", activation_function="relu", scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ConfigError, match="not with activation_function=relu, scale_attn_by_inverse_layer_idx=true"):
        train(compose(f"init_from=hf:{tmp_path / 'hf'}", "data=shakespeare", f"data.root={bpe_root}"), tmp_path / "r")


def test_eval_only_evaluates_the_weights(char_run, compose, tmp_path):
    result = train(compose(f"init_from={char_run}", "eval_only=true"), tmp_path / "eval")
    assert result["checkpoint"] == str(char_run / "best.ckpt") and result["val_loss"] < math.log(65) - 0.5
