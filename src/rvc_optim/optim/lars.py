"""LARS (layer-wise adaptive rate scaling).

Paper: "Large Batch Training of Convolutional Networks", Y. You, I. Gitman, B. Ginsburg, 2017,
arXiv:1708.03888. The semantics are NVIDIA apex's ``LARC`` (scaling mode) with torch's SGD momentum, as
``timm.optim.Lars`` reproduces them.

Update for each tensor p with gradient g::

    lam = trust_coeff ||p|| / (||g|| + wd ||p|| + eps)    only if wd != 0 or always_adapt, else lam = 1;
                                                          lam = 1 where ||p|| or ||g|| is 0
    lam <- min(lam / lr, 1)                               trust_clip (LARC's clipping mode)
    d = lam (g + wd p)                                    the local rate, applied once, here
    buf <- d on the first step, else momentum buf + (1 - dampening) d
    p <- p - lr (d + momentum buf if nesterov else buf)

A layer's relative change per step is about lr * trust_coeff whatever its gradient scale. State:
``momentum_buffer`` (with momentum). Pick it for very large batches with SGD-style training; at lr near
1.0 with trust_coeff 1e-3.
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
    check_eps,
    check_lr,
    check_momentum,
    check_nonnegative,
    check_weight_decay,
    foreach_mul_by_constant_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
)
from rvc_optim.optim.lamb import tensor_norms

__all__ = ["LARS", "lars_update"]


def lars_update(
    params: list[Tensor],
    directions: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: Tensor | float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    first: bool,
) -> None:
    """The momentum and the step, on directions that already carry the local rate (d = lam (g + wd p)).
    ``first``: the buffers were just made equal to d (torch SGD's first step)."""
    if not first:
        foreach_mul_by_constant_(momentum_buffers, momentum)
        torch._foreach_add_(momentum_buffers, directions, alpha=1.0 - dampening)
    if nesterov:
        torch._foreach_add_(directions, momentum_buffers, alpha=momentum)
        add_scaled_(params, directions, -lr)
    else:
        add_scaled_(params, momentum_buffers, -lr)


class LARS(Optimizer):
    """LARS with timm's argument names and defaults (``timm.optim.Lars``).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1.0).
        momentum: momentum factor (default 0).
        dampening: dampening of the momentum (default 0).
        weight_decay: L2 term added to the gradient before the local rate (default 0).
        nesterov: Nesterov momentum (default False).
        trust_coeff: the trust coefficient eta of the local rate (default 1e-3).
        eps: added to the local rate's denominator (default 1e-8).
        trust_clip: LARC's clipping: the local rate becomes min(lam / lr, 1) (default False).
        always_adapt: scale also where weight_decay is 0 (default False: such groups take plain SGD steps).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``).

    Deviations from the reference:
        * timm's ``foreach`` switch is not offered; the norms are always one multi-tensor norm.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        trust_coeff: float = 0.001,
        eps: float = 1e-8,
        trust_clip: bool = False,
        always_adapt: bool = False,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_momentum(momentum)
        check_nonnegative(dampening, "dampening")
        check_weight_decay(weight_decay)
        check_nonnegative(trust_coeff, "trust_coeff")
        check_eps(eps)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Invalid nesterov: Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            trust_coeff=trust_coeff, eps=eps, trust_clip=trust_clip, always_adapt=always_adapt,
        ))
        self._update = UpdateFunction(lars_update, compiled)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "LARS")
            if not params:
                continue
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            adapt = wd != 0.0 or group["always_adapt"]
            for device, dtype, (p, g) in group_by_device_and_dtype(params, grads):
                directions = torch._foreach_add(g, p, alpha=wd) if wd != 0.0 else torch._foreach_mul(g, 1.0)
                if adapt:
                    w_norms, g_norms = tensor_norms(p), tensor_norms(g)
                    rates = group["trust_coeff"] * w_norms / (g_norms + wd * w_norms + group["eps"])
                    rates = torch.where((w_norms > 0) & (g_norms > 0), rates, torch.ones_like(rates))
                    if group["trust_clip"]:
                        rates = torch.clamp(rates / scalar(lr, device, dtype), max=1.0)
                    torch._foreach_mul_(directions, list(rates.to(dtype).unbind()))
                self._step(p, directions, group, device, dtype)
        return loss

    def _step(self, params: list[Tensor], directions: list[Tensor], group: dict[str, Any],
              device: torch.device, dtype: torch.dtype) -> None:
        momentum = group["momentum"]
        scalars = dict(lr=scalar(group["lr"], device, dtype), momentum=momentum, dampening=group["dampening"],
                       nesterov=group["nesterov"], device_type=device.type)
        if momentum == 0.0:
            add_scaled_(params, directions, -scalars["lr"])
            return
        new, old = ([], [], []), ([], [], [])
        for p, d in zip(params, directions):
            state = self.state[p]
            is_new = "momentum_buffer" not in state
            if is_new:
                state["momentum_buffer"] = torch.clone(d).detach()
            for out, t in zip(new if is_new else old, (p, d, state["momentum_buffer"])):
                out.append(t)
        for lists, first in ((old, False), (new, True)):
            if lists[0]:
                self._update(*lists, first=first, **scalars)
