"""The architecture switches beyond the GPT-2 recipe (docs/modern.md): the defaults build today's
model exactly, and each switch keeps what it promises -- RoPE depends on relative positions only,
RMSNorm is its formula, and every combination is causal, round-trips through a checkpoint and samples."""

import itertools
import math
from pathlib import Path

import pytest
import torch

from gptlab.config import model_config, validate
from gptlab.errors import CheckpointError, ConfigError
from gptlab.model import GPT, SWITCH_DEFAULTS, SWITCHES, GPTConfig, apply_rope, rope_angles
from gptlab.training.checkpoint import check_compatible, load_model, save_atomic

# Written by the code of commit f471195 (before the switches existed): for bias True and False,
# torch.manual_seed(1234); GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=16,
# dropout=0.0, bias=bias)).eval(), its state_dict, and its logits and loss on one fixed window.
REFERENCE = Path(__file__).parent / "fixtures" / "gpt2_recipe_reference.pt.fixture"

TINY = dict(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0, bias=False)

# every value of every switch that shapes the forward pass; the product is every combination of
# them (48 tiny models). zero_init_proj changes only initial values (the tests move every weight off
# them) and logit_softcap is a function of each logit alone: they alternate over the product instead
# of doubling it twice. mlp=gelu_tanh is gelu with another formula (test_gelu_tanh_is_gpt2s_approximation).
VALUES = {
    "pos_emb": SWITCHES["pos_emb"],
    "norm": SWITCHES["norm"],
    "qk_norm": (False, True),
    "mlp": tuple(m for m in SWITCHES["mlp"] if m != "gelu_tanh"),
    "tie_embeddings": (True, False),
}
COMBINATIONS = [
    {**dict(zip(VALUES, combo)), "zero_init_proj": i % 2 == 1, "logit_softcap": 5.0 if i % 4 >= 2 else None}
    for i, combo in enumerate(itertools.product(*VALUES.values()))
]


def ids(switches: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in switches.items() if v != SWITCH_DEFAULTS[k]) or "gpt2"


