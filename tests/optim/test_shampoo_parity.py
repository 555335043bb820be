"""Shampoo against torch-optimizer's ``Shampoo`` (the classic method), and the practical parts
(grafting, the paper's statistics and exponent, diagonal factors for large dimensions) against the
update equations written out below.

Tolerance. Both sides run in float64, but the reference takes inverse roots by ``torch.svd`` and ours
by ``torch.linalg.eigh``: two algorithms whose results differ by rounding times the factor's condition
number, and the root's exponent (-1 for a vector, -1/2 for a matrix) passes that on to the step.
Measured over 200 steps on the parity model: epsilon 0.1 (the groups below), largest relative
difference 5.5e-11, within the project's rtol 1e-9; the reference's default epsilon 1e-4 leaves factors
with condition numbers near 1e7 and weights growing to 2e3 (the classic method at lr 1e-2), and there
the two differ by 5e-5 relative. So the test uses epsilon 0.1 and 0.2 and keeps rtol 1e-9.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch_optimizer

from rvc_optim.optim.shampoo import Shampoo
from tests.optim.parity import DTYPE, assert_close, run_parity

GROUPS = [
    {"lr": 1e-2, "momentum": 0.5, "epsilon": 0.1, "update_freq": 3},
    {"lr": 5e-3, "weight_decay": 0.01, "epsilon": 0.2, "update_freq": 1},
]


def _compare_state(ours, ref, ours_model, ref_model) -> None:
    """Every factor and inverse root (ours keeps size-1 dimensions as [1] diagonals: compared as 1 x 1),
    the step count, and the momentum buffer where momentum is on (the reference stores it always)."""
    for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
        mine, theirs = ours.state[p], ref.state[q]
        assert mine["step"] == theirs["step"] == 200
        for i, d in enumerate(p.shape):
            for key in (f"precond_{i}", f"inv_precond_{i}"):
                a = mine[key] if mine[key].dim() == 2 else torch.diag(mine[key])
                assert_close(a, theirs[key], f"state {key} of {name}", 1e-9, 0.0)
        if any(p is x for x in ours.param_groups[0]["params"]):  # group 0 has momentum
            assert_close(mine["momentum_buffer"], theirs["momentum_buffer"], f"momentum_buffer of {name}", 1e-9, 0.0)
        else:
            assert "momentum_buffer" not in mine


def test_parity_with_torch_optimizer_classic():
    ours, ref, ours_model, ref_model = run_parity(
        lambda groups: Shampoo(groups, max_preconditioner_dim=None),
        lambda groups: torch_optimizer.Shampoo(groups),
        GROUPS,
    )
    _compare_state(ours, ref, ours_model, ref_model)


# --- the practical method, against its equations --------------------------------------------------------


def _mode_product(x: torch.Tensor, matrix: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.movedim(torch.tensordot(matrix, x, dims=([1], [dim])), 0, dim)


def _root(stat: torch.Tensor, exponent: float) -> torch.Tensor:
    u, s, _ = torch.linalg.svd(stat)
    return u @ torch.diag(s.pow(-exponent)) @ u.T


class _Equations:
    """Shampoo with raw-gradient statistics, diagonal factors above ``max_dim`` and grafting, one tensor."""

    def __init__(self, w, *, lr, momentum, epsilon, freq, max_dim, multiplier, graft, beta2, graft_eps):
        self.w, self.lr, self.mu, self.freq, self.graft = w, lr, momentum, freq, graft
        self.beta2, self.graft_eps, self.t, self.m, self.v = beta2, graft_eps, 0, None, torch.zeros_like(w)
        self.diagonal = [d > max_dim for d in w.shape]
        self.stats = [torch.full((d,), epsilon, dtype=DTYPE) if diag else epsilon * torch.eye(d, dtype=DTYPE)
                      for d, diag in zip(w.shape, self.diagonal)]
        self.roots = [None] * w.dim()
        self.exponent = multiplier / w.dim()

    def step(self, g: torch.Tensor) -> None:
        self.m = g.clone() if self.m is None else self.m
        g = (1 - self.mu) * g + self.mu * self.m
        for i, diag in enumerate(self.diagonal):
            unfolded = torch.movedim(g, i, 0).reshape(g.shape[i], -1)
            self.stats[i] += (unfolded**2).sum(1) if diag else unfolded @ unfolded.T
            if self.t % self.freq == 0:
                s = self.stats[i]
                self.roots[i] = s.pow(-self.exponent) if diag else _root(s, self.exponent)
        direction = g
        for i, diag in enumerate(self.diagonal):
            root = torch.diag(self.roots[i]) if diag else self.roots[i]
            direction = _mode_product(direction, root, i)
        self.t += 1
        if self.graft == "adagrad":
            self.v += g * g
            grafted = g / (self.v.sqrt() + self.graft_eps)
        else:
            self.v = self.beta2 * self.v + (1 - self.beta2) * g * g
            grafted = g / ((self.v / (1 - self.beta2**self.t)).sqrt() + self.graft_eps)
        update = direction * (grafted.norm() / direction.norm())
        self.m = update
        self.w -= self.lr * update


@pytest.mark.parametrize("graft", ["adagrad", "adam"])
def test_grafting_and_paper_statistics_against_the_equations(graft):
    settings = dict(lr=3e-2, momentum=0.3, epsilon=0.05, freq=2, max_dim=3, multiplier=0.5, graft=graft,
                    beta2=0.9, graft_eps=1e-8)
    gen = torch.Generator().manual_seed(3)
    shapes = [(3, 2), (5,), (2, 4, 3), (2, 1, 3)]  # 5 and 4 exceed max_dim: diagonal factors
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=DTYPE)) for s in shapes]
    equations = [_Equations(p.detach().clone(), **settings) for p in params]
    ours = Shampoo(params, lr=settings["lr"], momentum=settings["momentum"], epsilon=settings["epsilon"],
                   precondition_frequency=settings["freq"], max_preconditioner_dim=settings["max_dim"],
                   exponent_multiplier=settings["multiplier"], graft=graft, graft_beta2=settings["beta2"],
                   graft_eps=settings["graft_eps"], sequential_statistics=False)
    for step in range(30):
        for p, eq in zip(params, equations):
            g = torch.randn(p.shape, generator=gen, dtype=DTYPE) * (1 + step % 3)
            p.grad = g.clone()
            eq.step(g)
        ours.step()
        for p, eq in zip(params, equations):
            assert_close(p, eq.w, f"step {step + 1}: {tuple(p.shape)}", 1e-9, 0.0)
    assert [ours.state[p]["precond_1"].dim() for p in params if p.dim() > 1] == [2, 1, 1]


def test_grafted_step_has_the_grafted_norm():
    """With Adam grafting the first step of every tensor has Adam's first-step norm: sqrt(numel) (bias
    corrected, so |g| / |g| in every coordinate), whatever Shampoo's own scale."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(s, dtype=DTYPE)) for s in [(6, 4), (3, 5, 2)]]
    optimizer = Shampoo(params, lr=1.0, graft="adam", graft_eps=0.0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=DTYPE) * 1e-3
    optimizer.step()
    for p in params:
        assert math.isclose(p.norm().item(), math.sqrt(p.numel()), rel_tol=1e-12)


