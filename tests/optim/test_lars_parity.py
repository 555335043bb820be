"""LARS against ``timm.optim.Lars`` (timm 1.0.31: apex's LARC in scaling mode with torch's SGD
momentum; the authors released no PyTorch code), and the local rate's rules written out.

Measured over 200 float64 steps (all cases): parameters within 2.9e-15 absolute (4.7e-12 relative, on
elements near zero), momentum buffers within 3.4e-11 relative. The differences are rounding: ours adds
rate * g and rate * wd * p into the buffer where timm forms rate * (g + wd * p). rtol 1e-9 holds.
"""

from __future__ import annotations

import pytest
import torch

from rvc_optim.benchmark import import_published
from rvc_optim.optim.lars import LARS
from tests.optim.parity import run_parity
from tests.optim.test_lamb_parity import run_whole_lists_with_tensor_scalars

TimmLars = import_published("timm.optim.lars").Lars

STATE_KEYS = {"momentum_buffer": "momentum_buffer"}
GROUPS = [{"lr": 0.5, "weight_decay": 0.01}, {"lr": 0.2, "weight_decay": 0.0}]
CASES = {
    "momentum": {"momentum": 0.9},
    "dampening": {"momentum": 0.8, "dampening": 0.3},
    "nesterov_always_adapt": {"momentum": 0.9, "nesterov": True, "always_adapt": True},
    "trust_clip": {"momentum": 0.9, "trust_clip": True, "trust_coeff": 0.02, "always_adapt": True},
    "no_momentum": {"trust_coeff": 0.01},
}


@pytest.mark.parametrize("options", list(CASES.values()), ids=list(CASES))
def test_parity_with_timm(options):
    run_parity(
        lambda groups: LARS(groups, **options),
        lambda groups: TimmLars(groups, foreach=False, **options),
        GROUPS,
        STATE_KEYS,
    )


def _one_step(weight, grad, **options):
    p = torch.nn.Parameter(weight.clone())
    p.grad = grad.clone()
    optimizer = LARS([p], **options)
    optimizer.step()
    return p.detach(), optimizer.state[p]


def test_zero_initialised_layer_learns_with_rate_one():
    grad = torch.randn(5, 4, dtype=torch.float64)
    out, _ = _one_step(torch.zeros(5, 4, dtype=torch.float64), grad, lr=0.1, weight_decay=0.1, momentum=0.9)
    torch.testing.assert_close(out, -0.1 * grad, rtol=1e-14, atol=0)


def test_local_rate_applied_once():
    # lam enters the momentum buffer once; the step is lr * buf, with no second scaling.
    weight, grad = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    wd, eta, lr = 0.01, 0.001, 1.0
    lam = eta * weight.norm() / (grad.norm() + wd * weight.norm() + 1e-8)
    out, state = _one_step(weight, grad, lr=lr, weight_decay=wd, trust_coeff=eta, momentum=0.9)
    expected = lam * (grad + wd * weight)
    torch.testing.assert_close(state["momentum_buffer"], expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(out, weight - lr * expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("rates_in_update", [True, False], ids=["accelerator-layout", "cpu-compiled-layout"])
@pytest.mark.parametrize("case", ["dampening", "nesterov_always_adapt"])
def test_parity_with_timm_on_the_whole_list_path(case, rates_in_update, monkeypatch):
    # Accelerators put the local rates into the directions inside the update over whole lists; the
    # compiled path on a CPU takes the rates first and passes them as per-tensor 0-d tensors; the CPU
    # eager path runs one blocked update per tensor. Force the first two here, eagerly, with the
    # per-step scalars as 0-d tensors, as an accelerator passes them.
    monkeypatch.setattr("rvc_optim.optim.lars.resolve_compiled", lambda *args: True)
    monkeypatch.setattr("rvc_optim.optim.lars.norms_in_update", lambda device_type: rates_in_update)
    run_whole_lists_with_tensor_scalars(monkeypatch)
    options = CASES[case]
    run_parity(lambda groups: LARS(groups, **options), lambda groups: TimmLars(groups, foreach=False, **options),
               GROUPS, STATE_KEYS, steps=50)