def randomised(model: GPT, seed: int = 0) -> GPT:
    """The model with every weight moved off its initialisation: zero-initialised projections would
    otherwise make every block the identity, and hide whatever the blocks get wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("bias", [True, False])
def test_defaults_build_todays_model_exactly(bias):
    ref = torch.load(REFERENCE)[f"bias={bias}"]
    torch.manual_seed(1234)
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=bias)).eval()
    state = model.state_dict()
    assert list(state) == list(ref["state_dict"])  # the same parameters, in the same order
    for name, tensor in state.items():
        assert torch.equal(tensor, ref["state_dict"][name]), name  # the same init draws
    with torch.no_grad():
        logits, loss = model(ref["idx"], ref["idx"].roll(-1, 1))
    torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=1e-6)
    assert loss.item() == pytest.approx(ref["loss"].item(), abs=1e-6)
    assert model.num_params() == ref["num_params"]
    assert [len(g["params"]) for g in model.optimizer_groups(0.1)] == ref["groups"]


def test_train_yaml_defaults_are_the_gpt2_recipe(compose):
    built = model_config(compose(), 65).to_dict()
    assert (
        {k: built[k] for k in SWITCH_DEFAULTS}
        == SWITCH_DEFAULTS
        == {
            "pos_emb": "learned",
            "rope_base": 10000.0,
            "norm": "layernorm",
            "qk_norm": False,
            "mlp": "gelu",
            "tie_embeddings": True,
            "zero_init_proj": False,
            "logit_softcap": None,
        }
    )
    on = model_config(compose("pos_emb=rope", "norm=rmsnorm", "mlp=swiglu", "logit_softcap=30"), 65)
    assert (on.pos_emb, on.norm, on.mlp, on.logit_softcap) == ("rope", "rmsnorm", "swiglu", 30.0)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 8, 16), torch.randn(2, 3, 8, 16)  # (B, heads, T, head_dim)

    def scores(start: int) -> torch.Tensor:
        cos, sin = rope_angles(torch.arange(start, start + 8), 16, 10000.0)
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)

    torch.testing.assert_close(scores(0), scores(37), rtol=0, atol=1e-4)
    assert not torch.allclose(scores(0), q @ k.transpose(-1, -2), atol=1e-2)  # the rotation does change them
    # a rotation keeps each vector's length
    cos, sin = rope_angles(torch.arange(8), 16, 10000.0)
    torch.testing.assert_close(apply_rope(q, cos, sin).norm(dim=-1), q.norm(dim=-1))


def test_shifting_positions_leaves_a_rope_models_logits_unchanged():
    idx = torch.randint(0, 65, (2, 8), generator=torch.Generator().manual_seed(1))
    shifted = torch.arange(5, 13)
    rope = randomised(GPT(GPTConfig(**{**TINY, "pos_emb": "rope"})))
    with torch.no_grad():
        a, _ = rope(idx, idx)
        b, _ = rope(idx, idx, pos=shifted)
        c, _ = rope(idx, idx, pos=shifted.expand(2, 8))  # per-token positions, as packed batches give
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    torch.testing.assert_close(b, c, rtol=0, atol=1e-5)
    learned = randomised(GPT(GPTConfig(**TINY)))  # a position table sees absolute positions
    with torch.no_grad():
        assert not torch.allclose(learned(idx, idx)[0], learned(idx, idx, pos=shifted)[0], atol=1e-3)


def test_rmsnorm_is_its_formula():
    model = randomised(GPT(GPTConfig(**{**TINY, "norm": "rmsnorm"})))
    norm = model.transformer.h[0].ln_1
    x = torch.randn(4, 7, 16) * 3 + 1
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), want)
    assert not any("bias" in n for n, _ in norm.named_parameters())
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())


def test_swiglu_keeps_the_mlps_weight_count():
    for n in (128, 384, 768):
        gelu = 2 * n * 4 * n
        hidden = GPTConfig(n_embd=n, n_head=4).swiglu_hidden()
        assert hidden % 64 == 0 and abs(3 * n * hidden - gelu) / gelu < 0.07, n


def test_relu2_and_softcap_are_their_formulas():
    model = randomised(GPT(GPTConfig(**{**TINY, "mlp": "relu2", "logit_softcap": 2.0})))
    mlp = model.transformer.h[0].mlp
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), mlp.c_proj(torch.relu(mlp.c_fc(x)) ** 2))
        logits, _ = model(torch.randint(0, 65, (2, 8)), torch.zeros(2, 8, dtype=torch.long))
    assert logits.abs().max() < 2.0 and logits.abs().max() > 1.0  # capped, and not squashed to nothing


def test_untied_head_and_zero_init():
    model = GPT(GPTConfig(**{**TINY, "tie_embeddings": False, "zero_init_proj": True}))
    assert model.lm_head.weight is not model.transformer.wte.weight
    projections = [p for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(projections) == 2 and all(torch.count_nonzero(p) == 0 for p in projections)
    tied = GPT(GPTConfig(**TINY))
    assert tied.lm_head.weight is tied.transformer.wte.weight


@pytest.mark.parametrize("switches", COMBINATIONS, ids=ids)
def test_every_combination_is_causal_round_trips_and_samples(switches, tmp_path):
    torch.manual_seed(0)
    model = randomised(GPT(GPTConfig(**TINY, **switches)))
    idx = torch.randint(0, 65, (2, 10), generator=torch.Generator().manual_seed(2))
    later = idx.clone()
    later[:, 6:] = (later[:, 6:] + 1) % 65  # change the future from position 6 on
    with torch.no_grad():
        a, loss = model(idx, idx)
        b, _ = model(later, later)
    assert math.isfinite(loss.item())
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-5)  # the past never sees the future
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-4)

    path = tmp_path / "m.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    save_atomic({"state_dict": state, "gptlab": {"model_config": model.config.to_dict()}}, path)
    loaded, info = load_model(path)
    assert loaded.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx, idx)[0], a, rtol=0, atol=0)

    out = loaded.generate(idx, 8, generator=torch.Generator().manual_seed(3))  # past block_size
    assert out.shape == (2, 18) and int(out.max()) < 65


@pytest.mark.slow
def test_the_all_modern_model_compiles():
    # torch.compile on CPU takes tens of seconds (slower still on a busy machine): one model only
    switches = dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="swiglu", tie_embeddings=False, logit_softcap=5.0)
    model = randomised(GPT(GPTConfig(**TINY, **switches)))
    idx = torch.randint(0, 65, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, want_loss = model(idx, idx)
        got, got_loss = torch.compile(model)(idx, idx)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-4)


def test_gelu_tanh_is_gpt2s_approximation():
    """mlp=gelu_tanh: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), GPT-2's formula; mlp=gelu the exact one."""
    x = torch.linspace(-4, 4, 101)
    tanh_formula = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    torch.testing.assert_close(GPT(GPTConfig(**TINY, mlp="gelu_tanh")).transformer.h[0].mlp.gelu(x), tanh_formula)
    torch.testing.assert_close(GPT(GPTConfig(**TINY)).transformer.h[0].mlp.gelu(x), exact)
    assert (tanh_formula - exact).abs().max() > 1e-4  # the two differ: a model must use its weights' own