def test_same_shaped_tensors_batched_match_one_at_a_time():
    gen = torch.Generator().manual_seed(1)
    init = [torch.randn(6, 4, 3, generator=gen, dtype=DTYPE) for _ in range(3)]
    grads = [[torch.randn(6, 4, 3, generator=gen, dtype=DTYPE) for _ in range(3)] for _ in range(5)]
    batched = [torch.nn.Parameter(w.clone()) for w in init]
    single = [torch.nn.Parameter(w.clone()) for w in init]
    settings = dict(lr=1e-2, momentum=0.2, epsilon=0.1, precondition_frequency=2, graft="adagrad")
    together = Shampoo(batched, **settings)
    apart = [Shampoo([p], **settings) for p in single]
    for step_grads in grads:
        for p, q, g in zip(batched, single, step_grads):
            p.grad, q.grad = g.clone(), g.clone()
        together.step()
        for opt in apart:
            opt.step()
    for p, q in zip(batched, single):
        assert_close(p, q, "batched vs one at a time", 1e-12, 0.0)
    # the batch's state is one tensor: each parameter's entry is a slice of it, updated in place
    factors = [together.state[p]["precond_1"] for p in batched]
    assert all(f._base is factors[0]._base is not None for f in factors)


def test_wide_dimension_stays_diagonal_and_steps_quickly():
    """RVC's enc_q.enc.cond_layer has a 6144-wide dimension: above max_preconditioner_dim its factor is a
    vector, and a step takes no 6144 x 6144 decomposition."""
    p = torch.nn.Parameter(torch.randn(6144, 8, 1) * 0.02)
    optimizer = Shampoo([p], lr=1e-3, graft="adam")
    p.grad = torch.randn_like(p)
    optimizer.step()
    state = optimizer.state[p]
    assert state["precond_0"].shape == (6144,) and state["precond_1"].shape == (8, 8)
    assert state["precond_2"].shape == (1,) and torch.isfinite(p).all()
    bias = torch.nn.Parameter(torch.zeros(384))
    optimizer = Shampoo([bias], precondition_1d=False)
    bias.grad = torch.randn_like(bias)
    optimizer.step()
    assert optimizer.state[bias]["precond_0"].shape == (384,)


def test_update_freq_is_the_reference_name_for_precondition_frequency():
    p = torch.nn.Parameter(torch.zeros(3))
    assert Shampoo([p], update_freq=7).param_groups[0]["precondition_frequency"] == 7
    assert Shampoo([{"params": [p], "update_freq": 5}]).param_groups[0]["precondition_frequency"] == 5
    with pytest.raises(ValueError, match="graft"):
        Shampoo([p], graft="sgd")
    with pytest.raises(ValueError, match="precondition_frequency"):
        Shampoo([p], precondition_frequency=0)
