"""Fromage against ``pytorch_optimizer.Fromage`` (pytorch-optimizer 4.1.0), which equals the authors'
jxbz/fromage code exactly (0.0, with and without p_bound; the authors' code is not packaged and is
CC BY-NC-SA, so it is not used here), and the update written out from the paper.

Measured over 200 float64 steps: parameters within 1.3e-15 absolute at the end (3.8e-13 relative with
p_bound). Ours adds g scaled by -lr * ||p|| / ||g|| in one fused pass where the reference multiplies g
by the ratio first and then adds it times -lr: the two round differently in the last bit. An element
passing close to zero (|p| ~ 1e-7 in conv.weight at step 99) shows that as 1.1e-16 absolute, 1.1e-9
relative. Hence rtol 1e-9 with atol 1e-15, a few ulps of the weights' scale (0.01..1).
"""

from __future__ import annotations

import pytest
import torch

from rvc_optim.optim.fromage import Fromage, fromage_rated_step
from tests.optim.parity import run_parity
from tests.optim.test_adan_parity import _import_reference
from tests.optim.test_lamb_parity import run_whole_lists_with_tensor_scalars

GROUPS = [{"lr": 1e-2}, {"lr": 3e-3}]


def _reference():
    import pytorch_optimizer

    return pytorch_optimizer.Fromage


_import_reference()  # pytorch_optimizer imports cleanly only with transformers hidden (see there)
ReferenceFromage = _reference()


@pytest.mark.parametrize("layout", ["default", "cpu-compiled-layout"])
@pytest.mark.parametrize("p_bound", [None, 0.97], ids=["unbounded", "p_bound"])
def test_parity_with_pytorch_optimizer(p_bound, layout, monkeypatch):
    if layout == "cpu-compiled-layout":
        # Compiled on a CPU the norms are taken eagerly and the step is one elementwise function of
        # per-tensor 0-d scales (``fromage_rated_step``); run that layout eagerly, scalars as tensors.
        monkeypatch.setattr("rvc_optim.optim.fromage.resolve_compiled", lambda *args: True)
        run_whole_lists_with_tensor_scalars(monkeypatch)
        calls = []
        monkeypatch.setattr("rvc_optim.optim.fromage.fromage_rated_step",
                            lambda *a, **k: calls.append(1) or fromage_rated_step(*a, **k))
    # At these rates the parity model's tensors end 0 to 7% below their initial norms: a bound of 0.97
    # times the initial norm holds some of them (biases, the weight-norm direction) and not others.
    ours, _, model, _ = run_parity(
        lambda groups: Fromage(groups, p_bound=p_bound),
        lambda groups: ReferenceFromage(groups, p_bound=p_bound, foreach=False),
        GROUPS,
        {"max": "max"} if p_bound else None,
        atol=1e-15,
    )
    if p_bound:
        at_bound = [bool(torch.isclose(p.norm(), ours.state[p]["max"], rtol=1e-12)) for p in model.parameters()
                    if ours.state[p]["max"] > 0]
        assert any(at_bound) and not all(at_bound)
    if layout == "cpu-compiled-layout":
        assert calls


def _one_step(weight, grad, lr, **options):
    p = torch.nn.Parameter(weight.clone())
    p.grad = grad.clone()
    Fromage([p], lr=lr, **options).step()
    return p.detach()


def test_the_paper_update():
    weight, grad = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    lr = 0.05
    expected = (weight - lr * weight.norm() / grad.norm() * grad) / (1 + lr**2) ** 0.5
    torch.testing.assert_close(_one_step(weight, grad, lr), expected, rtol=1e-14, atol=0)


def test_zero_tensor_takes_a_plain_gradient_step():
    grad = torch.randn(5, dtype=torch.float64)
    out = _one_step(torch.zeros(5, dtype=torch.float64), grad, 0.1)
    torch.testing.assert_close(out, -0.1 * grad / (1 + 0.01) ** 0.5, rtol=1e-14, atol=0)


def test_p_bound_caps_the_norm():
    weight = torch.randn(6, 3, dtype=torch.float64)
    out = _one_step(weight, weight.clone().neg_(), 0.5, p_bound=1.1)  # a step straight outwards: x1.5/sqrt(1.25)
    torch.testing.assert_close(out.norm(), 1.1 * weight.norm(), rtol=1e-14, atol=0)
