"""AdaFactor: Adam-like steps with a factored (row x column) second moment.

Paper: "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", N. Shazeer, M. Stern, 2018,
arXiv:1804.04235.

Update for a parameter p with gradient g at its step t (eps1, eps2 = eps; d = decay_rate)::

    rho   = lr, or min(1e-6 t if warmup_init else 1e-2, 1/sqrt(t)) with relative_step
    alpha = rho * max(eps2, RMS(p)) with scale_parameter, else rho
    b2    = 1 - t^d                                   (0 at t = 1: the first step sees g^2 alone)
    u     = g^2 + eps1
    ndim >= 2:  R <- b2 R + (1 - b2) mean_last(u)     C <- b2 C + (1 - b2) mean_{-2}(u)
                V = (R / mean_last(R)) (x) C           (an outer product over the last two dims)
    else:       V <- b2 V + (1 - b2) u
    U = g / sqrt(V);  U <- alpha * U / max(1, RMS(U) / clip_threshold)
    with beta1: m <- beta1 m + (1 - beta1) U;  U = m
    p <- p - weight_decay * alpha * p - U

Factorisation of conv kernels: like the parity reference (``transformers.optimization.Adafactor``,
the fairseq algorithm) the last two dimensions are factored and the leading ones kept, so an
[out, in, k] kernel keeps R of shape [out, in] and C of shape [out, k], and a 4-D [out, in, kh, kw]
kernel R [out, in, kh] and C [out, in, kw]; R is normalised by its mean over its own last dimension.
Where kw = 1 (RVC's period discriminator) the factored matrices are columns and the factorisation is
exact, V = R: such a kernel keeps R alone and skips the two means (see :func:`factoring`).
(torch-optimizer's port normalises R without keepdim: it raises on most 3-D shapes and is silently
wrong when in == out, as in RVC's [192, 192, k] convolutions.)

Pick it when optimizer memory matters: without beta1 the state of a matrix is O(rows + cols). For an
AdamW-like lr pass ``relative_step=False, scale_parameter=False``; ``beta1=0.8`` adds RVC's momentum
(one full buffer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction, run_by_tensor_batches
from rvc_optim.optim._foreach import (
    check_eps,
    check_lr,
    check_momentum,
    check_positive,
    check_weight_decay,
    foreach_l2_norms,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
    step_counter,
    write_into_,
)

__all__ = ["COLUMN", "MATRIX", "VECTOR", "AdaFactor", "adafactor_update", "by_device_and_dtype", "check_eps_pair",
           "clipped_scale", "factored_second_moment_", "factoring", "inverse_sqrt_times_"]


def check_eps_pair(eps: Any) -> None:
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"Invalid eps: expected a pair (eps1, eps2), got {eps!r}")
    for i, value in enumerate(eps):
        check_eps(value, f"eps[{i}]")


def _mean_of_last_dim(t: Tensor) -> Tensor:
    """``t.mean(dim=-1)``, as a view where the last dimension has size 1 (the same values: a mean of one
    number is that number). A Conv2d kernel [O, I, k, 1] (RVC's discriminator) otherwise costs a copy of
    itself per step: 133 ms of a discriminator step on a CPU, against none."""
    return t.select(-1, 0) if t.shape[-1] == 1 else t.mean(dim=-1)


def factoring(p: Tensor) -> int:
    """How a tensor's second moment is kept, as the sort key that orders the update's lists:
    :data:`MATRIX` (row and column averages), :data:`COLUMN` (row averages alone) or :data:`VECTOR`
    (the full average).

    A tensor with ndim >= 2 whose last dimension has size 1 (a Conv2d kernel [O, I, k, 1], as in RVC's
    discriminator, or a weight-norm magnitude [O, 1, 1]) factors into columns: the outer product of a
    column's normalised row averages with its one column average is the column itself (``C`` and
    ``mean_last(R)`` follow the same recursion from zero), so ``V = R`` exactly and ``C`` is not kept.
    """
    if p.dim() < 2:
        return VECTOR
    return COLUMN if p.shape[-1] == 1 else MATRIX


MATRIX, COLUMN, VECTOR = 0, 1, 2


def factored_second_moment_(
    grads: list[Tensor], squares: list[Tensor], rows: list[Tensor], cols: list[Tensor], weights: list[Tensor] | float
) -> list[Tensor]:
    """Fold ``squares`` (same shapes as ``grads``, ndim >= 2) into the row and column averages with
    ``x <- x + weights * (mean - x)``, and return ``grads / sqrt(V)`` with ``V = (R / mean_last(R)) (x) C``.

    The first ``len(cols)`` tensors are matrices; the rest are columns (see :func:`factoring`), whose
    ``V`` is ``R`` itself. ``squares`` is spent: the results are written over it. The means over one
    dimension are per-tensor reductions with no multi-tensor op in torch: they are the one loop over
    tensors here. Everything else is a multi-tensor op over the whole lists.
    """
    n = len(cols)
    torch._foreach_lerp_(rows, [_mean_of_last_dim(s) for s in squares], weights)
    out: list[Tensor] = []
    if n:
        torch._foreach_lerp_(cols, [s.mean(dim=-2) for s in squares[:n]],
                             weights[:n] if isinstance(weights, list) else weights)
        row_factors = torch._foreach_div(rows[:n], [r.mean(dim=-1, keepdim=True) for r in rows[:n]])
        torch._foreach_rsqrt_(row_factors)
        col_factors = torch._foreach_rsqrt(cols)
        out = write_into_(list(squares[:n]), torch.mul, grads[:n], [r.unsqueeze(-1) for r in row_factors])
        torch._foreach_mul_(out, [c.unsqueeze(-2) for c in col_factors])
    if len(rows) > n:
        inverse_sqrt_times_([s.squeeze(-1) for s in squares[n:]], rows[n:], [g.squeeze(-1) for g in grads[n:]])
        out += squares[n:]
    return out


def inverse_sqrt_times_(out: list[Tensor], second_moments: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    """``out <- grads / sqrt(second_moments)``, written into ``out`` (spent squares of the same shapes).

    On a CPU a new tensor the size of a large kernel costs its page faults, more than a copy into
    memory already touched: D, one AdaFactor step, 419 ms with new tensors, 356 ms with this."""
    write_into_(out, torch.rsqrt, second_moments)
    torch._foreach_mul_(out, grads)
    return out


def clipped_scale(updates: list[Tensor], clip_threshold: float, scale: Tensor | float = 1.0) -> Tensor:
    """Per tensor, ``scale / max(1, RMS(update) / clip_threshold)`` as one 1-d tensor (one
    multi-tensor norm, no host read)."""
    norms = list(foreach_l2_norms(updates).unbind())
    rms = torch.stack(torch._foreach_div(norms, [math.sqrt(u.numel()) * clip_threshold for u in updates]))
    return scale / rms.clamp_min(1.0)


def adafactor_update(
    params: list[Tensor],
    grads: list[Tensor],
    steps: list[Tensor],
    rows: list[Tensor],
    cols: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: Tensor | float | None,
    eps1: float,
    eps2: float,
    clip_threshold: float,
    decay_rate: float,
    beta1: float | None,
    weight_decay: float,
    scale_parameter: bool,
    relative_step: bool,
    warmup_init: bool,
) -> None:
    """One step over lists whose first ``len(rows)`` tensors are factored (ndim >= 2: matrices, the first
    ``len(cols)``, then columns; see :func:`factoring`) and whose last ``len(exp_avg_sqs)`` are not;
    ``exp_avgs`` is empty without beta1. Per-tensor values (the step's decay, alpha, the clip) are 1-d
    tensors applied with multi-tensor ops over 0-d views."""
    torch._foreach_add_(steps, 1.0)
    t = torch.stack(steps).to(params[0].dtype if params[0].dtype == torch.float64 else torch.float32)
    if relative_step:
        rho = torch.minimum(1e-6 * t if warmup_init else torch.full_like(t, 1e-2), t.rsqrt())
    else:
        rho = lr
    if scale_parameter:
        norms = list(foreach_l2_norms(params).unbind())
        rms = torch.stack(torch._foreach_div(norms, [math.sqrt(p.numel()) for p in params]))
        alpha = rho * rms.to(t.dtype).clamp_min(eps2)
    else:
        alpha = rho * torch.ones_like(t)
    new_weight = list((t**decay_rate).unbind())  # 1 - b2: the weight of the new square

    squares = torch._foreach_mul(grads, grads)
    torch._foreach_add_(squares, eps1)
    n = len(rows)
    updates = factored_second_moment_(grads[:n], squares[:n], rows, cols, new_weight[:n]) if n else []
    if exp_avg_sqs:
        torch._foreach_lerp_(exp_avg_sqs, squares[n:], new_weight[n:])
        updates += inverse_sqrt_times_(squares[n:], exp_avg_sqs, grads[n:])
    del squares
    torch._foreach_mul_(updates, list(clipped_scale(updates, clip_threshold, alpha).unbind()))
    if beta1 is not None:
        torch._foreach_lerp_(exp_avgs, updates, 1.0 - beta1)
        updates = exp_avgs
    if weight_decay != 0.0:
        torch._foreach_mul_(params, list((1.0 - weight_decay * alpha).unbind()))
    torch._foreach_sub_(params, updates)


class AdaFactor(Optimizer):
    """AdaFactor with the argument names and defaults of ``transformers.optimization.Adafactor`` (and
    fairseq's).

    Args:
        params: parameters or param groups.
        lr: external learning rate; must be None with ``relative_step=True`` (default None).
        eps: (eps1, eps2): added to g^2, and the floor of RMS(p) in the parameter scale (default (1e-30, 1e-3)).
        clip_threshold: the update is scaled down to RMS at most this (default 1.0).
        decay_rate: the second moment's decay is 1 - t^decay_rate (default -0.8).
        beta1: first-moment coefficient; None keeps no first moment (default None).
        weight_decay: decoupled weight decay, multiplied by the step size alpha (default 0).
        scale_parameter: multiply the step by max(eps2, RMS(p)) (default True).
        relative_step: use min(1e-2, 1/sqrt(t)) as the step instead of lr (default True).
        warmup_init: with relative_step, start the step at 1e-6 t (default False).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`). Off a CPU only: the update reads tensor shapes, so it
            needs dynamo's whole-list graph, which on a CPU built for minutes and ran slower than eager.

    Deviations from the reference:
        - RMS(p) is not kept in the state: the reference stores it every step and never reads it back;
          ours computes it only when ``scale_parameter`` needs it.
        - ``max(eps2, RMS(p))`` is a ``clamp_min`` on the device; the reference takes a Python ``max`` of
          a tensor (a host read per parameter). The value is the same.
        - ``lr=None`` with ``relative_step=False`` raises a ValueError here; the reference fails later,
          with a TypeError, at the first step.
        - Reduced-precision parameters keep their state and update in their own dtype; the reference
          computes in float32 and copies back.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor | None = None,
        eps: tuple[float, float] = (1e-30, 1e-3),
        clip_threshold: float = 1.0,
        decay_rate: float = -0.8,
        beta1: float | None = None,
        weight_decay: float = 0.0,
        scale_parameter: bool = True,
        relative_step: bool = True,
        warmup_init: bool = False,
        *,
        compiled: bool | None = None,
    ) -> None:
        if lr is not None and relative_step:
            raise ValueError("Invalid lr: an external learning rate needs relative_step=False")
        if warmup_init and not relative_step:
            raise ValueError("Invalid warmup_init: it needs relative_step=True")
        if lr is not None:
            check_lr(lr)
        check_eps_pair(eps)
        check_positive(clip_threshold, "clip_threshold")
        if not decay_rate <= 0.0:
            raise ValueError(f"Invalid decay_rate value: {decay_rate} (must be <= 0)")
        if beta1 is not None:
            check_momentum(beta1, "beta1")
        check_weight_decay(weight_decay)
        defaults = dict(lr=lr, eps=tuple(eps), clip_threshold=clip_threshold, decay_rate=decay_rate, beta1=beta1,
                        weight_decay=weight_decay, scale_parameter=scale_parameter, relative_step=relative_step,
                        warmup_init=warmup_init)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["lr"] is None and not group["relative_step"]:
                raise ValueError("Invalid lr: relative_step=False needs a learning rate")
            if group["lr"] is not None:
                check_lr(group["lr"])
        self._update = UpdateFunction(adafactor_update, compiled, elementwise=False)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, _ = params_with_grad(group, "AdaFactor")
            beta1, (eps1, eps2) = group["beta1"], group["eps"]
            for (device, dtype), indices in by_device_and_dtype(params).items():
                # Matrices, then columns, then vectors: the update takes each as a prefix or suffix.
                p = sorted((params[i] for i in indices), key=factoring)
                g = [q.grad for q in p]
                states = [self.state[q] for q in p]
                steps = [state_tensor(st, "step", q, step_counter) for st, q in zip(states, p)]
                rows, cols, sqs = [], [], []
                for st, q in zip(states, p):
                    kind = factoring(q)
                    if kind != VECTOR:
                        row_shape, col_shape = q.shape[:-1], q.shape[:-2] + q.shape[-1:]
                        rows.append(state_tensor(st, "exp_avg_sq_row", q, lambda x: x.new_zeros(row_shape)))
                    if kind == MATRIX:
                        cols.append(state_tensor(st, "exp_avg_sq_col", q, lambda x: x.new_zeros(col_shape)))
                    elif kind == VECTOR:
                        sqs.append(state_tensor(st, "exp_avg_sq", q))
                avgs = [state_tensor(st, "exp_avg", q) for st, q in zip(states, p)] if beta1 is not None else []
                run_by_tensor_batches(
                    self._update, (p, g, steps, rows, cols, sqs, avgs), suffix={5},
                    lr=None if group["lr"] is None else scalar(group["lr"], device, dtype),
                    eps1=eps1, eps2=eps2, clip_threshold=group["clip_threshold"], decay_rate=group["decay_rate"],
                    beta1=beta1, weight_decay=group["weight_decay"], scale_parameter=group["scale_parameter"],
                    relative_step=group["relative_step"], warmup_init=group["warmup_init"],
                    device_type=device.type,
                )
        return loss



def by_device_and_dtype(params: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[int]]:
    """Indices of ``params`` by device and dtype, in order (for state lists of differing shapes and
    lengths, which torch's grouping helper cannot take)."""
    out: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        out.setdefault((p.device, p.dtype), []).append(i)
    return out
