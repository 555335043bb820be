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
are complete, the parameter update. (DAdaptAdam compiled on a CPU moves the stores of the moments and
``s`` to the second pass: see :func:`dadapt_adam_statistics`.) The early return happens only while every gradient so far has
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
    add_scaled_,
    adam_step_correction,
    check_betas,
    check_momentum,
    check_nonnegative_int,
    check_positive,
    check_weight_decay,
    foreach_abs_sums,
    foreach_dot,
    foreach_square_sum,
    foreach_sums_of_nonnegative,
    group_by_device_and_dtype,
    group_value,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
    step_counter,
)

__all__ = [
    "DAdaptAdaGrad",
    "DAdaptAdam",
    "DAdaptSGD",
    "dadapt_adagrad_apply",
    "dadapt_adagrad_statistics",
    "dadapt_adam_apply",
    "dadapt_adam_moments_",
    "dadapt_adam_statistics",
    "dadapt_sgd_apply",
    "dadapt_sgd_statistics",
]

logger = logging.getLogger(__name__)


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
    store: bool,
) -> tuple[Tensor, Tensor]:
    """DAdaptAdam's first pass: this chunk's ``sum <g, s / (sqrt(v) + eps)>`` (``s`` and ``v`` from
    before this step) and ``sum |s'|`` for the ``s' = sqrt(beta2) * s + s_rate * g`` this step leaves;
    the caller weights them by ``layer_scale * dlr``. With ``store`` it also updates the moments and
    ``s`` (:func:`dadapt_adam_moments_`); without, it only reads, and the second pass stores them.

    Compiled on a CPU, a reduction and the stores of the same tensors run as two loops (inductor does
    not fuse them), so there the stores go with the parameter update (G, one step: 113 to 103 ms).
    Eager, the ops are what costs, and the stores stay here (262 against 289 ms the other way).

    ``exp_avg_rate = layer_scale * dlr * (1 - beta1)``, ``s_rate = dlr * (1 - sqrt(beta2))``;
    ``weight_decay`` is the coupled (L2) decay, 0 when decoupled.
    """
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    numerator = foreach_dot(grads, torch._foreach_div(s, denom))
    if store:
        dadapt_adam_moments_(grads, exp_avgs, exp_avg_sqs, s, exp_avg_rate=exp_avg_rate, s_rate=s_rate,
                             beta1=beta1, beta2=beta2)
        return numerator, foreach_abs_sums(s).sum()
    new_s = torch._foreach_mul(s, beta2**0.5)
    add_scaled_(new_s, grads, s_rate)
    return numerator, foreach_abs_sums(new_s).sum()


def dadapt_adam_moments_(grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], s: list[Tensor], *,
                         exp_avg_rate: Tensor, s_rate: Tensor, beta1: float, beta2: float) -> None:
    """``m <- beta1 m + exp_avg_rate g``, ``v <- beta2 v + (1 - beta2) g^2``, ``s <- sqrt(beta2) s + s_rate g``
    (``m`` keeps the ``dlr`` of the step that added each gradient)."""
    torch._foreach_mul_(exp_avgs, beta1)
    add_scaled_(exp_avgs, grads, exp_avg_rate)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    torch._foreach_mul_(s, beta2**0.5)
    add_scaled_(s, grads, s_rate)


def dadapt_adam_apply(
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
    decay_factor: Tensor,
    decoupled: bool,
    stored: bool,
) -> None:
    """DAdaptAdam's second pass: the moments and ``s`` unless the first pass ``stored`` them, then
    ``p <- p * decay_factor`` (decoupled decay) and ``p <- p - m / (sqrt(v) + eps)``.

    On a step with nothing to do yet (every gradient so far zero) ``decay_factor`` is 1, ``m`` is
    exactly zero and nothing moves. ``weight_decay`` is the coupled decay, as in the first pass.
    """
    if not stored:
        if weight_decay != 0.0:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        dadapt_adam_moments_(grads, exp_avgs, exp_avg_sqs, s, exp_avg_rate=exp_avg_rate, s_rate=s_rate,
                             beta1=beta1, beta2=beta2)
    if decoupled:
        torch._foreach_mul_(params, decay_factor)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denom, value=-1.0)


