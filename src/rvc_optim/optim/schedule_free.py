"""Schedule-free AdamW, Adam and SGD.

Paper: "The Road Less Scheduled", A. Defazio, X. Yang, H. Mehta, K. Mishchenko, A. Khaled, A. Cutkosky,
2024, arXiv:2405.15682. Reference: the authors' ``schedulefree`` package (1.4.1), classes
``AdamWScheduleFree`` and ``SGDScheduleFree``; the authors publish no Adam class, so ScheduleFreeAdam is
defined here as schedule-free AdamW without decay, stepped on the L2-augmented gradient ``g + wd * y``.

Three sequences replace the learning-rate schedule: ``z`` takes plain steps, ``x`` is a weighted average
of the ``z`` iterates (the weights to evaluate and save), and the gradient is taken at ``y``, between
them. With ``beta`` the interpolation weight (``betas[0]`` for the Adam pair, ``momentum`` for SGD)::

    lr_k   = lr * min(1, (k + 1) / warmup_steps)          linear warm-up (none when warmup_steps = 0)
    lr_max = max(lr_max, lr_k)
    w      = (k + 1)**r * lr_max**weight_lr_power;  W += w;  c = w / W     (c = 0 while W = 0)
    d      = direction from g = grad(y):   AdamW  (g / (sqrt(v / (1 - beta2**(k+1))) + eps)) + wd * y
                                           Adam   (g' / (sqrt(v / (1 - beta2**(k+1))) + eps)), g' = g + wd * y
                                           SGD    g + wd * y
             (v = beta2 * v + (1 - beta2) * g**2, with g' in place of g for Adam)
    z     <- z - lr_k * d
    x     <- (1 - c) * x + c * z
    y      = (1 - beta) * z + beta * x

Only ``y`` (the parameters while training) and ``z`` are stored; the fast form of the update, used by
the authors and here, is ``y <- lerp(y, z_old, c) + lr_k * (beta * (1 - c) - 1) * d`` followed by the
``z`` step. :meth:`~_ScheduleFree.eval` turns the parameters into ``x`` (``p <- lerp(p, z, 1 - 1/beta)``),
:meth:`~_ScheduleFree.train` back into ``y`` (``p <- lerp(p, z, 1 - beta)``). Optimizers start in eval
mode, as the authors' do: call ``optimizer.train()`` before the first step, ``optimizer.eval()`` before
evaluating or saving, and ``optimizer.train()`` again (after loading, too) before stepping on.

Pick it when you would rather not choose a decay schedule or a run length: no LR scheduler (the
weights read ``lr_max``), a warm-up through ``warmup_steps``, and ``lr`` a few times an AdamW lr.
ScheduleFreeAdam only to match a coupled-L2 Adam baseline; ScheduleFreeSGD for SGD-friendly problems.

State per parameter: ``z`` and ``exp_avg_sq`` (SGD: ``z``); no first moment. Per group, as the
authors: ``k`` (steps taken), ``train_mode``, ``weight_sum``, ``lr_max`` and ``scheduled_lr`` (lr_k,
for logging), all saved in the state dict, so a checkpoint restores in whichever mode it was saved
(save the model and the optimizer in the same mode; the authors advise eval mode).

Deviations from the authors' classes:

* ``p.grad`` is left as the backward pass wrote it. The authors overwrite it (AdamW: with the
  preconditioned direction ``d``; SGD with decay: with ``g + wd * y``).
* ``step()`` raises ``RuntimeError`` unless *every* group is in train mode (the authors raise a bare
  ``Exception`` and look at group 0 only, so a group added after ``train()`` would step in eval mode
  and then be skipped by ``eval()``).
* The multiply-adds ``y += lr_k * (beta * (1 - c) - 1) * d`` and ``z -= lr_k * d`` take their per-step
  factor as a 0-d tensor (so a compiled update is built once), i.e. a multiply then an add, where the
  authors pass a Python float to ``add_(alpha=...)`` (a fused multiply-add in torch's vectorised CPU
  kernels). Results agree to rounding, not bit for bit: after 200 float64 steps the largest difference
  is about 1.5e-15 of a tensor's largest entry (elementwise up to 4e-11 relative, on entries near
  zero). The schedule itself is the authors' Python float arithmetic, exactly, and the eval()/train()
  swaps round as theirs do.
* ``foreach`` is accepted so code written for the authors' class runs unchanged, and ignored: the
  update is always multi-tensor (the authors' two paths give identical numbers).
* Arguments are checked (the authors' AdamW checks none): lr, eps, weight_decay, r, weight_lr_power
  and warmup_steps must be >= 0, betas in [0, 1) with beta1 > 0 (``eval()`` divides by it); SGD's
  momentum in (0, 1) as the authors'. Sparse gradients are rejected with a clear error.
* A tensor ``lr`` is read as a Python float each step (the schedule is host arithmetic).
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
    bias_correction,
    check_betas,
    check_eps,
    check_lr,
    check_nonnegative,
    check_weight_decay,
    group_by_device_and_dtype,
    lerp_,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
)

__all__ = [
    "ScheduleFreeAdam",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "schedule_free_adam_update",
    "schedule_free_adamw_update",
    "schedule_free_sgd_update",
]


# --- the update: one shared y/z step, three directions ------------------------------------------------


def _step_y_and_z_(
    y: list[Tensor], z: list[Tensor], direction: list[Tensor], *, c: Tensor | float, y_weight: Tensor, lr: Tensor
) -> None:
    """``y <- lerp(y, z, c) + y_weight * d`` (y_weight = lr_k * (beta * (1 - c) - 1)), then ``z <- z - lr_k * d``.

    The same as ``z' = z - lr_k d; x' = (1 - c) x + c z'; y' = (1 - beta) z' + beta x'`` with x never
    stored. ``lerp`` with the 0-d weight rounds exactly as the authors' ``lerp_`` with a float weight
    (checked in float64, float32 and bfloat16 on torch 2.13's CPU kernels).

    ``c`` may be a Python float (the exact ``lerp``) or a 0-d tensor (see :func:`lerp_`: no host read).
    """
    lerp_(y, z, c)
    add_scaled_(y, direction, y_weight)
    add_scaled_(z, direction, -lr)


def schedule_free_adamw_update(
    y: list[Tensor],
    grads: list[Tensor],
    z: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    c: Tensor,
    y_weight: Tensor,
    lr: Tensor,
    bias_correction2: Tensor,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """Schedule-free AdamW: Adam's preconditioned gradient, decay added at y after preconditioning."""
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denom = torch._foreach_div(exp_avg_sqs, bias_correction2)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    direction = torch._foreach_div(grads, denom)
    del denom
    if weight_decay != 0.0:
        torch._foreach_add_(direction, y, alpha=weight_decay)
    _step_y_and_z_(y, z, direction, c=c, y_weight=y_weight, lr=lr)


def schedule_free_adam_update(
    y: list[Tensor],
    grads: list[Tensor],
    z: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    c: Tensor,
    y_weight: Tensor,
    lr: Tensor,
    bias_correction2: Tensor,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """Schedule-free Adam: the L2 term joins the gradient at y (so it enters v and is preconditioned),
    then the decay-free schedule-free AdamW step."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, y, alpha=weight_decay)
    schedule_free_adamw_update(
        y, grads, z, exp_avg_sqs,
        c=c, y_weight=y_weight, lr=lr, bias_correction2=bias_correction2, beta2=beta2, eps=eps, weight_decay=0.0,
    )


def schedule_free_sgd_update(
    y: list[Tensor],
    grads: list[Tensor],
    z: list[Tensor],
    *,
    c: Tensor,
    y_weight: Tensor,
    lr: Tensor,
    weight_decay: float,
) -> None:
    """Schedule-free SGD: the plain gradient, with the L2 term taken at y."""
    direction = torch._foreach_add(grads, y, alpha=weight_decay) if weight_decay != 0.0 else grads
    _step_y_and_z_(y, z, direction, c=c, y_weight=y_weight, lr=lr)


# --- the schedule and the train/eval swap, shared by the three classes -----------------------------------


def _as_float(value: float | Tensor) -> float:
    return float(value)  # a tensor lr is read on the host: the schedule is Python arithmetic


def advance_schedule(group: dict[str, Any]) -> tuple[float, float]:
    """Take one step of the group's schedule, in the authors' float arithmetic; returns ``(lr_k, c)``.

    Updates the group's ``k``, ``scheduled_lr``, ``lr_max`` and ``weight_sum``.
    """
    k = group["k"]
    warmup_steps = group["warmup_steps"]
    sched = (k + 1) / warmup_steps if k < warmup_steps else 1.0
    lr = _as_float(group["lr"]) * sched
    group["scheduled_lr"] = lr
    lr_max = group["lr_max"] = max(lr, group["lr_max"])
    weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
    weight_sum = group["weight_sum"] = group["weight_sum"] + weight
    c = weight / weight_sum if weight_sum != 0.0 else 0.0
    group["k"] = k + 1
    return lr, c


def _check_schedule_args(lr: float | Tensor, weight_decay: float, warmup_steps: int, r: float, weight_lr_power: float) -> None:
    check_lr(lr)
    check_weight_decay(weight_decay)
    check_nonnegative(warmup_steps, "warmup_steps")
    check_nonnegative(r, "r")
    check_nonnegative(weight_lr_power, "weight_lr_power")


def _schedule_defaults(warmup_steps: int, r: float, weight_lr_power: float) -> dict[str, Any]:
    return dict(
        warmup_steps=warmup_steps,
        r=r,
        weight_lr_power=weight_lr_power,
        k=0,
        train_mode=False,
        weight_sum=0.0,
        lr_max=-1.0,
        scheduled_lr=0.0,
    )


class _ScheduleFree(Optimizer):
    """What the three share: the eval/train swap, the schedule, and the step's bookkeeping.

    A subclass names its interpolation weight (:meth:`_beta`) and its update (:meth:`_update_group`).
    """

    _name = "ScheduleFree"

    def _beta(self, group: dict[str, Any]) -> float:
        raise NotImplementedError

    def _update_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], lr: float, c: float) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def eval(self) -> None:
        """Set the parameters to the average x (``p <- lerp(p, z, 1 - 1/beta)``), for evaluating or saving."""
        self._swap(train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Set the parameters to the gradient point y (``p <- lerp(p, z, 1 - beta)``), before training steps."""
        self._swap(train=True)

    def _swap(self, train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            beta = self._beta(group)
            weight = 1.0 - beta if train else 1.0 - 1.0 / beta
            params = [p for p in group["params"] if "z" in self.state.get(p, {})]  # stepped at least once
            if params:
                zs = [self.state[p]["z"] for p in params]
                for _, _, (ps, z) in group_by_device_and_dtype(params, zs):
                    torch._foreach_lerp_(ps, z, weight)
            group["train_mode"] = train

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError(
                f"{self._name}.step() was called in eval mode: call optimizer.train() before training steps "
                "(and optimizer.eval() before evaluating or saving)"
            )
        loss = run_closure(closure)
        for group in self.param_groups:
            lr, c = advance_schedule(group)
            params, grads = params_with_grad(group, self._name)
            if params:
                self._update_group(group, params, grads, lr, c)
        return loss

    def _z(self, p: Tensor) -> Tensor:
        return state_tensor(self.state[p], "z", p, init=lambda t: t.detach().clone(memory_format=torch.preserve_format))


class _ScheduleFreeAdamBase(_ScheduleFree):
    _update_fn: Callable[..., None]

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        *,
        compiled: bool | None = None,
    ) -> None:
        _check_schedule_args(lr, weight_decay, warmup_steps, r, weight_lr_power)
        check_betas(betas)
        if not betas[0] > 0.0:
            raise ValueError(f"Invalid beta parameter at index 0 of betas: {betas[0]} (must be > 0: eval() divides by it)")
        check_eps(eps)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, {**defaults, **_schedule_defaults(warmup_steps, r, weight_lr_power)})
        self._update = UpdateFunction(type(self)._update_fn, compiled)

    def _beta(self, group: dict[str, Any]) -> float:
        return group["betas"][0]

    def _update_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], lr: float, c: float) -> None:
        beta1, beta2 = group["betas"]
        y_weight = lr * (beta1 * (1 - c) - 1)
        bias_correction2 = bias_correction(beta2, group["k"])  # k already counts this step
        zs = [self._z(p) for p in params]
        exp_avg_sqs = [state_tensor(self.state[p], "exp_avg_sq", p) for p in params]
        for device, dtype, (y, g, z, v) in group_by_device_and_dtype(params, grads, zs, exp_avg_sqs):
            self._update(
                y, g, z, v,
                c=scalar(c, device, dtype),
                y_weight=scalar(y_weight, device, dtype),
                lr=scalar(lr, device, dtype),
                bias_correction2=scalar(bias_correction2, device, dtype),
                beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                device_type=device.type,
            )


