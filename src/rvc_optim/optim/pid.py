"""PID optimizer.

Paper: "A PID Controller Approach for Stochastic Optimization of Deep Networks", W. An, H. Wang, Q. Sun,
J. Xu, Q. Dai, L. Zhang, CVPR 2018 (no arXiv id). Momentum SGD read as a PI controller, with a
derivative term added.

Update for a parameter p with gradient g, momentum mu, dampening tau, gains K_i (``integral``) and K_d
(``derivative``), an L2 weight decay wd and learning rate lr, as the authors' code (tensorboy/
PIDOptimizer, whose latest ``pid.py`` torch-optimizer's ``PID`` reproduces exactly) does it::

    g <- g + wd * p
    if mu != 0:
        I <- g                                     on the first step
        I <- mu * I + (1 - tau) * g                later
        D <- 0                                     on the first step (G is left at zero)
        D <- mu * D + (1 - mu) * (g - G)           later; G is 0 on the second step, g_{t-1} after
        G <- g                                     from the second step on
        g <- g + K_i * I + K_d * D
    p <- p - lr * g

With momentum 0 (the default) both terms are skipped and this is plain SGD. The integral term makes the
effective step about lr * (1 + K_i / (1 - mu)): 50x lr for mu = 0.9 and K_i = 5. Pick it as momentum
SGD with a damping derivative term; it keeps three buffers the size of the parameter.
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
    check_lr,
    check_momentum,
    check_nonnegative,
    check_weight_decay,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
)

__all__ = ["PID", "pid_update"]


def pid_update(
    params: list[Tensor],
    grads: list[Tensor],
    i_buffers: list[Tensor],
    grad_buffers: list[Tensor],
    d_buffers: list[Tensor],
    *,
    lr: Tensor | float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    integral: float,
    derivative: float,
    first: bool,
) -> None:
    """One PID step. ``first``: the parameters' first step with momentum (I <- g, D and G stay zero).
    Without momentum the three buffer lists are empty and this is SGD."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum == 0.0:
        add_scaled_(params, grads, -lr)
        return
    if first:
        torch._foreach_copy_(i_buffers, grads)
    else:
        torch._foreach_mul_(i_buffers, momentum)
        torch._foreach_add_(i_buffers, grads, alpha=1.0 - dampening)
        torch._foreach_mul_(d_buffers, momentum)
        torch._foreach_add_(d_buffers, torch._foreach_sub(grads, grad_buffers), alpha=1.0 - momentum)
        torch._foreach_copy_(grad_buffers, grads)
    direction = torch._foreach_add(grads, i_buffers, alpha=integral)
    if not first:  # D is zero on the first step
        torch._foreach_add_(direction, d_buffers, alpha=derivative)
    add_scaled_(params, direction, -lr)


class PID(Optimizer):
    """PID, with torch-optimizer's argument names and defaults (the authors call the gains ``I`` and
    ``D`` and require lr).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-3).
        momentum: mu, the decay of the integral and derivative buffers (default 0: plain SGD).
        dampening: tau, damps the gradient entering the integral after the first step (default 0).
        weight_decay: L2 penalty added to the gradient (default 0).
        integral: K_i, the integral gain (default 5.0).
        derivative: K_d, the derivative gain (default 10.0).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``).

    State per parameter (only with momentum > 0): ``i_buffer``, ``grad_buffer``, ``d_buffer``.

    Deviations from the reference:
        * the gradient is not modified: the authors write the weight decay and the final direction into
          ``p.grad``.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        integral: float = 5.0,
        derivative: float = 10.0,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_momentum(momentum)
        check_nonnegative(dampening, "dampening")
        check_weight_decay(weight_decay)
        check_nonnegative(integral, "integral")
        check_nonnegative(derivative, "derivative")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        integral=integral, derivative=derivative)
        super().__init__(params, defaults)
        self._update = UpdateFunction(pid_update, compiled)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "PID")
            if group["momentum"] == 0.0:  # SGD: no state
                for device, dtype, (p, g) in group_by_device_and_dtype(params, grads):
                    self._run(group, device, dtype, p, g, [], [], [], first=False)
                continue
            # A parameter's first step with momentum differs (I <- g, no derivative): run those apart.
            new = [("i_buffer" not in self.state[p]) for p in params]
            for first in (True, False):
                ps = [p for p, is_new in zip(params, new) if is_new == first]
                gs = [g for g, is_new in zip(grads, new) if is_new == first]
                if not ps:
                    continue
                buffers = [[state_tensor(self.state[p], key, p) for p in ps]
                           for key in ("i_buffer", "grad_buffer", "d_buffer")]
                for device, dtype, lists in group_by_device_and_dtype(ps, gs, *buffers):
                    self._run(group, device, dtype, *lists, first=first)
        return loss

    def _run(self, group: dict[str, Any], device: torch.device, dtype: torch.dtype, *lists: list[Tensor],
             first: bool) -> None:
        self._update(
            *lists,
            lr=scalar(group["lr"], device, dtype), momentum=group["momentum"], dampening=group["dampening"],
            weight_decay=group["weight_decay"], integral=group["integral"], derivative=group["derivative"],
            first=first, device_type=device.type,
        )