def dadapt_adagrad_statistics(
    params: list[Tensor],
    grads: list[Tensor],
    alphas: list[Tensor],
    s: list[Tensor],
    *,
    dlr: Tensor,
    eps: float,
    weight_decay: float,
    store: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """DAdaptAdaGrad's first pass, for ``alpha' = alpha + g**2`` and ``s' = s + dlr * g``: returns this
    chunk's ``sum g**2 / (sqrt(alpha') + eps)`` and the changes of ``sum s**2 / (sqrt(alpha) + eps)``
    and of ``sum |s|``, each change taken per tensor (new minus old) before summing, as the reference
    does: the estimate is a difference of two large running sums. With ``store`` it writes ``alpha'``
    and ``s'``; without, it only reads and :func:`dadapt_adagrad_apply` writes them (the compiled path
    on a CPU, as :func:`dadapt_adam_statistics` explains)."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    denom = torch._foreach_sqrt(alphas)
    torch._foreach_add_(denom, eps)
    weighted_s_sq = torch._foreach_mul(s, s)
    torch._foreach_div_(weighted_s_sq, denom)
    old_s_sq = foreach_sums_of_nonnegative(weighted_s_sq)
    old_s_l1 = foreach_abs_sums(s)

    grad_sq = torch._foreach_mul(grads, grads)
    if store:
        torch._foreach_add_(alphas, grad_sq)
    else:
        alphas = torch._foreach_add(alphas, grad_sq)
    denom = torch._foreach_sqrt(alphas)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(grad_sq, denom)
    weighted_grad_sq = foreach_sums_of_nonnegative(grad_sq).sum()

    if not store:
        s = [t.clone() for t in s]
    add_scaled_(s, grads, dlr)
    weighted_s_sq = torch._foreach_mul(s, s)
    torch._foreach_div_(weighted_s_sq, denom)
    s_sq_change = (foreach_sums_of_nonnegative(weighted_s_sq) - old_s_sq).sum()
    s_l1_change = (foreach_abs_sums(s) - old_s_l1).sum()
    return weighted_grad_sq, s_sq_change, s_l1_change


def dadapt_adagrad_apply(
    params: list[Tensor],
    grads: list[Tensor],
    alphas: list[Tensor],
    s: list[Tensor],
    x0: list[Tensor],
    *,
    dlr: Tensor,
    weight_decay: float,
    keep: Tensor,
    weight: Tensor,
    eps: float,
    average: bool,
    stored: bool,
) -> None:
    """DAdaptAdaGrad's second pass (dual averaging): ``alpha += g**2`` and ``s += dlr * g`` unless the
    first pass ``stored`` them, then ``z = x0 - s / (sqrt(alpha) + eps)`` and ``p <- z``, or with
    momentum (``average``) ``p <- keep * p + weight * z`` with ``weight = 1 - momentum`` and ``keep = 1 -
    weight``, or ``weight = 0, keep = 1`` on a step with nothing to do yet (every gradient so far zero,
    so ``s = 0`` and ``z = x0 = p``)."""
    if not stored:
        if weight_decay != 0.0:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        torch._foreach_add_(alphas, torch._foreach_mul(grads, grads))
        add_scaled_(s, grads, dlr)
    denom = torch._foreach_sqrt(alphas)
    torch._foreach_add_(denom, eps)
    z = torch._foreach_div(s, denom)
    z = torch._foreach_sub(x0, z)
    _average_into(params, z, keep, weight, average)


def _average_into(params: list[Tensor], z: list[Tensor], keep: Tensor, weight: Tensor, average: bool) -> None:
    if average:
        torch._foreach_mul_(params, keep)
        add_scaled_(params, z, weight)
    else:
        torch._foreach_copy_(params, z)


def dadapt_sgd_statistics(
    params: list[Tensor],
    grads: list[Tensor],
    s: list[Tensor],
    *,
    weight_decay: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """DAdaptSGD's first pass, which only reads: this chunk's ``<g, s>``, ``sum s**2``, ``sum g**2``
    (``g`` with the coupled decay, ``s`` before this step) and ``sum g_raw**2`` (the gradient alone,
    for ``g0``). The caller expands ``sum (s + dlr g)**2`` from them, so the step size ``dlr``, which
    needs ``g0``, is known before ``s`` moves: the gradients are read in two passes, not three."""
    raw_sq = foreach_square_sum(grads)
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
        grad_sq = foreach_square_sum(grads)
    else:
        grad_sq = raw_sq
    return foreach_dot(grads, s), foreach_square_sum(s), grad_sq, raw_sq


def dadapt_sgd_apply(
    params: list[Tensor],
    grads: list[Tensor],
    s: list[Tensor],
    x0: list[Tensor],
    *,
    dlr: Tensor,
    weight_decay: float,
    keep: Tensor,
    weight: Tensor,
    average: bool,
) -> None:
    """DAdaptSGD's second pass (dual averaging): ``s <- s + dlr * (g + wd * p)`` (``p`` before this
    step), ``z = x0 - s``, then ``p <- z`` or, with momentum, ``p <- keep * p + weight * z`` as in
    :func:`dadapt_adagrad_apply`."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    add_scaled_(s, grads, dlr)
    z = torch._foreach_sub(x0, s)
    _average_into(params, z, keep, weight, average)