class ScheduleFreeAdamW(_ScheduleFreeAdamBase):
    """Schedule-free AdamW, with the authors' argument names and defaults (``schedulefree.AdamWScheduleFree``).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 0.0025). No LR scheduler: use ``warmup_steps``.
        betas: (beta1, beta2): beta1 is the y interpolation weight between z and x (no first moment),
            beta2 the second moment's decay (default (0.9, 0.999)).
        eps: added to the bias-corrected ``sqrt(v)``, outside the root (default 1e-8).
        weight_decay: decay taken at y and added to the preconditioned direction, so it is scaled by
            lr and enters both the y and z steps (default 0).
        warmup_steps: linear warm-up length in steps (default 0: none).
        r: polynomial weighting ``(k + 1)**r`` of the average (default 0).
        weight_lr_power: the average's weights are ``lr_max**weight_lr_power`` (default 2).
        foreach: accepted for compatibility and ignored (the update is always multi-tensor).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`).

    Call ``train()`` before training steps and ``eval()`` before evaluating or saving.
    """

    _name = "ScheduleFreeAdamW"
    _update_fn = staticmethod(schedule_free_adamw_update)


class ScheduleFreeAdam(_ScheduleFreeAdamBase):
    """Schedule-free Adam: ScheduleFreeAdamW with coupled L2 decay (``g + weight_decay * y`` enters v
    and is preconditioned). The authors publish no such class; the arguments mirror their AdamW's.

    Args: as :class:`ScheduleFreeAdamW`, except ``weight_decay``: an L2 term added to the gradient at y
    before the second moment, so it is divided by the adaptive denominator (keep it small, <= 1e-4).
    With ``weight_decay=0`` it is exactly ScheduleFreeAdamW.
    """

    _name = "ScheduleFreeAdam"
    _update_fn = staticmethod(schedule_free_adam_update)


