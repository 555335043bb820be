"""Shampoo: a Kronecker-factored preconditioner, one factor per tensor dimension.

Paper: "Shampoo: Preconditioned Stochastic Tensor Optimization", V. Gupta, T. Koren, Y. Singer, 2018,
arXiv:1802.09568; the practical parts (grafting, refresh period, large dimensions left diagonal) from
"Scalable Second Order Optimization for Deep Learning", R. Anil, V. Gupta, T. Koren, K. Regan,
Y. Singer, 2020, arXiv:2002.09018.

Update for a parameter W of order k (k dimensions) with gradient g, as torch-optimizer's port does it::

    g <- (1 - mu) * g + mu * m                    m: the previous step's direction (momentum)
    g <- g + wd * W                               coupled weight decay
    for i in 0..k-1:                              G_i: g unfolded along dimension i, [d_i, numel / d_i]
        P_i <- P_i + G_i G_i^T                    P_i starts at epsilon * I
        every precondition_frequency steps: R_i <- P_i^(-e / k)   by a symmetric eigendecomposition
        g <- g x_i R_i                            multiply dimension i by R_i
    D <- g;  with grafting: D <- D * ||A|| / ||D||  (A: the AdaGrad or Adam step for the same gradient)
    m <- D;  W <- W - lr * D

e is ``exponent_multiplier`` (1, the reference's; the paper's is 1/2). As in the reference, G_i is taken
from g already multiplied along dimensions < i; the paper takes every G_i from the raw gradient
(``sequential_statistics=False``). A dimension of size 1 or above ``max_preconditioner_dim`` (and a 1-D
tensor without ``precondition_1d``) keeps a diagonal factor (the row sums of G_i * G_i) instead of a
d_i x d_i matrix. Pick Shampoo to precondition whole layers at once when a d x d matrix per dimension
and an eigendecomposition every few steps are affordable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._foreach import (
    add_scaled_,
    check_eps,
    check_lr,
    check_momentum,
    check_positive,
    check_weight_decay,
    params_with_grad,
    run_closure,
    scalar,
)

__all__ = ["GRAFTS", "Shampoo", "batched_state", "inverse_roots", "precondition_"]

GRAFTS = ("none", "adagrad", "adam")


def inverse_roots(stats: Tensor, exponent: float, floor: float) -> Tensor:
    """``stats ** -exponent`` for a batch of symmetric positive definite matrices [B, d, d], by one batched
    eigendecomposition; eigenvalues below ``floor`` (only rounding puts them there) are raised to it."""
    values, vectors = torch.linalg.eigh(stats)
    return (vectors * values.clamp_min(floor).pow(-exponent).unsqueeze(-2)) @ vectors.transpose(-1, -2)


def _unfold(x: Tensor, dim: int) -> Tensor:
    """[B, *shape] -> [B, shape[dim], numel / shape[dim]]: dimension ``dim`` of each tensor as rows."""
    return x.movedim(dim + 1, 1).reshape(x.shape[0], x.shape[dim + 1], -1)


def _fold(rows: Tensor, dim: int, shape: torch.Size) -> Tensor:
    """The inverse of :func:`_unfold`."""
    moved = (rows.shape[0], shape[dim]) + tuple(s for j, s in enumerate(shape) if j != dim)
    return rows.reshape(moved).movedim(1, dim + 1)


def precondition_(
    x: Tensor,
    stats: list[Tensor],
    roots: list[Tensor],
    *,
    refresh: bool,
    exponent: float,
    epsilon: float,
    sequential: bool,
) -> Tensor:
    """Shampoo's direction for a batch ``x`` [B, *shape] of same-shaped gradients.

    ``stats[i]``/``roots[i]`` are dimension i's factors for the batch, [B, d, d] or, kept diagonal,
    [B, d]; both are updated in place (roots only with ``refresh``). ``sequential``: dimension i's
    statistic is taken from ``x`` already multiplied by the roots of dimensions < i (torch-optimizer's
    order); otherwise from the raw gradient (the paper's).
    """
    raw, shape = x, x.shape[1:]
    for i, (stat, root) in enumerate(zip(stats, roots)):
        rows = _unfold(x, i)
        source = rows if sequential else _unfold(raw, i)
        if stat.dim() == 2:  # diagonal
            stat.add_(source.square().sum(-1))
            if refresh:
                root.copy_(stat.clamp_min(epsilon).pow(-exponent))
            rows = rows * root.unsqueeze(-1)
        else:
            stat.baddbmm_(source, source.transpose(1, 2))
            if refresh:
                root.copy_(inverse_roots(stat, exponent, epsilon))
            rows = torch.bmm(root, rows)
        x = _fold(rows, i, shape)
    return x


def _graft_norms(x: Tensor, sq: Tensor, graft: str, beta2: float, eps: float, step: int) -> Tensor:
    """The norm of each tensor's AdaGrad (``sq`` a running sum of g^2) or Adam (``sq`` an average of g^2,
    bias-corrected; the first moment is the momentum above) step, updating ``sq`` in place. [B]."""
    if graft == "adagrad":
        sq.addcmul_(x, x)
        denom = sq.sqrt().add_(eps)
    else:
        sq.mul_(beta2).addcmul_(x, x, value=1.0 - beta2)
        denom = sq.div(1.0 - beta2**step).sqrt_().add_(eps)
    return (x / denom).flatten(1).norm(dim=1)


def batched_state(states: list[dict[str, Any]], key: str) -> Tensor:
    """``[state[key] for state in states]`` as one [B, ...] tensor whose slices ARE those state tensors.

    The first call for a set of states stacks them once and makes each state entry a view of the stack,
    so later steps update the whole batch in place with no copy. An entry replaced since (a loaded
    state_dict, a batch with other members) is noticed and the batch is made again.
    """
    tensors = [state[key] for state in states]
    if len(tensors) == 1:
        return tensors[0].unsqueeze(0)
    base = tensors[0]._base
    if base is not None and base.shape[0] == len(tensors):
        offset, stride = base.storage_offset(), base.stride(0)
        if all(t._base is base and t.storage_offset() == offset + j * stride for j, t in enumerate(tensors)):
            return base
    stacked = torch.stack(tensors)
    for state, view in zip(states, stacked.unbind(0)):
        state[key] = view
    return stacked


def _grafted(direction: Tensor, x: Tensor, sq: Tensor, group: dict[str, Any], step: int) -> Tensor:
    """``direction`` rescaled, tensor by tensor, to the norm of the grafted optimizer's step for ``x``."""
    target = _graft_norms(x, sq, group["graft"], group["graft_beta2"], group["graft_eps"], step)
    norms = direction.flatten(1).norm(dim=1)
    scale = torch.where(norms > 0, target / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    return direction * scale.view(-1, *([1] * (direction.dim() - 1)))


class Shampoo(Optimizer):
    """Shampoo with torch-optimizer's argument names and defaults; ``graft="none"`` with
    ``max_preconditioner_dim=None`` is torch-optimizer's classic method.

    The class default is the classic method (no grafting), so that ``Shampoo(params)`` is the algorithm
    the paper and the reference define; ``create_optimizer`` gives the practical one at RVC scale (Adam
    grafting, paper's statistics and exponent, a refresh every 10 steps), whose step size follows lr
    as AdamW's does.

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-1, the reference's).
        momentum: weight of the previous step's direction in the gradient (default 0).
        weight_decay: coupled L2 weight decay added to the gradient (default 0).
        epsilon: the factors start at epsilon * I; also the floor of their eigenvalues (default 1e-4).
        precondition_frequency: recompute the inverse roots every this many steps (default 1).
        max_preconditioner_dim: dimensions larger than this keep a diagonal factor; None: none do
            (default 1024).
        exponent_multiplier: factors are raised to -exponent_multiplier / order (1: the reference's
            -1/order; 0.5: the paper's -1/(2 order)) (default 1).
        graft: "none" (Shampoo's own step size), "adagrad" or "adam": each tensor's step takes the norm
            of that optimizer's step (default "none").
        graft_beta2: Adam grafting's second-moment decay (default 0.999).
        graft_eps: the grafted optimizer's epsilon (default 1e-8).
        sequential_statistics: dimension i's statistic from the gradient already preconditioned along
            dimensions < i, as the reference; False: from the raw gradient, as the paper (default True).
        precondition_1d: 1-D tensors get a d x d factor, as the reference; False: a diagonal one (default
            True).
        update_freq: the reference's name for ``precondition_frequency`` (overrides it when given).

    Deviations from the reference (torch_optimizer.Shampoo):
        - inverse roots by ``torch.linalg.eigh`` on the parameter's device (float64 for float64
          parameters, float32 otherwise), not ``torch.svd`` on a CPU copy; eigenvalues floored at epsilon;
        - dimensions of size 1 keep a diagonal (1 x 1) factor: the same numbers, no decomposition;
        - dimensions above ``max_preconditioner_dim`` (default 1024) are diagonal; the reference builds a
          d x d matrix for every dimension (pass None for that);
        - ``momentum_buffer`` is kept only when momentum > 0 (the reference stores it always), and
          ``p.grad`` is left as it was (the reference writes momentum and decay into it);
        - same-shaped tensors of a group are preconditioned as one batch (batched matmul and eigh);
        - ``step`` is a Python int: whether a step refreshes is decided on the host;
        - the state of same-shaped tensors is kept as slices of one tensor (each entry a view), so a batch
          is updated in place; ``momentum_buffer`` is kept in float32 for bf16/fp16 parameters.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        epsilon: float = 1e-4,
        precondition_frequency: int = 1,
        max_preconditioner_dim: int | None = 1024,
        exponent_multiplier: float = 1.0,
        graft: str = "none",
        graft_beta2: float = 0.999,
        graft_eps: float = 1e-8,
        sequential_statistics: bool = True,
        precondition_1d: bool = True,
        update_freq: int | None = None,
    ) -> None:
        if update_freq is not None:
            precondition_frequency = update_freq
        check_lr(lr)
        check_momentum(momentum)
        check_weight_decay(weight_decay)
        check_positive(epsilon, "epsilon")
        check_positive(exponent_multiplier, "exponent_multiplier")
        check_momentum(graft_beta2, "graft_beta2")
        check_eps(graft_eps, "graft_eps")
        for value, name in ((precondition_frequency, "precondition_frequency"),
                            (max_preconditioner_dim or 1, "max_preconditioner_dim")):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"Invalid {name} value: {value} (must be an integer >= 1)")
        if graft not in GRAFTS:
            raise ValueError(f"Invalid graft: {graft!r} (one of {', '.join(GRAFTS)})")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, epsilon=epsilon,
                        precondition_frequency=int(precondition_frequency),
                        max_preconditioner_dim=max_preconditioner_dim, exponent_multiplier=exponent_multiplier,
                        graft=graft, graft_beta2=graft_beta2, graft_eps=graft_eps,
                        sequential_statistics=sequential_statistics, precondition_1d=precondition_1d)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """A group may name its refresh period by the reference's ``update_freq``."""
        if "update_freq" in param_group:
            param_group = dict(param_group)
            param_group["precondition_frequency"] = param_group.pop("update_freq")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "Shampoo")
            if params:
                self._step_group(group, params, grads)
        return loss

    def _factor_dtype(self, p: Tensor) -> torch.dtype:
        return torch.float64 if p.dtype == torch.float64 else torch.float32

    def _init_state(self, group: dict[str, Any], p: Tensor, g: Tensor) -> dict[str, Any]:
        state, dtype = self.state[p], self._factor_dtype(p)
        if group["momentum"] > 0 and "momentum_buffer" not in state:
            state["momentum_buffer"] = g.to(dtype, copy=True)
        if "step" in state:
            return state
        state["step"] = 0
        limit = group["max_preconditioner_dim"]
        for i, d in enumerate(p.shape):
            if d == 1 or (limit is not None and d > limit) or (p.dim() == 1 and not group["precondition_1d"]):
                state[f"precond_{i}"] = torch.full((d,), group["epsilon"], dtype=dtype, device=p.device)
                state[f"inv_precond_{i}"] = torch.zeros(d, dtype=dtype, device=p.device)
            else:
                state[f"precond_{i}"] = group["epsilon"] * torch.eye(d, dtype=dtype, device=p.device)
                state[f"inv_precond_{i}"] = torch.zeros(d, d, dtype=dtype, device=p.device)
        if group["graft"] != "none":
            state["graft_sq"] = torch.zeros_like(p, dtype=dtype)
        return state

    def _step_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Same-shaped parameters at the same step count take their step as one batch."""
        buckets: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
        for p, g in zip(params, grads):
            state = self._init_state(group, p, g)
            buckets.setdefault((tuple(p.shape), p.dtype, p.device, state["step"]), []).append((p, g))
            state["step"] += 1
        for (_, dtype, device, step), items in buckets.items():
            ps = [p for p, _ in items]
            updates = self._direction(group, ps, [g for _, g in items], step)
            lr = group["lr"]
            add_scaled_(ps, updates, -(scalar(lr, device, dtype) if isinstance(lr, Tensor) else lr))

    def _direction(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], step: int) -> list[Tensor]:
        """The step direction of a batch of parameters at (pre-increment) step count ``step``."""
        states = [self.state[p] for p in params]
        order = params[0].dim()
        x = torch.stack(grads).to(self._factor_dtype(params[0]))  # a copy: p.grad is left as it was
        if group["momentum"] > 0:
            x.lerp_(batched_state(states, "momentum_buffer"), group["momentum"])
        if group["weight_decay"] > 0:
            x.add_(torch.stack(params).to(x.dtype), alpha=group["weight_decay"])
        direction = precondition_(
            x,
            [batched_state(states, f"precond_{i}") for i in range(order)],
            [batched_state(states, f"inv_precond_{i}") for i in range(order)],
            refresh=step % group["precondition_frequency"] == 0,
            exponent=group["exponent_multiplier"] / max(order, 1),
            epsilon=group["epsilon"],
            sequential=group["sequential_statistics"],
        )
        if group["graft"] != "none":
            direction = _grafted(direction, x, batched_state(states, "graft_sq"), group, step + 1)
        if group["momentum"] > 0:
            batched_state(states, "momentum_buffer").copy_(direction)
        return list(direction.to(params[0].dtype).unbind(0))
