"""Token-masking augmentation: BERT's 80/10/10 corruption of training inputs only."""

import pytest
import torch

from gptlab.cli.sample import generate
from gptlab.config import token_masking, validate
from gptlab.data.augment import TokenMasking, mask_tokens
from gptlab.errors import ConfigError
from gptlab.model import GPT, GPTConfig
from gptlab.training.checkpoint import load_checkpoint, load_model
from gptlab.training.run import train

V, MASK = 65, 65


def corrupt(p, n=1 << 20, seed=0):
    idx = torch.randint(V, (n // 1024, 1024), generator=torch.Generator().manual_seed(seed + 1))
    out = mask_tokens(idx, p, MASK, V, torch.Generator().manual_seed(seed))
    return idx, out


@pytest.mark.parametrize("p", [0.15, 0.5])
def test_chosen_positions_split_80_10_10(p):
    idx, out = corrupt(p)
    masked = (out == MASK).float().mean().item()
    replaced = ((out != idx) & (out != MASK)).float().mean().item()
    unchanged = (out == idx).float().mean().item()
    # a random replacement equals the original token 1 time in V
    assert masked == pytest.approx(0.8 * p, abs=0.003)
    assert replaced == pytest.approx(0.1 * p * (1 - 1 / V), abs=0.002)
    assert unchanged == pytest.approx(1 - 0.9 * p + 0.1 * p / V, abs=0.003)  # the kept 10% of the chosen among them
    assert out.dtype == idx.dtype and out.shape == idx.shape and int(out[out != MASK].max()) < V


def test_zero_probability_is_the_identity_and_input_is_not_modified():
    idx = torch.randint(V, (4, 32))
    assert mask_tokens(idx, 0.0, MASK, V) is idx
    copy = idx.clone()
    mask_tokens(idx, 0.5, MASK, V)
    assert torch.equal(idx, copy)
    with pytest.raises(ValueError):
        mask_tokens(idx, 1.5, MASK, V)


def test_seeded_per_rank():
    idx = torch.randint(V, (8, 64))
    a, b, c = TokenMasking(0.3, MASK, V, seed=7), TokenMasking(0.3, MASK, V, seed=7), TokenMasking(0.3, MASK, V, seed=7)
    assert torch.equal(a(idx), b(idx))
    assert not torch.equal(a(idx), c(idx, rank=1))
    state = a.state_dict()
    expected = a(idx)
    b.load_state_dict(state)
    assert torch.equal(b(idx), expected)  # the state carried in checkpoints replays the same masks


def test_training_inputs_corrupted_targets_and_evaluation_clean(compose, tmp_path, monkeypatch):
    seen = []
    real_forward = GPT.forward

    def spy(self, idx, targets=None, **kw):
        seen.append((self.training, idx.clone(), None if targets is None else targets.clone()))
        return real_forward(self, idx, targets, **kw)

    monkeypatch.setattr(GPT, "forward", spy)
    metrics = train(compose("augment.mask_prob=0.2", "max_iters=10", "eval_interval=5", "sample_tokens=50"), tmp_path)
    assert metrics["iters"] == 10
    train_calls = [(x, y) for training, x, y in seen if training]
    eval_calls = [(x, y) for training, x, y in seen if not training and y is not None]
    assert len(train_calls) == 10 and eval_calls
    x_all = torch.cat([x for x, _ in train_calls])
    assert (x_all == MASK).float().mean().item() == pytest.approx(0.16, abs=0.03)
    # targets are the clean next tokens: where the input was left alone, it is the previous target
    for x, y in train_calls:
        assert int(y.max()) < V
        kept = x[:, 1:] != MASK
        agree = (x[:, 1:] == y[:, :-1])[kept].float().mean().item()
        assert agree > 0.95  # only the 10%-random replacements (2% of positions) disagree
    assert all(int(x.max()) < V for x, _ in eval_calls)  # evaluation: no [MASK] anywhere
    # the model has one more token than the data; sampling never emits it and decodes
    model, _ = load_model(tmp_path / "last.ckpt")
    assert model.config.vocab_size == V + 1
    assert "augment" in load_checkpoint(tmp_path / "last.ckpt")  # the masking RNG, for resume
    monkeypatch.setattr(GPT, "forward", real_forward)
    text = generate(str(tmp_path), "To be", 1, 40, 1.0, None, 1)[0]
    assert text.startswith("To be") and len(text) == 45


class MaskLoving(GPT):
    """A model whose [MASK] logit outscores every other token."""

    def forward(self, idx, targets=None, **kw):
        logits, loss = super().forward(idx, targets, **kw)
        logits[..., MASK] += 10.0
        return logits, loss


def test_sampling_never_emits_the_mask_token():
    torch.manual_seed(0)
    model = MaskLoving(GPTConfig(vocab_size=V + 1, block_size=16, n_layer=1, n_head=1, n_embd=16)).eval()
    x = torch.zeros((4, 1), dtype=torch.long)
    free = model.generate(x, 30, generator=torch.Generator().manual_seed(0))
    assert (free == MASK).float().mean() > 0.5  # without suppression it would dominate
    out = model.generate(x, 30, generator=torch.Generator().manual_seed(0), suppress_tokens=[MASK])
    assert not (out == MASK).any()


def test_mask_prob_zero_adds_no_token(compose):
    assert token_masking(compose("augment.mask_prob=0"), V) is None  # the model keeps the data's vocabulary
    m = token_masking(compose("augment.mask_prob=0.1"), V)
    assert (m.mask_token, m.vocab_size, m.mask_prob) == (V, V, 0.1)


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_bad_mask_prob(compose, value):
    with pytest.raises(ConfigError, match=r"augment.mask_prob must be in \[0, 1\)"):
        validate(compose(f"augment.mask_prob={value}"))


def test_masking_combines_with_packed_documents(compose, tmp_path):
    """Document batches (dicts from gptlab.packing) get their inputs masked like (x, y) tuples."""
    from gptlab.data.augment import corrupt_inputs

    masking = TokenMasking(mask_prob=0.5, mask_token=65, vocab_size=65, seed=0)
    x = torch.randint(0, 65, (4, 32))
    batch = {
        "x": x,
        "y": x.roll(-1, 1),
        "pos": torch.arange(32).expand(4, 32),
        "doc": torch.zeros(4, 32, dtype=torch.long),
    }
    out = corrupt_inputs(batch, masking)
    assert (out["x"] == 65).any() and torch.equal(out["y"], batch["y"]) and out["pos"] is batch["pos"]
    metrics = train(
        compose("data.batching=packed", "augment.mask_prob=0.2", "max_iters=4", "eval_interval=2"), tmp_path
    )
    assert metrics["iters"] == 4
