"""PID against torch-optimizer's ``PID`` (numerically identical to the authors' latest
tensorboy/PIDOptimizer ``pid.py``; pytorch_optimizer's ``PID`` changes the derivative's start and the
first integral step, so it is not the reference).

Measured over 200 steps: parameters and the three buffers agree bit for bit (the same operations in the
same order), so parameters are held to rtol 0 and the state to the project's 1e-9.
"""

from __future__ import annotations

import pytest
import torch
from torch_optimizer import PID as ReferencePID

from rvc_optim.optim.pid import PID
from tests.optim.parity import run_parity

STATE_KEYS = {"i_buffer": "i_buffer", "grad_buffer": "grad_buffer", "d_buffer": "d_buffer"}


@pytest.mark.parametrize(
    "groups",
    [
        [{"lr": 2e-3, "weight_decay": 1e-2, "momentum": 0.9}, {"lr": 5e-4, "momentum": 0.8, "dampening": 0.1}],
        [{"lr": 1e-3, "momentum": 0.9, "integral": 3.0, "derivative": 100.0}, {"lr": 2e-3, "momentum": 0.5}],
        [{"lr": 2e-2, "weight_decay": 1e-2}, {"lr": 5e-3}],  # momentum 0: SGD, no state
        [{"lr": 2e-3, "momentum": 0.9, "weight_decay": 1e-2}, {"lr": 1e-2}],  # one PID group, one SGD group
    ],
    ids=["decay-and-dampening", "gains", "sgd", "mixed"],
)
def test_parity_with_torch_optimizer(groups):
    ours, ref, _, _ = run_parity(
        lambda g: PID(g, compiled=False),
        lambda g: ReferencePID(g),
        groups,
        STATE_KEYS,
        rtol=0.0,
        state_rtol=1e-9,
    )
    for group in ours.param_groups:
        if group["momentum"] == 0.0:
            assert all(not ours.state[p] for p in group["params"]), "SGD keeps no state"


def test_matches_the_equations_including_the_second_step_derivative():
    """The authors' derivative: D_1 = 0, and at step 2 the stored gradient is still zero, so
    D_2 = (1 - mu) * g_2; from step 3 on, D_t = mu * D + (1 - mu) * (g_t - g_{t-1})."""
    torch.manual_seed(0)
    lr, mu, tau, ki, kd, wd = 1e-2, 0.9, 0.2, 5.0, 10.0, 0.05
    p = torch.randn(4, 5, dtype=torch.float64)
    param = torch.nn.Parameter(p.clone())
    opt = PID([param], lr=lr, momentum=mu, dampening=tau, weight_decay=wd, integral=ki, derivative=kd, compiled=False)
    i_buf = d_buf = g_prev = torch.zeros_like(p)
    for t in range(1, 25):
        g = torch.randn_like(p)
        param.grad = g.clone()
        opt.step()
        g = g + wd * p
        if t == 1:
            i_buf, d_buf = g, torch.zeros_like(p)
        else:
            i_buf = mu * i_buf + (1 - tau) * g
            d_buf = mu * d_buf + (1 - mu) * (g - g_prev)
            g_prev = g
        if t == 2:
            torch.testing.assert_close(d_buf, (1 - mu) * g)
        p = p - lr * (g + ki * i_buf + kd * d_buf)
        torch.testing.assert_close(param.detach(), p, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(opt.state[param]["d_buffer"], d_buf, rtol=1e-12, atol=1e-15)


def test_gradient_is_not_modified():
    param = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = PID([param], lr=0.1, momentum=0.9, weight_decay=0.5, compiled=False)
    for _ in range(3):
        param.grad = torch.full((3,), 2.0, dtype=torch.float64)
        opt.step()
        assert torch.equal(param.grad, torch.full((3,), 2.0, dtype=torch.float64))


def test_defaults_and_arguments():
    p = torch.nn.Parameter(torch.zeros(2))
    d = PID([p]).defaults
    assert (d["lr"], d["momentum"], d["dampening"], d["weight_decay"], d["integral"], d["derivative"]) == (
        1e-3, 0.0, 0.0, 0.0, 5.0, 10.0
    )
    with pytest.raises(ValueError, match="momentum"):
        PID([p], momentum=1.0)
    with pytest.raises(ValueError, match="derivative"):
        PID([p], derivative=-1.0)
