"""NovoGrad against ``timm.optim.NvNovoGrad`` (timm 1.0.31, NVIDIA's Jasper/NeMo definition) and
``torch_optimizer.NovoGrad`` with betas (0.95, 0.98) (identical to timm), and the first-step rule
and the zero-gradient case written out.

All references create the layer second moment in the default dtype: they run under
``torch.set_default_dtype(torch.float64)`` here, so their scalar is float64 like ours. Measured over
200 float64 steps (all cases): parameters within 4.4e-16 absolute (2.3e-13 relative), state within
6.7e-12 relative. The differences are rounding: ours scales g by 1 / (sqrt(v) + eps) inside the
momentum update where timm divides first, and takes n as a squared norm. rtol 1e-9 holds.
"""

from __future__ import annotations

import pytest
import torch
import torch_optimizer

from rvc_optim.benchmark import import_published
from rvc_optim.optim.novograd import NovoGrad
from tests.optim.parity import run_parity
from tests.optim.test_lamb_parity import run_whole_lists_with_tensor_scalars

NvNovoGrad = import_published("timm.optim.nvnovograd").NvNovoGrad

STATE_KEYS = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "max_exp_avg_sq": "max_exp_avg_sq"}
GROUPS = [{"lr": 2e-3, "weight_decay": 1e-3}, {"lr": 5e-3, "weight_decay": 0.0}]
CASES = {
    "default": {},
    "grad_averaging": {"grad_averaging": True, "betas": (0.9, 0.95)},
    "amsgrad": {"amsgrad": True, "betas": (0.8, 0.9)},
}


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("options", list(CASES.values()), ids=list(CASES))
def test_parity_with_timm(options, float64_default):
    run_parity(lambda groups: NovoGrad(groups, **options), lambda groups: NvNovoGrad(groups, **options),
               GROUPS, STATE_KEYS)


def test_parity_with_torch_optimizer(float64_default):
    options = {"betas": (0.95, 0.98), "grad_averaging": True}  # its default beta2 is 0, not NVIDIA's
    run_parity(lambda groups: NovoGrad(groups, **options), lambda groups: torch_optimizer.NovoGrad(groups, **options),
               GROUPS, STATE_KEYS)


def test_first_step_takes_the_norm_and_zero_gradients_keep_v_zero():
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    q = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    start_q = q.detach().clone()
    optimizer = NovoGrad([p, q], lr=0.1, betas=(0.9, 0.5), eps=1e-8, weight_decay=0.01)
    for k, g in enumerate((torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64))):
        p.grad, q.grad = g, torch.zeros_like(q)
        before = optimizer.state[p]["exp_avg_sq"].clone() if k else None
        optimizer.step()
        n = (g * g).sum()
        expected = n if k == 0 else 0.5 * before + 0.5 * n
        torch.testing.assert_close(optimizer.state[p]["exp_avg_sq"], expected, rtol=1e-14, atol=0)
    # q's gradient is zero: v stays 0 and its update is wd * p over eps, as NVIDIA's.
    assert optimizer.state[q]["exp_avg_sq"] == 0
    m1 = 0.01 * start_q
    p1 = start_q - 0.1 * m1
    m2 = 0.9 * m1 + 0.01 * p1
    torch.testing.assert_close(q.detach(), p1 - 0.1 * m2, rtol=1e-14, atol=0)


def test_parity_with_timm_on_the_whole_list_path(float64_default, monkeypatch):
    # Accelerators and the compiled path normalise the gradients over whole lists, with the per-step
    # scalars as 0-d tensors; the CPU eager path runs one blocked update per tensor. Force the first.
    monkeypatch.setattr("rvc_optim.optim.novograd.resolve_compiled", lambda *args: True)
    run_whole_lists_with_tensor_scalars(monkeypatch)
    options = CASES["grad_averaging"]
    run_parity(lambda groups: NovoGrad(groups, **options), lambda groups: NvNovoGrad(groups, **options),
               GROUPS, STATE_KEYS, steps=50)
