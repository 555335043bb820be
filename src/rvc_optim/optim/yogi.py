"""Yogi.

Paper: "Adaptive Methods for Nonconvex Optimization", M. Zaheer, S. J. Reddi, D. Sachan, S. Kale,
S. Kumar, NeurIPS 2018 (proceedings only, no arXiv version). Reference: torch-optimizer 0.3.0
``torch_optimizer.Yogi``, the de-facto PyTorch port (the authors released theirs in TensorFlow Addons).

Adam with an additive second moment: v moves towards g^2 by (1 - beta2) g^2, up or down by the sign of
the gap, so it changes by a bounded amount per step instead of forgetting its history geometrically.
With t the parameter's step, bc1 = 1 - beta1^t, bc2 = 1 - beta2^t::

    g <- g + wd * p                                  L2 decay
    m <- beta1 * m + (1 - beta1) * g
    v <- v - (1 - beta2) * sign(v - g^2) * g^2
    p <- p - lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)

Both m and v start at ``initial_accumulator`` (1e-6), as torch-optimizer does; eps (1e-3 by default) is
part of the method, not a guard against division by zero. sign(0) = 0: v stays put where it equals g^2.

Pick it where Adam's effective step grows too quickly once gradients become small and rare large
gradients then cause jumps: v only falls by (1 - beta2) g^2 per step. State per parameter: ``step`` (a
Python int, as in the reference: the bias corrections are host arithmetic on it), ``exp_avg`` and
``exp_avg_sq``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction
from rvc_optim.optim._foreach import (
    advance_host_steps,
    addcdiv_scaled_,
    bias_correction,
    check_betas,
    check_eps,
    check_lr,
    check_nonnegative,
    check_weight_decay,
    foreach_mul_by_constant_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
)
from rvc_optim.optim.adabelief import split_by_key

__all__ = ["Yogi", "yogi_update"]


def yogi_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    step_size: Tensor | float,
    bias_correction2_sqrt: Tensor | float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """One Yogi step, with the reference's operations in its order (bit for bit against it)."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    foreach_mul_by_constant_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    grad_sqs = torch._foreach_mul(grads, grads)
    signs = torch._foreach_sub(exp_avg_sqs, grad_sqs)
    torch._foreach_sign_(signs)
    torch._foreach_addcmul_(exp_avg_sqs, signs, grad_sqs, value=-(1.0 - beta2))
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    addcdiv_scaled_(params, exp_avgs, denom, -step_size)


class Yogi(Optimizer):
    """Yogi, with torch-optimizer's argument names and defaults.

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-2).
        betas: (beta1, beta2): the first moment's decay, and 1 - beta2 the second moment's additive
            rate (default (0.9, 0.999)).
        eps: added to sqrt(v) / sqrt(bc2); part of the method (default 1e-3).
        initial_accumulator: the starting value of both moments (default 1e-6).
        weight_decay: L2 penalty added to the gradient (default 0).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`).

    Deviations from the reference:

    * lr 0 is accepted (the reference requires lr > 0): it freezes a group, as for torch's optimizers.
    * the TensorFlow Addons original starts m at 0 and puts eps outside the bias correction; like
      torch-optimizer (and pytorch_optimizer), both moments start at ``initial_accumulator`` and eps
      is added after dividing by sqrt(bc2).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-3,
        initial_accumulator: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_eps(eps)
        check_nonnegative(initial_accumulator, "initial_accumulator")
        check_weight_decay(weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, initial_accumulator=initial_accumulator,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        self._update = UpdateFunction(yogi_update, compiled)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "Yogi")
            initial = group["initial_accumulator"]
            steps = advance_host_steps(self.state, params, ("exp_avg", "exp_avg_sq"),
                                       init=lambda like: torch.full_like(like, initial))
            beta1, beta2 = group["betas"]
            for step, (ps, gs) in split_by_key(steps, params, grads).items():
                buffers = [[self.state[p][k] for p in ps] for k in ("exp_avg", "exp_avg_sq")]
                for device, dtype, tensors in group_by_device_and_dtype(ps, gs, *buffers):
                    self._update(
                        *tensors,
                        step_size=scalar(group["lr"] / bias_correction(beta1, step), device, dtype),
                        bias_correction2_sqrt=scalar(math.sqrt(bias_correction(beta2, step)), device, dtype),
                        beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                        device_type=device.type,
                    )
        return loss
