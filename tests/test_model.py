import math

import pytest
import torch

from gptlab.model import GPT, GPTConfig


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=False)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def test_shapes_with_and_without_targets():
    m = tiny()
    x = torch.randint(0, 65, (3, 16))
    logits, loss = m(x, x)
    assert logits.shape == (3, 16, 65) and loss.ndim == 0
    logits, loss = m(x)
    assert logits.shape == (3, 1, 65) and loss is None  # generation only needs the last position


def test_causality_later_tokens_do_not_change_earlier_logits():
    m = tiny().eval()
    x = torch.randint(0, 65, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 7) % 65
    la, _ = m(x, x)
    lb, _ = m(y, y)
    assert torch.allclose(la[0, :10], lb[0, :10], atol=1e-6)
    assert not torch.allclose(la[0, 10:], lb[0, 10:], atol=1e-3)


def test_initial_loss_is_near_uniform_guess():
    m = tiny(n_layer=4, n_embd=64)
    x = torch.randint(0, 65, (8, 16))
    y = torch.randint(0, 65, (8, 16))
    _, loss = m(x, y)
    assert abs(loss.item() - math.log(65)) < 0.1


def test_weight_tying_and_param_counts():
    m = tiny()
    assert m.lm_head.weight is m.transformer.wte.weight
    total = sum(p.numel() for p in m.parameters())  # tied weight counted once by parameters()
    assert m.num_params(non_embedding=False) == total
    assert m.num_params() == total - 16 * 32


def test_baby_gpt_has_nanogpt_parameter_count():
    m = GPT(GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, bias=False))
    assert round(m.num_params() / 1e6, 2) == 10.65  # nanoGPT reports 10.65M for the baby GPT


def test_gpt2_residual_projection_init():
    m = tiny(n_layer=8, n_embd=128)
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in m.transformer.h])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in m.transformer.h])
    assert abs(proj.std().item() - 0.02 / math.sqrt(2 * 8)) < 0.001
    assert abs(fc.std().item() - 0.02) < 0.001


def test_weight_decay_only_on_matrices():
    m = tiny(bias=True)
    decay, no_decay = m.optimizer_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_generate_length_topk_and_long_context():
    m = tiny().eval()
    g = torch.Generator().manual_seed(1)
    out = m.generate(torch.zeros((2, 3), dtype=torch.long), 20, temperature=0.8, top_k=1, generator=g)
    assert out.shape == (2, 23)  # runs past block_size=16 by cropping the context
    # top_k=1 is greedy: both rows started equal, so they stay equal
    assert torch.equal(out[0], out[1])


def test_invalid_shapes_are_rejected():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="positive"):
        GPTConfig(n_layer=0)
