"""QHAdam (quasi-hyperbolic Adam).

Paper: "Quasi-hyperbolic momentum and Adam for deep learning", J. Ma, D. Yarats, ICLR 2019,
arXiv:1810.06801. Reference: the authors' qhoptim 1.1.0 (``qhoptim.pyt.QHAdam``); torch-optimizer's
``QHAdam`` is the same code.

Adam whose numerator and denominator each mix the current gradient with the bias-corrected average.
The bias correction is built into the averages: with weights w1 and w2 that start at 0::

    p <- p * (1 - lr * wd)   with decouple_weight_decay;  otherwise g <- g + wd * p (L2)
    w1 <- 1 + beta1 * w1,  w2 <- 1 + beta2 * w2          (so w = (1 - beta^t) / (1 - beta))
    m <- (1 - 1/w1) * m + (1/w1) * g                     the bias-corrected average of g
    v <- (1 - 1/w2) * v + (1/w2) * g^2                   and of g^2
    p <- p - lr * [(1 - nu1) g + nu1 m] / (sqrt[(1 - nu2) g^2 + nu2 v] + eps)

nus = (1, 1) is exactly Adam (with the bias correction inside the denominator's square root); nu1 < 1
puts part of the raw gradient back into the step, so the update reacts to the current gradient without
a smaller beta1. The paper suggests nus (0.7, 1.0) with betas (0.995, 0.999); QHAdam.from_nadam gives
the settings that recover NAdam.

Pick it to damp Adam's momentum lag while keeping a long average. State per parameter: ``exp_avg``,
``exp_avg_sq`` and the two weights ``beta1_weight`` and ``beta2_weight``, Python floats as in the
reference (host arithmetic, read from no device, and a reference's state_dict loads as is); no ``step``.
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
    addcdiv_scaled_,
    check_betas,
    check_eps,
    check_lr,
    check_weight_decay,
    decay_weights_,
    foreach_mul_by_constant_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
)
from rvc_optim.optim.adabelief import split_by_key

__all__ = ["QHAdam", "qhadam_update"]


def _scaled(tensors: list[Tensor], factor: float) -> list[Tensor]:
    """``[t * factor for t in tensors]`` in one multi-tensor op, the factor kept in float32/float64 for
    reduced-precision tensors as :func:`foreach_mul_by_constant_` does."""
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    return torch._foreach_mul(tensors, torch.full((), factor, dtype=dtype, device=tensors[0].device))


def qhadam_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    lr: Tensor | float,
    keep1: Tensor | float,
    rate1: Tensor | float,
    keep2: Tensor | float,
    rate2: Tensor | float,
    nu1: float,
    nu2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
) -> None:
    """One QHAdam step; ``keep = 1 - 1/w`` and ``rate = 1 - keep`` as the reference computes them. The
    operations are the reference's, in its order (bit for bit against qhoptim)."""
    if weight_decay != 0.0:
        if decoupled:
            decay_weights_(params, lr, weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    grad_sqs = torch._foreach_mul(grads, grads)
    torch._foreach_mul_(exp_avgs, keep1)
    add_scaled_(exp_avgs, grads, rate1)
    torch._foreach_mul_(exp_avg_sqs, keep2)
    add_scaled_(exp_avg_sqs, grad_sqs, rate2)
    numerators = exp_avgs
    if nu1 != 1.0:
        numerators = _scaled(exp_avgs, nu1)
        torch._foreach_add_(numerators, grads, alpha=1.0 - nu1)
    if nu2 != 1.0:
        denom = _scaled(exp_avg_sqs, nu2)
        torch._foreach_add_(denom, grad_sqs, alpha=1.0 - nu2)
        torch._foreach_sqrt_(denom)
    else:
        denom = torch._foreach_sqrt(exp_avg_sqs)
    if eps != 0.0:
        torch._foreach_add_(denom, eps)
    addcdiv_scaled_(params, numerators, denom, -lr)


def _check_nus(nus: Sequence[float]) -> None:
    if not isinstance(nus, (tuple, list)) or len(nus) != 2:
        raise ValueError(f"Invalid nus: expected two values (nu1, nu2), got {nus!r}")
    for i, nu in enumerate(nus):
        if not 0.0 <= nu <= 1.0:
            raise ValueError(f"Invalid nu parameter at index {i} of nus: {nu} (must be in [0, 1])")


class QHAdam(Optimizer):
    """QHAdam, with the authors' argument names and defaults (qhoptim 1.1.0 ``qhoptim.pyt.QHAdam``).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-3).
        betas: (beta1, beta2) for the averages of g and g^2 (default (0.9, 0.999)).
        nus: (nu1, nu2), the weights of the averages against the current g and g^2 (default (1.0, 1.0):
            Adam).
        weight_decay: weight decay (default 0).
        decouple_weight_decay: p * (1 - lr * wd) before the step (QHAdamW) instead of wd * p added to the
            gradient (default False).
        eps: added to the denominator (default 1e-8).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`).

    Deviations from the reference:

    * with L2 decay the term is added to a temporary; the reference adds it to ``p.grad`` in place.
    * nus are checked to lie in [0, 1] (the paper's range; the reference checks nothing).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        nus: tuple[float, float] = (1.0, 1.0),
        weight_decay: float = 0.0,
        decouple_weight_decay: bool = False,
        eps: float = 1e-8,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        _check_nus(nus)
        check_weight_decay(weight_decay)
        check_eps(eps)
        defaults = dict(
            lr=lr, betas=tuple(betas), nus=tuple(nus), weight_decay=weight_decay,
            decouple_weight_decay=decouple_weight_decay, eps=eps,
        )
        super().__init__(params, defaults)
        self._update = UpdateFunction(qhadam_update, compiled)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "nus" in param_group:
            _check_nus(param_group["nus"])
        super().add_param_group(param_group)

    @classmethod
    def from_nadam(cls, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999)) -> dict[str, Any]:
        """The lr, betas and nus with which QHAdam recovers NAdam (Dozat 2016), as the paper's section 3
        derives them: nu1 = beta1, nu2 = 1, and beta1 kept (up to NAdam's own bias correction of m)."""
        return {"lr": lr, "betas": tuple(betas), "nus": (betas[0], 1.0)}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "QHAdam")
            beta1, beta2 = group["betas"]
            weights = []
            for p in params:
                state = self.state[p]
                state_tensor(state, "exp_avg", p)
                state_tensor(state, "exp_avg_sq", p)
                state["beta1_weight"] = 1.0 + beta1 * state.get("beta1_weight", 0.0)
                state["beta2_weight"] = 1.0 + beta2 * state.get("beta2_weight", 0.0)
                weights.append((state["beta1_weight"], state["beta2_weight"]))
            nu1, nu2 = group["nus"]
            for (w1, w2), (ps, gs) in split_by_key(weights, params, grads).items():
                keep1, keep2 = 1.0 - 1.0 / w1, 1.0 - 1.0 / w2
                buffers = [[self.state[p][k] for p in ps] for k in ("exp_avg", "exp_avg_sq")]
                for device, dtype, tensors in group_by_device_and_dtype(ps, gs, *buffers):
                    self._update(
                        *tensors,
                        lr=scalar(group["lr"], device, dtype),
                        keep1=scalar(keep1, device, dtype), rate1=scalar(1.0 - keep1, device, dtype),
                        keep2=scalar(keep2, device, dtype), rate2=scalar(1.0 - keep2, device, dtype),
                        nu1=nu1, nu2=nu2, eps=group["eps"], weight_decay=group["weight_decay"],
                        decoupled=group["decouple_weight_decay"],
                        device_type=device.type,
                    )
        return loss
