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

from rvc_optim.optim._compile import UpdateFunction, resolve_compiled
from rvc_optim.optim._foreach import (
    add_scaled_,
    check_eps,
    check_lr,
    check_momentum,
    check_nonnegative,
    check_weight_decay,
    decay_weights_,
    foreach_mul_by_constant_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
)
from rvc_optim.optim.lamb import norms_in_update, tensor_norms

__all__ = ["LARS", "lars_layer_update", "lars_rated_update", "lars_update", "local_rates"]


def lars_update(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: Tensor | float,
    rate: Tensor | float,
    weight_decay: float,
    momentum: float,
    decay: float,
    damping: float,
    nesterov: bool,
) -> None:
    """The momentum and the step for d = rate * (g + weight_decay * p): buf <- decay * buf + damping * d
    (decay 0 and damping 1 on a buffer's first step: buf = d, as torch's SGD), then p <- p - lr * buf,
    or p - lr * (d + momentum * buf) with Nesterov, or p - lr * d without buffers (momentum 0)."""
    if momentum_buffers:
        foreach_mul_by_constant_(momentum_buffers, decay)
        add_scaled_(momentum_buffers, grads, damping * rate)
        if weight_decay != 0.0:
            add_scaled_(momentum_buffers, params, damping * rate * weight_decay)
        if not nesterov:
            add_scaled_(params, momentum_buffers, -lr)
            return
    # p - lr * d: the decay term first, from p as it was, then the gradient term (and Nesterov's)
    decay_weights_(params, lr * rate, weight_decay)
    add_scaled_(params, grads, -lr * rate)
    if nesterov:
        add_scaled_(params, momentum_buffers, -lr * momentum)


def local_rates(params: list[Tensor], grads: list[Tensor], *, lr: Tensor | float, weight_decay: float,
                trust_coeff: float, eps: float, trust_clip: bool) -> Tensor:
    """Every tensor's local rate lam (the module docstring's rule) as one 1-d tensor on their device."""
    w_norms, g_norms = tensor_norms(params), tensor_norms(grads)
    rates = trust_coeff * w_norms / (g_norms + weight_decay * w_norms + eps)
    rates = torch.where((w_norms > 0) & (g_norms > 0), rates, torch.ones_like(rates))
    return torch.clamp(rates / lr, max=1.0) if trust_clip else rates


def lars_rated_update(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    rates: list[Tensor],
    *,
    lr: Tensor | float,
    weight_decay: float,
    momentum: float,
    decay: float,
    damping: float,
    nesterov: bool,
) -> None:
    """:func:`lars_update` on ``d = lam * (g + weight_decay * p)``, with each tensor's local rate ``lam``
    given as a 0-d tensor in ``rates``: elementwise, so the compiled path runs it on flat views."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    directions = torch._foreach_mul(grads, rates)
    lars_update(params, directions, momentum_buffers, lr=lr, rate=1.0, weight_decay=0.0, momentum=momentum,
                decay=decay, damping=damping, nesterov=nesterov)


def lars_layer_update(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    lr: Tensor | float,
    weight_decay: float,
    trust_coeff: float,
    eps: float,
    trust_clip: bool,
    momentum: float,
    decay: float,
    damping: float,
    nesterov: bool,
) -> None:
    """The local rates and the update in one function, for whole lists (accelerators, where the compiled
    path runs it on flat views, each tensor's norms and update fused): ``lam`` from the tensors' norms as
    in the module docstring, then :func:`lars_rated_update`."""
    rates = local_rates(params, grads, lr=lr, weight_decay=weight_decay, trust_coeff=trust_coeff, eps=eps,
                        trust_clip=trust_clip)
    lars_rated_update(params, grads, momentum_buffers, list(rates.to(params[0].dtype).unbind()), lr=lr,
                      weight_decay=weight_decay, momentum=momentum, decay=decay, damping=damping, nesterov=nesterov)


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
        self._layer_update = UpdateFunction(lars_layer_update, compiled, elementwise=False, flat=True)
        self._rated_update = UpdateFunction(lars_rated_update, compiled)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "LARS")
            if not params:
                continue
            momentum = group["momentum"]
            fresh = momentum != 0.0 and [p for p in params if "momentum_buffer" not in self.state[p]]
            for p in fresh or ():
                self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers = [self.state[p]["momentum_buffer"] for p in params] if momentum != 0.0 else []
            # torch's SGD starts a buffer at d: decay 0 and no dampening on its first step
            first = {id(p) for p in fresh or ()}
            for device, dtype, lists in group_by_device_and_dtype(params, grads, *([buffers] if buffers else [])):
                self._step(group, device, dtype, lists[0], lists[1], lists[2] if buffers else [], first)
        return loss

    def _step(self, group: dict[str, Any], device: torch.device, dtype: torch.dtype, params: list[Tensor],
              grads: list[Tensor], buffers: list[Tensor], first: set[int]) -> None:
        lr, wd, momentum = scalar(group["lr"], device, dtype), group["weight_decay"], group["momentum"]
        fixed = dict(lr=lr, momentum=momentum, nesterov=group["nesterov"], device_type=device.type)
        if wd == 0.0 and not group["always_adapt"]:  # plain SGD steps
            self._call(self._update, params, grads, buffers, first, group["dampening"], rate=1.0, weight_decay=0.0,
                       **fixed)
            return
        adapt = dict(trust_coeff=group["trust_coeff"], eps=group["eps"], trust_clip=group["trust_clip"])
        if norms_in_update(device.type):
            self._call(self._layer_update, params, grads, buffers, first, group["dampening"], weight_decay=wd,
                       **adapt, **fixed)
            return
        rates = local_rates(params, grads, lr=lr, weight_decay=wd, **adapt)
        if resolve_compiled(self._rated_update.compiled, "cpu", sum(p.numel() for p in params)):
            # compiled on a CPU: the norms eager (BLAS dot products read faster than inductor's sums here:
            # RVC's generator 62 ms a step against 68 fused, the discriminator 87 against 111), the update
            # one elementwise graph with the rates as per-tensor 0-d tensors
            self._call(self._rated_update, params, grads, buffers, first, group["dampening"],
                       list(rates.to(dtype).unbind()), weight_decay=wd, **fixed)
            return
        # a CPU, eager: one blocked update per tensor, its local rate a Python float (free to read there)
        for i, rate in enumerate(rates.tolist()):
            self._call(self._update, [params[i]], [grads[i]], buffers[i:i + 1], first, group["dampening"], rate=rate,
                       weight_decay=wd, **fixed)

    @staticmethod
    def _call(update: UpdateFunction, params: list[Tensor], grads: list[Tensor], buffers: list[Tensor],
              first: set[int], dampening: float, *per_tensor: list[Tensor], **scalars: Any) -> None:
        """``update`` (with ``per_tensor``, lists parallel to ``params``); buffers on their first step
        (decay 0, no dampening) in a call of their own."""
        if not buffers:
            update(params, grads, [], *per_tensor, decay=0.0, damping=1.0, **scalars)
            return
        for is_first in (False, True):
            chosen = [i for i, p in enumerate(params) if (id(p) in first) == is_first]
            if chosen:
                update([params[i] for i in chosen], [grads[i] for i in chosen], [buffers[i] for i in chosen],
                       *([lst[i] for i in chosen] for lst in per_tensor),
                       decay=0.0 if is_first else scalars["momentum"],
                       damping=1.0 if is_first else 1.0 - dampening, **scalars)
