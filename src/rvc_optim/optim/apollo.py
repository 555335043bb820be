"""Apollo (adaptive parameter-wise diagonal quasi-Newton), the 2020 method.

Paper: "Apollo: An Adaptive Parameter-wise Diagonal Quasi-Newton Method for Nonconvex Stochastic
Optimization", X. Ma, 2020, arXiv:2009.13586. Not the 2024 memory-efficient APOLLO (SGD-like memory,
AdamW-level performance), which is a different algorithm.

Update for a parameter p with gradient g at step t (from 1), with the previous update d (0 at first),
the gradient average m and the diagonal curvature B (both 0 at first)::

    lr_t  = init_lr + (base_lr - init_lr) * (t - 1) / warmup   while t - 1 < warmup, else lr
    g     <- g + wd * p                                        'L2' weight decay only
    alpha = (1 - beta) / (1 - beta^t)                          the bias-corrected averaging weight
    delta = g - m;  m <- m + alpha * delta
    rebound: 'constant' r = 0.01 and eps' = eps / 0.01;  'belief' r = ||delta||_inf and eps' = eps
    dn    = d / (||d||_4 + eps')                               the previous update, normalised
    s     = -alpha * sum(delta / (||d||_4 + eps') * dn) - sum(B * dn^2)
    B     <- B + s * dn^2                                      weak secant update of the curvature
    D     = max(|B|, r)  (+ eps / alpha with 'belief')         rectified: never divide by a tiny |B|
    d     <- m / D  (+ wd * p 'decoupled', + wd / mean(D) * p 'stable')
    p     <- p - lr_t * d

The step divides the gradient average by the rectified curvature |B|, never by the gradient. The first
step has B = 0, so it is lr_t * m / 0.01 = 100 * init_lr * g: keep the warm-up. Pick it where a
curvature-scaled step helps (smooth losses); its lr is about 100x AdamW's (0.01 with 500 warm-up steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction, run_by_tensor_batches
from rvc_optim.optim._foreach import (
    add_scaled_,
    check_eps,
    check_lr,
    check_momentum,
    check_nonnegative_int,
    check_weight_decay,
    group_by_device_and_dtype,
    params_with_grad,
    per_tensor_scalars,
    run_closure,
    scalar,
    state_tensor,
    write_into_,
)

__all__ = ["Apollo", "apollo_update"]

REBOUNDS = ("constant", "belief")
WEIGHT_DECAY_TYPES = ("L2", "decoupled", "stable")
CONSTANT_REBOUND = 0.01


def _sums(tensors: list[Tensor]) -> Tensor:
    """[sum(t) for each t] as one 1-D tensor. The secant's sums are formed as products then summed, in
    the reference's order: a fused dot adds in another order, which the secant's cancellation turns
    into differences of 1e-9."""
    return torch.stack([t.sum() for t in tensors])


def apollo_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    updates: list[Tensor],
    *,
    lr: Tensor | float,
    alpha: Tensor | float,
    eps: float,
    belief: bool,
    weight_decay: float,
    weight_decay_type: str,
    one_pass_sums: bool = False,
) -> None:
    """One Apollo step, in the docstring's order. Needs whole tensors (||d||_4 and the secant sums are
    per tensor) but not their shapes, so the compiled path runs it on flat views (``lr`` and ``alpha``
    0-d tensors there). The per-tensor values stay on the device (Python floats only on an eager CPU step).

    The reference takes ||d||_4, then the secant sums of the normalised dn; with ``one_pass_sums`` (the
    compiled path) the sums are of d and scaled by 1 / n^2 after, so that per tensor one loop reads d,
    delta and B for all three sums and a second writes m, B, d and p (the reference's order takes three
    loops). Equal in exact arithmetic; the secant's cancellation turns the other rounding into relative
    differences of about 1e-11 in float64."""
    if weight_decay != 0.0 and weight_decay_type == "L2":
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    deltas = torch._foreach_sub(grads, exp_avgs)
    if belief:
        rebounds = per_tensor_scalars(torch.stack(torch._foreach_norm(deltas, float("inf"))))
    add_scaled_(exp_avgs, deltas, alpha)
    # ||d||_4 as sqrt(||d * d||_2): torch's 4-norm raises each element to a power with std::pow (on a CPU
    # 40% of a step on RVC's discriminator); this squares with a multiply and takes a 2-norm
    # Temporaries are written over spent ones where they can be: on a CPU a new tensor the size of a
    # large kernel costs its page faults, more than a copy into memory already touched.
    squares = torch._foreach_mul(updates, updates)
    if one_pass_sums:
        # B <- B + (s / n^2) d^2, with s n^2 = -alpha sum(delta d) - sum(B d^2): the three sums are of
        # the tensors as they are, so one loop reads d, delta and B for all of them
        inv_sq = _sums(torch._foreach_mul(squares, squares)).sqrt_().sqrt_().add_(eps).reciprocal_().square_()
        secants = _sums(torch._foreach_mul(deltas, updates)).mul_(-alpha)
        secants.sub_(_sums(torch._foreach_mul(hessians, squares))).mul_(inv_sq).mul_(inv_sq)
    else:
        norms = per_tensor_scalars(torch.stack(torch._foreach_norm(squares)).sqrt_().add_(eps))
        torch._foreach_div_(updates, norms)  # d -> dn
        write_into_(squares, torch.mul, updates, updates)  # dn^2
        torch._foreach_div_(deltas, norms)
        torch._foreach_mul_(deltas, updates)  # delta / n * dn, in place: delta is not needed any more
        secants = _sums(deltas).mul_(-alpha)
        write_into_(deltas, torch.mul, hessians, squares)  # B * dn^2
        secants.sub_(_sums(deltas))
    torch._foreach_addcmul_(hessians, squares, list(secants.unbind()))  # B <- B + s * dn^2
    denoms = write_into_(squares, torch.abs, hessians)
    if belief:
        torch._foreach_maximum_(denoms, rebounds)
        # a 0-d tensor where a number is expected would be read back by torch's argument parser: a list
        torch._foreach_add_(denoms, [eps / alpha] * len(denoms) if isinstance(alpha, Tensor) else eps / alpha)
    else:
        torch._foreach_clamp_min_(denoms, CONSTANT_REBOUND)
    write_into_(updates, torch.div, exp_avgs, denoms)  # d <- m / D
    if weight_decay != 0.0 and weight_decay_type == "stable":
        means = torch.stack([t.mean() for t in denoms])
        decays = per_tensor_scalars(torch.full_like(means, weight_decay).div_(means))  # `wd / tensor` multiplies by 1 / mean
        if decays and isinstance(decays[0], float):  # an eager CPU step: one fused multiply-add per tensor
            for u, p, c in zip(updates, params, decays):
                u.add_(p, alpha=c)
        else:
            torch._foreach_addcmul_(updates, params, decays)
    elif weight_decay != 0.0 and weight_decay_type == "decoupled":
        torch._foreach_add_(updates, params, alpha=weight_decay)
    add_scaled_(params, updates, -lr)


class Apollo(Optimizer):
    """Apollo, with the authors' argument names and defaults (XuezheMax/apollo ``optim/apollo.py``).

    Args:
        params: parameters or param groups.
        lr: learning rate after the warm-up (required, as the authors'; they use 0.01).
        beta: averaging coefficient of the gradient (default 0.9).
        eps: added to ||d||_4 (divided by 0.01 with the constant rebound) and, over alpha, to the
            belief rebound's denominator (default 1e-4).
        rebound: 'constant' (|B| floored at 0.01) or 'belief' (floored at ||delta||_inf) (default 'constant').
        warmup: steps of linear warm-up from init_lr to the group's lr (default 500).
        init_lr: the warm-up's first rate (default None: lr / 1000).
        weight_decay: weight decay coefficient (default 0).
        weight_decay_type: 'L2' (added to the gradient), 'decoupled' (added to the update) or 'stable'
            (added to the update divided by mean(D)); None: 'L2' with the constant rebound, 'decoupled'
            with belief (default None).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``); it runs on
            flat views, each tensor's norm, secant sums and update fused, with alpha and the warm-up's
            rate as 0-d tensors.

    State per parameter: ``exp_avg_grad`` (m), ``approx_hessian`` (B), ``update`` (d). The group keeps
    ``step`` and ``base_lr``.

    Deviations from the reference:
        * each group warms up towards its own lr (its ``base_lr`` is its lr at construction, and
          init_lr=None is that lr / 1000; a group whose lr is below init_lr starts at its lr); the authors
          give every group the constructor's lr as base_lr, so a group with its own lr jumps to it when
          the warm-up ends, and a group at lr 0 moves during the warm-up.
        * the step is counted per group (``group['step']``), the authors count per parameter; they agree
          whenever every parameter gets a gradient at every step.
        * no host reads: ||d||_4, the secant sums and the belief rebound stay on the device (the authors'
          'stable' decay reads mean(D) with ``.item()``); the gradient is not modified.
        * ||d||_4 is sqrt(||d * d||_2) (the authors' ``torch.norm(d, 4)`` uses std::pow per element, 1.5-1.8x
          slower overall on a CPU): equal but for the last bit of the norm.
    """

    read_only_state = ()
    needs_reduction_pass = True  # ||d||_4 and the secant sums come before the update

    def __init__(
        self,
        params: Any,
        lr: float,
        beta: float = 0.9,
        eps: float = 1e-4,
        rebound: str = "constant",
        warmup: int = 500,
        init_lr: float | None = None,
        weight_decay: float = 0.0,
        weight_decay_type: str | None = None,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_momentum(beta, "beta")
        check_eps(eps)
        check_nonnegative_int(warmup, "warmup")
        check_weight_decay(weight_decay)
        if init_lr is not None and not 0.0 <= init_lr <= float(lr):
            raise ValueError(f"Invalid init_lr: {init_lr} (must be in [0, lr])")
        defaults = dict(lr=lr, beta=beta, eps=eps, rebound=rebound, warmup=warmup, init_lr=init_lr,
                        weight_decay=weight_decay, weight_decay_type=weight_decay_type)
        super().__init__(params, defaults)
        self._update = UpdateFunction(apollo_update, compiled, elementwise=False, flat=True)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["rebound"] not in REBOUNDS:
            raise ValueError(f"Invalid rebound: {group['rebound']!r} (must be 'constant' or 'belief')")
        if group["weight_decay_type"] is None:
            group["weight_decay_type"] = "L2" if group["rebound"] == "constant" else "decoupled"
        if str(group["weight_decay_type"]).lower() == "l2":
            group["weight_decay_type"] = "L2"
        if group["weight_decay_type"] not in WEIGHT_DECAY_TYPES:
            raise ValueError(f"Invalid weight_decay_type: {group['weight_decay_type']!r} "
                             "(must be 'L2', 'decoupled' or 'stable')")
        group.setdefault("base_lr", float(group["lr"]))
        if group["init_lr"] is None:
            group["init_lr"] = group["base_lr"] / 1000.0
        # A group whose lr is below init_lr (a frozen group at lr 0) starts at its own lr: no warm-up.
        group["init_lr"] = min(group["init_lr"], group["base_lr"])

    @staticmethod
    def current_lr(group: dict[str, Any], done: int) -> float | Tensor:
        """The rate of the step after ``done`` steps: the linear warm-up, then the group's lr."""
        if done < group["warmup"]:
            return group["init_lr"] + (group["base_lr"] - group["init_lr"]) * done / group["warmup"]
        return group["lr"]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "Apollo")
            if not params:
                continue
            done = group.get("step", 0)
            group["step"] = done + 1
            lists = [[state_tensor(self.state[p], key, p) for p in params]
                     for key in ("exp_avg_grad", "approx_hessian", "update")]
            lr = self.current_lr(group, done)
            alpha = (1.0 - group["beta"]) / (1.0 - group["beta"] ** group["step"])
            for device, dtype, tensors in group_by_device_and_dtype(params, grads, *lists):
                # compiled, the per-step values are 0-d tensors (as Python numbers they would be constants
                # of the graph, built anew at every step); elsewhere Python floats, as the reference's
                compiles = self._update.compiles(tensors, device.type)
                run_by_tensor_batches(
                    self._update, tuple(tensors),
                    lr=scalar(lr, device, dtype) if compiles or isinstance(lr, Tensor) else lr,
                    alpha=scalar(alpha, device, dtype) if compiles else alpha,
                    eps=group["eps"] / (1.0 if group["rebound"] == "belief" else CONSTANT_REBOUND),
                    belief=group["rebound"] == "belief",
                    weight_decay=group["weight_decay"], weight_decay_type=group["weight_decay_type"],
                    one_pass_sums=compiles, device_type=device.type,
                )
        return loss
