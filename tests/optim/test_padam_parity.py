"""PAdam against pytorch_optimizer's ``PAdam`` (amsgrad off: it has no AMSGrad) and against the authors'
equations (uclaml/Padam ``Padam.py``, not packaged) written out below, with AMSGrad on, the authors'
default.

pytorch_optimizer averages the gradient with lerp where the authors (and ours) multiply and add: the
reference itself rounds differently from the authors' by an ulp. Measured over 200 steps against it
(states compared every step): parameters 9e-11 relative at worst, states 5e-11 relative except one
momentum entry passing near zero with partial 1/2, 3.3e-9 relative = 3.6e-17 absolute; so the state
comparison gets atol 1e-16 and the parameters the project's rtol 1e-9 alone. Against the equations,
written in the authors' order of operations: 0 difference, rtol 1e-9 and no atol. pytorch_optimizer
counts ``step`` per group, ours per parameter as the authors do: equal here, as every parameter has a
gradient every step.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_optimizer import PAdam as ReferencePAdam

from rvc_optim.optim.padam import PAdam
from tests.optim.parity import batches, make_model, run_parity, two_groups

GROUPS = [{"lr": 3e-2, "weight_decay": 5e-4}, {"lr": 1e-2, "weight_decay": 0.0}]
BETAS = (0.8, 0.99)
STATE_KEYS = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}


@pytest.mark.parametrize("partial", [0.25, 0.125, 0.5])
def test_parity_with_pytorch_optimizer_without_amsgrad(partial):
    run_parity(
        lambda groups: PAdam(groups, betas=BETAS, partial=partial, amsgrad=False, compiled=False),
        lambda groups: ReferencePAdam(groups, betas=BETAS, partial=partial),
        GROUPS,
        STATE_KEYS,
        state_atol=1e-16,  # the reference's lerp rounding on a momentum near zero: see the docstring
    )


class PAdamEquations:
    """The authors' PAdam, one tensor at a time: L2, both averages, the AMSGrad maximum, then
    p -= lr sqrt(bc2) / bc1 * m / (sqrt(v_max) + eps)^(2 partial)."""

    def __init__(self, groups, betas, eps, partial, amsgrad):
        self.groups, self.betas, self.eps, self.partial, self.amsgrad = groups, betas, eps, partial, amsgrad
        self.state = {}

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        for group in self.groups:
            for p in group["params"]:
                g = p.grad + group["weight_decay"] * p
                s = self.state.setdefault(p, dict(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p), v_max=torch.zeros_like(p)))
                s["t"] += 1
                s["m"] = s["m"] * b1 + (1 - b1) * g
                s["v"] = s["v"] * b2 + (1 - b2) * g * g
                s["v_max"] = torch.maximum(s["v_max"], s["v"])
                v = s["v_max"] if self.amsgrad else s["v"]
                size = group["lr"] * math.sqrt(1 - b2 ** s["t"]) / (1 - b1 ** s["t"])
                p.addcdiv_(s["m"], (v.sqrt() + self.eps) ** (2 * self.partial), value=-size)


@pytest.mark.parametrize("partial", [0.25, 0.125])
@pytest.mark.parametrize("amsgrad", [True, False], ids=["amsgrad", "no-amsgrad"])
def test_matches_the_authors_equations(amsgrad, partial, steps=200):
    ours_model, eq_model = make_model(), make_model()
    ours = PAdam(two_groups(ours_model, GROUPS), betas=BETAS, partial=partial, amsgrad=amsgrad, compiled=False)
    eq = PAdamEquations(two_groups(eq_model, GROUPS), BETAS, 1e-8, partial, amsgrad)
    grew = False
    for step, (tokens, target) in enumerate(batches(steps), start=1):
        for model in (ours_model, eq_model):
            model.zero_grad()
            torch.mean((model(tokens) - target) ** 2).backward()
        ours.step()
        eq.step()
        for (name, p), q in zip(ours_model.named_parameters(), eq_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=0.0, msg=lambda m: f"step {step}, {name}: {m}")
    for p, q in zip(ours_model.parameters(), eq_model.parameters()):
        s, e = ours.state[p], eq.state[q]
        assert s["step"] == e["t"] == steps
        torch.testing.assert_close(s["exp_avg"], e["m"], rtol=1e-9, atol=0.0)
        torch.testing.assert_close(s["exp_avg_sq"], e["v"], rtol=1e-9, atol=0.0)
        if amsgrad:
            torch.testing.assert_close(s["max_exp_avg_sq"], e["v_max"], rtol=1e-9, atol=0.0)
            grew |= bool((s["max_exp_avg_sq"] > s["exp_avg_sq"]).any())
        else:
            assert "max_exp_avg_sq" not in s
    assert grew or not amsgrad, "the maximum never differed from v: the AMSGrad path was not exercised"


def test_defaults_are_the_authors():
    d = PAdam([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert d == dict(lr=1e-1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=True, partial=0.25)


def test_eps_inside_the_power_and_adam_bias_correction():
    """One step from zero state, partial 1/8: p -= lr sqrt(1 - b2) / (1 - b1) * m / (sqrt(v) + eps)^(1/4)."""
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = PAdam([p], lr=0.1, betas=(0.9, 0.999), eps=1e-2, partial=0.125, compiled=False)
    g = torch.tensor([4.0, -1.0, 0.25], dtype=torch.float64)
    p.grad = g.clone()
    opt.step()
    m, v = 0.1 * g, 0.001 * g * g
    expected = -0.1 * math.sqrt(0.001) / 0.1 * m / (v.sqrt() + 1e-2) ** 0.25
    torch.testing.assert_close(p.detach(), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("partial", [0.0, 0.6, -0.1])
def test_partial_outside_the_papers_range_is_rejected(partial):
    with pytest.raises(ValueError, match="partial"):
        PAdam([torch.nn.Parameter(torch.zeros(1))], partial=partial)
