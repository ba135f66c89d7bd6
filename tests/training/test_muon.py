"""optimizer=muon: Muon takes exactly the 2-D hidden matrices and AdamW the rest, both follow the
warmup + cosine schedule from their own peak rate, and a stopped run resumes exactly."""

import re
import shutil
from functools import partial

import pytest
import torch

from gptlab.errors import ConfigError
from gptlab.model import GPT, GPTConfig
from gptlab.rundir import LAST
from gptlab.training.module import _lr_factor
from gptlab.training.optimizers import MuonWithAdamW, build_optimizer, muon_groups
from gptlab.training.resume import resume_changes
from gptlab.training.run import train
from gptlab.training.schedule import OptimConfig

HIDDEN = re.compile(r"transformer\.h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")


@pytest.mark.parametrize("tied", [True, False])
def test_muon_takes_the_hidden_matrices_and_adamw_the_rest(tied):
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=True, tie_embeddings=tied))
    adamw, muon = muon_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}  # a tied weight appears once
    in_muon = [names[id(p)] for g in muon for p in g["params"]]
    decay, no_decay = ([names[id(p)] for p in g["params"]] for g in adamw)
    assert sorted(in_muon) == sorted(n for n in names.values() if HIDDEN.fullmatch(n))
    assert len(in_muon) == 2 * 4 and all(model.get_parameter(n).dim() == 2 for n in in_muon)
    # the tied embedding / head matrix is named after its first owner, the token embedding
    assert sorted(decay) == sorted(
        ["transformer.wpe.weight", "transformer.wte.weight"] + ([] if tied else ["lm_head.weight"])
    )
    assert all(n.endswith(".bias") or ".ln_" in n for n in no_decay)
    everything = in_muon + decay + no_decay
    assert sorted(everything) == sorted(names.values())  # every parameter in exactly one group
    assert [g["weight_decay"] for g in adamw + muon] == [0.1, 0.0, 0.1]


def test_both_optimizers_follow_the_schedule_from_their_own_peak():
    model = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=16))
    optim = OptimConfig(
        optimizer="muon", learning_rate=1e-3, min_lr=1e-4, muon_lr=0.05, warmup_iters=2, lr_decay_iters=10
    )
    opt = build_optimizer(model, optim)
    assert isinstance(opt, MuonWithAdamW) and isinstance(opt.muon, torch.optim.Muon)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(_lr_factor, optim=optim))
    x = torch.randint(0, 65, (2, 8))
    for step in range(6):
        factor = optim.lr_at(step) / optim.learning_rate
        assert opt.adamw.param_groups[0]["lr"] == pytest.approx(1e-3 * factor)
        assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.05 * factor)
        before = [p.detach().clone() for p in model.hidden_matrices()]
        model(x, x)[1].backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        assert all(not torch.equal(b, p) for b, p in zip(before, model.hidden_matrices()))  # Muon stepped them
    state = opt.state_dict()
    assert set(state) == {"adamw", "muon"} and len(state["muon"]["state"]) == 4  # a momentum buffer per matrix


def losses(metrics: dict) -> tuple[list, list]:
    return [v for _, v in metrics["train_curve"]], [e["val_loss"] for e in metrics["evals"]]


def test_a_muon_run_resumes_exactly(compose, tmp_path):
    # dropout and accumulation, as tests/test_resume.py: both RNG streams and the accumulation boundary matter
    common = [
        "optimizer=muon",
        "dropout=0.1",
        "gradient_accumulation_steps=2",
        "eval_interval=4",
        "warmup_iters=2",
        "lr_decay_iters=16",
        "log_interval=1",
        "monitor.enabled=false",
    ]
    straight = train(compose(*common, "max_iters=16"), tmp_path / "straight")
    train(compose(*common, "max_iters=8"), tmp_path / "stopped")
    resumed = train(compose(*common, "max_iters=16", "init_from=resume"), tmp_path / "stopped")
    want_train, want_val = losses(straight)
    got_train, got_val = losses(resumed)
    assert [s for s, _ in resumed["train_curve"]] == list(range(1, 17))  # both parts, every step
    assert got_train == pytest.approx(want_train, abs=1e-6)
    assert got_val == pytest.approx(want_val, abs=1e-6) and len(got_val) == 5

    # a checkpoint's Muon state is refused a change of optimizer or of Muon's settings
    shutil.copy(tmp_path / "stopped" / LAST, tmp_path / "again.ckpt")
    with pytest.raises(ConfigError, match=r"cannot change optimizer \(checkpoint muon, now adamw\)"):
        train(compose(*common[1:], "max_iters=20", f"ckpt_path={tmp_path / 'again.ckpt'}"), tmp_path / "stopped")


def test_resume_refuses_optimizer_changes_and_reads_old_checkpoints_as_adamw():
    saved = {"learning_rate": 1e-3, "n_layer": 2}  # a run from before the optimizer and the switches
    now = {**saved, "optimizer": "adamw", "muon_lr": 0.02, "muon_momentum": 0.95}
    now.update(pos_emb="learned", rope_base=10000, norm="layernorm", qk_norm=False, mlp="gelu")
    now.update(tie_embeddings=True, zero_init_proj=False, logit_softcap=None)
    now.update(peak_tflops=None, callbacks={})  # keys added later still, with their defaults
    assert resume_changes(saved, now) == {}
    assert resume_changes(saved, {**now, "mlp": "swiglu"}) == {"mlp": ("gelu", "swiglu")}
    for key, old, new in [("optimizer", "adamw", "muon"), ("muon_lr", 0.02, 0.05), ("muon_momentum", 0.95, 0.9)]:
        with pytest.raises(ConfigError, match=f"cannot change {key} "):
            resume_changes({**now, key: old}, {**now, key: new})
    with pytest.raises(ConfigError, match="cannot change optimizer"):
        resume_changes(saved, {**now, "optimizer": "muon"})
