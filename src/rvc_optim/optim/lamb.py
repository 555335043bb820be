"""LAMB (layer-wise adaptive moments for batch training).

Paper: "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", Y. You, J. Li,
S. Reddi, J. Hseu, S. Kumar, S. Bhojanapalli, X. Song, J. Demmel, K. Keutzer, C.-J. Hsieh, 2019,
arXiv:1904.00962. The semantics are NVIDIA apex's ``FusedLAMB`` (NVLAMB), as ``timm.optim.Lamb``
reproduces them.

Update for each tensor p with gradient g, step t, over all groups::

    c = max(1, ||g||_global / max_grad_norm)             global clip (max_grad_norm None: c = 1)
    m <- beta1 m + (1 - beta1) g / c                      (g / c without the 1 - beta1 if grad_averaging=False)
    v <- beta2 v + (1 - beta2) (g / c)^2
    u = (m / bc1) / (sqrt(v / bc2) + eps) + wd p          bc = 1 - beta^t (1 without bias_correction)
    r = ||p|| / ||u||, r = 1 where either norm is 0       only if wd != 0 or always_adapt; else r = 1
    p <- p - lr r u                                       trust_clip: r <- min(r, 1)

Every layer therefore moves by about lr relative to its own norm, whatever its gradient scale. State:
``exp_avg`` and ``exp_avg_sq`` (Adam's); an eager step on a CPU also keeps one work buffer of about
2**18 elements plus the largest tensor (not saved with the state). Pick it for very large batches, or when an Adam with a
per-layer step bound is wanted; with weight_decay 0 and always_adapt off it is Adam.

The module also holds what the layer-wise optimizers share: per-tensor norms taken with one
multi-tensor norm, trust ratios kept on the device, and per-tensor factors applied to whole lists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction, resolve_compiled, run_by_tensor_batches, views_of
from rvc_optim.optim.adan import global_clip_factor
from rvc_optim.optim._foreach import (
    add_scaled_,
    addcdiv_scaled_,
    bias_correction,
    check_betas,
    check_eps,
    check_lr,
    check_positive,
    check_weight_decay,
    foreach_l2_norms,
    foreach_mul_by_constant_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    scalar_dtype,
    state_tensor,
    write_into_,
)

__all__ = ["LAMB", "add_scaled_per_tensor_", "lamb_batch_step", "lamb_layer_update", "lamb_moments", "norms_in_update",
           "tensor_norms", "trust_ratios"]


# --- shared by the layer-wise optimizers (LAMB, LARS, NovoGrad, Fromage, Nero) ---------------------


def tensor_norms(tensors: list[Tensor]) -> Tensor:
    """``[||t||_2 for t in tensors]`` as one 1-d tensor on their device, from one multi-tensor norm
    (accumulated in float64 for float64 tensors, float32 otherwise)."""
    return foreach_l2_norms(tensors)


def norms_in_update(device_type: str) -> bool:
    """Whether a layer-wise update takes its per-tensor norms inside the update function (accelerators:
    one multi-tensor norm, or fused per tensor when compiled) rather than before it (a CPU, where BLAS
    dot products read faster than either, and the rest can be one elementwise graph)."""
    return device_type != "cpu"


def trust_ratios(numerators: Tensor, denominators: Tensor) -> Tensor:
    """``numerators / denominators`` with 1 wherever either is 0 (a zero-initialised layer, or a
    zero update): computed on the device, no value read back."""
    ratio = numerators / denominators
    return torch.where((numerators > 0) & (denominators > 0), ratio, torch.ones_like(ratio))


def add_scaled_per_tensor_(targets: list[Tensor], tensors: list[Tensor], factors: Tensor) -> None:
    """``targets[i] += factors[i] * tensors[i]`` (factors: a 1-d tensor, one value per tensor);
    ``tensors`` are left as they are.

    On a CPU (eager) the factors are read as Python floats (free there) and each tensor takes one
    fused ``add_(alpha=)`` pass; elsewhere the factors stay on the device: one multi-tensor multiply
    into temporaries, then one multi-tensor add.
    """
    if factors.device.type == "cpu" and not torch.compiler.is_compiling() and not isinstance(factors, FakeTensor):
        for target, tensor, factor in zip(targets, tensors, factors.tolist()):
            target.add_(tensor, alpha=factor)
        return
    torch._foreach_add_(targets, torch._foreach_mul(tensors, list(factors.to(tensors[0].dtype).unbind())))


# --- LAMB -------------------------------------------------------------------------------------------


def lamb_moments(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    updates: list[Tensor],
    *,
    inv_clip: Tensor | float,
    step_size: Tensor | float,
    eps_sqrt_bc2: Tensor | float,
    beta1: float,
    beta2: float,
    beta3: float,
    weight_decay: float,
) -> None:
    """The elementwise part of a LAMB step: the moments, and the Adam update plus L2 term written into
    ``updates``. The bias corrections are folded as in timm's foreach path: (m / bc1) / (sqrt(v / bc2) +
    eps) = sqrt(bc2) / bc1 * m / (sqrt(v) + eps sqrt(bc2)), so ``step_size`` is sqrt(bc2) / bc1 and
    ``eps_sqrt_bc2`` is eps sqrt(bc2). With ``updates`` the parameters themselves (no trust ratio),
    ``step_size`` is -lr sqrt(bc2) / bc1 and the step is taken here."""
    # m <- beta1 m + beta3 c g and v <- beta2 v + (1 - beta2) c^2 g^2, with the clip factor c folded into
    # the coefficients: no clipped copy of the gradients is made
    foreach_mul_by_constant_(exp_avgs, beta1)
    add_scaled_(exp_avgs, grads, beta3 * inv_clip)
    foreach_mul_by_constant_(exp_avg_sqs, beta2)
    if isinstance(inv_clip, Tensor):
        torch._foreach_addcmul_(exp_avg_sqs, torch._foreach_mul(grads, (1.0 - beta2) * inv_clip * inv_clip), grads)
    else:
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=(1.0 - beta2) * inv_clip * inv_clip)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    # a 0-d tensor where a number is expected would be read back by torch's argument parser: pass a list
    torch._foreach_add_(denom, [eps_sqrt_bc2] * len(denom) if isinstance(eps_sqrt_bc2, Tensor) else eps_sqrt_bc2)
    if updates is params:
        addcdiv_scaled_(params, exp_avgs, denom, step_size)
        return
    if weight_decay == 0.0:
        torch._foreach_zero_(updates)
    else:
        write_into_(updates, torch.mul, params, [weight_decay] * len(params))
    addcdiv_scaled_(updates, exp_avgs, denom, step_size)


def _update_trust_ratios(params: list[Tensor], updates: list[Tensor], trust_clip: bool) -> Tensor:
    """LAMB's per-tensor ||p|| / ||u|| (1 where either is 0), at most 1 with ``trust_clip``."""
    ratios = trust_ratios(tensor_norms(params), tensor_norms(updates))
    return torch.clamp(ratios, max=1.0) if trust_clip else ratios


