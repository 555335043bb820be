"""Lion (EvoLved Sign Momentum).

Paper: "Symbolic Discovery of Optimization Algorithms", X. Chen, C. Liang, D. Huang, E. Real, K. Wang,
Y. Liu, H. Pham, X. Dong, T. Luong, C.-J. Hsieh, Y. Lu, Q. V. Le, 2023, arXiv:2302.06675. Found by an
evolutionary search over optimizer programs (symbolic program search), not by architecture search.

Update for a parameter p with gradient g, momentum m, learning rate lr and decay wd::

    p <- p * (1 - lr * wd)                      decoupled weight decay
    c <- beta1 * m + (1 - beta1) * g            interpolate for the update direction
    p <- p - lr * sign(c)
    m <- beta2 * m + (1 - beta2) * g            the momentum itself tracks g with beta2

The update has the same magnitude in every coordinate, so Lion wants a learning rate 3-10x smaller
than AdamW's and a weight decay 3-10x larger. State: ``exp_avg`` (one tensor the size of the
parameter, half of Adam's optimizer state). Pick it when optimizer memory matters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction
from rvc_optim.optim._foreach import (
    add_scaled_,
    check_betas,
    check_lr,
    check_weight_decay,
    decay_weights_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
)

__all__ = ["Lion", "lion_update"]


def lion_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: Tensor | float,
    beta1: float,
    beta2: float,
    weight_decay: float,
) -> None:
    decay_weights_(params, lr, weight_decay)
    direction = torch._foreach_lerp(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_sign_(direction)
    add_scaled_(params, direction, -lr)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta2)


class Lion(Optimizer):
    """Lion, with the authors' argument names and defaults (those of ``lion_pytorch.Lion``).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-4).
        betas: (beta1, beta2): interpolation for the sign, then the momentum's decay (default (0.9, 0.99)).
        weight_decay: decoupled weight decay, multiplied by lr (default 0).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_weight_decay(weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))
        self._update = UpdateFunction(lion_update, compiled)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "Lion")
            exp_avgs = [state_tensor(self.state[p], "exp_avg", p) for p in params]
            beta1, beta2 = group["betas"]
            for device, dtype, (p, g, m) in group_by_device_and_dtype(params, grads, exp_avgs):
                self._update(
                    p, g, m,
                    lr=scalar(group["lr"], device, dtype),
                    beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                    device_type=device.type,
                )
        return loss
