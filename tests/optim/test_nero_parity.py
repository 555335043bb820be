"""Nero against ``pytorch_optimizer.Nero(eps=0)`` (pytorch-optimizer 4.1.0), which equals the authors'
jxbz/nero code to 1e-15 when its first projection comes before the first gradient (the authors' code
is CC BY-NC-SA and not packaged, so it is not used here), and Nero's rules written out: the
projection at construction, weight-norm magnitudes left free, zero neurons, resuming.

The port projects the weights and takes ``scale`` at the first step, after the first gradient; the
authors (and ours) project at construction. The reference side is therefore projected by this test's
own equations before its optimizer is built; the port's first-step projection of already projected
weights then changes them only in the last bits. The port constrains every tensor of more than one
dimension in a constrained group, the weight-norm magnitude [8, 1, 1] included, which ours leaves
free: the reference's second group (biases and that magnitude) runs with constraints=False, ours with
the default True. Measured over 200 float64 steps: parameters within 3.3e-16 absolute and 1e-10
relative (the step's re-projection takes the centred norm in one pass, which moves the last bits of
elements near 0), so rtol 1e-9 holds.
"""

from __future__ import annotations

import torch

from rvc_optim.optim.nero import Nero, project_, reproject_
from tests.optim.parity import make_model, run_parity
from tests.optim.test_adan_parity import _import_reference

_import_reference()  # pytorch_optimizer imports cleanly only with transformers hidden (see there)
from pytorch_optimizer import Nero as ReferenceNero  # noqa: E402

GROUPS = [{"lr": 1e-2}, {"lr": 3e-3}]
BETA = 0.99


def _project_by_the_paper(p):
    rows = p.detach().reshape(p.shape[0], -1)
    rows = rows - rows.mean(dim=1, keepdim=True)
    with torch.no_grad():
        p.copy_((rows / rows.norm(dim=1, keepdim=True)).view_as(p))


def _reference(groups):
    for p in groups[0]["params"]:
        _project_by_the_paper(p)
    groups[1]["constraints"] = False
    return ReferenceNero(groups, beta=BETA, eps=0.0, foreach=False)


def test_parity_with_pytorch_optimizer():
    ours, _, model, _ = run_parity(lambda groups: Nero(groups, beta=BETA), _reference, GROUPS,
                                   {"exp_avg_sq": "exp_avg_sq", "scale": "scale"})
    # the constrained tensors end on the constraint set; the weight-norm magnitude stays free
    for name, p in model.named_parameters():
        rows = p.detach().reshape(p.shape[0], -1)
        if p.dim() > 1 and "original0" not in name:
            torch.testing.assert_close(rows.norm(dim=1), torch.ones(p.shape[0], dtype=p.dtype), rtol=1e-12, atol=0)
            torch.testing.assert_close(rows.mean(dim=1), torch.zeros(p.shape[0], dtype=p.dtype), rtol=0, atol=1e-15)
    magnitude = model.wn_conv.parametrizations.weight.original0
    assert magnitude.shape == (8, 1, 1) and (magnitude.abs() > 0.1).all()


def test_projects_at_construction_and_leaves_magnitudes_free():
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    Nero(model.parameters())
    for name, p in model.named_parameters():
        if p.dim() > 1 and p.numel() > p.shape[0]:
            expected = before[name].clone().requires_grad_(False)
            _project_by_the_paper(expected)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-15)
        else:  # vectors and the [8, 1, 1] weight-norm magnitude
            assert torch.equal(p.detach(), before[name]), name


def test_constraints_off_per_group():
    model = make_model()
    before = model.conv.weight.detach().clone()
    Nero([{"params": [model.conv.weight], "constraints": False}, {"params": [model.head.weight]}])
    assert torch.equal(model.conv.weight.detach(), before)


def test_zero_initialised_weight_stays_finite_and_learns():
    w = torch.nn.Parameter(torch.zeros(4, 3, dtype=torch.float64))
    optimizer = Nero([w], lr=0.1)
    assert torch.equal(w.detach(), torch.zeros_like(w))
    w.grad = torch.randn(4, 3, dtype=torch.float64)
    optimizer.step()
    assert torch.isfinite(w).all() and w.abs().sum() > 0
    torch.testing.assert_close(w.detach().norm(dim=1), torch.ones(4, dtype=torch.float64), rtol=1e-12, atol=0)


def test_neuron_with_zero_gradient_takes_no_step():
    v = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    start = v.detach().clone()
    optimizer = Nero([v], lr=0.1)
    v.grad = torch.tensor([1.0, 0.0, -2.0, 0.0, 3.0], dtype=torch.float64)
    optimizer.step()
    assert torch.isfinite(v).all()
    assert torch.equal(v.detach()[[1, 3]], start[[1, 3]])
    # the others move by lr * scale * sign(g) on the first step (|g| / sqrt(g^2))
    scale = start.abs().mean()
    torch.testing.assert_close(v.detach()[[0, 2, 4]], start[[0, 2, 4]] - 0.1 * scale * torch.tensor(
        [1.0, -1.0, 1.0], dtype=torch.float64), rtol=1e-14, atol=0)


def test_rebuilding_on_projected_weights_changes_nothing():
    model = make_model()
    Nero(model.parameters())
    projected = [p.detach().clone() for p in model.parameters()]
    Nero(model.parameters())
    assert all(torch.equal(p.detach(), q) for p, q in zip(model.parameters(), projected))


def test_reprojection_in_one_pass_equals_the_two_pass_projection():
    """The step's re-projection (row sums and norms, then one fused write) against the plain one, on
    tensors a step away from the constraint set, one of them not contiguous, one with a zero row."""
    torch.manual_seed(0)
    tensors = [torch.randn(6, 4, 3, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64).t(),
               torch.randn(4, 9, dtype=torch.float64)]
    project_(tensors)
    for t in tensors:
        t.add_(0.01 * torch.randn_like(t))
    tensors[2][1].zero_()
    expected = [t.clone() for t in tensors]
    project_(expected)
    reproject_(tensors)
    assert not tensors[1].is_contiguous()
    for got, want in zip(tensors, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    assert torch.equal(tensors[2][1], torch.zeros(9, dtype=torch.float64))