def lamb_layer_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    lr: Tensor | float,
    trust_clip: bool,
    **moments: Any,
) -> None:
    """A whole LAMB step with the trust ratio, for whole lists (accelerators, the compiled path):
    :func:`lamb_moments` into fresh updates u, then ``p <- p - lr * ratio * u`` with ``ratio =
    ||p|| / ||u||`` (1 where either is 0; at most 1 with ``trust_clip``). Each tensor's ratio depends on
    that tensor only, so the compiled path runs it on flat views: per tensor one loop reads p, g, m and v
    and writes m, v and u with both norms, and a second reads p and u and writes p
    (:class:`~rvc_optim.optim._compile.ChunkFusionChoices`)."""
    updates = [torch.empty_like(p) for p in params]
    lamb_moments(params, grads, exp_avgs, exp_avg_sqs, updates, **moments)
    ratios = _update_trust_ratios(params, updates, trust_clip)
    torch._foreach_add_(params, torch._foreach_mul(updates, list((-lr * ratios).to(params[0].dtype).unbind())))


def lamb_batch_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    buffer: Tensor,
    lr: Tensor | float,
    trust_clip: bool,
    **moments: Any,
) -> None:
    """:func:`lamb_layer_update` for a CPU's eager step, one cache-sized batch of whole tensors at a
    time: the updates u are written into ``buffer`` (kept between steps, see
    :func:`~rvc_optim.optim._compile.batch_buffer`) and each tensor's step takes its ratio as a Python
    float. A fresh parameter-sized u every step cost its page faults: RVC's discriminator, one step
    measured alone, 407 ms with them, about 340 without (its generator's step stayed at about 190)."""
    updates = views_of(buffer, params)
    lamb_moments(params, grads, exp_avgs, exp_avg_sqs, updates, **moments)
    ratios = _update_trust_ratios(params, updates, trust_clip)
    add_scaled_per_tensor_(params, updates, -lr * ratios)


def _lamb_adam_step(params, grads, exp_avgs, exp_avg_sqs, **scalars):
    """LAMB without the trust ratio (weight_decay 0, always_adapt off): Adam, in one pass."""
    lamb_moments(params, grads, exp_avgs, exp_avg_sqs, params, **scalars)


