"""Yogi against torch-optimizer 0.3.0's ``Yogi`` (the de-facto PyTorch reference) and pytorch_optimizer's
(``weight_decouple=False``, its L2 switch), plus the second-moment rule the guide got wrong.

Ours performs torch-optimizer's operations in its order: measured over 200 steps, 0 difference in
parameters and states, held at the project's rtol 1e-9 with no atol. pytorch_optimizer averages m with
lerp where torch-optimizer multiplies and adds, so it rounds differently from the reference itself by
an ulp per step; over 200 steps that grows to 1.7e-14 absolute on the parameters (1e-7 relative, on a
weight passing near zero) and 1e-15 absolute on the states (8e-11 relative). That cross-check therefore
runs with atol 1e-13 beside rtol 1e-9.
"""

from __future__ import annotations

import pytest
import torch
import torch_optimizer
from pytorch_optimizer import Yogi as PytorchOptimizerYogi

from rvc_optim.optim.yogi import Yogi
from tests.optim.parity import run_parity

GROUPS = [{"lr": 1e-2, "weight_decay": 0.05}, {"lr": 3e-3, "weight_decay": 0.0}]
BETAS = (0.8, 0.99)
STATE_KEYS = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "step": "step"}

SETTINGS = {
    "defaults": {},
    "small-eps": {"eps": 1e-6},
    "initial-accumulator": {"initial_accumulator": 1e-3, "eps": 1e-8},
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_parity_with_torch_optimizer(settings):
    run_parity(
        lambda groups: Yogi(groups, betas=BETAS, compiled=False, **settings),
        lambda groups: torch_optimizer.Yogi(groups, betas=BETAS, **settings),
        GROUPS,
        STATE_KEYS,
    )


def test_parity_with_pytorch_optimizer_l2():
    run_parity(
        lambda groups: Yogi(groups, betas=BETAS, eps=1e-6, compiled=False),
        lambda groups: PytorchOptimizerYogi(groups, betas=BETAS, eps=1e-6, weight_decouple=False),
        GROUPS,
        {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"},
        atol=1e-13,  # pytorch_optimizer's own lerp rounding, measured: see the module docstring
    )


def test_second_moment_moves_by_one_minus_beta2_in_either_direction():
    """v <- v - (1 - beta2) sign(v - g^2) g^2: the guide's old version had beta2 in place of 1 - beta2.
    The first coordinate's g^2 is above v (v grows), the second below (v shrinks), the third equal."""
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = Yogi([p], betas=(0.9, 0.99), initial_accumulator=0.25, compiled=False)
    p.grad = torch.tensor([2.0, 0.1, 0.5], dtype=torch.float64)
    opt.step()
    g2 = p.grad**2
    expected = 0.25 + 0.01 * torch.tensor([1.0, -1.0, 0.0], dtype=torch.float64) * g2
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(opt.state[p]["exp_avg"], 0.9 * 0.25 + 0.1 * p.grad, rtol=1e-15, atol=0)


def test_defaults_are_torch_optimizers():
    d = Yogi([torch.nn.Parameter(torch.zeros(1))]).defaults
    assert d == dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-3, initial_accumulator=1e-6, weight_decay=0.0)
