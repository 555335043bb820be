"""CAME: Confidence-guided Adaptive Memory Efficient optimization.

Paper: "CAME: Confidence-guided Adaptive Memory Efficient Optimization", Y. Luo, X. Ren, Z. Zheng,
Z. Jiang, X. Jiang, Y. You, ACL 2023, arXiv:2307.02047.

Update for a parameter p with gradient g (eps1, eps2 = eps; no bias correction anywhere)::

    u = g^2 + eps1
    ndim >= 2:  R <- b2 R + (1 - b2) mean_last(u),  C <- b2 C + (1 - b2) mean_{-2}(u)
                U = g / sqrt((R / mean_last(R)) (x) C)
    else:       v <- b2 v + (1 - b2) u,  U = g / sqrt(v)
    U <- U / max(1, RMS(U) / clip_threshold)
    m <- b1 m + (1 - b1) U
    ndim >= 2:  r = (U - m)^2 + eps2                         the instability of the update
                R' <- b3 R' + (1 - b3) mean_last(r),  C' likewise
                step = m / sqrt((R' / mean_last(R')) (x) C')
    else:       step = m                                     (no confidence scaling for 1-D tensors)
    p <- p - lr * weight_decay * p - lr * step

Matrices and kernels are factored over their last two dimensions, as in AdaFactor (the helpers are
shared with :mod:`rvc_optim.optim.adafactor`); a kernel whose last dimension is 1 factors exactly into
columns and keeps its row averages alone. Pick it for AdaFactor's memory saving on the second
moment with a momentum whose steps shrink where the momentum disagrees with the current update.
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
    check_betas,
    check_lr,
    check_positive,
    check_weight_decay,
    decay_weights_,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
    step_counter,
)
from rvc_optim.optim.adafactor import (
    COLUMN,
    VECTOR,
    by_device_and_dtype,
    check_eps_pair,
    clipped_scale,
    factored_second_moment_,
    factoring,
    inverse_sqrt_times_,
)

__all__ = ["CAME", "came_update"]


def came_update(
    params: list[Tensor],
    grads: list[Tensor],
    steps: list[Tensor],
    exp_avgs: list[Tensor],
    rows: list[Tensor],
    cols: list[Tensor],
    res_rows: list[Tensor],
    res_cols: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    lr: Tensor | float,
    eps1: float,
    eps2: float,
    clip_threshold: float,
    beta1: float,
    beta2: float,
    beta3: float,
    weight_decay: float,
) -> None:
    """One step over lists whose first ``len(rows)`` tensors are factored (ndim >= 2: matrices, the first
    ``len(cols)``, then columns; see :func:`~rvc_optim.optim.adafactor.factoring`) and whose last
    ``len(exp_avg_sqs)`` are not."""
    torch._foreach_add_(steps, 1.0)
    squares = torch._foreach_mul(grads, grads)
    torch._foreach_add_(squares, eps1)
    n = len(rows)
    updates = factored_second_moment_(grads[:n], squares[:n], rows, cols, 1.0 - beta2) if n else []
    if exp_avg_sqs:
        torch._foreach_lerp_(exp_avg_sqs, squares[n:], 1.0 - beta2)
        updates += inverse_sqrt_times_(squares[n:], exp_avg_sqs, grads[n:])
    del squares
    torch._foreach_mul_(updates, list(clipped_scale(updates, clip_threshold).unbind()))
    torch._foreach_lerp_(exp_avgs, updates, 1.0 - beta1)
    steps_taken = exp_avgs[n:]
    if n:
        residuals = updates[:n]  # spent: the residuals are written over them
        torch._foreach_sub_(residuals, exp_avgs[:n])
        torch._foreach_mul_(residuals, residuals)
        torch._foreach_add_(residuals, eps2)
        steps_taken = factored_second_moment_(exp_avgs[:n], residuals, res_rows, res_cols, 1.0 - beta3) + steps_taken
    decay_weights_(params, lr, weight_decay)
    add_scaled_(params, steps_taken, -lr)


class CAME(Optimizer):
    """CAME, with the argument names and defaults of the authors' ``came_pytorch.CAME`` (0.1.3).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 2e-4, the authors' README value; see the deviations).
        eps: (eps1, eps2): added to g^2, and to the squared residual (default (1e-30, 1e-16)).
        clip_threshold: the normalised update is scaled down to RMS at most this (default 1.0).
        betas: (beta1, beta2, beta3): the momentum, the second moment and the residual's decay
            (default (0.9, 0.999, 0.9999)).
        weight_decay: decoupled weight decay, multiplied by lr (default 0).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`). Off a CPU only: the update reads tensor shapes, so it
            needs dynamo's whole-list graph, which on a CPU built for minutes and ran slower than eager.

    Deviations from the reference:
        - lr defaults to 2e-4 (the value of the authors' README example); the reference's default is None
          and its own check then raises a TypeError, so it has no usable default.
        - RMS(p) is not kept in the state: the reference stores it every step and never reads it.
        - betas must be three values in [0, 1); the reference accepts two and fails at the first step.
        - Reduced-precision parameters keep their state and update in their own dtype; the reference
          computes in float32.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 2e-4,
        eps: tuple[float, float] = (1e-30, 1e-16),
        clip_threshold: float = 1.0,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        weight_decay: float = 0.0,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_eps_pair(eps)
        check_positive(clip_threshold, "clip_threshold")
        check_betas(betas, count=3)
        check_weight_decay(weight_decay)
        defaults = dict(lr=lr, eps=tuple(eps), clip_threshold=clip_threshold, betas=tuple(betas),
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        self._update = UpdateFunction(came_update, compiled, elementwise=False)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, _ = params_with_grad(group, "CAME")
            beta1, beta2, beta3 = group["betas"]
            eps1, eps2 = group["eps"]
            for (device, dtype), indices in by_device_and_dtype(params).items():
                # Matrices, then columns, then vectors: the update takes each as a prefix or suffix.
                p = sorted((params[i] for i in indices), key=factoring)
                states = [self.state[q] for q in p]
                steps = [state_tensor(st, "step", q, step_counter) for st, q in zip(states, p)]
                avgs = [state_tensor(st, "exp_avg", q) for st, q in zip(states, p)]
                factored: dict[str, list[Tensor]] = {k: [] for k in ("row", "col", "res_row", "res_col")}
                sqs = []
                for st, q in zip(states, p):
                    kind = factoring(q)
                    if kind == VECTOR:
                        sqs.append(state_tensor(st, "exp_avg_sq", q))
                        continue
                    shapes = {"row": q.shape[:-1], "col": q.shape[:-2] + q.shape[-1:]}
                    for key, out in factored.items():
                        if kind == COLUMN and key.endswith("col"):
                            continue
                        shape = shapes[key.removeprefix("res_")]
                        name = f"exp_avg_res_{key[4:]}" if key.startswith("res_") else f"exp_avg_sq_{key}"
                        out.append(state_tensor(st, name, q, lambda x: x.new_zeros(shape)))
                run_by_tensor_batches(
                    self._update, (p, [q.grad for q in p], steps, avgs, factored["row"], factored["col"],
                                   factored["res_row"], factored["res_col"], sqs), suffix={8},
                    lr=scalar(group["lr"], device, dtype), eps1=eps1, eps2=eps2,
                    clip_threshold=group["clip_threshold"], beta1=beta1, beta2=beta2, beta3=beta3,
                    weight_decay=group["weight_decay"], device_type=device.type,
                )
        return loss
