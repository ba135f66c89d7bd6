"""The optimizer a run trains with: AdamW alone (GPT-2's recipe), or Muon for the hidden matrices
with AdamW for the rest (optimizer=muon; Keller Jordan 2024, docs/modern.md).

Lightning's automatic optimization drives one optimizer, so Muon and AdamW are joined into one:
MuonWithAdamW steps both and shares their parameter groups. The LR scheduler therefore sees every
group and scales each group's own peak rate (learning_rate for AdamW's, muon_lr for Muon's) by the
same warmup + cosine factor.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

import torch

from gptlab.model import GPT
from gptlab.training.schedule import OptimConfig


class BothStates(MutableMapping):
    """AdamW's and Muon's per-parameter state as one mapping. Lightning moves optimizer state to the
    device by rewriting optimizer.state[p]: each entry is read from and written to the optimizer that
    holds it (a plain ChainMap would write every entry into the first)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def _owner(self, p) -> torch.optim.Optimizer:
        for o in self.optimizers:
            if p in o.state:
                return o
        raise KeyError("no optimizer state for this parameter (it has not been stepped yet)")

    def __getitem__(self, p):
        return self._owner(p).state[p]

    def __setitem__(self, p, value) -> None:
        self._owner(p).state[p] = value

    def __delitem__(self, p) -> None:
        del self._owner(p).state[p]

    def __iter__(self) -> Iterator:
        return (p for o in self.optimizers for p in list(o.state))

    def __len__(self) -> int:
        return sum(len(o.state) for o in self.optimizers)


class MuonWithAdamW(torch.optim.Optimizer):
    """AdamW and Muon stepped as one optimizer. param_groups are theirs (AdamW's first, so
    param_groups[0] is AdamW's decay group, whose rate the progress line shows); state_dict holds
    both states, so a checkpoint resumes both exactly."""

    def __init__(self, adamw: torch.optim.Optimizer, muon: torch.optim.Muon):
        self.adamw, self.muon = adamw, muon
        # the same group dicts, not copies: a rate the scheduler sets here is the rate they step with
        super().__init__([*adamw.param_groups, *muon.param_groups], {})
        self.state = BothStates(adamw, muon)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()  # forward and backward once, then both optimizers step
        self.adamw.step()
        self.muon.step()
        return loss

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.adamw.load_state_dict(state_dict["adamw"])
        self.muon.load_state_dict(state_dict["muon"])
        # loading gives both new group dicts: share those, or the scheduler's rates would miss them
        self.param_groups = [*self.adamw.param_groups, *self.muon.param_groups]


def adamw(groups: list[dict], optim: OptimConfig, on_cuda: bool) -> torch.optim.AdamW:
    # fused kernels on CUDA; elsewhere foreach (one batched kernel per group, not a loop per tensor)
    return torch.optim.AdamW(
        groups,
        lr=optim.learning_rate,
        betas=(optim.beta1, optim.beta2),
        fused=True if on_cuda else None,
        foreach=None if on_cuda else True,
    )


def muon_groups(model: GPT, weight_decay: float) -> tuple[list[dict], list[dict]]:
    """(AdamW's groups, Muon's groups): Muon takes the 2-D matrices inside the blocks; AdamW the
    embeddings and the head (with decay), norms and biases (without). Every parameter in exactly one."""
    hidden = {id(p) for p in model.hidden_matrices()}
    adamw_groups = [
        {**g, "params": [p for p in g["params"] if id(p) not in hidden]} for g in model.optimizer_groups(weight_decay)
    ]
    muon_params = [p for p in model.parameters() if id(p) in hidden]
    return adamw_groups, [{"params": muon_params, "weight_decay": weight_decay}]


def build_optimizer(model: GPT, optim: OptimConfig, on_cuda: bool = False) -> torch.optim.Optimizer:
    if optim.optimizer == "adamw":
        return adamw(model.optimizer_groups(optim.weight_decay), optim, on_cuda)
    adamw_groups, muon = muon_groups(model, optim.weight_decay)
    # Muon: momentum, then Newton-Schulz orthogonalisation of each matrix's update; its rate is
    # scaled per matrix shape by torch's default ("original": max(1, rows / cols) ** 0.5)
    return MuonWithAdamW(
        adamw(adamw_groups, optim, on_cuda),
        torch.optim.Muon(muon, lr=optim.muon_lr, momentum=optim.muon_momentum, weight_decay=optim.weight_decay),
    )