class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-free SGD, with the authors' argument names and defaults (``schedulefree.SGDScheduleFree``).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 1.0, the authors' value for normalised problems; far too large for
            most networks). No LR scheduler: use ``warmup_steps``.
        momentum: the y interpolation weight between z and x, in (0, 1) (default 0.9).
        weight_decay: coupled L2 decay, ``g + weight_decay * y`` (default 0).
        warmup_steps, r, weight_lr_power, foreach, compiled: as :class:`ScheduleFreeAdamW`.

    Call ``train()`` before training steps and ``eval()`` before evaluating or saving.
    """

    _name = "ScheduleFreeSGD"

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1.0,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = None,
        *,
        compiled: bool | None = None,
    ) -> None:
        _check_schedule_args(lr, weight_decay, warmup_steps, r, weight_lr_power)
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"Invalid momentum value: {momentum} (must be in (0, 1): eval() divides by it)")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
        super().__init__(params, {**defaults, **_schedule_defaults(warmup_steps, r, weight_lr_power)})
        self._update = UpdateFunction(schedule_free_sgd_update, compiled)

    def _beta(self, group: dict[str, Any]) -> float:
        return group["momentum"]

    def _update_group(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor], lr: float, c: float) -> None:
        y_weight = lr * (group["momentum"] * (1 - c) - 1)
        zs = [self._z(p) for p in params]
        for device, dtype, (y, g, z) in group_by_device_and_dtype(params, grads, zs):
            self._update(
                y, g, z,
                c=scalar(c, device, dtype),
                y_weight=scalar(y_weight, device, dtype),
                lr=scalar(lr, device, dtype),
                weight_decay=group["weight_decay"],
                device_type=device.type,
            )
