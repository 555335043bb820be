"""NovoGrad (layer-wise second moments).

Paper: "Stochastic Gradient Methods with Layer-wise Adaptive Moments for Training of Deep Networks",
B. Ginsburg, P. Castonguay, O. Hrinchuk, O. Kuchaiev, V. Lavrukhin, R. Leary, J. Li, H. Nguyen,
Y. Zhang, J. M. Cohen, 2019, arXiv:1905.11286. The semantics are NVIDIA's (NeMo's ``Novograd``, the
Jasper original), as ``timm.optim.NvNovoGrad`` reproduces them.

Update for each tensor ("layer") p with gradient g::

    n = ||g||^2                                          one scalar per tensor
    v <- n while v == 0 (the first step), else beta2 v + (1 - beta2) n
    v_hat = max(v_hat, v) with amsgrad, else v
    u = g / (sqrt(v_hat) + eps) + wd p                    L2 decay added after the normalisation
    m <- beta1 m + (1 - beta1) u  (grad_averaging), else beta1 m + u
    p <- p - lr m

Each layer's gradient is normalised to about unit norm, so the per-element step is small: lr is
larger than Adam's (1e-3 to 1e-2). State: ``exp_avg`` (the size of the parameter) and ``exp_avg_sq``
(one scalar per tensor; ``max_exp_avg_sq`` too with amsgrad): SGD-with-momentum memory. Pick it when
Adam's per-element second moment is too much memory but per-layer gradient scaling is wanted.
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
    check_betas,
    check_eps,
    check_lr,
    check_weight_decay,
    foreach_mul_by_constant_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    scalar_dtype,
    state_tensor,
)
from rvc_optim.optim.lamb import tensor_norms

__all__ = ["NovoGrad", "novograd_layer_update", "novograd_update"]


def novograd_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: Tensor | float,
    scale: float,
    beta1: float,
    averaging: float,
    weight_decay: float,
) -> None:
    """The elementwise part, m <- beta1 m + averaging (scale g + wd p) and p <- p - lr m: ``scale`` is
    the tensor's 1 / (sqrt(v_hat) + eps) (1 for gradients already normalised), ``averaging`` is 1 - beta1
    with grad_averaging, else 1."""
    foreach_mul_by_constant_(exp_avgs, beta1)
    add_scaled_(exp_avgs, grads, averaging * scale)
    if weight_decay != 0.0:
        add_scaled_(exp_avgs, params, averaging * weight_decay)
    add_scaled_(params, exp_avgs, -lr)


def _layer_second_moments(grads: list[Tensor], exp_avg_sqs: list[Tensor], max_exp_avg_sqs: list[Tensor],
                          beta2: float) -> Tensor:
    """Update every tensor's scalar v (and v_hat) on the device; returns v_hat as one 1-d tensor."""
    norms = tensor_norms(grads).to(exp_avg_sqs[0].dtype)
    squares = norms * norms
    v = torch.stack(exp_avg_sqs)
    v = torch.where(v == 0, squares, v * beta2 + squares * (1.0 - beta2))
    torch._foreach_copy_(exp_avg_sqs, list(v.unbind()))
    if max_exp_avg_sqs:
        v = torch.maximum(torch.stack(max_exp_avg_sqs), v)
        torch._foreach_copy_(max_exp_avg_sqs, list(v.unbind()))
    return v


def novograd_layer_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    *,
    lr: Tensor | float,
    beta1: float,
    beta2: float,
    eps: float,
    averaging: float,
    weight_decay: float,
) -> None:
    """A whole step for whole lists (accelerators, the compiled path): each tensor's v (and v_hat) from
    its gradient's norm, then :func:`novograd_update` on the normalised gradients. ``exp_avg_sqs`` (and
    ``max_exp_avg_sqs``, empty without amsgrad) hold one 0-d tensor per parameter. Each tensor's values
    depend on that tensor only, so the compiled path runs it on flat views, norm and update fused."""
    v_hat = _layer_second_moments(grads, exp_avg_sqs, max_exp_avg_sqs, beta2)
    scales = 1.0 / (v_hat.sqrt() + eps)
    normalised = torch._foreach_mul(grads, list(scales.to(params[0].dtype).unbind()))
    novograd_update(params, normalised, exp_avgs, lr=lr, scale=1.0, beta1=beta1, averaging=averaging,
                    weight_decay=weight_decay)


class NovoGrad(Optimizer):
    """NovoGrad with NVIDIA's (NeMo's, timm's ``NvNovoGrad``) argument names and defaults.

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-3).
        betas: (beta1, beta2): the momentum and the layer second moment's decay (default (0.95, 0.98)).
        eps: added to sqrt(v) (default 1e-8).
        weight_decay: L2 term added to the normalised gradient (default 0).
        grad_averaging: scale the momentum's input by 1 - beta1 (default False).
        amsgrad: normalise by the running maximum of v (default False).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``).

    Deviations from the reference:
        * the layer second moment is kept in float64 for float64 parameters and float32 otherwise
          (timm, NeMo and torch-optimizer create it in the default dtype, float32 unless changed);
        * n is the squared L2 norm from one multi-tensor norm (timm sums g**2 per tensor: ulp-level);
          the first-step test v == 0 is a ``torch.where`` on the device, not a host read;
        * no per-parameter ``step`` is kept (the reference counts one and never reads it); timm's
          ``decoupled_decay`` and ``corrected_weight_decay`` are not offered.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.95, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_averaging: bool = False,
        amsgrad: bool = False,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_eps(eps)
        check_weight_decay(weight_decay)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      grad_averaging=grad_averaging, amsgrad=amsgrad))
        self._update = UpdateFunction(novograd_update, compiled)
        self._layer_update = UpdateFunction(novograd_layer_update, compiled, elementwise=False, flat=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "NovoGrad")
            if not params:
                continue
            beta1, beta2 = group["betas"]
            layer_scalar = lambda p: torch.zeros((), dtype=scalar_dtype(p.dtype), device=p.device)  # noqa: E731
            exp_avgs = [state_tensor(self.state[p], "exp_avg", p) for p in params]
            exp_avg_sqs = [state_tensor(self.state[p], "exp_avg_sq", p, layer_scalar) for p in params]
            max_sqs = [state_tensor(self.state[p], "max_exp_avg_sq", p, layer_scalar) for p in params] \
                if group["amsgrad"] else []
            for device, dtype, lists in group_by_device_and_dtype(params, grads, exp_avgs, exp_avg_sqs, *(
                    [max_sqs] if max_sqs else [])):
                p, g, m, v = lists[:4]
                v_max = lists[4] if max_sqs else []
                fixed = dict(lr=scalar(group["lr"], device, dtype), beta1=beta1, weight_decay=group["weight_decay"],
                             averaging=1.0 - beta1 if group["grad_averaging"] else 1.0, device_type=device.type)
                if device.type != "cpu" or resolve_compiled(self._layer_update.compiled, "cpu",
                                                            sum(x.numel() for x in p)):
                    self._layer_update(p, g, m, v, v_max, beta2=beta2, eps=group["eps"], **fixed)
                    continue
                # a CPU, eager: one blocked update per tensor, its scale a Python float (free to read there)
                v_hat = _layer_second_moments(g, v, v_max, beta2)
                scales = 1.0 / (v_hat.sqrt() + group["eps"])
                for x, grad, exp_avg, one in zip(p, g, m, scales.tolist()):
                    self._update([x], [grad], [exp_avg], scale=one, **fixed)
        return loss
