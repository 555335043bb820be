"""PAdam (partially adaptive momentum estimation).

Paper: "Closing the Generalization Gap of Adaptive Gradient Methods in Training Deep Neural Networks",
J. Chen, D. Zhou, Y. Tang, Z. Yang, Y. Cao, Q. Gu, 2018 (IJCAI 2020), arXiv:1806.06763. Reference: the
authors' uclaml/Padam ``Padam.py`` (not packaged); pytorch_optimizer's ``PAdam`` reproduces it without
AMSGrad, which it lacks.

AMSGrad with the denominator raised to a partial power. With t the parameter's step, bc1 = 1 - beta1^t,
bc2 = 1 - beta2^t::

    g <- g + wd * p                                   L2 decay
    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * g^2
    amsgrad: v_max <- max(v_max, v)
    p <- p - lr * sqrt(bc2) / bc1 * m / (sqrt(v_max or v) + eps)^(2 * partial)

eps sits inside the power, and sqrt(bc2) is Adam's correction whatever ``partial`` is (as the authors
write it). partial = 1/2 is AMSGrad (Adam without amsgrad); towards 0 it becomes momentum SGD, whose step
scale it shares: the update grows like g^(1 - 2 partial), so it wants an SGD-sized lr (the authors use
0.1 with a step schedule and tune partial to 1/8).

Pick it when Adam generalises worse than SGD but SGD is too slow to start: one knob between the two.
State per parameter: ``step`` (a Python int, as the authors': the bias corrections are host arithmetic
on it), ``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq`` with amsgrad (the default).
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
    check_weight_decay,
    foreach_mul_by_constant_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
)
from rvc_optim.optim.adabelief import split_by_key

__all__ = ["PAdam", "padam_update"]


def padam_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    *,
    step_size: Tensor | float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    partial: float,
) -> None:
    """One PAdam step, with the authors' operations in their order (bit for bit against their file)."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    foreach_mul_by_constant_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    foreach_mul_by_constant_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    if max_exp_avg_sqs:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
    denom = torch._foreach_sqrt(max_exp_avg_sqs or exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    if 2.0 * partial != 1.0:  # x ** 1.0 is x: skip the pass
        torch._foreach_pow_(denom, 2.0 * partial)
    addcdiv_scaled_(params, exp_avgs, denom, -step_size)


def _check_partial(partial: float) -> None:
    if not 0.0 < partial <= 0.5:
        raise ValueError(f"Invalid partial value: {partial} (must be in (0, 1/2]; 1/2 is AMSGrad/Adam)")


class PAdam(Optimizer):
    """PAdam, with the authors' argument names and defaults (uclaml/Padam ``Padam``).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-1, an SGD-sized step: see the module docstring).
        betas: (beta1, beta2) for the gradient and squared-gradient averages (default (0.9, 0.999)).
        eps: added to sqrt(v) inside the partial power (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0).
        amsgrad: divide by the running maximum of v (default True, as the authors').
        partial: the exponent p in (0, 1/2]; the denominator is (sqrt(v) + eps)^(2p) (default 1/4; the
            authors tune 1/8 for CIFAR).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`).

    Deviations from the reference:

    * ``partial`` must lie in (0, 1/2] (the authors check nothing; p > 1/2 makes the step shrink faster
      than Adam's, outside the paper's range, and p <= 0 is not adaptive at all).
    * lr, eps and weight decay are checked (the authors check only betas).
    * the state has no ``noise_step`` (an unused counter in the authors' file).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = True,
        partial: float = 1 / 4,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_eps(eps)
        check_weight_decay(weight_decay)
        _check_partial(partial)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, partial=partial)
        super().__init__(params, defaults)
        self._update = UpdateFunction(padam_update, compiled)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "partial" in param_group:
            _check_partial(param_group["partial"])
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "PAdam")
            amsgrad = group["amsgrad"]
            keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if amsgrad else ("exp_avg", "exp_avg_sq")
            steps = advance_host_steps(self.state, params, keys)
            beta1, beta2 = group["betas"]
            for step, (ps, gs) in split_by_key(steps, params, grads).items():
                step_size = group["lr"] * math.sqrt(bias_correction(beta2, step)) / bias_correction(beta1, step)
                buffers = [[self.state[p][k] for p in ps] for k in keys]
                for device, dtype, (p, g, m, v, *vmax) in group_by_device_and_dtype(ps, gs, *buffers):
                    self._update(
                        p, g, m, v, vmax[0] if vmax else [],
                        step_size=scalar(step_size, device, dtype),
                        beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                        partial=group["partial"],
                        device_type=device.type,
                    )
        return loss
