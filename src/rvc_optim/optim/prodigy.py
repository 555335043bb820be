"""Prodigy: Adam whose step size d is estimated from the distance travelled.

Paper: "Prodigy: An Expeditiously Adaptive Parameter-Free Learner", K. Mishchenko, A. Defazio, 2023
(ICML 2024), arXiv:2306.06101. Reference: the authors' package ``prodigyopt`` 1.1.2 (``Prodigy``).

One step, with d and dlr = d * lr * bc taken at the start of the step (bc = sqrt(1 - beta2^(k+1)) /
(1 - beta1^(k+1)) with ``use_bias_correction``, else 1), p0 the initial weights, beta3 = sqrt(beta2)
unless given, and the statistics taken on every ``slice_p``-th element of the flattened tensors::

    g <- g + wd * p                                     coupled decay (decouple=False) only
    r <- beta3 * r + sum_p (d / d0) * dlr * <g, p0 - p>  how far the steps went along -g
    m <- beta1 * m + (1 - beta1) * d * g                 Adam's moments, weighted by d
    v <- beta2 * v + (1 - beta2) * d^2 * g^2
    s <- beta3 * s + (d / d0) * dlr * g                  (d / d0) * d with safeguard_warmup
    d_hat = d_coef * r / sum_p ||s||_1
    d <- max(d, d_hat) while d == d0; d_max <- max(d_max, d_hat); d <- min(d_max, d * growth_rate)
    p <- p - wd * dlr * p                               decoupled decay (decouple=True)
    p <- p - dlr * m / (sqrt(v) + d * eps)              new d in the denominator, old dlr
         (beta1 = 0: p <- p - dlr * d * g / (sqrt(v) + d * eps), and no m is stored)

If every gradient is zero (sum ||s||_1 == 0) the moments and s are updated but nothing else: d, r,
k and the parameters stay, as in the reference's early return.

When to pick it: when you do not want to tune a learning rate. Leave ``lr`` at 1.0 (it multiplies
the estimate d); ``d_coef`` is the knob if the steps are too large or too small. Use one instance per
network (d is one number for all groups), and ``safeguard_warmup=True`` with any LR warm-up or
scheduler. State per parameter: ``exp_avg`` (absent when beta1 = 0), ``exp_avg_sq``, ``s`` and
``p0`` (1-D, ``numel / slice_p`` elements; ``p0`` is a 0-d zero for an all-zero parameter, like the
reference), ``step``; per group (the same values in every group): ``d``, ``d_max``,
``d_numerator``, ``d_hat``, ``d_denom``, ``k``.

The two global sums are computed with multi-tensor kernels and d stays on the device as 0-d tensors:
the max/min of the d rule and the reference's early return are ``torch.where``, so a step makes no
host synchronisation. The step that creates state makes one (``p.any()`` for all new parameters at
once, to store the reference's 0-d ``p0`` for all-zero parameters).

Deviations from the reference (each inert in the parity tests; the behavioural ones have tests of their own):

* A group with lr 0 is frozen. The reference still applies decoupled weight decay with the global
  dlr to it and, with beta1 = 0, a full step ``dlr * g / eps``; ours leaves it untouched (its state is
  still created and its ``step`` counted, like the reference's).
* ``p.grad`` is never modified: coupled weight decay goes into a temporary.
* The "d has not moved yet" test compares d with the first group's d0 (the reference uses the last
  group's, a leaked loop variable); identical whenever the groups share d0, the constructor's case.
* With ``fsdp_in_use`` the early return is taken on the all-reduced sum (the reference skips it and
  divides by zero when every gradient is zero).
* The group statistics (d, d_max, d_numerator, d_hat, d_denom, k) are 0-d float64 tensors on the
  parameters' device, not Python floats, and ``step`` is a 0-d float32 tensor; a state_dict saved by
  ``prodigyopt`` loads (floats and ints are converted).
* Rounding: the global sums are added in another order, and the multi-tensor ops with 0-d tensor
  scalars round twice where the reference's fused ``add_(alpha=)``/``addcdiv_`` round once. In the
  first steps p0 - p is ~d0 of p, so these last-bit differences reach 1e-10 of <g, p0 - p>; over 200
  float64 steps d differs from the reference's by at most 5e-11 relative (measured; the reference
  nudged by one ulp moves by 4e-12).
* Argument checks the reference lacks: weight_decay >= 0, 0 <= beta3 <= 1, d_coef > 0,
  growth_rate > 0, slice_p an integer >= 1; differing non-zero group lrs raise at construction as
  well as at step (RuntimeError, like the reference).

Like the reference, betas, beta3, d_coef, growth_rate, decouple, use_bias_correction and
fsdp_in_use are read from the first group; weight_decay, eps, d0 (its d / d0 weights),
safeguard_warmup and slice_p from each group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction
from rvc_optim.optim._foreach import (
    add_scaled_,
    addcdiv_scaled_,
    adam_step_correction,
    check_betas,
    check_weight_decay,
    decay_weights_,
    foreach_abs_sums,
    foreach_dot,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    statistic_dtype,
)

__all__ = ["Prodigy", "prodigy_d_rule", "prodigy_statistics", "prodigy_update"]

# The group keys that hold d's statistics; the same tensors in every group.
D_KEYS = ("d", "d_max", "d_numerator", "d_hat", "d_denom", "k")


def _sliced(tensors: list[Tensor], slice_p: int) -> list[Tensor]:
    """Flattened views of every ``slice_p``-th element (the tensors themselves, flat, for slice_p 1)."""
    if slice_p == 1:
        return [t.reshape(-1) for t in tensors]
    return [t.reshape(-1)[::slice_p] for t in tensors]


def add_scalar_(tensors: list[Tensor], value: Tensor | float) -> None:
    """``tensors += value`` for a Python float or a 0-d tensor ``value``, with no host synchronisation.

    Eager, the multi-tensor kernel takes the 0-d tensor itself (on CUDA it reads it on the device);
    under torch.compile that overload reads the value back (a graph break), so the compiled path
    passes it as a list of 0-d tensors, which inductor fuses.
    """
    if not isinstance(value, Tensor):
        torch._foreach_add_(tensors, value)
    elif torch.compiler.is_compiling():
        torch._foreach_add_(tensors, [value] * len(tensors))
    else:
        # alpha picks the Tensor overload: without it the parser takes the Scalar one and calls .item()
        torch._foreach_add_(tensors, value, alpha=1.0)


def prodigy_statistics(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    sums: list[Tensor],
    p0s: list[Tensor],
    *,
    d: Tensor,
    s_weight: Tensor,
    beta1: float,
    beta2: float,
    beta3: float,
    weight_decay: float,
    decouple: bool,
    slice_p: int,
) -> tuple[Tensor, Tensor]:
    """First pass: update m, v, s; return sum <g, p0 - p> and sum ||s||_1 over these tensors.

    ``exp_avgs`` is empty when beta1 is 0. ``s_weight`` is (d / d0) * dlr, or (d / d0) * d with
    safeguard_warmup. The caller weights the first sum by (d / d0) * dlr and adds all buckets up.
    """
    if weight_decay != 0.0 and not decouple:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)  # coupled decay; p.grad untouched
    flat_grads = _sliced(grads, slice_p)
    flat_params = _sliced(params, slice_p)

    # <g, p0 - p>: p0 is a 0-d zero for a parameter that started all zero
    full = [i for i, p0 in enumerate(p0s) if p0.dim() > 0]
    zero = [i for i, p0 in enumerate(p0s) if p0.dim() == 0]
    moved = torch._foreach_sub([p0s[i] for i in full], [flat_params[i] for i in full]) if full else []
    if zero:
        moved += torch._foreach_neg([flat_params[i] for i in zero])
    dot = foreach_dot(moved, [flat_grads[i] for i in full + zero])

    # Adam's moments, with the gradient weighted by d
    if beta1 > 0.0:
        torch._foreach_mul_(exp_avgs, beta1)
        add_scaled_(exp_avgs, grads, d * (1.0 - beta1))
    torch._foreach_mul_(exp_avg_sqs, beta2)
    if isinstance(d, Tensor):
        torch._foreach_addcmul_(exp_avg_sqs, torch._foreach_mul(grads, d * d * (1.0 - beta2)), grads)
    else:
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=d * d * (1.0 - beta2))

    # s: the weighted gradient sum whose L1 norm is the denominator of d_hat
    torch._foreach_mul_(sums, beta3)
    add_scaled_(sums, flat_grads, s_weight)
    l1 = foreach_abs_sums(sums).sum()
    return dot, l1


def prodigy_d_rule(
    d: Tensor,
    d_max: Tensor,
    d_numerator: Tensor,
    delta_numerator: Tensor,
    denominator: Tensor,
    *,
    d0: float,
    d_coef: float,
    beta3: float,
    growth_rate: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The new d, d_max, d_numerator, d_hat and whether the step goes ahead (all 0-d, on the device).

    ``denominator`` 0 means every gradient was zero: the reference returns before changing anything
    but m, v and s, so the old values are kept (``torch.where``, no host synchronisation).
    """
    numerator = beta3 * d_numerator + delta_numerator
    d_hat = d_coef * numerator / denominator
    new_d = torch.where(d == d0, torch.maximum(d, d_hat), d)  # d grows freely only until it first moves
    new_d_max = torch.maximum(d_max, d_hat)
    new_d = torch.minimum(new_d_max, new_d * growth_rate)
    go = denominator > 0
    return (
        torch.where(go, new_d, d),
        torch.where(go, new_d_max, d_max),
        torch.where(go, numerator, d_numerator),
        d_hat,
        go,
    )