# --- the step the three classes share --------------------------------------------------------------------


def _check_common(lr: float, d0: float, weight_decay: float, log_every: int) -> None:
    check_positive(lr, "learning rate (lr)")
    check_positive(d0, "d0")
    check_weight_decay(weight_decay)
    check_nonnegative_int(log_every, "log_every")


class _Chunk:
    """One (param group, device, dtype) slice of the parameters, with its state lists."""

    __slots__ = ("device", "dtype", "group", "lists", "stores_first")

    def __init__(self, device: torch.device, dtype: torch.dtype, group: dict[str, Any], lists: list[list[Tensor]]):
        self.device, self.dtype, self.group, self.lists = device, dtype, group, lists
        self.stores_first = True  # whether the first pass stores the state (DAdaptAdam decides per step)

    def scalar(self, value: float | Tensor) -> Tensor:
        return scalar(value, self.device, self.dtype)


class _DAdaptBase(Optimizer):
    """The step the three D-Adaptation variants share, once::

        gather the chunks -> step size -> each chunk's statistics, summed -> running statistics
        -> (all-reduce) -> d <- max(d, min(d_hat, d * growth_rate)) -> each chunk's update
        -> group values (kept as they were on a step with nothing to do yet)

    A variant says what its statistics are (``_statistics``: the chunk's share of the global sums,
    already weighted), how they make d_hat (``_estimate`` and ``_d_hat``) and how a chunk moves
    (``_apply``). Group values are 0-d tensors on the first chunk's device ("home").
    """

    _name = "DAdapt"
    _state_keys: tuple[str, ...] = ()
    # group values besides d and k, restored on a step with nothing to do yet
    _running_keys: tuple[str, ...] = ()
    read_only_state: tuple[str, ...] = ()
    needs_reduction_pass = True
    single_lr = True
    single_lr_hint = ""

    def __init__(self, params: Any, defaults: dict[str, Any], d0: float, compiled: bool | None,
                 statistics: Callable[..., Any], apply: Callable[..., Any]) -> None:
        super().__init__(params, defaults)
        self.d0 = d0
        self._calls = 0
        self._check_lrs()
        self._statistics_fn = UpdateFunction(statistics, compiled)
        self._apply_fn = UpdateFunction(apply, compiled)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        self._check_lrs()
        first = self.param_groups[0]
        log = self._log_due(first["log_every"])
        chunks = self._chunks()
        if not chunks:
            return loss
        home = chunks[0].device
        d = group_value(first["d"], home)
        k = group_value(first["k"], home, torch.int64)
        old = {key: group_value(first.get(key, 0.0), home) for key in self._running_keys}
        running = dict(old)

        # statistics: this step's size (d * lr times `scale`), then every chunk's share of the sums
        scale = self._step_scale(chunks, d, k, running)
        totals = [sum(values) for values in zip(*(self._statistics(chunk, scale) for chunk in chunks))]
        numerator, denominator, scale = self._estimate(totals, running, scale, k)
        if first.get("fsdp_in_use", False):
            numerator, denominator = self._all_reduce(numerator, denominator)

        # d's growth rule; the denominator is 0 only while every gradient so far was zero, where the
        # references return early: then d, the running values and k stay, and the update is a no-op
        proceed = denominator != 0
        d_hat = self._d_hat(numerator, denominator)
        new_d = torch.where(proceed, torch.maximum(d, torch.minimum(d_hat, d * first["growth_rate"])), d)

        step_scale = proceed.to(d.dtype)
        for chunk in chunks:
            self._apply(chunk, scale, step_scale)

        if log:
            logger.info(
                "%s: lr %s d_hat %.6g d %.6g numerator %.6g denominator %.6g", self._name, first["lr"],
                float(torch.where(proceed, d_hat, d)), float(new_d), float(numerator), float(denominator),
            )
        values = {key: torch.where(proceed, running[key], old[key]) for key in self._running_keys}
        for group in self.param_groups:
            group.update(values)
            group["d"] = new_d
            group["k"] = group_value(group["k"], home, torch.int64) + proceed.long()
        return loss

    # -- what a variant says ------------------------------------------------------------------------------

    def _step_scale(self, chunks: list[_Chunk], d: Tensor, k: Tensor, running: dict[str, Tensor]) -> Tensor:
        """This step's size per unit of lr: a chunk's ``dlr`` is this times its group's lr."""
        return d

    def _statistics(self, chunk: _Chunk, scale: Tensor) -> tuple[Tensor, ...]:
        """The chunk's first pass; returns its weighted shares of the global sums, on home."""
        raise NotImplementedError

    def _estimate(self, totals: list[Tensor], running: dict[str, Tensor], scale: Tensor,
                  k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The summed statistics into the running values; returns d_hat's numerator and denominator, and
        the step scale the update uses (``scale``, unless the statistics decide it)."""
        raise NotImplementedError

    def _d_hat(self, numerator: Tensor, denominator: Tensor) -> Tensor:
        return numerator / denominator

    def _apply(self, chunk: _Chunk, scale: Tensor, step_scale: Tensor) -> None:
        """The chunk's second pass; ``step_scale`` is 1, or 0 on a step with nothing to do yet."""
        raise NotImplementedError

    def _init_state(self, state: dict[str, Any], p: Tensor) -> None:
        raise NotImplementedError

    # -- learning rates -----------------------------------------------------------------------------------

    def _check_lrs(self) -> None:
        if not self.single_lr:
            return
        lrs = [float(group["lr"]) for group in self.param_groups]
        lr = max(lrs)
        if any(value not in (lr, 0.0) for value in lrs):
            raise ValueError(
                f"{self._name}: every param group must use the same lr (or lr=0 to freeze a group); got lr "
                f"values {lrs}{self.single_lr_hint}"
            )

    # -- gathering ----------------------------------------------------------------------------------------

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
    _running_keys = ("numerator_weighted",)
    single_lr_hint = "; scale a group's step with its 'layer_scale' key instead"

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
        check_positive(eps, "epsilon (eps)")
        defaults = dict(
            lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, d=d0, k=0, layer_scale=1.0,
            numerator_weighted=0.0, log_every=log_every, growth_rate=growth_rate,
            use_bias_correction=use_bias_correction, decouple=decouple, fsdp_in_use=fsdp_in_use,
        )
        super().__init__(params, defaults, d0, compiled, dadapt_adam_statistics, dadapt_adam_apply)

    def _init_state(self, state: dict[str, Any], p: Tensor) -> None:
        for key in ("exp_avg", "exp_avg_sq", "s"):
            state_tensor(state, key, p)
        step = state.get("step")
        if not isinstance(step, Tensor):  # absent, or a Python int from the reference's state_dict
            state["step"] = step_counter(p, step or 0)

    def _step_scale(self, chunks: list[_Chunk], d: Tensor, k: Tensor, running: dict[str, Tensor]) -> Tensor:
        first = self.param_groups[0]
        if not first["use_bias_correction"]:
            return d
        beta1, beta2 = first["betas"]
        return d * adam_step_correction(beta1, beta2, (k + 1).to(d.dtype))

    def _rates(self, chunk: _Chunk, scale: Tensor) -> dict[str, Any]:
        """The per-step values both passes take: ``dlr`` (a chunk's step size) and the rates of ``m`` and ``s``."""
        first, group = self.param_groups[0], chunk.group
        beta1, beta2 = first["betas"]
        dlr = scale * group["lr"]
        return dict(dlr=dlr, exp_avg_rate=chunk.scalar(group["layer_scale"] * dlr * (1 - beta1)),
                    s_rate=chunk.scalar(dlr * (1 - beta2**0.5)), beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay=0.0 if first["decouple"] else group["weight_decay"])

    def _statistics(self, chunk: _Chunk, scale: Tensor) -> tuple[Tensor, Tensor]:
        rates, r = self._rates(chunk, scale), chunk.group["layer_scale"]
        dlr = rates.pop("dlr")
        p, g, m, v, s, _ = chunk.lists
        # the first pass stores the moments on every path but the compiled one on a CPU (see
        # dadapt_adam_statistics); decided once, before it runs, for both passes of this step
        chunk.stores_first = chunk.device.type != "cpu" or not self._statistics_fn.compiles(chunk.lists[:1], "cpu")
        numerator, s_l1 = self._statistics_fn(p, g, m, v, s, **rates, store=chunk.stores_first,
                                              device_type=chunk.device.type)
        return r * dlr * numerator.to(dlr), r * s_l1.to(dlr)

    def _estimate(self, totals: list[Tensor], running: dict[str, Tensor], scale: Tensor,
                  k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        numerator, s_l1 = totals
        sqrt_beta2 = self.param_groups[0]["betas"][1] ** 0.5
        running["numerator_weighted"] = sqrt_beta2 * running["numerator_weighted"] + (1 - sqrt_beta2) * numerator
        return running["numerator_weighted"], s_l1, scale

    def _d_hat(self, numerator: Tensor, denominator: Tensor) -> Tensor:
        sqrt_beta2 = self.param_groups[0]["betas"][1] ** 0.5
        return numerator / ((1 - sqrt_beta2) * denominator)

    def _apply(self, chunk: _Chunk, scale: Tensor, step_scale: Tensor) -> None:
        group = chunk.group
        p, g, m, v, s, steps = chunk.lists
        rates = self._rates(chunk, scale)
        dlr = rates.pop("dlr")
        self._apply_fn(
            p, g, m, v, s, **rates,
            decay_factor=chunk.scalar(1 - group["weight_decay"] * dlr * step_scale),
            decoupled=bool(self.param_groups[0]["decouple"] and group["weight_decay"] != 0),
            stored=chunk.stores_first, device_type=chunk.device.type,
        )
        # the step counters stay on a step with nothing to do yet; the list form: 0-d tensors, traceable
        torch._foreach_add_(steps, [step_scale.to(steps[0].dtype)] * len(steps))


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
    _running_keys = ("gsq_weighted", "sksq_weighted", "skl1")
    single_lr = False

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
        check_momentum(momentum)
        check_positive(eps, "epsilon (eps)")
        defaults = dict(
            lr=lr, momentum=momentum, eps=eps, weight_decay=weight_decay, gsq_weighted=0.0, log_every=log_every,
            d=d0, growth_rate=growth_rate, k=0, sksq_weighted=0.0, skl1=0.0,
        )
        super().__init__(params, defaults, d0, compiled, dadapt_adagrad_statistics, dadapt_adagrad_apply)

    def _on_fsdp_param(self, group: dict[str, Any]) -> None:
        raise RuntimeError("DAdaptAdaGrad does not support fully sharded (FSDP) parameters; use DAdaptAdam")

    def _init_state(self, state: dict[str, Any], p: Tensor) -> None:
        state_tensor(state, "alphak", p, lambda t: torch.full_like(t, 1e-6, memory_format=torch.preserve_format))
        state_tensor(state, "sk", p)
        state_tensor(state, "x0", p, lambda t: t.detach().clone(memory_format=torch.preserve_format))

    def _statistics(self, chunk: _Chunk, scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        group = chunk.group
        dlr = scale * float(group["lr"])
        p, g, alpha, s, _ = chunk.lists
        chunk.stores_first = chunk.device.type != "cpu" or not self._statistics_fn.compiles(chunk.lists[:1], "cpu")
        grad_sq, s_sq_change, s_l1_change = self._statistics_fn(
            p, g, alpha, s, dlr=chunk.scalar(dlr), eps=group["eps"], weight_decay=group["weight_decay"],
            store=chunk.stores_first, device_type=chunk.device.type,
        )
        return dlr * dlr * grad_sq.to(dlr), s_sq_change.to(dlr), s_l1_change.to(dlr)

    def _estimate(self, totals: list[Tensor], running: dict[str, Tensor], scale: Tensor,
                  k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        for key, change in zip(self._running_keys, totals):
            running[key] = running[key] + change
        return running["sksq_weighted"] - running["gsq_weighted"], running["skl1"], scale

    def _apply(self, chunk: _Chunk, scale: Tensor, step_scale: Tensor) -> None:
        group = chunk.group
        p, g, alpha, s, x0 = chunk.lists
        weight = (1 - group["momentum"]) * step_scale
        self._apply_fn(
            p, g, alpha, s, x0, dlr=chunk.scalar(scale * float(group["lr"])), weight_decay=group["weight_decay"],
            keep=chunk.scalar(1 - weight), weight=chunk.scalar(weight), eps=group["eps"],
            average=group["momentum"] != 0, stored=chunk.stores_first, device_type=chunk.device.type,
        )


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
    less), so a state_dict from this class restarts the reference's state if loaded there;
    ``||s||^2`` after the step is expanded from sums over ``s`` before it (``||s||^2 + 2 dlr <g, s> +
    dlr^2 ||g||^2``: ``s`` moves in the second pass, so the gradients are read twice, not three times;
    equal to the reference's sum up to rounding); a first
    step whose gradients are all zero (``g0 = 0``, a ZeroDivisionError in the reference) changes
    nothing, and ``g0`` is measured again at the next step.
    """

    _name = "DAdaptSGD"
    _state_keys = ("s", "x0")
    read_only_state = ("x0",)
    _running_keys = ("numerator_weighted", "g0_norm")

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
        check_momentum(momentum)
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, k=0, log_every=log_every, numerator_weighted=0.0,
            d=d0, growth_rate=growth_rate, fsdp_in_use=fsdp_in_use,
        )
        super().__init__(params, defaults, d0, compiled, dadapt_sgd_statistics, dadapt_sgd_apply)

    def _init_state(self, state: dict[str, Any], p: Tensor) -> None:
        state_tensor(state, "s", p)
        state_tensor(state, "x0", p, lambda t: t.detach().clone(memory_format=torch.preserve_format))

    def _statistics(self, chunk: _Chunk, scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # The step size is not known yet (g0 comes from these sums): the shares carry the group's lr
        # (one lr for every group that moves), and _estimate multiplies in d / g0.
        lr = chunk.group["lr"]
        p, g, s, _ = chunk.lists
        dot, s_sq, grad_sq, raw_sq = self._statistics_fn(
            p, g, s, weight_decay=chunk.group["weight_decay"], device_type=chunk.device.type
        )
        return lr * dot.to(scale), s_sq.to(scale), lr * lr * grad_sq.to(scale), raw_sq.to(scale)

    def _estimate(self, totals: list[Tensor], running: dict[str, Tensor], scale: Tensor,
                  k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        lr_dot, s_sq, lr_sq_grad_sq, raw_sq = totals
        # g0 is fixed at the first step that moves (k == 0). k lives on the device, so ||g||^2 is
        # summed every step (in the pass that reads the gradients anyway) and selected by torch.where.
        if self.param_groups[0]["fsdp_in_use"]:
            (raw_sq,) = self._all_reduce(raw_sq)
        g0 = torch.where(k == 0, torch.sqrt(raw_sq), running["g0_norm"])
        running["g0_norm"] = g0
        scale = torch.where(g0 > 0, scale / g0, torch.zeros_like(scale))  # scale was d: now d / g0
        numerator = scale * lr_dot  # dlr * <g, s>
        new_s_sq = s_sq + 2 * numerator + scale * scale * lr_sq_grad_sq  # ||s + dlr g||^2, expanded
        running["numerator_weighted"] = running["numerator_weighted"] + numerator
        return running["numerator_weighted"], new_s_sq, scale

    def _d_hat(self, numerator: Tensor, denominator: Tensor) -> Tensor:
        return 2 * numerator / torch.sqrt(denominator)

    def _apply(self, chunk: _Chunk, scale: Tensor, step_scale: Tensor) -> None:
        group = chunk.group
        p, g, s, x0 = chunk.lists
        weight = (1 - group["momentum"]) * step_scale
        self._apply_fn(p, g, s, x0, dlr=chunk.scalar(scale * group["lr"]), weight_decay=group["weight_decay"],
                       keep=chunk.scalar(1 - weight), weight=chunk.scalar(weight),
                       average=group["momentum"] != 0, device_type=chunk.device.type)
