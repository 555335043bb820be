"""AggMo against torch-optimizer's ``AggMo`` (numerically identical to the authors' AtheMathmo/AggMo).

The reference keeps its buffers in a dict keyed by beta; ours under ``momentum_buffer_<i>``, compared
here index by index. Measured over 200 steps: parameters and buffers agree bit for bit (the same
operations in the same order), so the test asks for rtol 0 on the parameters and the project's 1e-9 on
the state.
"""

from __future__ import annotations

import pytest
import torch
from torch_optimizer import AggMo as ReferenceAggMo

from rvc_optim.optim.aggmo import AggMo
from tests.optim.parity import assert_close, run_parity

GROUPS = [{"lr": 3e-3, "weight_decay": 1e-2}, {"lr": 1e-3, "weight_decay": 0.0}]


def _compare_buffers(ours, ref, ours_model, ref_model, betas):
    for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
        theirs = ref.state[q]["momentum_buffer"]
        for i, beta in enumerate(betas):
            assert_close(ours.state[p][f"momentum_buffer_{i}"], theirs[beta], f"buffer {i} of {name}", 1e-9, 0.0)


@pytest.mark.parametrize("betas", [(0.0, 0.9, 0.99), (0.5, 0.95), (0.0, 0.9, 0.99, 0.999)])
def test_parity_with_torch_optimizer(betas):
    ours, ref, ours_model, ref_model = run_parity(
        lambda groups: AggMo(groups, betas=betas, compiled=False),
        lambda groups: ReferenceAggMo(groups, betas=betas),
        GROUPS,
        rtol=0.0,
    )
    _compare_buffers(ours, ref, ours_model, ref_model, betas)


def test_from_exp_form_matches_the_reference():
    ours, ref, ours_model, ref_model = run_parity(
        lambda groups: AggMo.from_exp_form(groups, lr=2e-3, a=0.2, k=4, compiled=False),
        lambda groups: ReferenceAggMo.from_exp_form(groups, lr=2e-3, a=0.2, k=4),
        GROUPS,
        steps=50,
        rtol=0.0,
    )
    assert ours.param_groups[0]["betas"] == tuple(1 - 0.2**i for i in range(4))
    _compare_buffers(ours, ref, ours_model, ref_model, ours.param_groups[0]["betas"])


def test_matches_the_equations_with_a_repeated_beta():
    """The paper's sum over K buffers, written out: a repeated beta gets a buffer of its own (the
    authors' dict would share one and update it twice)."""
    torch.manual_seed(0)
    betas, lr, wd = (0.9, 0.9, 0.5), 1e-2, 0.1
    p = torch.randn(6, 3, dtype=torch.float64)
    param = torch.nn.Parameter(p.clone())
    opt = AggMo([param], lr=lr, betas=betas, weight_decay=wd, compiled=False)
    bufs = [torch.zeros_like(p) for _ in betas]
    for _ in range(30):
        g = torch.randn_like(p)
        param.grad = g.clone()
        opt.step()
        d = g + wd * p
        bufs = [beta * b + d for beta, b in zip(betas, bufs)]
        p = p - lr / len(betas) * sum(bufs)
        torch.testing.assert_close(param.detach(), p, rtol=1e-12, atol=0)
    assert torch.equal(param.grad, g), "the gradient must not be modified"


def test_defaults_and_arguments():
    p = torch.nn.Parameter(torch.zeros(2))
    d = AggMo([p]).defaults
    assert (d["lr"], d["betas"], d["weight_decay"]) == (1e-3, (0.0, 0.9, 0.99), 0.0)
    with pytest.raises(ValueError, match="beta"):
        AggMo([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="betas"):
        AggMo([p], betas=())
