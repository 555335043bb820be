"""D-Adaptation: DAdaptAdam, DAdaptAdaGrad and DAdaptSGD.

Paper: "Learning-Rate-Free Learning by D-Adaptation", A. Defazio, K. Mishchenko, 2023 (ICML 2023),
arXiv:2301.07733. Reference implementation: the authors' ``dadaptation`` package, version 3.2.

The step size is ``d * lr``: ``lr`` is a multiplier (leave it at 1.0) and ``d`` is a lower bound on
the distance from the initial point to a solution, estimated from the run itself. With ``s`` the
weighted sum of the steps taken so far, the inner products of the gradients with ``s`` bound that
distance from below::

    d_hat = (sum_t dlr_t <g_t, s_t>) / ||s||        (weighted as each variant says)
    d     = max(d, min(d_hat, d * growth_rate))     d never decreases

Two global sums per step (the numerator and the size of ``s``) decide ``d``. Here they are taken with
multi-tensor ops into 0-d tensors and ``d`` stays on the device: the max/min and the references'
"nothing to do yet" early return are ``torch.where``s, so a step makes no host synchronisation (the
references read 2 to 5 scalars back per parameter per step). Every update therefore runs in two
passes: statistics (moments, ``s`` and each chunk's share of the global sums), then, once the sums
are complete, the parameter update. The early return happens only while every gradient so far has
been zero; then ``s`` and the moments are exactly zero, and the skipped step is a factor 0/1 in the
per-step scalars (decoupled decay, iterate averaging, counters), not a branch.

Group values (``d``, ``k``, ``numerator_weighted`` and the like) live in the param groups as 0-d
tensors on the parameters' device (float64), so ``state_dict()`` carries them; ``float(group["d"])``
reads one (a host sync: do it only when you log).

Deviations shared by the three classes (each class lists its own):

* a step whose gradients are all zero (so ``s`` is still zero) changes nothing and never divides by
  zero; the references return early there too, except DAdaptSGD, which raises ZeroDivisionError;
* a group with ``lr=0`` is frozen: no state, no statistics, no update. The references still create
  its state, and DAdaptAdam/DAdaptSGD still move it (decoupled decay, a stale momentum step, the
  pull back to ``x0 - s``);
* sparse gradients raise (DAdaptAdaGrad's reference has a sparse branch);
* ``log_every`` logs through :mod:`logging` (this module's logger) every ``log_every`` calls of
  ``step()``, counted on the host, and reads the logged scalars then (a host sync on those steps only);
  the references count successful steps (``k``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction
from rvc_optim.optim._foreach import (
    check_betas,
    check_weight_decay,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
)

__all__ = [
    "DAdaptAdaGrad",
    "DAdaptAdam",
    "DAdaptSGD",
    "dadapt_adagrad_apply",
    "dadapt_adagrad_statistics",
    "dadapt_adam_apply",
    "dadapt_adam_statistics",
    "dadapt_sgd_apply",
    "dadapt_sgd_statistics",
    "foreach_abs_sums",
    "foreach_dot",
    "foreach_square_sum",
    "foreach_sums_of_nonnegative",
]

logger = logging.getLogger(__name__)


# --- multi-tensor reductions (candidates for _foreach.py) --------------------------------------------


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums over float64 tensors stay float64; everything else is summed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _on_cpu(tensors: list[Tensor]) -> bool:
    # On the CPU a kernel launch costs nothing, so a per-tensor reduction beats building temporaries.
    return tensors[0].device.type == "cpu" and tensors[0].dtype in (torch.float32, torch.float64)


def foreach_dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """``sum_i <a_i, b_i>`` over the two lists, as one 0-d tensor.

    torch has no multi-tensor signed sum (``_foreach_norm``/``_foreach_powsum`` take absolute
    values). On accelerators: one multi-tensor multiply, the products laid end to end (one ``cat``)
    and one reduction: three launches whatever the number of tensors. On the CPU: one fused ``dot``
    per tensor, with no temporaries.
    """
    acc = accumulation_dtype(a[0].dtype)
    if _on_cpu(a):
        return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)]).sum(dtype=acc)
    products = torch._foreach_mul(a, b)
    return torch.cat([t.reshape(-1) for t in products]).sum(dtype=acc)


def foreach_abs_sums(tensors: list[Tensor]) -> Tensor:
    """``[sum |t| for t in tensors]`` as one 1-d tensor (one multi-tensor reduction)."""
    return torch.stack(torch._foreach_norm(tensors, 1, dtype=accumulation_dtype(tensors[0].dtype)))


def foreach_sums_of_nonnegative(tensors: list[Tensor]) -> Tensor:
    """``[sum t for t in tensors]`` as one 1-d tensor, for tensors with no negative entry: their L1
    norms, one multi-tensor reduction (on the CPU, where ord-1 norms are slow, plain sums)."""
    if _on_cpu(tensors):
        acc = accumulation_dtype(tensors[0].dtype)
        return torch.stack([t.sum(dtype=acc) for t in tensors])
    return foreach_abs_sums(tensors)


def foreach_square_sum(tensors: list[Tensor]) -> Tensor:
    """``sum_t sum t**2`` over all the tensors, as one 0-d tensor (squared L2 norms: torch.compile
    cannot trace ``_foreach_powsum``)."""
    norms = torch.stack(torch._foreach_norm(tensors, 2, dtype=accumulation_dtype(tensors[0].dtype)))
    return (norms * norms).sum()


# --- the updates ------------------------------------------------------------------------------------


def dadapt_adam_statistics(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    s: list[Tensor],
    *,
    exp_avg_rate: Tensor,
    s_rate: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> tuple[Tensor, Tensor]:
    """DAdaptAdam's first pass. Updates the moments and ``s`` in place and returns this chunk's
    ``sum <g, s / (sqrt(v) + eps)>`` (with ``s`` and ``v`` from before this step) and ``sum |s|``
    (after it); the caller weights them by ``layer_scale * dlr``.

    ``exp_avg_rate = layer_scale * dlr * (1 - beta1)``, ``s_rate = dlr * (1 - sqrt(beta2))``;
    ``weight_decay`` is the coupled (L2) decay, 0 when decoupled.
    """
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    numerator = foreach_dot(grads, torch._foreach_div(s, denom))

    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, torch._foreach_mul(grads, exp_avg_rate))
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    torch._foreach_mul_(s, beta2**0.5)
    torch._foreach_add_(s, torch._foreach_mul(grads, s_rate))
    return numerator, foreach_abs_sums(s).sum()


def dadapt_adam_apply(
    params: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    *,
    decay_factor: Tensor,
    proceed: Tensor,
    eps: float,
    decoupled: bool,
) -> None:
    """DAdaptAdam's second pass: ``p <- p * (1 - wd * dlr)`` (decoupled decay), ``p <- p - m / (sqrt(v) + eps)``.

    ``m`` already carries the ``dlr`` of the step that added each gradient. ``proceed`` is 1, or 0
    on a step with nothing to do yet (every gradient so far zero): then ``decay_factor`` is 1, ``m``
    is exactly zero, nothing moves and the step counters stay.
    """
    if decoupled:
        torch._foreach_mul_(params, decay_factor)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-1.0)
    torch._foreach_add_(steps, [proceed] * len(steps))  # the list form: all 0-d, and torch.compile traces it


def dadapt_adagrad_statistics(
    params: list[Tensor],
    grads: list[Tensor],
    alphas: list[Tensor],
    s: list[Tensor],
    *,
    dlr: Tensor,
    eps: float,
    weight_decay: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """DAdaptAdaGrad's first pass. ``alpha += g**2``, ``s += dlr * g`` in place; returns this chunk's
    ``sum g**2 / (sqrt(alpha) + eps)`` and the changes of ``sum s**2 / (sqrt(alpha) + eps)`` and of
    ``sum |s|``, each change taken per tensor (new minus old) before summing, as the reference does:
    the estimate is a difference of two large running sums."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    denom = torch._foreach_sqrt(alphas)
    torch._foreach_add_(denom, eps)
    weighted_s_sq = torch._foreach_mul(s, s)
    torch._foreach_div_(weighted_s_sq, denom)
    old_s_sq = foreach_sums_of_nonnegative(weighted_s_sq)
    old_s_l1 = foreach_abs_sums(s)

    grad_sq = torch._foreach_mul(grads, grads)
    torch._foreach_add_(alphas, grad_sq)
    denom = torch._foreach_sqrt(alphas)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(grad_sq, denom)
    weighted_grad_sq = foreach_sums_of_nonnegative(grad_sq).sum()

    torch._foreach_add_(s, torch._foreach_mul(grads, dlr))
    weighted_s_sq = torch._foreach_mul(s, s)
    torch._foreach_div_(weighted_s_sq, denom)
    s_sq_change = (foreach_sums_of_nonnegative(weighted_s_sq) - old_s_sq).sum()
    s_l1_change = (foreach_abs_sums(s) - old_s_l1).sum()
    return weighted_grad_sq, s_sq_change, s_l1_change


