"""SOAP against the authors' current algorithm (nikhilvyas/SOAP HEAD, after the "momentum change" of
commit f42d296), written out below as the oracle: the authors' ``soap.py`` is not packaged.

The oracle is a per-tensor loop of ``torch.tensordot`` products, one factor at a time, with the casts
the authors' code makes when run under ``torch.set_default_dtype(torch.float64)`` (the only way it
runs on float64 parameters): the first eigenbasis is ``eigh`` of the factor rounded to float32, computed
in float64; each refresh (eigenvalue estimates, power step, QR) runs in float32 and is cast back.

Why every step starts both sides from the same state (``resync``): ours batches tensors and factors, so
its float64 products round differently from tensordot's (1 ulp). That is harmless until a factor is
rounded to float32 for a decomposition: a float64 difference of 1e-18 there flips a float32 rounding
now and then (seen once in 200 steps, in the precondition_1d case: 2 entries of a 144 x 144 factor at
step 190), and the new eigenbasis then differs by 4e-6; from there the trajectories drift apart (to
5e-3 in 10 steps), as two runs of the authors' own code would on two BLAS builds. So before each step
the oracle gets our parameters, gradients and state (copies), and each of the 200 steps, refreshes
included, is compared on its own: measured largest relative difference 6e-11 over all cases
(parameters), state to 1e-15 absolute for exp_avg entries that are rounding noise around zero.
Free-running, the cases without a flip agree to 1e-9 too (largest 9e-10, in exp_avg).

pytorch_optimizer's ``SOAP`` is the PRE-f42d296 algorithm (the first moment kept in the original basis
and projected every step) with other casts (float64 eigh and power step, float32 QR only):
``test_pytorch_optimizer_is_the_older_variant`` shows that difference explicitly.
"""

from __future__ import annotations

from itertools import chain

import pytest
import torch
from torch.optim import Optimizer

from rvc_optim.optim.soap import SOAP
from tests.optim.parity import assert_close, run_parity
from tests.optim.test_apollo_parity import import_pytorch_optimizer

STATE_KEYS = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "step": "step"}
GROUPS = [
    {"lr": 3e-3, "weight_decay": 0.01, "betas": (0.9, 0.97)},
    {"lr": 1e-3, "weight_decay": 0.0, "betas": (0.95, 0.95), "shampoo_beta": 0.9},
]


# --- the oracle: the authors' update rule, one tensor and one factor at a time -------------------------


def _merge(shape, limit):
    """Consecutive dimensions merged while the product stays <= limit."""
    out, acc = [], 1
    for size in shape:
        if acc * size > limit:
            out.append(acc if acc > 1 else size)
            acc = size if acc > 1 else 1
        else:
            acc *= size
    return out + [acc] if acc > 1 or not out else out