class LAMB(Optimizer):
    """LAMB with apex's and timm's argument names and defaults (``timm.optim.Lamb``).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1e-3).
        bias_correction: divide the moments by 1 - beta^t (default True).
        betas: (beta1, beta2), the moments' decays (default (0.9, 0.999)).
        eps: added to the second moment's square root (default 1e-6).
        weight_decay: L2 term added to the update before the trust ratio (default 0.01).
        grad_averaging: the first moment takes (1 - beta1) g (True, default) or g.
        max_grad_norm: clip the global gradient norm of all groups to this (default 1.0; None: off).
        trust_clip: clip the trust ratio at 1 (default False).
        always_adapt: apply the trust ratio also where weight_decay is 0 (default False).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``).

    Deviations from the reference:
        * the gradient is never modified (nor is it in timm); the clip factor is folded into the step;
        * timm's ``caution``, ``decoupled_decay``, ``corrected_weight_decay`` and ``foreach`` are not
          offered (all off by default there);
        * the step count is a Python int in each group, as timm's per-group count (timm keeps a CPU
          tensor): bias corrections are computed on the host in float64, no device value is read.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        bias_correction: bool = True,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        grad_averaging: bool = True,
        max_grad_norm: float | None = 1.0,
        trust_clip: bool = False,
        always_adapt: bool = False,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_eps(eps)
        check_weight_decay(weight_decay)
        if max_grad_norm is not None:
            check_positive(max_grad_norm, "max_grad_norm")
        super().__init__(params, dict(
            lr=lr, bias_correction=bias_correction, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            grad_averaging=grad_averaging, max_grad_norm=max_grad_norm, trust_clip=trust_clip,
            always_adapt=always_adapt,
        ))
        self._adam_step = UpdateFunction(_lamb_adam_step, compiled)
        self._batch_step = UpdateFunction(lamb_batch_step, False, elementwise=False)
        self._work_buffers: dict[tuple[torch.device, torch.dtype], Tensor] = {}  # a CPU's eager step (not state)
        self._layer_update = UpdateFunction(lamb_layer_update, compiled, elementwise=False, flat=True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_work_buffers", {})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        gathered = [params_with_grad(group, "LAMB") for group in self.param_groups]
        all_grads = [g for _, grads in gathered for g in grads]
        max_grad_norm = self.defaults["max_grad_norm"]
        inv_clip = None
        if max_grad_norm is not None and all_grads:
            inv_clip = global_clip_factor(all_grads, max_grad_norm, eps=0.0)  # 1 / max(1, ||g|| / max_grad_norm)

        for group, (params, grads) in zip(self.param_groups, gathered):
            group["step"] = group.get("step", 0) + 1
            if not params:
                continue
            beta1, beta2 = group["betas"]
            t = group["step"]
            bc1, bc2 = (bias_correction(beta1, t), bias_correction(beta2, t)) if group["bias_correction"] else (1.0, 1.0)
            lr, wd = group["lr"], group["weight_decay"]
            adapt = wd != 0.0 or group["always_adapt"]
            exp_avgs = [state_tensor(self.state[p], "exp_avg", p) for p in params]
            exp_avg_sqs = [state_tensor(self.state[p], "exp_avg_sq", p) for p in params]
            for device, dtype, (p, g, m, v) in group_by_device_and_dtype(params, grads, exp_avgs, exp_avg_sqs):
                scalars = dict(
                    inv_clip=scalar(1.0, device, dtype) if inv_clip is None else inv_clip.to(device, scalar_dtype(dtype)),
                    eps_sqrt_bc2=scalar(group["eps"] * bc2**0.5, device, dtype),
                    beta1=beta1, beta2=beta2, beta3=1.0 - beta1 if group["grad_averaging"] else 1.0,
                    weight_decay=wd, device_type=device.type,
                )
                if not adapt:
                    self._adam_step(p, g, m, v, step_size=scalar(-lr * bc2**0.5 / bc1, device, dtype), **scalars)
                    continue
                step_size = scalar(bc2**0.5 / bc1, device, dtype)
                if device.type != "cpu" or resolve_compiled(self._layer_update.compiled, "cpu",
                                                            sum(x.numel() for x in p)):
                    self._layer_update(p, g, m, v, lr=scalar(lr, device, dtype), trust_clip=group["trust_clip"],
                                       step_size=step_size, **scalars)
                    continue
                # a CPU, eager: batches of whole tensors, each tensor's step with its ratio as a Python float
                run_by_tensor_batches(self._batch_step, (p, g, m, v), work_buffers=self._work_buffers,
                                      lr=scalar(lr, device, dtype), trust_clip=group["trust_clip"],
                                      step_size=step_size, **scalars)
        return loss