def dadapt_adagrad_apply(
    params: list[Tensor],
    alphas: list[Tensor],
    s: list[Tensor],
    x0: list[Tensor],
    *,
    keep: Tensor,
    weight: Tensor,
    eps: float,
    average: bool,
) -> None:
    """DAdaptAdaGrad's second pass (dual averaging): ``z = x0 - s / (sqrt(alpha) + eps)``, then
    ``p <- z``, or with momentum (``average``) ``p <- keep * p + weight * z`` with
    ``weight = 1 - momentum`` and ``keep = 1 - weight``, or ``weight = 0, keep = 1`` on a step with
    nothing to do yet (every gradient so far zero, so ``s = 0`` and ``z = x0 = p``)."""
    denom = torch._foreach_sqrt(alphas)
    torch._foreach_add_(denom, eps)
    z = torch._foreach_div(s, denom)
    z = torch._foreach_sub(x0, z)
    _average_into(params, z, keep, weight, average)


def _average_into(params: list[Tensor], z: list[Tensor], keep: Tensor, weight: Tensor, average: bool) -> None:
    if average:
        torch._foreach_mul_(params, keep)
        torch._foreach_mul_(z, weight)
        torch._foreach_add_(params, z)
    else:
        torch._foreach_copy_(params, z)


def dadapt_sgd_statistics(
    params: list[Tensor],
    grads: list[Tensor],
    s: list[Tensor],
    *,
    dlr: Tensor,
    weight_decay: float,
) -> tuple[Tensor, Tensor]:
    """DAdaptSGD's first pass. Returns this chunk's ``sum <g, s>`` (``s`` before this step; the
    caller weights it by ``dlr``), updates ``s += dlr * g`` and returns ``sum s**2`` after it."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    numerator = foreach_dot(grads, s)
    torch._foreach_add_(s, torch._foreach_mul(grads, dlr))
    return numerator, foreach_square_sum(s)


def dadapt_sgd_apply(
    params: list[Tensor],
    s: list[Tensor],
    x0: list[Tensor],
    *,
    keep: Tensor,
    weight: Tensor,
    average: bool,
) -> None:
    """DAdaptSGD's second pass (dual averaging): ``z = x0 - s``, then ``p <- z`` or, with momentum,
    ``p <- keep * p + weight * z`` as in :func:`dadapt_adagrad_apply`."""
    z = torch._foreach_sub(x0, s)
    _average_into(params, z, keep, weight, average)


# --- shared machinery of the three classes ------------------------------------------------------------


def _check_positive(value: float, name: str) -> None:
    if not 0.0 < float(value):
        raise ValueError(f"Invalid {name}: {float(value)} (must be > 0)")


def _check_momentum(momentum: float) -> None:
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid momentum value: {momentum} (must be in [0, 1))")


def _check_common(lr: float, d0: float, weight_decay: float, log_every: int) -> None:
    _check_positive(lr, "learning rate (lr)")
    _check_positive(d0, "d0")
    check_weight_decay(weight_decay)
    if int(log_every) != log_every or log_every < 0:
        raise ValueError(f"Invalid log_every value: {log_every} (must be an integer >= 0)")


def _scalar_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class _Chunk:
    """One (param group, device, dtype) slice of the parameters, with its state lists."""

    __slots__ = ("device", "dtype", "group", "lists")

    def __init__(self, device: torch.device, dtype: torch.dtype, group: dict[str, Any], lists: list[list[Tensor]]):
        self.device, self.dtype, self.group, self.lists = device, dtype, group, lists

    def scalar(self, value: float | Tensor) -> Tensor:
        return scalar(value, self.device, self.dtype)


class _DAdaptBase(Optimizer):
    """What the three D-Adaptation classes share: lr checks, gathering, group scalars, logging, FSDP."""

    _name = "DAdapt"
    _state_keys: tuple[str, ...] = ()
    read_only_state: tuple[str, ...] = ()
    needs_reduction_pass = True

    def __init__(self, params: Any, defaults: dict[str, Any], d0: float, compiled: bool | None) -> None:
        super().__init__(params, defaults)
        self.d0 = d0
        self._calls = 0
        self._compiled = compiled

    # -- learning rates ---------------------------------------------------------------------------

    def _max_lr(self) -> float:
        return max(float(group["lr"]) for group in self.param_groups)

    def _check_single_lr(self, hint: str = "") -> None:
        lrs = [float(group["lr"]) for group in self.param_groups]
        lr = max(lrs)
        if any(value not in (lr, 0.0) for value in lrs):
            raise ValueError(
                f"{self._name}: every param group must use the same lr (or lr=0 to freeze a group); got lr "
                f"values {lrs}{hint}"
            )

    # -- gathering ------------------------------------------------------------------------------------

    def _init_state(self, state: dict[str, Any], p: Tensor) -> None:
        raise NotImplementedError

    def _chunks(self) -> list[_Chunk]:
        """The parameters with gradients of every group with lr > 0, split by device and dtype."""
        chunks = []
        for group in self.param_groups:
            if float(group["lr"]) == 0.0:
                continue
            params, grads = params_with_grad(group, self._name)
            if not params:
                continue
            for p in params:
                if hasattr(p, "_fsdp_flattened"):
                    self._on_fsdp_param(group)
                self._init_state(self.state[p], p)
            lists = [params, grads] + [[self.state[p][key] for p in params] for key in self._state_keys]
            for device, dtype, split in group_by_device_and_dtype(*lists):
                chunks.append(_Chunk(device, dtype, group, split))
        return chunks

    def _on_fsdp_param(self, group: dict[str, Any]) -> None:
        for each in self.param_groups:  # the flag is read from the first group
            each["fsdp_in_use"] = True

    # -- group scalars ----------------------------------------------------------------------------------

    @staticmethod
    def _value(value: float | Tensor, home: torch.device, dtype: torch.dtype | None = None) -> Tensor:
        """A group value (a Python number from the defaults or another package's state_dict, or a
        tensor saved on any device) as a 0-d tensor on ``home``. A number is written there by a fill
        kernel, not copied from the host (a blocking copy on CUDA)."""
        if not isinstance(value, Tensor):
            return torch.full((), value, dtype=dtype or _scalar_dtype(home), device=home)
        return torch.as_tensor(value, dtype=dtype or _scalar_dtype(home), device=home).reshape(())

    @staticmethod
    def _all_reduce(*values: Tensor) -> tuple[Tensor, ...]:
        """Sum the values over the process group (sharded parameters: each rank holds a slice)."""
        import torch.distributed as dist

        stacked = torch.stack(values)
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return tuple(stacked.unbind(0))

    def _log_due(self, log_every: int) -> bool:
        due = log_every > 0 and self._calls % log_every == 0
        self._calls += 1
        return due

    def _update_fn(self, fn: Callable[..., Any]) -> UpdateFunction:
        return UpdateFunction(fn, self._compiled)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_calls", 0)


# --- DAdaptAdam ---------------------------------------------------------------------------------------


class DAdaptAdam(_DAdaptBase):
    """Adam with the D-Adaptation step size, with the authors' argument names and defaults
    (``dadaptation.DAdaptAdam`` 3.2).

    Each step, with ``dlr = d * lr * bc`` (``bc = sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))`` when
    ``use_bias_correction``, else 1) and ``r`` the group's ``layer_scale``::

        g    <- g + wd * p                             (coupled decay, unless decouple)
        num  += r * dlr * <g, s / (sqrt(v) + eps)>     (s and v from before this step)
        m    <- beta1 * m + r * dlr * (1 - beta1) * g  (m keeps the dlr of the step that added g)
        v    <- beta2 * v + (1 - beta2) * g^2
        s    <- sqrt(beta2) * s + dlr * (1 - sqrt(beta2)) * g
        numerator_weighted <- sqrt(beta2) * numerator_weighted + (1 - sqrt(beta2)) * sum num
        d    <- max(d, min(numerator_weighted / ((1 - sqrt(beta2)) * sum r * |s|_1), d * growth_rate))
        p    <- p * (1 - wd * dlr)                     (decoupled decay, with the dlr from the start of the step)
        p    <- p - m / (sqrt(v) + eps)

    Pick it to train without tuning a learning rate (lr stays 1.0) where Adam suits the model; set
    ``decouple=True`` for AdamW-style decay. State per parameter: ``exp_avg``, ``exp_avg_sq``, ``s``
    (three copies of the parameter) and the counter ``step``; group values ``d``, ``k``,
    ``numerator_weighted`` (0-d tensors after the first step).

    Args:
        params: parameters or param groups. Groups may set ``layer_scale`` (default 1.0) to scale
            their step relative to the others; all groups share one lr (0 freezes a group).
        lr: multiplier of the estimated step size (default 1.0).
        betas: (beta1, beta2) of the moments; sqrt(beta2) is the rate of the d statistics.
        eps: added to sqrt(v) (default 1e-8).
        weight_decay: L2 penalty added to the gradient, or decoupled decay with ``decouple``.
        log_every: log d and its statistics every this many steps through :mod:`logging` (0: never).
        decouple: AdamW-style decoupled weight decay (default False, as the authors').
        use_bias_correction: multiply dlr by Adam's bias correction (default False).
        d0: initial d (default 1e-6).
        growth_rate: d grows at most by this factor per step (default inf).
        fsdp_in_use: sum the two statistics over the default process group with
            ``torch.distributed.all_reduce`` (sharded parameters); set automatically when a parameter
            has ``_fsdp_flattened``.
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``).

    Read from the first group only, as the authors do: betas, decouple, use_bias_correction,
    growth_rate, log_every, fsdp_in_use. Deviations from the reference (besides those in the module
    docstring): the FSDP early-return test uses the summed ``||s||_1`` (the reference tests the local
    one, so a rank without gradients returns before the all-reduce the others wait in).
    """

    _name = "DAdaptAdam"
    _state_keys = ("exp_avg", "exp_avg_sq", "s", "step")

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        log_every: int = 0,
        decouple: bool = False,
        use_bias_correction: bool = False,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        *,
        compiled: bool | None = None,
    ) -> None:
        _check_common(lr, d0, weight_decay, log_every)
        check_betas(betas)
        _check_positive(eps, "epsilon (eps)")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, d=d0, k=0, layer_scale=1.0,
            numerator_weighted=0.0, log_every=log_every, growth_rate=growth_rate,
            use_bias_correction=use_bias_correction, decouple=decouple, fsdp_in_use=fsdp_in_use,
        )
        super().__init__(params, defaults, d0, compiled)
        self._check_single_lr()
        self._statistics = self._update_fn(dadapt_adam_statistics)
        self._apply = self._update_fn(dadapt_adam_apply)

    def _check_single_lr(self, hint: str = "") -> None:
        super()._check_single_lr("; scale a group's step with its 'layer_scale' key instead")

    def _init_state(self, state: dict[str, Any], p: Tensor) -> None:
        for key in ("exp_avg", "exp_avg_sq", "s"):
            state_tensor(state, key, p)
        step = state.get("step")
        if not isinstance(step, Tensor):  # absent, or a Python int from the reference's state_dict
            state["step"] = torch.full((), float(step or 0), dtype=torch.float32, device=p.device)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        self._check_single_lr()
        first = self.param_groups[0]
        log = self._log_due(first["log_every"])
        chunks = self._chunks()
        if not chunks:
            return loss
        lr = self._max_lr()
        beta1, beta2 = first["betas"]
        sqrt_beta2 = beta2**0.5
        decouple = first["decouple"]
        home = chunks[0].device
        d = self._value(first["d"], home)
        k = self._value(first["k"], home, torch.int64)
        dlr = d * lr
        if first["use_bias_correction"]:
            power = (k + 1).to(d.dtype)
            dlr = dlr * (torch.sqrt(1 - beta2**power) / (1 - beta1**power))

        numerator = torch.zeros((), dtype=d.dtype, device=home)
        s_l1 = torch.zeros((), dtype=d.dtype, device=home)
        for chunk in chunks:
            group = chunk.group
            r = group["layer_scale"]
            p, g, m, v, s, _ = chunk.lists
            chunk_num, chunk_s_l1 = self._statistics(
                p, g, m, v, s,
                exp_avg_rate=chunk.scalar(r * dlr * (1 - beta1)),
                s_rate=chunk.scalar(dlr * (1 - sqrt_beta2)),
                beta1=beta1, beta2=beta2, eps=group["eps"],
                weight_decay=0.0 if decouple else group["weight_decay"],
                device_type=chunk.device.type,
            )
            numerator = numerator + r * dlr * chunk_num.to(home, d.dtype)
            s_l1 = s_l1 + r * chunk_s_l1.to(home, d.dtype)

        numerator_weighted = sqrt_beta2 * self._value(first["numerator_weighted"], home) + (1 - sqrt_beta2) * numerator
        total_numerator, total_s_l1 = numerator_weighted, s_l1
        if first["fsdp_in_use"]:
            total_numerator, total_s_l1 = self._all_reduce(numerator_weighted, s_l1)
        # sum ||s||_1 == 0 only while every gradient so far was zero: the reference returns early.
        proceed = total_s_l1 != 0
        d_hat = total_numerator / ((1 - sqrt_beta2) * total_s_l1)
        new_d = torch.where(proceed, torch.maximum(d, torch.minimum(d_hat, d * first["growth_rate"])), d)

        step_scale = proceed.to(d.dtype)
        for chunk in chunks:
            group = chunk.group
            p, _, m, v, _, steps = chunk.lists
            self._apply(
                p, m, v, steps,
                decay_factor=chunk.scalar(1 - group["weight_decay"] * dlr * step_scale),
                proceed=chunk.scalar(step_scale),
                eps=group["eps"], decoupled=bool(decouple and group["weight_decay"] != 0),
                device_type=chunk.device.type,
            )

        if log:
            logger.info(
                "DAdaptAdam: lr %s dlr %.6g d_hat %.6g d %.6g sk_l1 %.1e numerator_weighted %.1e",
                lr, float(dlr), float(torch.where(proceed, d_hat, d)), float(new_d), float(total_s_l1),
                float(total_numerator),
            )
        numerator_weighted = torch.where(proceed, numerator_weighted, self._value(first["numerator_weighted"], home))
        for group in self.param_groups:
            group["numerator_weighted"] = numerator_weighted
            group["d"] = new_d
            group["k"] = self._value(group["k"], home, torch.int64) + proceed.long()
        return loss


# --- DAdaptAdaGrad ------------------------------------------------------------------------------------


class DAdaptAdaGrad(_DAdaptBase):
    """AdaGrad-style dual averaging with the D-Adaptation step size, with the authors' argument
    names and defaults (``dadaptation.DAdaptAdaGrad`` 3.2).

    Each step, with ``dlr = d * lr`` (the group's lr)::

        g     <- g + wd * p                                   (coupled decay)
        alpha <- alpha + g^2                                  (alpha starts at 1e-6, not 0)
        G     <- G + dlr^2 * sum g^2 / (sqrt(alpha) + eps)
        s     <- s + dlr * g
        d     <- max(d, min((sum s^2 / (sqrt(alpha) + eps) - G) / sum |s|, d * growth_rate))
        z      = x0 - s / (sqrt(alpha) + eps)
        p     <- momentum * p + (1 - momentum) * z            (p = z without momentum)

    ``sum s^2 / (sqrt(alpha) + eps)`` and ``sum |s|`` are kept as running totals updated by each
    tensor's change, as the authors do. ``momentum`` averages iterates (primal averaging), it is not
    heavy-ball momentum. The authors recommend DAdaptAdam or DAdaptSGD over this one in most cases:
    AdaGrad's accumulator only grows, so long runs slow down. State per parameter: ``alphak``, ``sk``
    and ``x0`` (read only); group values ``d``, ``k``, ``gsq_weighted``, ``sksq_weighted``, ``skl1``.

    Args:
        params: parameters or param groups.
        lr: multiplier of the estimated step size (default 1.0).
        momentum: iterate averaging in [0, 1) (default 0).
        log_every: log d and its statistics every this many steps through :mod:`logging` (0: never).
        weight_decay: L2 penalty added to the gradient (default 0).
        eps: added to sqrt(alpha) (default 1e-6).
        d0: initial d (default 1e-6).
        growth_rate: d grows at most by this factor per step (default inf).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``).

    Read from the first group only, as the authors do: growth_rate, log_every. Deviations from the
    reference (besides those in the module docstring): each group's ``lr`` and ``momentum`` are
    honoured (the reference uses the first group's for all groups; with one value everywhere the two
    agree), ``G`` adds each group's ``(d * lr)^2`` times its own sum; momentum must be in [0, 1); no
    sparse-gradient branch (the reference's puts eps inside the square root there).
    """

    _name = "DAdaptAdaGrad"
    _state_keys = ("alphak", "sk", "x0")
    read_only_state = ("x0",)

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        momentum: float = 0,
        log_every: int = 0,
        weight_decay: float = 0.0,
        eps: float = 1e-6,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        *,
        compiled: bool | None = None,
    ) -> None:
        _check_common(lr, d0, weight_decay, log_every)
        _check_momentum(momentum)
        _check_positive(eps, "epsilon (eps)")
        defaults = dict(
            lr=lr, momentum=momentum, eps=eps, weight_decay=weight_decay, gsq_weighted=0.0, log_every=log_every,
            d=d0, growth_rate=growth_rate, k=0, sksq_weighted=0.0, skl1=0.0,
        )
        super().__init__(params, defaults, d0, compiled)
        self._statistics = self._update_fn(dadapt_adagrad_statistics)
        self._apply = self._update_fn(dadapt_adagrad_apply)

    def _on_fsdp_param(self, group: dict[str, Any]) -> None:
        raise RuntimeError("DAdaptAdaGrad does not support fully sharded (FSDP) parameters; use DAdaptAdam")

    def _init_state(self, state: dict[str, Any], p: Tensor) -> None:
        state_tensor(state, "alphak", p, lambda t: torch.full_like(t, 1e-6, memory_format=torch.preserve_format))
        state_tensor(state, "sk", p)
        state_tensor(state, "x0", p, lambda t: t.detach().clone(memory_format=torch.preserve_format))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        first = self.param_groups[0]
        log = self._log_due(first["log_every"])
        chunks = self._chunks()
        if not chunks:
            return loss
        home = chunks[0].device
        d = self._value(first["d"], home)

        weighted_grad_sq = torch.zeros((), dtype=d.dtype, device=home)  # sum over groups of dlr^2 * sum g^2/(..)
        s_sq_change = torch.zeros((), dtype=d.dtype, device=home)
        s_l1_change = torch.zeros((), dtype=d.dtype, device=home)
        for chunk in chunks:
            group = chunk.group
            dlr = d * float(group["lr"])
            p, g, alpha, s, _ = chunk.lists
            chunk_g_sq, chunk_s_sq, chunk_s_l1 = self._statistics(
                p, g, alpha, s, dlr=chunk.scalar(dlr), eps=group["eps"], weight_decay=group["weight_decay"],
                device_type=chunk.device.type,
            )
            weighted_grad_sq = weighted_grad_sq + dlr * dlr * chunk_g_sq.to(home, d.dtype)
            s_sq_change = s_sq_change + chunk_s_sq.to(home, d.dtype)
            s_l1_change = s_l1_change + chunk_s_l1.to(home, d.dtype)

        old_gsq = self._value(first["gsq_weighted"], home)
        old_sksq = self._value(first["sksq_weighted"], home)
        old_skl1 = self._value(first["skl1"], home)
        sksq_weighted = old_sksq + s_sq_change
        skl1 = old_skl1 + s_l1_change
        gsq_weighted = old_gsq + weighted_grad_sq
        # sum |s| == 0 only while every gradient so far was zero: the reference returns early.
        proceed = skl1 != 0
        d_hat = (sksq_weighted - gsq_weighted) / skl1
        new_d = torch.where(proceed, torch.maximum(d, torch.minimum(d_hat, d * first["growth_rate"])), d)

        step_scale = proceed.to(d.dtype)
        for chunk in chunks:
            group = chunk.group
            p, _, alpha, s, x0 = chunk.lists
            weight = (1 - group["momentum"]) * step_scale
            self._apply(
                p, alpha, s, x0, keep=chunk.scalar(1 - weight), weight=chunk.scalar(weight), eps=group["eps"],
                average=group["momentum"] != 0, device_type=chunk.device.type,
            )

        if log:
            logger.info(
                "DAdaptAdaGrad: d_hat %.6g d %.6g sksq_weighted %.1e skl1 %.1e gsq_weighted %.1e lr %s",
                float(torch.where(proceed, d_hat, d)), float(new_d), float(sksq_weighted), float(skl1),
                float(gsq_weighted), first["lr"],
            )
        gsq_weighted = torch.where(proceed, gsq_weighted, old_gsq)
        sksq_weighted = torch.where(proceed, sksq_weighted, old_sksq)
        skl1 = torch.where(proceed, skl1, old_skl1)
        for group in self.param_groups:
            group["gsq_weighted"] = gsq_weighted
            group["sksq_weighted"] = sksq_weighted
            group["skl1"] = skl1
            group["d"] = new_d
            group["k"] = self._value(group["k"], home, torch.int64) + proceed.long()
        return loss


# --- DAdaptSGD ----------------------------------------------------------------------------------------


class DAdaptSGD(_DAdaptBase):
    """SGD-style dual averaging with the D-Adaptation step size, with the authors' argument names and
    defaults (``dadaptation.DAdaptSGD`` 3.2).

    At the first step ``g0 = ||g||`` over all parameters (the raw gradients, without weight decay, as
    the authors compute it). Each step, with ``dlr = d * lr / g0``::

        g   <- g + wd * p                       (coupled decay)
        num <- num + dlr * <g, s>               (s before this step; accumulated, not averaged)
        s   <- s + dlr * g
        d   <- max(d, min(2 * num / ||s||_2, d * growth_rate))
        z    = x0 - s
        p   <- momentum * p + (1 - momentum) * z

    Pick it where plain SGD suits the model and you want its step size found for you; the authors'
    momentum is 0 (0.9 is a common choice). State per parameter: ``s`` and ``x0`` (read only); group
    values ``d``, ``k``, ``numerator_weighted``, ``g0_norm``.

    Args:
        params: parameters or param groups; all groups share one lr (0 freezes a group).
        lr: multiplier of the estimated step size (default 1.0).
        momentum: iterate averaging in [0, 1) (default 0).
        weight_decay: L2 penalty added to the gradient (default 0).
        log_every: log d and its statistics every this many steps through :mod:`logging` (0: never).
        d0: initial d (default 1e-6).
        growth_rate: d grows at most by this factor per step (default inf).
        fsdp_in_use: sum the statistics over the default process group with
            ``torch.distributed.all_reduce`` (sharded parameters); set automatically when a parameter
            has ``_fsdp_flattened``. ``||g||^2`` is summed every step then, one more small all-reduce.
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``).

    Read from the first group only, as the authors do: growth_rate, log_every, fsdp_in_use.
    Deviations from the reference (besides those in the module docstring): each group's
    ``weight_decay`` and ``momentum`` are honoured (the reference applies the first group's to all
    groups; with one value everywhere the two agree); momentum must be in [0, 1); the reference's
    state ``z`` is not kept (it is ``x0 - s``, recomputed in the update: one copy of the parameters
    less), so a state_dict from this class restarts the reference's state if loaded there; a first
    step whose gradients are all zero (``g0 = 0``, a ZeroDivisionError in the reference) changes
    nothing, and ``g0`` is measured again at the next step.
    """

    _name = "DAdaptSGD"
    _state_keys = ("s", "x0")
    read_only_state = ("x0",)

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        momentum: float = 0.0,
        weight_decay: float = 0,
        log_every: int = 0,
        d0: float = 1e-6,
        growth_rate: float = float("inf"),
        fsdp_in_use: bool = False,
        *,
        compiled: bool | None = None,
    ) -> None:
        _check_common(lr, d0, weight_decay, log_every)
        _check_momentum(momentum)
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, k=0, log_every=log_every, numerator_weighted=0.0,
            d=d0, growth_rate=growth_rate, fsdp_in_use=fsdp_in_use,
        )
        super().__init__(params, defaults, d0, compiled)
        self._check_single_lr()
        self._statistics = self._update_fn(dadapt_sgd_statistics)
        self._apply = self._update_fn(dadapt_sgd_apply)

    def _init_state(self, state: dict[str, Any], p: Tensor) -> None:
        state_tensor(state, "s", p)
        state_tensor(state, "x0", p, lambda t: t.detach().clone(memory_format=torch.preserve_format))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        self._check_single_lr()
        first = self.param_groups[0]
        log = self._log_due(first["log_every"])
        chunks = self._chunks()
        if not chunks:
            return loss
        lr = self._max_lr()
        home = chunks[0].device
        d = self._value(first["d"], home)
        k = self._value(first["k"], home, torch.int64)
        fsdp = first["fsdp_in_use"]

        # g0 is fixed at the first step that moves (k == 0). k lives on the device, so ||g||^2 is
        # taken every step (one read of the gradients) and selected with torch.where: no host sync.
        grad_sq = torch.zeros((), dtype=d.dtype, device=home)
        for chunk in chunks:
            grad_sq = grad_sq + foreach_square_sum(chunk.lists[1]).to(home, d.dtype)
        if fsdp:
            (grad_sq,) = self._all_reduce(grad_sq)
        old_g0 = self._value(first.get("g0_norm", 0.0), home)
        g0 = torch.where(k == 0, torch.sqrt(grad_sq), old_g0)
        dlr = torch.where(g0 > 0, d * lr / g0, torch.zeros_like(d))

        numerator = torch.zeros((), dtype=d.dtype, device=home)
        s_sq = torch.zeros((), dtype=d.dtype, device=home)
        for chunk in chunks:
            group = chunk.group
            p, g, s, _ = chunk.lists
            chunk_num, chunk_s_sq = self._statistics(
                p, g, s, dlr=chunk.scalar(dlr), weight_decay=group["weight_decay"], device_type=chunk.device.type
            )
            numerator = numerator + dlr * chunk_num.to(home, d.dtype)
            s_sq = s_sq + chunk_s_sq.to(home, d.dtype)

        old_numerator = self._value(first["numerator_weighted"], home)
        numerator_weighted = old_numerator + numerator
        total_numerator, total_s_sq = numerator_weighted, s_sq
        if fsdp:
            total_numerator, total_s_sq = self._all_reduce(numerator_weighted, s_sq)
        # ||s|| == 0 only while every gradient so far was zero (or g0 was): nothing to do yet.
        proceed = total_s_sq != 0
        d_hat = 2 * total_numerator / torch.sqrt(total_s_sq)
        new_d = torch.where(proceed, torch.maximum(d, torch.minimum(d_hat, d * first["growth_rate"])), d)

        step_scale = proceed.to(d.dtype)
        for chunk in chunks:
            group = chunk.group
            p, _, s, x0 = chunk.lists
            weight = (1 - group["momentum"]) * step_scale
            self._apply(p, s, x0, keep=chunk.scalar(1 - weight), weight=chunk.scalar(weight),
                        average=group["momentum"] != 0, device_type=chunk.device.type)

        if log:
            logger.info(
                "DAdaptSGD: k %d dlr %.6g d_hat %.6g d %.6g sk_norm %.6g numerator_weighted %.6g g0_norm %.6g",
                int(k), float(dlr), float(torch.where(proceed, d_hat, d)), float(new_d), float(total_s_sq.sqrt()),
                float(total_numerator), float(g0),
            )
        numerator_weighted = torch.where(proceed, numerator_weighted, old_numerator)
        g0 = torch.where(proceed, g0, old_g0)
        for group in self.param_groups:
            group["numerator_weighted"] = numerator_weighted
            group["d"] = new_d
            group["g0_norm"] = g0
            group["k"] = self._value(group["k"], home, torch.int64) + proceed.long()
        return loss