class OracleSOAP(Optimizer):
    """The authors' rule. ``momentum_in_eigenbasis=False`` is the rule before f42d296 (m kept in the
    original basis), and ``authors_casts=False`` pytorch_optimizer's casts (eigh and power step in the
    parameter's dtype, QR in float32)."""

    def __init__(self, params, lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1, eps=1e-8, weight_decay=0.01,
                 precondition_frequency=10, max_precond_dim=10000, merge_dims=False, precondition_1d=False,
                 normalize_grads=False, data_format="channels_first", correct_bias=True,
                 momentum_in_eigenbasis=True, authors_casts=True):
        super().__init__(params, dict(lr=lr, betas=betas, shampoo_beta=shampoo_beta, eps=eps,
                                      weight_decay=weight_decay, precondition_frequency=precondition_frequency,
                                      max_precond_dim=max_precond_dim, merge_dims=merge_dims,
                                      precondition_1d=precondition_1d, normalize_grads=normalize_grads,
                                      correct_bias=correct_bias))
        self.channels_last = data_format == "channels_last"
        self.new_rule, self.authors_casts = momentum_in_eigenbasis, authors_casts

    def view(self, t, group):
        if t.dim() == 1 or not group["merge_dims"]:
            return t
        if self.channels_last and t.dim() == 4:
            t = t.permute(0, 3, 1, 2)
        return t.reshape(_merge(t.shape, group["max_precond_dim"]))

    def unview(self, t, like, group):
        if like.dim() == 1 or not group["merge_dims"]:
            return t
        if self.channels_last and like.dim() == 4:
            return t.reshape(like.permute(0, 3, 1, 2).shape).permute(0, 2, 3, 1)
        return t.reshape(like.shape)

    def rotate(self, t, qs, group, back):
        x = self.view(t, group)
        for q in qs:
            x = torch.tensordot(x, q, dims=[[0], [1 if back else 0]]) if len(q) else x.permute(*range(1, x.dim()), 0)
        return self.unview(x, t, group)

    def accumulate(self, g, state, group):
        x = self.view(g, group)
        for i, gg in enumerate(state["GG"]):
            if len(gg):
                others = [*chain(range(i), range(i + 1, x.dim()))]
                gg.lerp_(torch.tensordot(x, x, dims=[others, others]), 1 - state["shampoo_beta"])

    def eigenbasis(self, gg):
        work = gg.float().to(gg.dtype) if self.authors_casts else gg
        return torch.flip(torch.linalg.eigh(work + 1e-30 * torch.eye(len(gg), dtype=gg.dtype)).eigenvectors, [1])

    def refresh(self, state, group):
        v = self.view(state["exp_avg_sq"], group)
        new = []
        for i, (gg, q) in enumerate(zip(state["GG"], state["Q"])):
            if not len(gg):
                new.append([])
                continue
            if self.authors_casts:
                gg32, q32 = gg.float(), q.float()
                order = torch.argsort(torch.diag(q32.T @ gg32 @ q32), descending=True)
                basis = torch.linalg.qr(gg32 @ q32[:, order]).Q
            else:
                product = gg @ q
                order = torch.argsort((q * product).sum(0), descending=True)
                basis = torch.linalg.qr(product[:, order].float()).Q
            v = v.index_select(i, order)
            new.append(basis.to(gg.dtype))
        state["exp_avg_sq"] = self.unview(v, state["exp_avg_sq"], group)
        state["Q"] = new

    def first_call(self, p, state, group):
        x = self.view(p.grad, group)
        use = [p.dim() != 1 or (group["precondition_1d"] and len(p) <= group["max_precond_dim"])] * x.dim()
        use = [u and size <= group["max_precond_dim"] for u, size in zip(use, x.shape)]
        beta = group["shampoo_beta"]
        state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                     GG=[torch.zeros(n, n, dtype=p.dtype) if u else [] for n, u in zip(x.shape, use)],
                     precondition_frequency=group["precondition_frequency"],
                     shampoo_beta=beta if beta >= 0 else group["betas"][1])
        self.accumulate(p.grad, state, group)
        state["Q"] = [self.eigenbasis(gg) if len(gg) else [] for gg in state["GG"]]

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in [p for p in group["params"] if p.grad is not None]:
                state, g = self.state[p], p.grad
                if "Q" not in state:
                    self.first_call(p, state, group)
                    continue
                g_rot = self.rotate(g, state["Q"], group, back=False)
                state["step"] += 1
                t = state["step"]
                state["exp_avg"] = b1 * state["exp_avg"] + (1 - b1) * (g_rot if self.new_rule else g)
                state["exp_avg_sq"] = b2 * state["exp_avg_sq"] + (1 - b2) * g_rot**2
                m_rot = state["exp_avg"] if self.new_rule else self.rotate(state["exp_avg"], state["Q"], group, False)
                u = self.rotate(m_rot / (state["exp_avg_sq"].sqrt() + group["eps"]), state["Q"], group, back=True)
                if group["normalize_grads"]:
                    u = u / (1e-30 + (u**2).mean().sqrt())
                size = group["lr"] * ((1 - b2**t) ** 0.5 / (1 - b1**t) if group["correct_bias"] else 1.0)
                p -= size * u
                p -= group["lr"] * group["weight_decay"] * p
                if self.new_rule:
                    state["exp_avg"] = self.rotate(state["exp_avg"], state["Q"], group, back=True)
                self.accumulate(g, state, group)
                if t % state["precondition_frequency"] == 0:
                    self.refresh(state, group)
                if self.new_rule:
                    state["exp_avg"] = self.rotate(state["exp_avg"], state["Q"], group, back=False)


# --- helpers --------------------------------------------------------------------------------------------


def compare_factors(ours, ref, params_ours, params_ref, rtol=1e-9, atol=0.0):
    """GG and Q, factor by factor (placeholders where a dimension has none)."""
    for i, (p, q) in enumerate(zip(params_ours, params_ref)):
        mine, theirs = ours.state[p], ref.state[q]
        assert mine["precondition_frequency"] == theirs["precondition_frequency"]
        assert mine["shampoo_beta"] == theirs["shampoo_beta"]
        for key in ("GG", "Q"):
            assert len(mine[key]) == len(theirs[key]), f"tensor {i}: {key} has {len(mine[key])} factors"
            for k, (a, b) in enumerate(zip(mine[key], theirs[key])):
                assert isinstance(a, torch.Tensor) == isinstance(b, torch.Tensor) and len(a) == len(b)
                if len(b):
                    assert_close(a, b, f"tensor {i} {key}[{k}]", rtol, atol)


