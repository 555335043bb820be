"""AnyPrecisionAdamW: AdamW with buffers in dtypes of your choice and optional Kahan-summed updates.

Source: torchdistx (Meta/PyTorch, 2022; L. Wright), ``torchdistx/optimizers/anyprecision_optimizer.py``.
There is no paper; Kahan-compensated bfloat16 weight updates are discussed in "Revisiting BFloat16
Training", P. Zamirai, J. Zhang, C. R. Aberger, C. De Sa, 2020, arXiv:2010.06192.

Update for a parameter p with gradient g, per-parameter step t (from 1), lr and decay wd::

    p <- p * (1 - lr * wd)                               decoupled weight decay (if wd)
    m <- beta1 * m + (1 - beta1) * g                     in momentum_dtype
    v <- beta2 * v + (1 - beta2) * g^2                   in variance_dtype
    a = lr / (1 - beta1^t);  denom = sqrt(v) / sqrt(1 - beta2^t) + eps
    plain:  p <- p - a * m / denom
    Kahan:  c <- c - a * m / denom;  p' = p + c;  c <- c + (p - p');  p <- p'

With Kahan summation, ``compensation`` (c) keeps the part of each update that rounding to p's dtype
would lose and hands it to the next step, so bfloat16 weights follow small updates they would
otherwise drop. With float32 buffers and no Kahan summation this is AdamW, except that the bias
corrections are computed in float32 (below).

Pick it to train with bfloat16 weights: ``model.to(torch.bfloat16)``, ``momentum_dtype`` and
``variance_dtype`` bfloat16, ``use_kahan_summation=True``. For float32 training keep
``variance_dtype=torch.float32`` (bfloat16 cannot resolve eps-sized differences of sqrt(v)).

State per parameter: ``step`` (a float32 0-d tensor on the CPU, as the authors'), ``exp_avg``
(momentum_dtype), ``exp_avg_sq`` (variance_dtype) and, with Kahan summation, ``compensation``
(compensation_buffer_dtype).

Float32 bias corrections, on purpose: the authors' step counter is a float32 tensor and the bias
corrections ``1 - beta ** step`` are computed from it in float32 even for float64 parameters (3.4e-6
relative from torch.optim.AdamW in float64). We compute them the same way, on the CPU, once per
group and step count, and pass them to the update as 0-d tensors written on the device by a fill
kernel (:func:`~rvc_optim.optim._foreach.scalar`): no host synchronisation, no host-to-device copy.

Deviations from the authors' code:

* The step returns the closure's loss (the authors' evaluates the closure and returns None).
* No bfloat16 support check at construction (an older version of the authors' file raised on a CPU
  or a machine without NCCL); the dtype arguments must be floating-point dtypes.
* ``load_state_dict`` keeps the buffers in the group's dtypes (``torch.optim.Optimizer`` would cast
  them to the parameter's dtype: a bfloat16 variance would come back as float32 after a resume).
* Kahan summation switched on for a group that already has state creates its ``compensation``
  lazily (the authors' raises a KeyError).
* ``step`` starts as a float32 tensor whatever the default dtype (the authors' follows the default).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction
from rvc_optim.optim._foreach import (
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
    state_tensor,
)

__all__ = ["AnyPrecisionAdamW", "any_precision_adamw_update"]

DTYPE_ARGUMENTS = ("momentum_dtype", "variance_dtype", "compensation_buffer_dtype")
STATE_DTYPES = {
    "exp_avg": "momentum_dtype",
    "exp_avg_sq": "variance_dtype",
    "compensation": "compensation_buffer_dtype",
}


def any_precision_adamw_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    compensations: list[Tensor],
    *,
    lr: Tensor | float,
    step_size: Tensor | float,
    denom_correction: Tensor | float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    use_kahan_summation: bool,
) -> None:
    """One step. Buffers keep their own dtypes; ``step_size`` is lr / (1 - beta1^t) and
    ``denom_correction`` sqrt(1 - beta2^t), both computed in float32 by the caller. Every operation
    rounds where the authors' does (on the eager path our tests measure no difference at all)."""
    decay_weights_(params, lr, weight_decay)
    foreach_mul_by_constant_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    foreach_mul_by_constant_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)

    denom = torch._foreach_sqrt(exp_avg_sqs)  # in variance_dtype, as the authors'
    torch._foreach_div_(denom, denom_correction)
    torch._foreach_add_(denom, eps)
    # The authors' addcdiv_(m, denom, value=-step_size) computes (value * m) / denom at the target's
    # precision. A Python float step size (the CPU path) is that very call; a 0-d tensor is first
    # multiplied into m as a one-element tensor (a 0-d one would not promote a bfloat16 momentum).
    if isinstance(step_size, Tensor):
        numerators, value = torch._foreach_mul(exp_avgs, [step_size.reshape(1)] * len(exp_avgs)), -1.0
    else:
        numerators, value = exp_avgs, -step_size
    if not use_kahan_summation:
        torch._foreach_addcdiv_(params, numerators, denom, value=value)
        return
    torch._foreach_addcdiv_(compensations, numerators, denom, value=value)
    previous = [p.clone() for p in params]
    torch._foreach_add_(params, compensations)  # rounded to p's dtype
    torch._foreach_sub_(previous, params)  # -(what p took), exact in p's dtype
    torch._foreach_add_(compensations, previous)  # keep what p could not take


