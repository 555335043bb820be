"""Adan (Adaptive Nesterov momentum).

Paper: "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models", X. Xie, P. Zhou,
H. Li, Z. Lin, S. Yan, 2022 (TPAMI 2024), arXiv:2208.06677. Reference: the authors' sail-sg/Adan
``adan.py`` (and pytorch_optimizer's ``Adan``, which agrees with it to 5e-16 without clipping).

Adan estimates Nesterov momentum without evaluating the gradient at an extrapolated point: besides
the gradient average it averages the difference between consecutive gradients. With k the group's
step (from 1), betas in the code convention (beta = 1 - the paper's beta) and g the gradient::

    c = min(1, max_grad_norm / (||g||_global + eps))   only if max_grad_norm > 0; g <- c * g
    D = g - g_prev                                     g_prev = g on the first step, so D = 0 then
    m <- beta1 * m + (1 - beta1) * g
    v <- beta2 * v + (1 - beta2) * D
    n <- beta3 * n + (1 - beta3) * (g + beta2 * D)^2
    denom = sqrt(n) / sqrt(1 - beta3^k) + eps
    u = lr / (1 - beta1^k) * m / denom + lr * beta2 / (1 - beta2^k) * v / denom
    no_prox=False: p <- (p - u) / (1 + lr * wd)        proximal weight decay (the default)
    no_prox=True:  p <- p * (1 - lr * wd) - u          decoupled weight decay, as AdamW

State per parameter: ``exp_avg`` (m), ``exp_avg_sq`` (n), ``exp_avg_diff`` (v) and ``neg_pre_grad``
(-g of the previous step): four buffers the size of the parameter, twice Adam's. The group keeps
``step``. :meth:`Adan.restart_opt` starts the moments and the step afresh, as the authors' does.

Pick it as an AdamW alternative when memory allows twice the optimizer state; it needs THREE betas
(the authors' (0.98, 0.92, 0.99)), so RVC's two-element (0.8, 0.99) is rejected with a ValueError.

Deviations from the authors' code, none of which changes a result without gradient clipping:

* The clip factor stays on the device as a 0-d tensor (the authors' takes it to the host with
  ``.item()``), and the global norm is accumulated in the gradients' dtype (float32 for half types);
  the authors' accumulates it in a float32 buffer even for float64 gradients, which moves float64
  runs by a few 1e-9 relative.
* The clip uses the constructor's ``eps`` (as pytorch_optimizer does); the authors' reads ``eps`` of
  the last param group through a leftover loop variable. They differ only where groups override eps.
* ``max_grad_norm`` is global, read from the constructor as in the authors' code; a group's own value
  is ignored.
* ``foreach`` and ``fused`` are not accepted: the update is always multi-tensor, and ``compiled=True``
  takes the place of the authors' CUDA extension.
* The step returns the closure's loss (so does the authors').
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction
from rvc_optim.optim._foreach import (
    addcdiv_scaled_,
    bias_correction,
    check_betas,
    check_eps,
    check_lr,
    check_nonnegative,
    check_weight_decay,
    decay_weights_,
    foreach_l2_norms,
    foreach_mul_by_constant_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    scalar_dtype,
    state_tensor,
)

__all__ = ["Adan", "adan_update", "global_clip_factor"]


def global_clip_factor(grads: list[Tensor], max_grad_norm: float, eps: float) -> Tensor:
    """``min(1, max_grad_norm / (||grads||_2 + eps))`` over all gradients, as a 0-d tensor on the device
    of the first gradient: nothing is read back to the host. The norm is accumulated in float64 for
    float64 gradients and in float32 otherwise."""
    squares = []
    wide = any(g.dtype == torch.float64 for g in grads)
    total_dtype = torch.float64 if wide else torch.float32
    first_device = grads[0].device
    for device, _, (bucket,) in group_by_device_and_dtype(grads):
        squares.append(foreach_l2_norms(bucket).square().sum().to(device=first_device, dtype=total_dtype))
    norm = torch.stack(squares).sum().sqrt()
    return torch.clamp(max_grad_norm / (norm + eps), max=1.0)


def adan_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    exp_avg_diffs: list[Tensor],
    neg_pre_grads: list[Tensor],
    *,
    lr: Tensor | float,
    step_size: Tensor | float,
    diff_step_size: Tensor | float,
    bias_correction3_sqrt: Tensor | float,
    beta1: float,
    beta2: float,
    beta3: float,
    eps: float,
    weight_decay: float,
    no_prox: bool,
) -> None:
    """One Adan step on already clipped gradients. ``neg_pre_grads`` holds -g of the previous step and
    is used as scratch for D and g + beta2 * D before it receives -g of this step."""
    diffs = neg_pre_grads
    torch._foreach_add_(diffs, grads)  # D = g - g_prev
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)  # m
    torch._foreach_lerp_(exp_avg_diffs, diffs, 1.0 - beta2)  # v
    foreach_mul_by_constant_(diffs, beta2)  # (torch's CPU _foreach_mul_ rounds a Python beta to bfloat16)
    torch._foreach_add_(diffs, grads)  # g + beta2 * D
    foreach_mul_by_constant_(exp_avg_sqs, beta3)
    torch._foreach_addcmul_(exp_avg_sqs, diffs, diffs, value=1.0 - beta3)  # n

    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction3_sqrt)
    torch._foreach_add_(denom, eps)

    if no_prox:
        decay_weights_(params, lr, weight_decay)
    addcdiv_scaled_(params, exp_avgs, denom, -step_size)
    addcdiv_scaled_(params, exp_avg_diffs, denom, -diff_step_size)
    if not no_prox and weight_decay != 0.0:
        torch._foreach_div_(params, 1.0 + lr * weight_decay)

    torch._foreach_copy_(neg_pre_grads, grads)
    torch._foreach_neg_(neg_pre_grads)


def _check_adan_betas(betas: Sequence[float]) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 3:
        raise ValueError(
            f"Invalid betas: Adan needs three betas (beta1, beta2, beta3) for the gradient, gradient-difference "
            f"and squared-gradient averages, e.g. the authors' (0.98, 0.92, 0.99); got {betas!r}"
        )
    check_betas(betas, count=3)


class Adan(Optimizer):
    """Adan, with the authors' argument names and defaults (sail-sg/Adan).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-3).
        betas: (beta1, beta2, beta3) for the averages of the gradient, of the gradient difference and
            of the squared corrected gradient, code convention (1 - the paper's) (default (0.98, 0.92, 0.99)).
        eps: added to the denominator and to the global norm of the clip (default 1e-8).
        weight_decay: weight decay, multiplied by lr (default 0).
        max_grad_norm: clip the global gradient norm of all groups to this value; 0 turns clipping off
            (default 0). Clipping scales ``p.grad`` in place, as the authors' does.
        no_prox: False divides by (1 + lr * weight_decay) after the step (proximal, the default);
            True multiplies by (1 - lr * weight_decay) before it (decoupled, as AdamW).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.0,
        no_prox: bool = False,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        _check_adan_betas(betas)
        check_eps(eps)
        check_weight_decay(weight_decay)
        check_nonnegative(max_grad_norm, "max_grad_norm")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm, no_prox=no_prox
        )
        super().__init__(params, defaults)
        self._update = UpdateFunction(adan_update, compiled)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("no_prox", False)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "betas" in param_group:
            _check_adan_betas(param_group["betas"])
        super().add_param_group(param_group)

    @torch.no_grad()
    def restart_opt(self) -> None:
        """Start afresh from the current parameters: step 0 and zero moments in every group, as the
        authors' ``restart_opt``; the previous gradient is taken anew on the next step (D = 0)."""
        for group in self.param_groups:
            group["step"] = 0
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                state = self.state[p]
                for key in ("exp_avg", "exp_avg_sq", "exp_avg_diff"):
                    if key in state:
                        state[key].zero_()
                    else:
                        state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        gathered = [params_with_grad(group, "Adan") for group in self.param_groups]

        max_grad_norm = self.defaults["max_grad_norm"]
        all_grads = [g for _, grads in gathered for g in grads]
        if max_grad_norm > 0.0 and all_grads:
            # The global norm is a genuine global scalar; it stays on the device (no host sync).
            clip = global_clip_factor(all_grads, max_grad_norm, self.defaults["eps"])
            for device, dtype, (grads,) in group_by_device_and_dtype(all_grads):
                torch._foreach_mul_(grads, clip.to(device=device, dtype=scalar_dtype(dtype)))

        for group, (params, grads) in zip(self.param_groups, gathered):
            group["step"] = group.get("step", 0) + 1
            if not params:
                continue
            k = group["step"]
            exp_avgs, exp_avg_sqs, exp_avg_diffs, neg_pre_grads, stale = [], [], [], [], []
            for p, g in zip(params, grads):
                state = self.state[p]
                exp_avgs.append(state_tensor(state, "exp_avg", p))
                exp_avg_sqs.append(state_tensor(state, "exp_avg_sq", p))
                exp_avg_diffs.append(state_tensor(state, "exp_avg_diff", p))
                if "neg_pre_grad" not in state:
                    state["neg_pre_grad"] = torch.neg(g)  # no previous gradient: D = 0 on this step
                elif k == 1:
                    stale.append((state["neg_pre_grad"], g))  # after restart_opt
                neg_pre_grads.append(state["neg_pre_grad"])
            if stale:
                olds, news = map(list, zip(*stale))
                torch._foreach_copy_(olds, news)
                torch._foreach_neg_(olds)

            beta1, beta2, beta3 = group["betas"]
            lr = group["lr"]
            step_size = lr / bias_correction(beta1, k)
            diff_step_size = lr * beta2 / bias_correction(beta2, k)
            bias_correction3_sqrt = math.sqrt(bias_correction(beta3, k))
            for device, dtype, tensors in group_by_device_and_dtype(
                params, grads, exp_avgs, exp_avg_sqs, exp_avg_diffs, neg_pre_grads
            ):
                self._update(
                    *tensors,
                    lr=scalar(lr, device, dtype),
                    step_size=scalar(step_size, device, dtype),
                    diff_step_size=scalar(diff_step_size, device, dtype),
                    bias_correction3_sqrt=scalar(bias_correction3_sqrt, device, dtype),
                    beta1=beta1, beta2=beta2, beta3=beta3, eps=group["eps"],
                    weight_decay=group["weight_decay"], no_prox=group["no_prox"],
                    device_type=device.type,
                )
        return loss

