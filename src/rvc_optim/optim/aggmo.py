"""AggMo (Aggregated Momentum).

Paper: "Aggregated Momentum: Stability Through Passive Damping", J. Lucas, S. Sun, R. Zemel, R. Grosse,
2018 (ICLR 2019), arXiv:1804.00325.

Update for a parameter p with gradient g, K damping values beta_1..beta_K, learning rate lr and an L2
weight decay wd (added to the gradient, as the authors do)::

    g   <- g + wd * p
    b_i <- beta_i * b_i + g                    for i = 1..K, each an undamped heavy-ball buffer
    p   <- p - (lr / K) * sum_i b_i

Buffers with small beta react at once, buffers with beta near 1 keep a long memory, and their average
damps the oscillations a single large beta would have. The buffers are undamped, so the effective step
is about (lr / K) * sum_i 1 / (1 - beta_i): 37x lr for the default (0, 0.9, 0.99). Pick it as a
momentum SGD that tolerates a large beta; it keeps K buffers the size of the parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction
from rvc_optim.optim._foreach import (
    add_scaled_,
    check_betas,
    check_lr,
    check_nonnegative_int,
    check_positive,
    check_weight_decay,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
)

__all__ = ["AggMo", "aggmo_update"]


def aggmo_update(
    params: list[Tensor],
    grads: list[Tensor],
    *buffers: list[Tensor],
    lr: Tensor | float,
    betas: tuple[float, ...],
    weight_decay: float,
) -> None:
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    step = -lr / len(betas)
    for buf, beta in zip(buffers, betas):  # buffer by buffer, in the order of betas, as the authors step
        torch._foreach_mul_(buf, beta)
        torch._foreach_add_(buf, grads)
        add_scaled_(params, buf, step)


class AggMo(Optimizer):
    """AggMo, with the arguments and defaults of torch-optimizer's ``AggMo`` (the authors' class, with
    lr defaulting to 1e-3 instead of being required).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-3); the step is lr / K times the sum of the K buffers.
        betas: the K damping values, each in [0, 1) (default (0.0, 0.9, 0.99)).
        weight_decay: L2 penalty added to the gradient (default 0).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``).

    State per parameter: ``momentum_buffer_0`` .. ``momentum_buffer_{K-1}``, one per beta, in order.

    Deviations from the reference:
        * the buffers are kept under indexed keys; the authors keep a dict keyed by the beta's value, so
          two equal betas share one buffer that is updated twice per step while K still counts both.
          Here every beta has its own buffer, as the paper's sum over i = 1..K has.
        * the gradient is not modified: the authors add the weight decay into ``p.grad``.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: Sequence[float] = (0.0, 0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        if not isinstance(betas, (tuple, list)) or not betas:
            raise ValueError(f"Invalid betas: expected one or more damping values, got {betas!r}")
        check_betas(betas, count=len(betas))
        check_weight_decay(weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))
        self._update = UpdateFunction(aggmo_update, compiled)

    @classmethod
    def from_exp_form(
        cls, params: Any, lr: float | Tensor = 1e-3, a: float = 0.1, k: int = 3, weight_decay: float = 0.0,
        *, compiled: bool | None = None,
    ) -> AggMo:
        """The paper's exponential form: betas 1 - a**i for i = 0..k-1 (a=0.1, k=3 gives 0, 0.9, 0.99)."""
        check_positive(a, "a")
        check_nonnegative_int(k, "k")
        return cls(params, lr, tuple(1.0 - a**i for i in range(k)), weight_decay, compiled=compiled)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "AggMo")
            betas = tuple(group["betas"])
            buffers = [[state_tensor(self.state[p], f"momentum_buffer_{i}", p) for p in params]
                       for i in range(len(betas))]
            for device, dtype, (p, g, *bufs) in group_by_device_and_dtype(params, grads, *buffers):
                self._update(
                    p, g, *bufs,
                    lr=scalar(group["lr"], device, dtype), betas=betas, weight_decay=group["weight_decay"],
                    device_type=device.type,
                )
        return loss