def _check_dtype(value: Any, name: str) -> None:
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"Invalid {name}: {value!r} (must be a floating-point torch.dtype, e.g. torch.bfloat16)")


def _same_step_buckets(steps: list[Tensor]) -> list[tuple[Tensor, list[int]]]:
    """Indices of the parameters that share a step count, with that count. Parameters of one group
    normally all share it; they differ only where some had no gradient on some steps. The counts are
    CPU tensors, so reading them is no device synchronisation."""
    counts = torch.stack(steps)
    if bool((counts == counts[0]).all()):
        return [(steps[0], list(range(len(steps))))]
    buckets: dict[float, list[int]] = {}
    for i, count in enumerate(counts.tolist()):
        buckets.setdefault(count, []).append(i)
    return [(steps[indices[0]], indices) for indices in buckets.values()]


class AnyPrecisionAdamW(Optimizer):
    """AnyPrecisionAdamW, with the authors' argument names and defaults (torchdistx).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-3).
        betas: (beta1, beta2) for the momentum and the variance (default (0.9, 0.999)).
        eps: added to the bias-corrected sqrt of the variance (default 1e-8).
        weight_decay: decoupled weight decay, multiplied by lr (default 0; the authors' docstring
            says 1e-2, their code 0).
        use_kahan_summation: keep a compensation buffer so low-precision weights receive updates
            smaller than their rounding step (default False).
        momentum_dtype: dtype of ``exp_avg`` (default float32).
        variance_dtype: dtype of ``exp_avg_sq`` (default bfloat16).
        compensation_buffer_dtype: dtype of ``compensation`` (default bfloat16).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        use_kahan_summation: bool = False,
        momentum_dtype: torch.dtype = torch.float32,
        variance_dtype: torch.dtype = torch.bfloat16,
        compensation_buffer_dtype: torch.dtype = torch.bfloat16,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_eps(eps)
        check_weight_decay(weight_decay)
        for name, value in zip(DTYPE_ARGUMENTS, (momentum_dtype, variance_dtype, compensation_buffer_dtype)):
            _check_dtype(value, name)
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            use_kahan_summation=use_kahan_summation,
            momentum_dtype=momentum_dtype,
            variance_dtype=variance_dtype,
            compensation_buffer_dtype=compensation_buffer_dtype,
        )
        super().__init__(params, defaults)
        self._update = UpdateFunction(any_precision_adamw_update, compiled)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for name in DTYPE_ARGUMENTS:
            if name in param_group:
                _check_dtype(param_group[name], name)
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch.optim.Optimizer casts floating-point state to the parameter's dtype, which would round a
        # float32 momentum of bfloat16 weights to bfloat16. The buffers live in the group's dtypes: take
        # them again from the saved dict, in those dtypes.
        saved_state = state_dict["state"]
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        super().load_state_dict(state_dict)
        owners = [(p, group) for group in self.param_groups for p in group["params"]]
        for saved_id, (p, group) in zip(saved_ids, owners):
            saved = saved_state.get(saved_id, {})
            for key, dtype_name in STATE_DTYPES.items():
                if key in saved:
                    self.state[p][key] = saved[key].to(device=p.device, dtype=group[dtype_name])

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "AnyPrecisionAdamW")
            if not params:
                continue
            kahan = group["use_kahan_summation"]
            steps, exp_avgs, exp_avg_sqs, compensations = [], [], [], []
            for p in params:
                state = self.state[p]
                steps.append(state_tensor(state, "step", p, init=_step_counter))
                exp_avgs.append(state_tensor(state, "exp_avg", p, init=_zeros(group["momentum_dtype"])))
                exp_avg_sqs.append(state_tensor(state, "exp_avg_sq", p, init=_zeros(group["variance_dtype"])))
                if kahan:
                    compensations.append(
                        state_tensor(state, "compensation", p, init=_zeros(group["compensation_buffer_dtype"]))
                    )
            torch._foreach_add_(steps, 1.0)

            beta1, beta2 = group["betas"]
            lr = group["lr"]
            for step, indices in _same_step_buckets(steps):
                # Exactly the authors' expressions on a float32 step tensor: float32 bias corrections,
                # even for float64 parameters (see the module docstring).
                step_size = lr / bias_correction(beta1, step)
                denom_correction = bias_correction(beta2, step) ** 0.5
                lists = [params, grads, exp_avgs, exp_avg_sqs] + ([compensations] if kahan else [])
                picked = [[tensors[i] for i in indices] for tensors in lists]
                for device, dtype, tensors in group_by_device_and_dtype(*picked):
                    if not kahan:
                        tensors = [*tensors, []]
                    self._update(
                        *tensors,
                        lr=scalar(lr, device, dtype),
                        step_size=scalar(step_size, device, dtype),
                        denom_correction=scalar(denom_correction, device, dtype),
                        beta1=beta1, beta2=beta2, eps=group["eps"],
                        weight_decay=group["weight_decay"], use_kahan_summation=kahan,
                        device_type=device.type,
                    )
        return loss


def _step_counter(_: Tensor) -> Tensor:
    # float32 whatever the default dtype (the authors' ``torch.tensor(0.0)`` follows the default dtype)
    return torch.tensor(0.0, dtype=torch.float32)


def _zeros(dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    return lambda like: torch.zeros_like(like, dtype=dtype, memory_format=torch.preserve_format)