def _params_of(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"]]


def resync(source, target):
    """Start ``target``'s next step from ``source``'s parameters, gradients and state (copies)."""
    with torch.no_grad():
        for p, q in zip(_params_of(source), _params_of(target)):
            q.copy_(p)
            q.grad.copy_(p.grad)
            if p not in source.state:
                continue
            mine, theirs = source.state[p], target.state[q]
            for key in ("exp_avg", "exp_avg_sq"):
                theirs[key] = mine[key].clone()
            for key in ("GG", "Q"):
                theirs[key] = [t.clone() if len(t) else [] for t in mine[key]]


def _parity(settings, steps=200, groups=GROUPS):
    ours, ref, model_ours, model_ref = run_parity(
        lambda g: SOAP(g, **settings), lambda g: OracleSOAP(g, **settings), groups, STATE_KEYS, steps=steps,
        before_step=resync,
        # exp_avg's entries along directions with no gradient are float64 rounding noise around zero
        state_atol=1e-15,
    )
    compare_factors(ours, ref, list(model_ours.parameters()), list(model_ref.parameters()), atol=1e-15)
    return ours, ref


CASES = {
    "defaults": dict(precondition_frequency=5),
    "merge_dims": dict(precondition_frequency=5, merge_dims=True),
    "precondition_1d": dict(precondition_frequency=7, precondition_1d=True, merge_dims=True),
    "small max_precond_dim": dict(precondition_frequency=4, max_precond_dim=7),
    "small max_precond_dim, merged": dict(precondition_frequency=4, max_precond_dim=20, merge_dims=True),
    "normalize_grads, no bias correction": dict(precondition_frequency=5, normalize_grads=True, correct_bias=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_the_authors_rule(case):
    ours, _ = _parity(CASES[case])
    steps = {s["step"] for s in ours.state.values()}
    assert steps == {199}, steps  # the first call builds the bases and does not move the parameters


def _conv_params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(6, 4, 3, 3), (5, 3, 2, 1), (3, 2, 2, 2), (4, 6, 5), (8, 1, 1), (7,), ()]
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def _conv_loss(params, step):
    gen = torch.Generator().manual_seed(1000 + step)
    loss = 0.0
    for p in params:
        x = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        loss = loss + ((torch.tanh(p * x) - 0.5 * x) ** 2).sum() + (p * x).sum() ** 2 / max(p.numel(), 1)
    return loss


@pytest.mark.parametrize("settings", [
    dict(precondition_frequency=5),
    dict(precondition_frequency=5, merge_dims=True, max_precond_dim=30),
    dict(precondition_frequency=3, merge_dims=True, data_format="channels_last", precondition_1d=True),
], ids=["4-D, per dimension", "4-D, merged", "channels_last, merged, 1-D"])
def test_parity_on_conv_kernels(settings):
    """4-D and 3-D kernels, a weight-norm magnitude [C, 1, 1], a bias and a 0-d scalar, in two groups."""
    steps = 200
    mine, theirs = _conv_params(), _conv_params()
    split = lambda ps: [{"params": ps[:4], **GROUPS[0]}, {"params": ps[4:], **GROUPS[1]}]  # noqa: E731
    ours, ref = SOAP(split(mine), **settings), OracleSOAP(split(theirs), **settings)
    for step in range(steps):
        for params, opt in ((mine, ours), (theirs, ref)):
            opt.zero_grad()
            _conv_loss(params, step).backward()
        resync(ours, ref)
        ours.step()
        ref.step()
        for i, (a, b) in enumerate(zip(mine, theirs)):
            assert_close(a, b, f"step {step}: tensor {i}", 1e-9, 0.0)
    for a, b in zip(mine, theirs):
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close(ours.state[a][key], ref.state[b][key], key, 1e-9, 1e-15)
    compare_factors(ours, ref, mine, theirs, atol=1e-15)


# --- the older variant: pytorch_optimizer ---------------------------------------------------------------


def test_pytorch_optimizer_is_the_older_variant():
    """pytorch_optimizer keeps m in the original basis (the rule before f42d296) and decomposes in float64.

    1. It is that older rule, as the oracle writes it (``momentum_in_eigenbasis=False`` with its casts):
       equal to 1e-9 over 200 resynchronised steps.
    2. The older and the current rule are one algorithm in exact arithmetic (m_eig = Q^T m either way),
       and they agree to 1e-9 while the basis is orthonormal: the first basis (a float64 eigh) and the
       first refresh (step 7 applies it). From the second step after a refresh on they drift apart: the
       current rule turns m out of the basis and back into it every step, and a float32 QR basis is
       orthonormal only to about 1e-7, so m is multiplied by Q^T Q != I each step (measured: 9.5e-6
       largest relative difference at step 10, 1e-4 at step 20, free-running).
    """
    reference = import_pytorch_optimizer("SOAP")
    settings = dict(precondition_frequency=5)
    groups = [{k: v for k, v in g.items() if k != "shampoo_beta"} for g in GROUPS]
    run_parity(lambda g: reference(g, **settings),
               lambda g: OracleSOAP(g, momentum_in_eigenbasis=False, authors_casts=False, **settings), groups,
               {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq"}, before_step=resync, state_atol=1e-15)

    def current_against_older(steps, rtol):
        run_parity(lambda g: SOAP(g, **settings), lambda g: OracleSOAP(g, momentum_in_eigenbasis=False, **settings),
                   groups, steps=steps, rtol=rtol)

    current_against_older(7, 1e-9)
    with pytest.raises(AssertionError, match="step 8: parameter"):
        current_against_older(8, 1e-9)
    current_against_older(20, 1e-3)