def prodigy_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    d: Tensor,
    dlr: Tensor,
    eps: float,
    beta1: float,
    weight_decay: float,
    decouple: bool,
) -> None:
    """Second pass: the Adam step with the new d in the denominator and the old dlr as step size."""
    denom = torch._foreach_sqrt(exp_avg_sqs)
    add_scalar_(denom, d * eps)
    if decouple:
        decay_weights_(params, dlr, weight_decay)
    if beta1 > 0.0:
        addcdiv_scaled_(params, exp_avgs, denom, -dlr)
    else:
        if weight_decay != 0.0 and not decouple:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        addcdiv_scaled_(params, grads, denom, -(dlr * d))


def _any_nonzero(tensors: list[Tensor]) -> list[bool]:
    """``t.any()`` for each tensor, with one host synchronisation for all of them."""
    home = tensors[0].device
    return torch.stack([t.detach().any().to(home) for t in tensors]).tolist()


class Prodigy(Optimizer):
    """Prodigy, with the authors' argument names and defaults (those of ``prodigyopt.Prodigy``).

    Args:
        params: parameters or param groups. Groups must share one lr; a group with lr 0 is frozen.
        lr: multiplier of the estimated step size d (default 1.0; leave it there). Read as a Python
            number each step, as LR schedulers write it (a tensor lr would cost a host sync).
        betas: (beta1, beta2) of Adam's moments (default (0.9, 0.999)); beta1 = 0 keeps no exp_avg.
        beta3: rate of the moving averages behind d (default None: sqrt(beta2)).
        eps: added to sqrt(v), scaled by d (default 1e-8).
        weight_decay: weight decay (default 0).
        decouple: AdamW-style decoupled decay (default True); False adds wd * p to the gradient.
        use_bias_correction: Adam's bias correction, folded into dlr (default False).
        safeguard_warmup: leave lr out of s (default False); use it with warm-up or a scheduler.
        d0: initial d (default 1e-6).
        d_coef: multiplies the estimate d_hat (default 1.0); the preferred tuning knob.
        growth_rate: most d may grow by per step (default inf).
        fsdp_in_use: all-reduce the two global sums (default False; set automatically for FSDP's
            flattened parameters).
        slice_p: take the statistics of d on every slice_p-th element (default 1).
        compiled: use the ``torch.compile``d passes (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`).
    """

    # p0 is written once and only read afterwards; d needs a global reduction before the update.
    read_only_state = ("p0",)
    needs_reduction_pass = True

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        beta3: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0,
        decouple: bool = True,
        use_bias_correction: bool = False,
        safeguard_warmup: bool = False,
        d0: float = 1e-6,
        d_coef: float = 1.0,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        slice_p: int = 1,
        *,
        compiled: bool | None = None,
    ) -> None:
        if not 0.0 < d0:
            raise ValueError(f"Invalid d0 value: {d0} (must be > 0)")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate (lr): {lr} (must be > 0; a param group's lr may be 0)")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon (eps) value: {eps} (must be > 0)")
        check_betas(betas)
        check_weight_decay(weight_decay)
        if beta3 is not None and not 0.0 <= beta3 <= 1.0:
            raise ValueError(f"Invalid beta3 value: {beta3} (must be in [0, 1])")
        if not 0.0 < d_coef:
            raise ValueError(f"Invalid d_coef value: {d_coef} (must be > 0)")
        if not 0.0 < growth_rate:
            raise ValueError(f"Invalid growth_rate value: {growth_rate} (must be > 0)")
        if isinstance(slice_p, bool) or not isinstance(slice_p, int) or slice_p < 1:
            raise ValueError(f"Invalid slice_p value: {slice_p!r} (must be an integer >= 1)")
        defaults = dict(
            lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay,
            d=d0, d0=d0, d_max=d0, d_numerator=0.0, d_coef=d_coef, k=0, growth_rate=growth_rate,
            use_bias_correction=use_bias_correction, decouple=decouple, safeguard_warmup=safeguard_warmup,
            fsdp_in_use=fsdp_in_use, slice_p=slice_p,
        )
        super().__init__(params, defaults)
        self._shared_lr()
        self._statistics = UpdateFunction(prodigy_statistics, compiled)
        self._update = UpdateFunction(prodigy_update, compiled)

    def _shared_lr(self) -> float:
        """The groups' common lr; non-zero lrs that differ raise (RuntimeError, like the reference)."""
        lrs = [float(group["lr"]) for group in self.param_groups]
        lr = max(lrs)
        if any(x not in (lr, 0.0) for x in lrs):
            raise RuntimeError(
                f"Prodigy: every param group must have the same lr, or lr 0 to freeze it; got lr values {lrs} "
                "(lr multiplies the one step size d that Prodigy estimates for all groups)"
            )
        return lr

    def _init_state(self, params: list[Tensor], groups: list[dict[str, Any]], beta1: float) -> None:
        new = [(p, g) for p, g in zip(params, groups) if "step" not in self.state[p]]
        if not new:
            return
        nonzero = _any_nonzero([p for p, _ in new])  # the one host sync, on the step that creates state
        for (p, group), nz in zip(new, nonzero):
            state = self.state[p]
            flat = _sliced([p.detach()], group["slice_p"])[0]
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["s"] = torch.zeros_like(flat, memory_format=torch.contiguous_format)
            # an all-zero parameter (a zero-initialised bias) keeps a 0-d zero, like the reference
            state["p0"] = flat.clone(memory_format=torch.contiguous_format) if nz else torch.zeros(
                (), dtype=p.dtype, device=p.device
            )
            if beta1 > 0.0:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _steps(self, p: Tensor) -> Tensor:
        step = self.state[p]["step"]
        if not isinstance(step, Tensor) or step.device != p.device:  # a prodigyopt save, or another device
            step = torch.full((), float(step), dtype=torch.float32, device=p.device)
            self.state[p]["step"] = step
        return step

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        lr = self._shared_lr()
        first = self.param_groups[0]
        beta1, beta2 = first["betas"]
        beta3 = first["beta3"] if first["beta3"] is not None else math.sqrt(beta2)

        gathered = [params_with_grad(group, "Prodigy") for group in self.param_groups]
        every = [(p, group) for group, (ps, _) in zip(self.param_groups, gathered) for p in ps]
        if not every:
            return loss
        self._init_state([p for p, _ in every], [g for _, g in every], beta1)
        home = every[0][0].device
        dtype = statistic_dtype(home)

        def stat(key: str, default: Any) -> Tensor:
            value = first.get(key, default)
            if not isinstance(value, Tensor):  # a number: a fill kernel, no host-to-device copy
                return torch.full((), value, dtype=dtype, device=home)
            return value.to(home, dtype)

        d, d_max, k = stat("d", first["d0"]), stat("d_max", first["d0"]), stat("k", 0)
        d_numerator = stat("d_numerator", 0.0)
        d_hat_old, d_denom_old = stat("d_hat", d), stat("d_denom", 0.0)
        if first["use_bias_correction"]:
            dlr = d * lr * adam_step_correction(beta1, beta2, k + 1)
        else:
            dlr = d * lr
        fsdp = first["fsdp_in_use"] or any(hasattr(p, "_fsdp_flattened") for p, _ in every)

        # first pass: moments, s, and the two global sums
        delta_numerator = torch.zeros((), dtype=dtype, device=home)
        denominator = torch.zeros((), dtype=dtype, device=home)
        for group, (params, grads) in zip(self.param_groups, gathered):
            if not params or group["lr"] == 0.0:
                continue
            states = [self.state[p] for p in params]
            weight = d / group["d0"]
            s_weight = weight * (d if group["safeguard_warmup"] else dlr)
            exp_avgs = [st["exp_avg"] for st in states] if beta1 > 0.0 else []
            lists = (params, grads, exp_avgs, [st["exp_avg_sq"] for st in states],
                     [st["s"] for st in states], [st["p0"] for st in states])
            for device, ptype, (p, g, m, v, s, p0) in group_by_device_and_dtype(*lists):
                dot, l1 = self._statistics(
                    p, g, m, v, s, p0,
                    d=scalar(d, device, ptype), s_weight=scalar(s_weight, device, ptype),
                    beta1=beta1, beta2=beta2, beta3=beta3, weight_decay=group["weight_decay"],
                    decouple=first["decouple"], slice_p=group["slice_p"],
                    device_type=device.type,
                )
                delta_numerator = delta_numerator + (weight * dlr) * dot.to(home, dtype)
                denominator = denominator + l1.to(home, dtype)
        if fsdp and dist.is_available() and dist.is_initialized():
            both = torch.stack([delta_numerator, denominator])
            dist.all_reduce(both, op=dist.ReduceOp.SUM)
            delta_numerator, denominator = both[0], both[1]

        # d, on the device; go is False where every gradient was zero (the reference's early return)
        new_d, new_d_max, new_numerator, d_hat, go = prodigy_d_rule(
            d, d_max, d_numerator, delta_numerator, denominator,
            d0=first["d0"], d_coef=first["d_coef"], beta3=beta3, growth_rate=first["growth_rate"],
        )
        values = dict(
            d=new_d, d_max=new_d_max, d_numerator=new_numerator,
            d_hat=torch.where(go, d_hat, d_hat_old), d_denom=torch.where(go, denominator, d_denom_old),
            k=k + go.to(dtype),
        )
        for group in self.param_groups:
            group.update(values)
        dlr = torch.where(go, dlr, torch.zeros_like(dlr))  # a skipped step moves nothing: p * 1 - 0

        # second pass: the parameter update (frozen groups only count the step, like the reference)
        for group, (params, grads) in zip(self.param_groups, gathered):
            if not params:
                continue
            steps = [self._steps(p) for p in params]
            for device, _, (st,) in group_by_device_and_dtype(steps):
                torch._foreach_add_(st, go.to(device, torch.float32), alpha=1.0)  # alpha: no .item() (see add_scalar_)
            if group["lr"] == 0.0:
                continue
            states = [self.state[p] for p in params]
            exp_avgs = [st["exp_avg"] for st in states] if beta1 > 0.0 else []
            lists = (params, grads, exp_avgs, [st["exp_avg_sq"] for st in states])
            for device, ptype, (p, g, m, v) in group_by_device_and_dtype(*lists):
                self._update(
                    p, g, m, v,
                    d=scalar(new_d, device, ptype), dlr=scalar(dlr, device, ptype), eps=group["eps"],
                    beta1=beta1, weight_decay=group["weight_decay"], decouple=first["decouple"],
                    device_type=device.type,
                )
        return loss
