"""LAMB against ``timm.optim.Lamb`` (timm 1.0.31, apex's FusedLAMB semantics; the authors released no
PyTorch code), and the trust ratio's zero-norm cases against the paper's rule.

timm imports torchvision from its package ``__init__``; :func:`rvc_optim.benchmark.import_published`
loads its optimizer modules alone. Measured over 200 float64 steps (all cases): parameters within 1e-15 absolute (1.1e-12
relative, on elements near zero), state within 3.6e-12 relative. The differences are rounding: ours
folds the clip factor and the bias corrections into coefficients (as timm's foreach path folds the
latter). rtol 1e-9 holds with margin.
"""

from __future__ import annotations

import pytest
import torch

from rvc_optim.benchmark import import_published
from rvc_optim.optim.lamb import LAMB
from tests.optim.parity import run_parity


TimmLamb = import_published("timm.optim.lamb").Lamb

STATE_KEYS = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}
BETAS = (0.85, 0.995)  # not the defaults, so a swapped beta would show
GROUPS = [{"lr": 2e-3, "weight_decay": 0.02}, {"lr": 5e-3, "weight_decay": 0.0}]
# The parity model's global gradient norm is 0.1..0.48: a bound of 0.25 clips about half the steps.
CASES = {
    "default": {},
    "clipped": {"max_grad_norm": 0.25},
    "always_adapt": {"always_adapt": True, "max_grad_norm": None},
    "trust_clip": {"trust_clip": True, "always_adapt": True},
    "no_bias_correction_no_averaging": {"bias_correction": False, "grad_averaging": False},
}


@pytest.mark.parametrize("options", list(CASES.values()), ids=list(CASES))
def test_parity_with_timm(options):
    ours, ref, _, _ = run_parity(
        lambda groups: LAMB(groups, betas=BETAS, eps=1e-8, **options),
        lambda groups: TimmLamb(groups, betas=BETAS, eps=1e-8, foreach=False, **options),
        GROUPS,
        STATE_KEYS,
    )
    for a, b in zip(ours.param_groups, ref.param_groups):
        assert a["step"] == int(b["step"]) == 200


def test_gradients_are_left_alone():
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    p.grad = torch.full_like(p, 10.0)
    LAMB([p], max_grad_norm=1.0).step()
    assert torch.equal(p.grad, torch.full_like(p, 10.0))


def _one_step(weight, grad, **options):
    p = torch.nn.Parameter(weight.clone())
    p.grad = grad.clone()
    LAMB([p], lr=0.1, max_grad_norm=None, **options).step()
    return p.detach()


def test_zero_initialised_layer_learns_with_ratio_one():
    # ||p|| = 0: the paper's ratio would be 0 and freeze the layer; r = 1 gives an Adam-sized step.
    grad = torch.randn(5, 4, dtype=torch.float64)
    out = _one_step(torch.zeros(5, 4, dtype=torch.float64), grad, eps=0.0)
    # Adam's first step is sign(g) (m / sqrt(v) with both bias-corrected): lr * sign(g), applied once.
    torch.testing.assert_close(out, -0.1 * torch.sign(grad), rtol=1e-12, atol=0)


def test_trust_ratio_applied_once():
    # The step of one tensor has norm lr * ||p|| exactly (r = ||p|| / ||u||, then lr * r * u).
    weight, grad = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    out = _one_step(weight, grad, weight_decay=0.1)
    torch.testing.assert_close((out - weight).norm(), 0.1 * weight.norm(), rtol=1e-12, atol=0)


def test_without_decay_or_always_adapt_it_is_adam():
    weight, grad = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    out = _one_step(weight, grad, weight_decay=0.0, eps=0.0)
    torch.testing.assert_close(out, weight - 0.1 * torch.sign(grad), rtol=1e-12, atol=0)


def run_whole_lists_with_tensor_scalars(monkeypatch):
    """Make the CPU run the update functions as accelerators do: whole lists, per-step scalars as 0-d
    tensors (the CPU eager path cuts blocks and passes Python floats)."""
    monkeypatch.setattr("rvc_optim.optim._compile.UpdateFunction._run_blocked",
                        lambda self, lists, scalars: self.fn(*lists, **scalars))


@pytest.mark.parametrize("case", ["clipped", "always_adapt", "no_bias_correction_no_averaging"])
def test_parity_with_timm_with_tensor_scalars(case, monkeypatch):
    # Accelerators and the compiled path run the whole step in lamb_layer_update over whole lists, with
    # the per-step scalars as 0-d tensors; force that here, eagerly.
    monkeypatch.setattr("rvc_optim.optim.lamb.resolve_compiled", lambda *args: True)
    run_whole_lists_with_tensor_scalars(monkeypatch)
    options = CASES[case]
    run_parity(lambda groups: LAMB(groups, betas=BETAS, eps=1e-8, **options),
               lambda groups: TimmLamb(groups, betas=BETAS, eps=1e-8, foreach=False, **options),
               GROUPS, STATE_KEYS, steps=50)


def test_eager_cpu_step_writes_its_updates_into_one_kept_batch_buffer():
    """A CPU's eager step forms the updates batch by batch in one buffer kept between steps, not a
    fresh parameter-sized list each step (whose pages faulted in every step)."""
    params = [torch.nn.Parameter(torch.randn(1000)) for _ in range(600)] + [torch.nn.Parameter(torch.randn(300, 400))]
    opt = LAMB(params, compiled=False)
    pointers = []
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        (buffer,) = opt._work_buffers.values()
        pointers.append(buffer.data_ptr())
    assert pointers[0] == pointers[1]
    assert buffer.numel() < sum(p.numel() for p in params)