def test_bad_switch_values_are_refused(compose):
    with pytest.raises(ValueError, match="mlp must be one of gelu, gelu_tanh, relu2, swiglu, got 'swish'"):
        GPTConfig(mlp="swish")
    with pytest.raises(ValueError, match="n_embd / n_head must be even"):
        GPTConfig(n_embd=12, n_head=4, pos_emb="rope")
    for bad, message in [
        ("mlp=swish", "mlp must be one of gelu, gelu_tanh, relu2, swiglu, got 'swish'"),
        ("norm=batchnorm", "norm must be one of layernorm, rmsnorm"),
        ("qk_norm=yes", "qk_norm must be true or false"),
        ("logit_softcap=0", "logit_softcap must be > 0"),
        ("rope_base=1", "rope_base must be > 1"),
        ("optimizer=sgd", "optimizer must be one of adamw, muon, got 'sgd'"),
        ("muon_lr=0", "muon_lr must be > 0"),
        ("muon_momentum=1", r"muon_momentum must be in \[0, 1\)"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(compose(bad))
    with pytest.raises(ConfigError, match="n_embd / n_head = 3 must be even"):
        validate(compose("pos_emb=rope", "n_embd=12", "n_head=4"))
    with pytest.raises(ConfigError, match="optimizer=muon needs whole 2-D weights; FSDP shards them"):
        validate(compose("optimizer=muon", "trainer=fsdp"))
    with pytest.raises(ConfigError, match="learning_rate=auto searches one rate"):
        validate(compose("optimizer=muon", "learning_rate=auto"))
    validate(compose("pos_emb=rope", "logit_softcap=30", "optimizer=muon"))


def test_a_checkpoint_from_before_the_switches_is_the_gpt2_recipe():
    old = {k: v for k, v in GPTConfig(**TINY).to_dict().items() if k not in SWITCH_DEFAULTS}
    check_compatible({"model_config": old}, GPTConfig(**TINY).to_dict(), "config")
    with pytest.raises(CheckpointError, match="pos_emb: checkpoint learned vs config rope"):
        check_compatible({"model_config": old}, GPTConfig(**TINY, pos_emb="rope").to_dict(), "config")
    with pytest.raises(CheckpointError, match="mlp: checkpoint swiglu vs config gelu"):
        check_compatible({"model_config": GPTConfig(**TINY, mlp="swiglu").to_dict()}, old, "config")
