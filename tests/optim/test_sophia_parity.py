"""Sophia against the authors' ``SophiaG`` (``sophia_opt`` 0.2.2, byte-identical to Liuhong99/Sophia's
``sophia.py``), and the Hutchinson estimator against exact Hessian diagonals.

The parity runs follow the authors' protocol: ``update_hessian()`` from the gradients present every
k steps (here at steps 3, 13, 23, ...; the authors' loop uses iter % k == k - 1 with gradients of a
loss on sampled labels: which gradients feed it does not matter for parity), ``step(bs=...)`` every
step. Measured: parameters, ``exp_avg``, ``hessian`` and ``step`` equal bit for bit after 200 steps
in float64 (the same operations in the same order: the clip is written as clamp(m / d, -1, 1), which
is sign(m) * min(|m| / d, 1) exactly for d > 0), so rtol is 0.
"""

from __future__ import annotations

import functools

import pytest
import torch
from sophia_opt import SophiaG

from rvc_optim.optim.sophia import Sophia, hutchinson_diagonal
from tests.optim.parity import batches, make_model, run_parity, two_groups

GROUPS = [
    {"lr": 3e-3, "weight_decay": 0.1, "rho": 0.04, "betas": (0.9, 0.95)},
    {"lr": 1e-3, "weight_decay": 0.0, "rho": 0.1},
]
STATE = {"exp_avg": "exp_avg", "hessian": "hessian", "step": "step"}
K = 10


def _with_bs(optimizer, bs):
    if bs is not None:
        optimizer.step = functools.partial(optimizer.step, bs=bs)
    return optimizer


def _refresh_every_k():
    seen = [0]

    def before_step(ours, ref):
        seen[0] += 1
        if seen[0] % K == 3:
            ours.update_hessian()
            ref.update_hessian()

    return before_step


@pytest.mark.parametrize(
    "bs, maximize",
    [(None, False), (1000, False), (1000, True)],
    ids=["default-bs", "bs-1000", "bs-1000-maximize"],
)
def test_parity_with_sophia_opt(bs, maximize):
    ours, _, _, _ = run_parity(
        lambda groups: _with_bs(Sophia(groups, maximize=maximize, compiled=False), bs),
        lambda groups: _with_bs(SophiaG(groups, maximize=maximize), bs),
        GROUPS,
        state_keys=STATE,
        before_step=_refresh_every_k(),
        rtol=0.0,
    )
    assert all(float(s["step"]) == 200 for s in ours.state.values())


def test_parity_run_mixes_clipped_and_curvature_steps():
    """At the default bs (5120) the parity run is not all sign steps: measured 56% of coordinates take
    the curvature step |m| / (rho bs h) < 1 (17% at bs=1000), so a broken denominator fails the parity
    test above."""
    model = make_model()
    opt = Sophia(two_groups(model, GROUPS), compiled=False)
    unclipped, total = 0, 0
    for i, (tokens, target) in enumerate(batches(60), start=1):
        opt.zero_grad()
        torch.mean((model(tokens) - target) ** 2).backward()
        if i % K == 3:
            opt.update_hessian()
        opt.step()
        if i > 10:
            for group in opt.param_groups:
                for p in group["params"]:
                    s = opt.state[p]
                    ratio = s["exp_avg"].abs() / (group["rho"] * 5120 * s["hessian"] + 1e-15)
                    unclipped += int((ratio < 1).sum())
                    total += ratio.numel()
    assert 0.3 < unclipped / total < 0.8, unclipped / total


