"""AdaBelief, and AdaBeliefV2 (our name for its AMSGrad preset).

Paper: "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed Gradients", J. Zhuang, T. Tang,
Y. Ding, S. Tatikonda, N. Dvornek, X. Papademetris, J. S. Duncan, NeurIPS 2020, arXiv:2010.07468.
Reference: the authors' package adabelief-pytorch 0.2.1 (``adabelief_pytorch.AdaBelief``), whose
defaults (eps 1e-16, decoupled decay, rectification on) are the ones kept here.

AdaBelief divides the momentum by the spread of the gradient around it (its "belief") instead of by
the gradient's raw second moment. With t the parameter's step, bc1 = 1 - beta1^t, bc2 = 1 - beta2^t::

    p <- p * (1 - lr * wd)         weight_decouple (or p * (1 - wd) with fixed_decay);
                                   otherwise g <- g + wd * p (L2)
    m <- beta1 * m + (1 - beta1) * g
    s <- beta2 * s + (1 - beta2) * (g - m)^2 + eps          eps accumulates in the stored s
    amsgrad: s_max <- max(s_max, s)
    rectify=False: p <- p - lr / bc1 * m / (sqrt(s_max or s) / sqrt(bc2) + eps)
    rectify=True (RAdam's rectification, N_inf = 2 / (1 - beta2) - 1,
                  N_t = N_inf - 2 t beta2^t / bc2):
        N_t >= 5:  p <- p - lr * r_t / bc1 * m / (sqrt(s) + eps),
                   r_t = sqrt(bc2 (N_t - 4)(N_t - 2) N_inf / ((N_inf - 4)(N_inf - 2) N_t))
        otherwise: p <- p - lr / bc1 * m  with degenerated_to_sgd, else p is left alone

With rectification on, the AMSGrad maximum is tracked but never used (as in the authors' code); that is
why AdaBeliefV2 turns rectification off. For beta2 0.99 or 0.999 the first rectified step is t = 6:
steps 1 to 5 are momentum SGD on the raw gradient scale.

Pick AdaBelief as an AdamW alternative whose step grows where the gradient is predictable and shrinks
where it is noisy; for GANs such as RVC the authors recommend eps 1e-16. Pick AdaBeliefV2 for a more
conservative step over long runs (the running maximum never lets a coordinate's step grow back).
State per parameter: ``step`` (a Python int, as in the reference: the bias corrections and the
rectification branch are host arithmetic on it, so it is never read from a device), ``exp_avg`` and
``exp_avg_var``, and ``max_exp_avg_var`` with amsgrad.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
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
    decay_weights_,
    foreach_mul_by_constant_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
)

__all__ = ["AdaBelief", "AdaBeliefV2", "adabelief_update", "split_by_key"]



def split_by_key(keys: Sequence[Hashable], *lists: Sequence[Any]) -> dict[Hashable, list[list[Any]]]:
    """Parallel lists split by a per-item key (a parameter's step count), first-seen order. The parameters
    of a group share one step count unless some of them missed steps without a gradient."""
    out: dict[Hashable, list[list[Any]]] = {}
    for key, *items in zip(keys, *lists):
        bucket = out.setdefault(key, [[] for _ in lists])
        for lst, item in zip(bucket, items):
            lst.append(item)
    return out


def adabelief_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_vars: list[Tensor],
    max_exp_avg_vars: list[Tensor],
    *,
    decay_lr: Tensor | float,
    step_size: Tensor | float,
    divisor: Tensor | float,
    shift: Tensor | float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    use_max: bool,
) -> None:
    """One AdaBelief step: ``p -= step_size * m / (sqrt(s) / divisor + shift)``, with the step's factors
    decided on the host from the step count (:meth:`AdaBelief._step_factors`): an Adam step (divisor
    sqrt(bc2), shift eps), a rectified one (1, eps), a momentum-SGD one (inf, 1: the denominator is
    exactly 1) or none (step size 0). One formula for all, so the compiled update is built once; with
    Python-float factors (the CPU eager path) the passes that change nothing are skipped.

    The operations are the reference's, in its order: a lerp for either average, or sqrt(bc2) folded
    into the step size, rounds differently, and over 200 steps that grows to 3e-8 relative on a weight
    near zero (measured), where the reference's order agrees bit for bit."""
    if decoupled:
        decay_weights_(params, decay_lr, weight_decay)
    elif weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    foreach_mul_by_constant_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    residuals = torch._foreach_sub(grads, exp_avgs)
    foreach_mul_by_constant_(exp_avg_vars, beta2)
    torch._foreach_addcmul_(exp_avg_vars, residuals, residuals, value=1.0 - beta2)
    torch._foreach_add_(exp_avg_vars, eps)
    if max_exp_avg_vars:
        torch._foreach_maximum_(max_exp_avg_vars, exp_avg_vars)
    if isinstance(divisor, float) and divisor == math.inf:  # on the CPU, the reference's momentum step
        torch._foreach_add_(params, exp_avgs, alpha=-step_size)
        return
    denom = torch._foreach_sqrt(max_exp_avg_vars if use_max else exp_avg_vars)
    if not (isinstance(divisor, float) and divisor == 1.0):  # a rectified step on the CPU: skip the pass
        torch._foreach_div_(denom, divisor)
    # a 0-d tensor alone would be read back to the host as a Scalar; as a list it broadcasts
    torch._foreach_add_(denom, [shift] * len(denom) if isinstance(shift, Tensor) else shift)
    addcdiv_scaled_(params, exp_avgs, denom, -step_size)


def _rectified_scale(beta2: float, step: int) -> float | None:
    """RAdam's r_t (with bc2 inside the root, as the reference), or None below the threshold N_t < 5."""
    beta2_t = beta2**step
    n_inf = 2 / (1 - beta2) - 1
    n_t = n_inf - 2 * step * beta2_t / (1 - beta2_t)
    if n_t < 5:
        return None
    return math.sqrt((1 - beta2_t) * (n_t - 4) / (n_inf - 4) * (n_t - 2) / n_t * n_inf / (n_inf - 2))


class AdaBelief(Optimizer):
    """AdaBelief, with the authors' argument names and defaults (adabelief-pytorch 0.2.1).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-3).
        betas: (beta1, beta2) for the gradient average and the belief variance (default (0.9, 0.999)).
        eps: added to the variance every step and to its square root (default 1e-16).
        weight_decay: weight decay (default 0).
        amsgrad: keep the running maximum of the variance and divide by it (default False; without
            effect on the update while rectify is on, as in the reference).
        weight_decouple: decoupled decay p * (1 - lr * wd) (default True); False adds wd * p to the
            gradient (L2).
        fixed_decay: with weight_decouple, p * (1 - wd), not scaled by lr (default False).
        rectify: RAdam's rectification of the early steps (default True).
        degenerated_to_sgd: below the rectification threshold take a momentum-SGD step (default True);
            False leaves the parameter alone on those steps.
        print_change_log: accepted for compatibility with the authors' signature; nothing is printed.
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`).

    Deviations from the reference:

    * weight_decouple, fixed_decay, rectify and degenerated_to_sgd are per-group settings here (the
      reference keeps them on the optimizer, one value for every group).
    * with weight_decouple=False the L2 term is added to a temporary; the reference adds it to
      ``p.grad`` in place.
    * the rectification terms are computed from each group's own betas every step; the reference caches
      them in a ten-entry ``buffer`` shared by every group that did not pass its own (wrong when groups
      differ in beta2), and puts that buffer in the param groups.
    * float16 parameters are updated in float16 (the reference casts them to float32 and back).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        weight_decouple: bool = True,
        fixed_decay: bool = False,
        rectify: bool = True,
        degenerated_to_sgd: bool = True,
        print_change_log: bool = True,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_eps(eps)
        check_weight_decay(weight_decay)
        del print_change_log
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
            weight_decouple=weight_decouple, fixed_decay=fixed_decay, rectify=rectify,
            degenerated_to_sgd=degenerated_to_sgd,
        )
        super().__init__(params, defaults)
        self._update = UpdateFunction(adabelief_update, compiled)

    def _step_factors(self, group: dict[str, Any], step: int) -> tuple[Any, float, float]:
        """(step_size, divisor, shift) for this step: host arithmetic on the step count."""
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        bc1 = bias_correction(beta1, step)
        if not group["rectify"]:
            return lr / bc1, math.sqrt(bias_correction(beta2, step)), eps
        r = _rectified_scale(beta2, step)
        if r is not None:
            return (r / bc1) * lr, 1.0, eps
        return ((1.0 / bc1) * lr if group["degenerated_to_sgd"] else 0.0), math.inf, 1.0

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, type(self).__name__)
            amsgrad = group["amsgrad"]
            keys = ("exp_avg", "exp_avg_var") + (("max_exp_avg_var",) if amsgrad else ())
            steps = advance_host_steps(self.state, params, keys)
            beta1, beta2 = group["betas"]
            for step, (ps, gs) in split_by_key(steps, params, grads).items():
                step_size, divisor, shift = self._step_factors(group, step)
                states = [self.state[p] for p in ps]
                maxes = [s["max_exp_avg_var"] for s in states] if amsgrad else []
                for device, dtype, (p, g, m, v, *vmax) in group_by_device_and_dtype(
                    ps, gs, [s["exp_avg"] for s in states], [s["exp_avg_var"] for s in states], *([maxes] if amsgrad else [])
                ):
                    self._update(
                        p, g, m, v, vmax[0] if vmax else [],
                        decay_lr=scalar(1.0 if group["fixed_decay"] else group["lr"], device, dtype),
                        step_size=scalar(step_size, device, dtype),
                        divisor=scalar(divisor, device, dtype), shift=scalar(shift, device, dtype),
                        beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                        decoupled=group["weight_decouple"], use_max=amsgrad and not group["rectify"],
                        device_type=device.type,
                    )
        return loss


class AdaBeliefV2(AdaBelief):
    """AdaBeliefV2: our name for AdaBelief with AMSGrad on and rectification off.

    No paper, package or repository defines an "AdaBeliefV2". Here it is AdaBelief (Zhuang et al. 2020,
    arXiv:2010.07468) with the AMSGrad maximum of "On the Convergence of Adam and Beyond" (Reddi, Kale,
    Kumar 2018, arXiv:1904.09237) taken over the belief variance, eps included, and Adam's usual bias
    correction::

        s_max <- max(s_max, s);   p <- p - lr / bc1 * m / (sqrt(s_max) / sqrt(bc2) + eps)

    Rectification must be off for the maximum to reach the update; turned back on, the maximum is only
    tracked, as in the authors' code. Arguments, state and deviations as :class:`AdaBelief`; only the
    defaults of ``amsgrad`` (True) and ``rectify`` (False) differ. Its reference is
    ``adabelief_pytorch.AdaBelief(amsgrad=True, rectify=False)``.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        amsgrad: bool = True,
        weight_decouple: bool = True,
        fixed_decay: bool = False,
        rectify: bool = False,
        degenerated_to_sgd: bool = True,
        print_change_log: bool = True,
        *,
        compiled: bool | None = None,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, weight_decouple, fixed_decay, rectify,
            degenerated_to_sgd, print_change_log, compiled=compiled,
        )
