"""Fromage (Frobenius matched gradient descent).

Paper: "On the distance between two neural networks and the stability of learning", J. Bernstein,
A. Vahdat, Y. Yue, M.-Y. Liu, 2020 (NeurIPS 2020), arXiv:2002.03432. Written from the paper's
algorithm; the authors' code (jxbz/fromage) is the behaviour matched, through pytorch_optimizer's
port of it.

Update for each tensor p with gradient g::

    r = ||p|| / ||g||, r = 1 where either norm is 0     a zero tensor takes a plain lr * g step
    p <- (p - lr r g) / sqrt(1 + lr^2)
    with p_bound: M = p_bound ||p|| at p's first step; p <- p M / ||p|| whenever ||p|| > M

Every tensor moves by about lr relative to its own norm, and the division by sqrt(1 + lr^2) undoes the
norm growth that steps orthogonal to p cause. State: none (``max``, one scalar per tensor, with
p_bound). Pick it as a state-free, scale-invariant baseline; lr is a relative change per step (the
authors start at 1e-2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction, resolve_compiled
from rvc_optim.optim._foreach import (
    check_lr,
    check_positive,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
)
from rvc_optim.optim.lamb import add_scaled_per_tensor_, norms_in_update, tensor_norms, trust_ratios

__all__ = ["Fromage", "cap_norms_", "fromage_rated_step", "fromage_update"]


def fromage_update(params: list[Tensor], grads: list[Tensor], maxima: list[Tensor], *,
                   lr: Tensor | float, shrink: Tensor) -> None:
    """One Fromage step on a list of tensors sharing a device and dtype, norms included (accelerators,
    where the compiled path fuses each tensor's norms and step). ``shrink`` is sqrt(1 + lr^2);
    ``maxima`` is empty without p_bound. No value is read back from the device."""
    ratios = trust_ratios(tensor_norms(params), tensor_norms(grads))
    add_scaled_per_tensor_(params, grads, -lr * ratios)
    torch._foreach_div_(params, shrink)
    cap_norms_(params, maxima)


def fromage_rated_step(params: list[Tensor], grads: list[Tensor], scales: list[Tensor], *,
                       shrink: Tensor | float) -> None:
    """``p <- (p + scale g) / shrink``, each tensor's ``scale = -lr ||p|| / ||g||`` a 0-d tensor in
    ``scales``: elementwise, so the compiled path runs it as one graph on flat views (a CPU's layout)."""
    torch._foreach_add_(params, torch._foreach_mul(grads, scales))
    torch._foreach_div_(params, shrink)


def cap_norms_(params: list[Tensor], maxima: list[Tensor]) -> None:
    """``p <- p M / ||p||`` wherever ``||p|| > M`` (p_bound's cap; nothing when ``maxima`` is empty)."""
    if not maxima:
        return
    norms = tensor_norms(params)
    bound = torch.stack(maxima).to(norms.dtype)
    factors = torch.where(norms > bound, bound / norms, torch.ones_like(norms))
    torch._foreach_mul_(params, list(factors.to(params[0].dtype).unbind()))


class Fromage(Optimizer):
    """Fromage with the authors' argument names and defaults.

    Args:
        params: parameters or param groups.
        lr: learning rate, a relative change per step (default 0.01).
        p_bound: cap every tensor's norm at p_bound times its norm at its first step (default None: no
            cap). As in the authors' code it is one value for the optimizer, and a tensor that is zero
            at its first step is held at zero (its cap is 0): keep zero-initialised biases out of it.
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``). On
            accelerators each tensor's norms and step are fused; on a CPU the norms stay eager and the
            step is one elementwise graph.

    Deviations from the reference:
        * norms and ratios stay on the device (the authors' code reads them with ``.item()``);
        * the cap multiplies by M / ||p|| (the reference multiplies by M, then divides by ||p||).
    """

    def __init__(self, params: Any, lr: float | Tensor = 0.01, p_bound: float | None = None, *,
                 compiled: bool | None = None) -> None:
        check_lr(lr)
        if p_bound is not None:
            check_positive(p_bound, "p_bound")
        self.p_bound = p_bound
        super().__init__(params, dict(lr=lr))
        self._update = UpdateFunction(fromage_update, compiled, elementwise=False, flat=True)
        self._rated_step = UpdateFunction(fromage_rated_step, compiled)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("p_bound", None)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "Fromage")
            if not params:
                continue
            for device, dtype, (p, g) in group_by_device_and_dtype(params, grads):
                self._step(p, g, self._maxima(p), scalar(group["lr"], device, dtype), device)
        return loss

    def _maxima(self, params: list[Tensor]) -> list[Tensor]:
        """Every tensor's cap M (set at its first step), or an empty list without p_bound."""
        if self.p_bound is None:
            return []
        fresh = [x for x in params if "max" not in self.state[x]]
        if fresh:
            for x, norm in zip(fresh, (self.p_bound * tensor_norms(fresh)).unbind()):
                self.state[x]["max"] = norm
        return [self.state[x]["max"] for x in params]

    def _step(self, params: list[Tensor], grads: list[Tensor], maxima: list[Tensor], lr: Tensor,
              device: torch.device) -> None:
        shrink = torch.sqrt(1.0 + lr * lr)
        if norms_in_update(device.type) or not resolve_compiled(self._rated_step.compiled, "cpu",
                                                                  sum(p.numel() for p in params)):
            # eager on a CPU this is BLAS dot products for the norms, then one fused add per tensor
            self._update(params, grads, maxima, lr=lr, shrink=shrink, device_type=device.type)
            return
        # compiled on a CPU: the norms eager (BLAS dot products read faster than inductor's sums here), the
        # step one elementwise graph with per-tensor 0-d scales
        scales = -lr * trust_ratios(tensor_norms(params), tensor_norms(grads))
        self._rated_step(params, grads, list(scales.to(params[0].dtype).unbind()), shrink=shrink, device_type="cpu")
        cap_norms_(params, maxima)