def test_update_hessian_with_estimates_and_the_equations():
    """update_hessian(estimates) is h <- beta2 h + (1 - beta2) e; the step is the equations."""
    torch.manual_seed(0)
    p0 = torch.randn(6, 5, dtype=torch.float64)
    param = torch.nn.Parameter(p0.clone())
    opt = Sophia([param], lr=1e-2, betas=(0.9, 0.8), rho=0.5, weight_decay=0.2, bs=3.0, compiled=False)
    p, m, h = p0.clone(), torch.zeros_like(p0), torch.zeros_like(p0)
    for i in range(12):
        g = torch.randn_like(p0)
        param.grad = g.clone()
        if i % 4 == 1:
            e = torch.randn_like(p0)  # signed, as a Hutchinson estimate can be
            opt.update_hessian([e])
            h = 0.8 * h + 0.2 * e
        opt.step()
        p = p * (1 - 1e-2 * 0.2)
        m = 0.9 * m + 0.1 * g
        p = p - 1e-2 * torch.sign(m) * torch.clamp(m.abs() / (torch.clamp(0.5 * 3.0 * h, min=0) + 1e-15), max=1)
        torch.testing.assert_close(param.detach(), p, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(opt.state[param]["hessian"], h, rtol=1e-12, atol=0)


def test_negative_curvature_gives_a_bounded_sign_step():
    """Where the estimate is negative the step is -lr * sign(m), never a reversed or huge step."""
    param = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = Sophia([param], lr=0.1, weight_decay=0.0, compiled=False)
    param.grad = torch.tensor([1.0, -2.0, 3.0, -4.0], dtype=torch.float64)
    opt.update_hessian({param: torch.full((4,), -5.0, dtype=torch.float64)})
    opt.step()
    torch.testing.assert_close(param.detach(), -0.1 * torch.sign(param.grad))


def test_update_hessian_rejects_a_wrong_number_of_estimates():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(3))
    opt = Sophia([a, b])
    with pytest.raises(ValueError, match="2 parameters"):
        opt.update_hessian([torch.ones(2)])


# --- Hutchinson ---------------------------------------------------------------------------------------


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    """For f = sum(c * x**2 / 2) * 3 + sum(d * y**4) the Hessian is diagonal, so z * (H z) = diag H
    for every Rademacher z (z**2 = 1): exact with one probe."""
    torch.manual_seed(1)
    x = torch.nn.Parameter(torch.randn(7, 3, dtype=torch.float64))
    y = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    c, d = torch.rand(7, 3, dtype=torch.float64), torch.rand(5, dtype=torch.float64)
    loss = 3 * (c * x**2 / 2).sum() + (d * y**4).sum()
    est = hutchinson_diagonal(loss, [x, y], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(est[0], 3 * c, rtol=1e-14, atol=0)
    torch.testing.assert_close(est[1], 12 * d * y.detach() ** 2, rtol=1e-14, atol=0)


def _quadratic(n: int = 6):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    hess = a @ a.T + torch.eye(n, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64))
    return hess, w, 0.5 * w @ hess @ w


def test_hutchinson_is_unbiased_for_a_full_hessian():
    """With off-diagonal terms one probe is noisy; the mean over many probes converges to diag H
    (standard error of the mean with 4000 probes: about sqrt(sum_j H_ij**2 / 4000), ~0.1 here)."""
    hess, w, loss = _quadratic()
    (g,) = torch.autograd.grad(loss, [w], create_graph=True)
    est = hutchinson_diagonal([g], [w], samples=4000, generator=torch.Generator().manual_seed(0))[0]
    off = (hess**2).sum(1) - hess.diagonal() ** 2
    tolerance = 5 * (off / 4000).sqrt()
    assert ((est - hess.diagonal()).abs() < tolerance).all(), (est, hess.diagonal())
    single = hutchinson_diagonal(0.5 * w @ hess @ w, [w], generator=torch.Generator().manual_seed(0))[0]
    assert not torch.allclose(single, hess.diagonal(), rtol=1e-3)


def test_hutchinson_gradients_without_graph_give_zero_and_free_the_graph():
    x = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    loss = (x**3).sum() + b.sum()  # b's gradient is a constant: its Hessian row is zero
    gx, gb = torch.autograd.grad(loss, [x, b], create_graph=True)
    est = hutchinson_diagonal([gx, gb], [x, b])
    torch.testing.assert_close(est[0], 6 * x.detach())
    assert torch.equal(est[1], torch.zeros(3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="(?i)backward through the graph a second time|freed"):
        torch.autograd.grad(gx, x, torch.ones_like(gx))


def test_hutchinson_probes_are_rademacher_and_follow_the_generator():
    hess, w, _ = _quadratic()

    def estimate(samples: int) -> torch.Tensor:
        (g,) = torch.autograd.grad(0.5 * w @ hess @ w, [w], create_graph=True)
        return hutchinson_diagonal([g], [w], samples=samples, generator=torch.Generator().manual_seed(7))[0]

    assert torch.equal(estimate(2), estimate(2))
    # one probe: z * (H z) = H_ii + sum_{j != i} z_i z_j H_ij, z the generator's +-1 draw
    z = torch.randint(0, 2, (6,), generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(estimate(1), z * (hess @ z))
