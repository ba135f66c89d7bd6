"""conf/experiment/finetune_shakespeare.yaml: nanoGPT's fine-tuning recipe composes at both scales,
and runs end to end from a tiny Hugging Face GPT-2 folder in place of OpenAI's weights."""

import pytest
import torch

from gptlab.cli import common as cli
from gptlab.config import validate
from gptlab.training.checkpoint import load_checkpoint
from gptlab.training.run import train

transformers = pytest.importorskip("transformers")


def recipe(*overrides: str):
    cfg = cli.compose("train", ["experiment=finetune_shakespeare", *overrides])
    validate(cfg)
    return cfg


def test_the_recipe_is_nanogpts_finetune_shakespeare():
    gpu, cpu = recipe("profile=gpu"), recipe("device=cpu")  # the config as written; the CPU profile's scale
    for cfg in (gpu, cpu):
        assert (cfg.init_from, cfg.data.tokenizer, cfg.learning_rate, cfg.decay_lr) == ("gpt2", "gpt2", 3e-5, False)
        assert (cfg.max_iters, cfg.warmup_iters, cfg.dropout, cfg.eval_interval) == (20, 0, 0.0, 5)
    assert (gpu.block_size, gpu.batch_size, gpu.gradient_accumulation_steps) == (1024, 1, 32)
    assert (cpu.block_size, cpu.batch_size, cpu.gradient_accumulation_steps) == (128, 4, 2)


def test_the_recipe_fine_tunes_a_gpt2_folder(bpe_root, tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(tmp_path / "hf"))
    cfg = recipe(
        "device=cpu",
        f"init_from=hf:{tmp_path / 'hf'}",  # in place of OpenAI's gpt2, which tests never download
        f"data.root={bpe_root}",
        "block_size=32",
        "max_iters=2",
        "eval_interval=1",
        "eval_iters=2",
        "sample_tokens=0",
        "eval_sample_tokens=0",
    )
    metrics = train(cfg, tmp_path / "run")
    assert [e["step"] for e in metrics["evals"]] == [0, 1, 2] and metrics["iters"] == 2
    ckpt = load_checkpoint(tmp_path / "run" / "last.ckpt")
    assert ckpt["gptlab"]["model_config"]["mlp"] == "gelu_tanh" and ckpt["gptlab"]["config"]["n_embd"] == 32
    assert ckpt["lr_schedulers"][0]["_last_lr"] == [3e-5, 3e-5]  # constant: no warmup, no decay
