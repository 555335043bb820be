"""Ranger21: an Adam core with positive-negative momentum and a stack of additions.

Paper: "Ranger21: a synergistic deep learning optimizer", L. Wright, N. Demeure, 2021, arXiv:2106.13731.
Reference: the authors' package ``ranger21`` 0.1.0 (``ranger21.Ranger21``, lessw2020/Ranger21); same
argument names and defaults here, so switching is a change of import.

One step, for every parameter p with gradient g (t is the parameter's own step count, lr_t the
group's scheduled learning rate, beta1/beta2 the group's betas)::

    g <- AGC(g)                     adaptive gradient clipping: where ||g||_u > c * max(||p||_u, agc_eps),
                                    scale g to that norm (||.||_u: the unit-wise norm, see below)
    g <- g - mean(g, dims >= 1)     gradient centralisation (tensors with dim > 1; dim > 3 with gc_conv_only)
    g <- g / (std(g) + 1e-8)        gradient normalisation (tensors with more than 2 elements)
    v <- beta2 * v + (1 - beta2) * g^2
    sigma = sqrt(sum over ALL parameters of v / (1 - beta2^t) / N)      one global scalar per step
    p <- p * (1 - weight_decay * lr_t / sigma)                          stable weight decay
    p <- p * (1 - lr_t * 2 * normloss_factor * (1 - 1 / (||p||_u + eps)))   norm loss
    m+, m- = (grad_ma, neg_grad_ma) on odd t, swapped on even t         positive-negative momentum
    m+ <- beta1^2 * m+ + (1 - beta1^2) * g
    d = softplus_50(sqrt(v) / sqrt(1 - beta2^t) + eps)                  (v_max with amsgrad=True)
    p <- p - lr_t / (1 - beta1^t) * (2 m+ - m-) / sqrt((1 + beta2)^2 + beta2^2) / d
    every lookahead_mergetime steps: p <- alpha * p + (1 - alpha) * slow;  slow <- p

The unit-wise norm ``||x||_u`` is the whole-tensor norm for 0-D/1-D tensors, the norm over dim 1 for
2-D and 3-D tensors (so a Conv1d kernel [out, in, k] gets one norm per (out, k) slice) and over all
dims but the first for 4-D and larger. The learning rate rises linearly over the first W steps
(W = ceil(2 / (1 - beta2)) from the constructor's betas, or int(warmup_pct_default * T) where that
exceeds 45% of the run T = num_epochs * num_batches_per_epoch) and falls linearly to
``warmdown_min_lr`` from step int(warmdown_start_pct * T) on. With ``use_madgrad=True`` the core is
MADGRAD's dual averaging instead (lambda_t = lr_t * sqrt(t), s <- s + lambda_t g, a cube-root
accumulator, softplus, x0 momentum averaging), and sigma is a cube root.

When to pick it: a packaged recipe with its own schedule, for a run whose length you know up front
(pass ``num_epochs`` and ``num_batches_per_epoch``, or ``num_iterations`` to ``create_optimizer``);
apply no other scheduler. Gradient centralisation zeroes the gradient of a tensor whose dims
beyond the first are all singletons (RVC's weight-norm magnitudes [C, 1, 1]), so those do not learn.

State per parameter: ``step`` (a Python int), ``grad_ma`` and ``neg_grad_ma`` (the two momenta),
``variance_ma`` (the second moment), ``lookahead_params`` (Lookahead's slow weights, rewritten every
``lookahead_mergetime`` steps), ``max_variance_ma`` with ``amsgrad=True``; with ``use_madgrad=True``
``grad_sum_sq``, ``s`` and ``x0`` (if momentum != 0) replace the momenta. Each param group keeps
``step``, a Python int that drives the warm-up, the warm-down and Lookahead's merges, so all of it
is in ``state_dict`` and a resumed run continues exactly. ``lookahead_load_at_validation`` adds
``backup_params`` between an epoch's end and :meth:`Ranger21.clear_and_load_backup`.

Host synchronisation: none. sigma stays on the device as a 0-d tensor (the authors' code converts it
to a Python float every step); the schedule is Python arithmetic on the group's step counter.

Deviations from the authors' code, each a bug there or a departure this project makes on purpose:

* Stable weight decay and norm loss are applied to every parameter. The authors apply them once
  per group to a stale ``p`` (the last parameter bound by the previous loop), so most parameters
  get neither.
* Gradient centralisation and normalisation are applied once. The authors apply both again in the
  update loop; normalising an already normalised gradient is not exactly the identity.
* Each group's own lr goes through the warm-up and the warm-down, down to the group's
  ``warmdown_min_lr`` (a group hyper-parameter here, default the constructor's). The authors' warm-down
  overwrites every group's lr with the constructor's lr, and asserts lr > 0, so a frozen (lr=0)
  group fails there. A warm-down never raises an lr: a group whose lr is at or below
  ``warmdown_min_lr`` keeps it (the authors' jumps such an lr up to ``warmdown_min_lr``).
* No AMSGrad by default, as the authors' code does in effect: it takes the maximum into
  ``variance_ma`` itself and never updates ``max_variance_ma``, so its "AMSGrad" is a no-op and that
  buffer is a wasted copy of zeros. ``amsgrad=True`` (keyword-only, ours) is real AMSGrad: the
  denominator uses the running maximum of v, kept in ``max_variance_ma``; sigma still uses v.
* Positive-negative momentum follows the authors' effective code: weight 1 (2 m+ - m-) and the
  noise norm sqrt((1 + beta2)^2 + beta2^2); the paper uses beta0 = ``pnm_momentum_factor`` in both,
  which the authors' code never reads. It has no effect here either; a value other than 1.0 warns.
* Before any parameter has seen a non-zero gradient sigma is 0; stable weight decay is then
  skipped (the authors' code raises ZeroDivisionError). There is no NaN check on sigma (the
  authors' raises RuntimeError, at the cost of a host sync).
* The step counters that drive the schedule and Lookahead live in the param groups (in
  ``state_dict``); the authors' keep them as attributes, so a resumed run restarts Lookahead and
  re-evaluates the warm-up from a fresh counter. (They schedule every group from one stale
  parameter's step count and merge on an optimizer-wide counter; all agree while every parameter
  gets a gradient every step.) Bias corrections use each parameter's own step, as theirs do.
* Norm loss reads each group's eps (the authors' read the constructor's).
* ``use_adabelief=True`` (its update is a non-in-place no-op in the authors' code), ``use_cheb=True``
  (AttributeError there), ``momentum_type`` other than ``"pnm"`` (UnboundLocalError there),
  ``decay_type`` other than ``"stable"`` and ``warmup_type`` other than ``"linear"``/None raise a
  ValueError at construction. A missing run length raises a ValueError saying so.
* The authors print settings and progress; this class logs them through :mod:`logging` (logger
  ``rvc_optim.optim.ranger21``, at INFO, when ``logging_active``) and never prints. It keeps no
  ``tracking_variance_sum`` list (each entry is a host sync) and has no ``show_schedule``,
  ``get_variance`` or ``clear_cache``.
* MADGRAD's ``x0`` is the parameter before its first step (the authors clone it after the first
  step's stable decay and norm loss).
* softplus is torch's (``F.softplus`` with its default cut-off at beta * x > 20) written with
  multi-tensor ops; it agrees with ``F.softplus`` to float rounding, except just above the cut-off,
  where it is continuous and torch's jumps by 1e-10 relative (see :func:`foreach_softplus`).

Like the authors', the clipped, centralised and normalised gradient is written back into
``p.grad`` (no extra gradient-sized buffer lives across the two passes).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction, run_by_tensor_batches
from rvc_optim.optim._foreach import (
    bias_correction,
    check_betas,
    check_eps,
    check_lr,
    check_nonnegative,
    check_weight_decay,
    eager_on_cpu,
    params_with_grad,
    run_closure,
    scalar,
    scalar_dtype,
    state_tensor,
)

__all__ = [
    "Ranger21",
    "decay_and_norm_loss_",
    "foreach_softplus",
    "lookahead_merge",
    "ranger21_madgrad_update",
    "ranger21_prepare",
    "ranger21_update",
    "row_blocks",
    "stable_decay_factor",
    "unit_norm",
]

logger = logging.getLogger(__name__)

SOFTPLUS_THRESHOLD = 20.0  # F.softplus's default: above beta * x > 20 it returns x
GRAD_NORM_EPS = 1e-8  # the authors' hard-coded epsilon of gradient normalisation
AGC_GRAD_NORM_FLOOR = 1e-6  # the authors' hard-coded floor on the gradient's unit norm in AGC
# Row blocks of an eager CPU step (see row_blocks): tensors over 8 MB of float32 are cut into blocks of
# about 2 MB, so that a block of the parameter, gradient and second moment stays in an 8 MB L3 through
# the first pass. Measured on a 2-core EPYC, the first pass on RVC's discriminator: 237 ms unblocked,
# 202 with these; blocks of 2**17 or 2**18 elements were slower there, and cutting the generator's
# tensors (all under 2**21 elements) gained nothing.
ROW_BLOCK_NUMEL = 1 << 19
ROW_BLOCK_MIN_NUMEL = 1 << 21


# --- pieces ----------------------------------------------------------------------------------------


def unit_norm(x: Tensor) -> Tensor:
    """The unit-wise L2 norm Ranger21 uses for AGC and norm loss.

    0-D/1-D: the whole tensor (a 0-d result); 2-D and 3-D: over dim 1 only; 4-D and more: over every
    dim but the first (both keep dims, so the result broadcasts against ``x``).
    """
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x)
    if x.dim() == 3 and x.shape[2] > 1 and eager_on_cpu(x):
        # torch's CPU norm kernel reduces over a middle dim at a third of the speed of a dot product
        # (RVC's generator, its 3-D tensors with k > 1: 43 ms against 16 for these)
        return torch.linalg.vecdot(x, x, dim=1).sqrt_().unsqueeze(1)
    dims = (1,) if x.dim() in (2, 3) else tuple(range(1, x.dim()))
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True)


def foreach_softplus(xs: list[Tensor], beta: float) -> list[Tensor]:
    """``F.softplus(x, beta)`` for every x (with torch's cut-off: x itself where beta * x > 20).

    Written as ``max(x, log1p(exp(min(beta * x, 20))) / beta)``, 6 ops where a mask takes 9: below the
    cut-off the log form exceeds x (``log1p(e^y) > y`` for every y), and above it the clamped log form
    falls short of x, so the maximum picks torch's branch. The one exception is just above the cut-off
    (``20 < beta * x < 20 + log1p(e^-20)``), where torch's softplus jumps down by ``log1p(e^-20) / beta``
    and this one keeps the log form: at most 1.03e-10 relative.
    """
    scaled = torch._foreach_mul(xs, beta)
    torch._foreach_clamp_max_(scaled, SOFTPLUS_THRESHOLD)  # keeps exp finite where the cut-off applies
    torch._foreach_exp_(scaled)
    torch._foreach_log1p_(scaled)
    torch._foreach_div_(scaled, beta)
    torch._foreach_maximum_(scaled, xs)
    return scaled


def row_blocks(*tensors: Tensor) -> list[tuple[Tensor, ...]]:
    """Parallel tensors of over :data:`ROW_BLOCK_MIN_NUMEL` elements cut along dim 0 into slices of about
    :data:`ROW_BLOCK_NUMEL`, on an eager CPU step (elsewhere, and for smaller or 0-D/1-D tensors, one
    block of the whole tensors).

    Ranger21's units and centralisation groups never straddle rows, so AGC, centralisation and norm loss
    give the same results slice by slice, and a slice's several passes run while it is in the cache.
    """
    x = tensors[0]
    if x.dim() < 2 or x.numel() <= ROW_BLOCK_MIN_NUMEL or not eager_on_cpu(x):
        return [tensors]
    rows = max(1, ROW_BLOCK_NUMEL * x.shape[0] // x.numel())
    return list(zip(*(t.split(rows) for t in tensors)))


def decay_and_norm_loss_(params: list[Tensor], unit_norms: list[Tensor], *, decay: Tensor | float,
                         lr: Tensor | float, normloss_factor: float, eps: float) -> None:
    """Stable weight decay and norm loss as one multiply per tensor: ``p <- p * s * N_u`` with
    ``s = decay`` and ``N_u = 1 - lr * 2 f * (1 - 1 / (|s| ||p||_u + eps))``.

    Norm loss is defined on the decayed weights; their unit norms are ``|s| ||p||_u``, so one read of
    ``p`` serves both. ``unit_norms`` are the ``||p||_u`` the first pass kept (consumed here), or an
    empty list: then they are taken here. With ``normloss_factor`` 0 this is the decay alone.
    """
    if normloss_factor == 0.0:
        if not (isinstance(decay, float) and decay == 1.0):
            torch._foreach_mul_(params, decay)
        return
    norms = list(unit_norms) if unit_norms else [unit_norm(p) for p in params]
    torch._foreach_mul_(norms, abs(decay))
    torch._foreach_add_(norms, eps)
    torch._foreach_reciprocal_(norms)  # 1 / (||s p||_u + eps)
    torch._foreach_sub_(norms, 1.0)  # -(1 - 1 / (...)), negated: the rounding of 1 - x
    torch._foreach_mul_(norms, lr * (2.0 * normloss_factor))
    torch._foreach_add_(norms, 1.0)
    torch._foreach_mul_(norms, decay)
    torch._foreach_mul_(params, norms)


def stable_decay_factor(rate: Tensor, sigma: Tensor, weight_decay: float) -> Tensor | float:
    """Stable weight decay's factor ``1 - weight_decay * rate / sigma``: 1 while sigma is 0 (no
    gradient yet), and with no decay."""
    if weight_decay == 0.0:
        return 1.0
    return torch.where(sigma > 0, 1.0 - weight_decay * rate / sigma, torch.ones_like(sigma))


# --- the two passes --------------------------------------------------------------------------------


def ranger21_prepare(
    params: list[Tensor],
    grads: list[Tensor],
    variances: list[Tensor],
    *,
    bias_correction2: Tensor,
    beta2: float,
    agc: bool,
    agc_clipping_value: float,
    agc_eps: float,
    centralize: bool,
    gc_conv_only: bool,
    normalize: bool,
    keep_param_norms: bool = False,
) -> Tensor | tuple[Tensor, list[Tensor]]:
    """First pass: clip, centralise and normalise each gradient in place, update v.

    Returns sum(v / (1 - beta2^t)) over these tensors: this bucket's share of the global sigma; with
    ``keep_param_norms`` also every row block's ``||p||_u`` (AGC's, or taken here without AGC), for
    :func:`decay_and_norm_loss_`: p does not change in between, so it is read once for both.
    The reductions over some dims of one tensor (unit norms, means, std) have no multi-tensor
    form, so this runs tensor by tensor, a large tensor by row blocks (:func:`row_blocks`), so that
    every step of a block runs while it is in the cache.
    """
    min_dim = 3 if gc_conv_only else 1
    sums: list[Tensor] = []
    param_norms: list[Tensor] = []
    for p, g, v in zip(params, grads, variances):
        blocks = row_blocks(p, g, v)
        centred = centralize and g.dim() > min_dim
        normalized = normalize and g.numel() > 2
        square_sums = []
        for p_rows, g_rows, _ in blocks:
            if agc or keep_param_norms:
                p_norm = unit_norm(p_rows)
                if keep_param_norms:
                    param_norms.append(p_norm)
            if agc:
                max_norm = p_norm.clamp_min(agc_eps).mul(agc_clipping_value)
                g_norm = unit_norm(g_rows)
                g_rows.mul_(torch.where(g_norm > max_norm, max_norm / g_norm.clamp_min(AGC_GRAD_NORM_FLOOR), 1.0))
            if centred:
                g_rows.sub_(g_rows.mean(dim=tuple(range(1, g.dim())), keepdim=True))
                if normalized:
                    flat = g_rows.reshape(-1)
                    square_sums.append(torch.dot(flat, flat))
        if normalized:
            # a centralised gradient's mean is 0 up to rounding (each row's is), so its std is
            # sqrt(g . g / (n - 1)): a dot product takes a third of the time of torch's std kernel
            std = (torch.stack(square_sums).sum() / (g.numel() - 1)).sqrt() if centred else g.std()
            std = std + GRAD_NORM_EPS
        for _, g_rows, v_rows in blocks:
            if normalized:
                g_rows.div_(std)
            v_rows.mul_(beta2).addcmul_(g_rows, g_rows, value=1.0 - beta2)
            sums.append(v_rows.sum())
    total = torch.stack(sums).sum() / bias_correction2
    return (total, param_norms) if keep_param_norms else total


def ranger21_update(
    params: list[Tensor],
    grads: list[Tensor],
    pos_moments: list[Tensor],
    neg_moments: list[Tensor],
    variances: list[Tensor],
    max_variances: list[Tensor],
    *,
    neg_step_size: Tensor,
    sqrt_bias_correction2: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    softplus: bool,
    beta_softplus: float,
    amsgrad: bool,
) -> None:
    """Second pass, the Adam/PNM core, after :func:`decay_and_norm_loss_` (which needs
    whole tensors): elementwise, so it runs by cache-sized blocks on a CPU and by flat chunks compiled.

    ``pos_moments``/``neg_moments`` are (grad_ma, neg_grad_ma) on odd steps and swapped on even
    steps; ``neg_step_size`` is -lr_t / (1 - beta1^t).
    """
    if amsgrad:
        torch._foreach_maximum_(max_variances, variances)
        denom = torch._foreach_sqrt(max_variances)
    else:
        denom = torch._foreach_sqrt(variances)
    torch._foreach_div_(denom, sqrt_bias_correction2)
    torch._foreach_add_(denom, eps)
    if softplus:
        denom = foreach_softplus(denom, beta_softplus)

    torch._foreach_mul_(pos_moments, beta1**2)
    torch._foreach_add_(pos_moments, grads, alpha=1.0 - beta1**2)

    noise_norm = math.sqrt((1.0 + beta2) ** 2 + beta2**2)
    update = torch._foreach_mul(pos_moments, 2.0)
    torch._foreach_add_(update, neg_moments, alpha=-1.0)
    torch._foreach_mul_(update, 1.0 / noise_norm)
    torch._foreach_mul_(update, neg_step_size)
    torch._foreach_div_(update, denom)
    torch._foreach_add_(params, update)


def ranger21_madgrad_update(
    params: list[Tensor],
    grads: list[Tensor],
    grad_sum_sqs: list[Tensor],
    sums: list[Tensor],
    x0s: list[Tensor],
    *,
    lamb: Tensor,
    momentum: float,
    softplus: bool,
    beta_softplus: float,
) -> None:
    """Second pass, the MADGRAD core (dual averaging), after :func:`decay_and_norm_loss_` (decaying with
    lambda_t): elementwise, as :func:`ranger21_update`.

    ``lamb`` is lambda_t = lr_t * sqrt(t); ``x0s`` is empty when momentum is 0 (x0 is then
    recovered from p, s and the accumulator before they change).
    """
    if momentum == 0.0:
        rms = torch._foreach_pow(grad_sum_sqs, 1.0 / 3.0)
        if softplus:
            rms = foreach_softplus(rms, beta_softplus)
        x0s = torch._foreach_div(sums, rms)
        torch._foreach_add_(x0s, params)

    weighted = torch._foreach_mul(grads, lamb)
    torch._foreach_add_(sums, weighted)
    torch._foreach_mul_(weighted, grads)
    torch._foreach_add_(grad_sum_sqs, weighted)
    rms = torch._foreach_pow(grad_sum_sqs, 1.0 / 3.0)
    if softplus:
        rms = foreach_softplus(rms, beta_softplus)

    z = torch._foreach_div(sums, rms)
    z = torch._foreach_sub(x0s, z)
    if momentum == 0.0:
        torch._foreach_copy_(params, z)
    else:
        ck = 1.0 - momentum
        torch._foreach_mul_(params, 1.0 - ck)
        torch._foreach_add_(params, z, alpha=ck)


def lookahead_merge(params: list[Tensor], slow: list[Tensor], *, alpha: float) -> None:
    """Lookahead: ``p <- alpha * p + (1 - alpha) * slow``, then ``slow <- p``."""
    torch._foreach_mul_(params, alpha)
    torch._foreach_add_(params, slow, alpha=1.0 - alpha)
    torch._foreach_copy_(slow, params)


# --- the optimizer ---------------------------------------------------------------------------------


def _check_fraction(value: float, name: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 1])")


def _check_positive_int(value: Any, name: str) -> None:
    if value is None:
        raise ValueError(
            f"Ranger21 needs the run length up front: {name} is missing. Pass num_epochs and "
            "num_batches_per_epoch (their product is the total number of optimizer steps, which places "
            "the warm-up and the warm-down), or num_iterations to rvc_optim.create_optimizer"
        )
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be a positive int)")


def _reject_broken_options(use_adabelief: bool, use_cheb: bool, momentum_type: str, decay_type: str,
                           warmup_type: str | None, pnm_momentum_factor: float) -> None:
    """The authors' switches that are broken or have no effect there: refused (or warned about) by name."""
    if use_adabelief:
        raise ValueError("use_adabelief=True is not offered: the authors' AdaBelief update is a no-op (broken)")
    if use_cheb:
        raise ValueError("use_cheb=True is not offered: the authors' Chebyshev schedule fails after warm-up (broken)")
    if momentum_type != "pnm":
        raise ValueError(f"Invalid momentum_type: {momentum_type!r} (only 'pnm' works in Ranger21)")
    if decay_type != "stable":
        raise ValueError(f"Invalid decay_type: {decay_type!r} (only 'stable' is implemented)")
    if warmup_type not in ("linear", None):
        raise ValueError(f"Invalid warmup_type: {warmup_type!r} (only 'linear' or None)")
    if pnm_momentum_factor != 1.0:
        warnings.warn(
            "Ranger21's pnm_momentum_factor has no effect (as in the authors' code): the positive-negative "
            "momentum weight is 1 and its noise norm uses beta2",
            stacklevel=3,
        )


def _clone(p: Tensor) -> Tensor:
    return p.detach().clone(memory_format=torch.preserve_format)


class Ranger21(Optimizer):
    """Ranger21, with the authors' argument names and defaults (``ranger21.Ranger21`` 0.1.0).

    See the module docstring for the update rule, the state and every deviation from the authors'.

    Args:
        params: parameters or param groups (a group may set lr, betas, eps, weight_decay, momentum
            and warmdown_min_lr).
        lr: learning rate (required, as in the authors'); the warm-up and warm-down scale each
            group's own lr.
        lookahead_active: Lookahead on the weights (default True).
        lookahead_mergetime: Lookahead's k, steps between merges (default 5).
        lookahead_blending_alpha: weight of the fast weights in a merge (default 0.5).
        lookahead_load_at_validation: at the end of every epoch (every ``num_batches_per_epoch``
            steps) back the weights up and load the slow weights, for validation; call
            :meth:`clear_and_load_backup` before training on (default False).
        use_madgrad: MADGRAD's dual averaging as the core instead of Adam with PNM (default False).
        use_adabelief: not offered (broken in the authors' code); must be False.
        softplus: pass the denominator through softplus (default True).
        beta_softplus: softplus's beta (default 50: the denominator never drops below ln 2 / 50).
        using_gc: gradient centralisation (default True).
        using_normgc: gradient normalisation by its standard deviation (default True).
        gc_conv_only: centralise 4-D and larger tensors only (default False: every tensor with dim > 1).
        normloss_active: norm loss (default True).
        normloss_factor: norm loss strength (default 1e-4).
        use_adaptive_gradient_clipping: AGC (default True).
        agc_clipping_value: AGC's ratio of gradient to parameter unit norm (default 1e-2).
        agc_eps: floor on the parameter unit norm in AGC (default 1e-3).
        betas: (beta1, beta2) (default (0.9, 0.999)); the constructor's beta2 also sets the warm-up length.
        momentum_type: only "pnm" (positive-negative momentum).
        pnm_momentum_factor: has no effect, as in the authors' code (default 1.0).
        momentum: MADGRAD's momentum (default 0.9; read only with use_madgrad).
        eps: added to the denominator, and in norm loss (default 1e-8).
        num_batches_per_epoch, num_epochs: the run length T = num_epochs * num_batches_per_epoch
            optimizer steps (required).
        use_cheb: not offered (broken in the authors' code); must be False.
        use_warmup: linear warm-up (default True).
        num_warmup_iterations: warm-up length (default None: ceil(2 / (1 - beta2)), or
            int(warmup_pct_default * T) where that is over 45% of T).
        warmdown_active: linear warm-down (default True).
        warmdown_start_pct: where in the run the warm-down starts (default 0.72).
        warmdown_min_lr: the lr the warm-down ends at (default 3e-5).
        weight_decay: stable weight decay (default 1e-4).
        decay_type: only "stable".
        warmup_type: "linear" (default) or None (no warm-up).
        warmup_pct_default: see num_warmup_iterations (default 0.22).
        logging_active: log the settings and the schedule's milestones through :mod:`logging` (default True).
        amsgrad: keyword-only, ours: real AMSGrad in the denominator (default False).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`). The Adam/PNM and MADGRAD cores and Lookahead compile as
            elementwise graphs; the first pass and the decay (unit norms, row means) compile off a CPU
            only, and only with ``compiled=True``.
    """

    # For the benchmark: sigma is a reduction over every parameter before any update can start, and
    # every state tensor is written (Lookahead's slow weights every k steps).
    needs_reduction_pass = True
    read_only_state: tuple[str, ...] = ()

    def __init__(
        self,
        params: Any,
        lr: float,
        lookahead_active: bool = True,
        lookahead_mergetime: int = 5,
        lookahead_blending_alpha: float = 0.5,
        lookahead_load_at_validation: bool = False,
        use_madgrad: bool = False,
        use_adabelief: bool = False,
        softplus: bool = True,
        beta_softplus: float = 50,
        using_gc: bool = True,
        using_normgc: bool = True,
        gc_conv_only: bool = False,
        normloss_active: bool = True,
        normloss_factor: float = 1e-4,
        use_adaptive_gradient_clipping: bool = True,
        agc_clipping_value: float = 1e-2,
        agc_eps: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        momentum_type: str = "pnm",
        pnm_momentum_factor: float = 1.0,
        momentum: float = 0.9,
        eps: float = 1e-8,
        num_batches_per_epoch: int | None = None,
        num_epochs: int | None = None,
        use_cheb: bool = False,
        use_warmup: bool = True,
        num_warmup_iterations: int | None = None,
        warmdown_active: bool = True,
        warmdown_start_pct: float = 0.72,
        warmdown_min_lr: float = 3e-5,
        weight_decay: float = 1e-4,
        decay_type: str = "stable",
        warmup_type: str | None = "linear",
        warmup_pct_default: float = 0.22,
        logging_active: bool = True,
        *,
        amsgrad: bool = False,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_eps(eps)
        check_weight_decay(weight_decay)
        check_nonnegative(normloss_factor, "normloss_factor")
        check_nonnegative(agc_clipping_value, "agc_clipping_value")
        check_nonnegative(agc_eps, "agc_eps")
        check_nonnegative(warmdown_min_lr, "warmdown_min_lr")
        _check_fraction(lookahead_blending_alpha, "lookahead_blending_alpha")
        _check_fraction(warmdown_start_pct, "warmdown_start_pct")
        _check_fraction(warmup_pct_default, "warmup_pct_default")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Invalid momentum value: {momentum} (must be in [0, 1))")
        if not beta_softplus > 0:
            raise ValueError(f"Invalid beta_softplus: {beta_softplus} (must be > 0)")
        if isinstance(lookahead_mergetime, bool) or not isinstance(lookahead_mergetime, int) or lookahead_mergetime < 1:
            raise ValueError(f"Invalid lookahead_mergetime: {lookahead_mergetime!r} (must be an int >= 1)")
        _check_positive_int(num_epochs, "num_epochs")
        _check_positive_int(num_batches_per_epoch, "num_batches_per_epoch")
        if num_warmup_iterations is not None and (
            isinstance(num_warmup_iterations, bool) or not isinstance(num_warmup_iterations, int) or num_warmup_iterations < 0
        ):
            raise ValueError(f"Invalid num_warmup_iterations: {num_warmup_iterations!r} (must be an int >= 0 or None)")
        _reject_broken_options(use_adabelief, use_cheb, momentum_type, decay_type, warmup_type, pnm_momentum_factor)

        defaults = dict(
            lr=lr, momentum=momentum, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
            warmdown_min_lr=warmdown_min_lr,
        )
        super().__init__(params, defaults)

        self.logging_active = logging_active
        self.use_madgrad = use_madgrad
        self.amsgrad = amsgrad
        self.softplus = softplus
        self.beta_softplus = float(beta_softplus)
        self.use_gc = using_gc
        self.use_gcnorm = using_normgc
        self.gc_conv_only = gc_conv_only
        self.normloss_active = normloss_active
        self.normloss_factor = normloss_factor
        self.agc_active = use_adaptive_gradient_clipping
        self.agc_clip_val = agc_clipping_value
        self.agc_eps = agc_eps
        self.lookahead_active = lookahead_active
        self.lookahead_mergetime = lookahead_mergetime
        self.lookahead_alpha = lookahead_blending_alpha
        self.lookahead_validation_load = lookahead_load_at_validation

        self._set_schedule(num_epochs, num_batches_per_epoch, use_warmup and warmup_type is not None,
                           num_warmup_iterations, warmup_pct_default, betas[1], warmdown_active, warmdown_start_pct)

        # Unit norms, means and standard deviations per tensor: these passes take whole tensors. The
        # normalisation skips tensors of two elements or fewer: compiled, those run eagerly (min_numel).
        self._prepare = UpdateFunction(ranger21_prepare, compiled, elementwise=False, min_numel=3)
        self._decay_and_norm_loss = UpdateFunction(decay_and_norm_loss_, compiled, elementwise=False)
        self._update = UpdateFunction(ranger21_update, compiled)
        self._madgrad_update = UpdateFunction(ranger21_madgrad_update, compiled)
        self._merge = UpdateFunction(lookahead_merge, compiled)
        if self.logging_active:
            self._log_settings(lr, weight_decay)

    def _set_schedule(self, num_epochs: int, num_batches_per_epoch: int, use_warmup: bool,
                      num_warmup_iterations: int | None, warmup_pct_default: float, beta2: float,
                      warmdown_active: bool, warmdown_start_pct: float) -> None:
        """The warm-up and warm-down, fixed by the run length and the constructor's arguments."""
        self.num_epochs = num_epochs
        self.num_batches_per_epoch = num_batches_per_epoch
        self.total_iterations = num_epochs * num_batches_per_epoch
        self.use_warmup = use_warmup
        if num_warmup_iterations is None:
            beta_warmup_iters = math.ceil(2 / (1 - beta2))
            if beta_warmup_iters / self.total_iterations > 0.45:
                self.num_warmup_iters = int(warmup_pct_default * self.total_iterations)
            else:
                self.num_warmup_iters = beta_warmup_iters
        else:
            self.num_warmup_iters = num_warmup_iterations
        self.warmdown_active = warmdown_active
        self.start_warm_down = int(warmdown_start_pct * self.total_iterations)
        self.warmdown_total_iterations = self.total_iterations - self.start_warm_down

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self.param_groups[-1].setdefault("step", 0)  # a group added mid-run starts its own schedule

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("step", 0)
            group.setdefault("warmdown_min_lr", 3e-5)

    # --- schedule --------------------------------------------------------------------------------

    def scheduled_lr(self, group: dict[str, Any], step: int | None = None) -> float:
        """The lr a group steps with at ``step`` (default: its latest step), after warm-up/warm-down."""
        step = group.get("step", 0) if step is None else step
        lr, min_lr = group["lr"], group["warmdown_min_lr"]
        if self.warmdown_active and step >= self.start_warm_down:
            if lr <= min_lr:  # a warm-down never raises an lr
                return lr
            pct = min(1.0, (step + 1 - self.start_warm_down) / (self.warmdown_total_iterations + 1))
            return max(min_lr, lr - (lr - min_lr) * pct)
        if self.use_warmup and step <= self.num_warmup_iters:
            return lr * min(1.0, step / self.num_warmup_iters)
        return lr

    def _log_settings(self, lr: float, weight_decay: float) -> None:
        core = "MADGRAD" if self.use_madgrad else "Adam with positive-negative momentum"
        logger.info(
            "Ranger21: core %s, lr %s, run of %d steps (%d epochs x %d batches)",
            core, lr, self.total_iterations, self.num_epochs, self.num_batches_per_epoch,
        )
        if self.use_warmup:
            logger.info("Ranger21: linear warm-up over %d steps", self.num_warmup_iters)
        if self.warmdown_active:
            logger.info("Ranger21: linear warm-down from step %d of %d", self.start_warm_down, self.total_iterations)
        if self.lookahead_active:
            logger.info("Ranger21: Lookahead every %d steps, alpha %s", self.lookahead_mergetime, self.lookahead_alpha)
        logger.info(
            "Ranger21: stable weight decay %s, norm loss %s, gradient centralisation %s, normalisation %s, AGC %s",
            weight_decay, self.normloss_factor if self.normloss_active else "off", self.use_gc, self.use_gcnorm,
            self.agc_active,
        )

    def _log_milestones(self, group_index: int, step: int) -> None:
        if self.use_warmup and step == self.num_warmup_iters + 1:
            logger.info("Ranger21: warm-up complete for group %d at step %d", group_index, step)
        if self.warmdown_active and step == self.start_warm_down:
            logger.info("Ranger21: warm-down starts for group %d at step %d", group_index, step)

    # --- Lookahead at validation -------------------------------------------------------------------

    def backup_and_load_cache(self) -> None:
        """Back the weights up (``backup_params``) and load Lookahead's slow weights into them."""
        with torch.no_grad():
            for group in self.param_groups:
                self._backup_and_load(group["params"])

    def _backup_and_load(self, params: list[Tensor]) -> None:
        for p in params:
            state = self.state.get(p, {})
            if "lookahead_params" in state:
                state["backup_params"] = _clone(p)
                p.copy_(state["lookahead_params"])

    def clear_and_load_backup(self) -> None:
        """Restore the weights saved by :meth:`backup_and_load_cache` and drop the backup."""
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    backup = self.state.get(p, {}).pop("backup_params", None)
                    if backup is not None:
                        p.copy_(backup)

    # --- step --------------------------------------------------------------------------------------

    def _gather(self, group: dict[str, Any]) -> dict[tuple[int, torch.device, torch.dtype], dict[str, list[Tensor]]]:
        """The group's tensors, in buckets that share a step count, a device and a dtype."""
        params, grads = params_with_grad(group, "Ranger21")
        buckets: dict[tuple[int, torch.device, torch.dtype], dict[str, list[Tensor]]] = {}
        for p, g in zip(params, grads):
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
            state_tensor(state, "variance_ma", p)
            if self.use_madgrad:
                state_tensor(state, "grad_sum_sq", p)
                state_tensor(state, "s", p)
                if group["momentum"] != 0.0:
                    state_tensor(state, "x0", p, _clone)
            else:
                state_tensor(state, "grad_ma", p)
                state_tensor(state, "neg_grad_ma", p)
                if self.amsgrad:
                    state_tensor(state, "max_variance_ma", p)
            if self.lookahead_active:
                state_tensor(state, "lookahead_params", p, _clone)
            state["step"] += 1
            bucket = buckets.setdefault((state["step"], p.device, p.dtype), {"params": [], "grads": [], "states": []})
            bucket["params"].append(p)
            bucket["grads"].append(g)
            bucket["states"].append(state)
        return buckets

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)

        # First pass: clip, centralise, normalise, update v, and sum v-hat over every parameter.
        gathered = []
        total: Tensor | None = None
        numel = 0
        for group in self.param_groups:
            buckets = self._gather(group)
            if not buckets:
                continue
            group["step"] = group.get("step", 0) + 1
            gathered.append((group, buckets))
            beta2 = group["betas"][1]
            for (t, device, dtype), b in buckets.items():
                # on a CPU (where this pass is eager) it keeps ||p||_u for the norm loss: one read of p
                keep = device.type == "cpu" and self.normloss_active and self.normloss_factor != 0.0
                partial = self._prepare(
                    b["params"], b["grads"], [s["variance_ma"] for s in b["states"]],
                    bias_correction2=scalar(bias_correction(beta2, t), device, dtype),
                    beta2=beta2,
                    agc=self.agc_active, agc_clipping_value=self.agc_clip_val, agc_eps=self.agc_eps,
                    centralize=self.use_gc, gc_conv_only=self.gc_conv_only, normalize=self.use_gcnorm,
                    keep_param_norms=keep, device_type=device.type,
                )
                partial, b["param_norms"] = partial if keep else (partial, [])
                numel += sum(p.numel() for p in b["params"])
                total = partial if total is None else total + partial.to(total.device)
        if total is None:
            return loss

        # The global sigma: a 0-d tensor on the device, never read on the host.
        mean = total / numel
        sigma = torch.pow(mean, 1.0 / 3.0) if self.use_madgrad else torch.sqrt(mean)

        # Second pass: stable decay, norm loss and the step; then Lookahead.
        for index, (group, buckets) in enumerate(gathered):
            step = group["step"]
            lr = self.scheduled_lr(group, step)
            if self.logging_active:
                self._log_milestones(index, step)
            beta1, beta2 = group["betas"]
            normloss_factor = self.normloss_factor if self.normloss_active else 0.0
            for (t, device, dtype), b in buckets.items():
                states = b["states"]
                sigma_here = sigma.to(device=device, dtype=scalar_dtype(dtype))
                lr_t = scalar(lr, device, dtype)
                lamb = scalar(lr * math.sqrt(t), device, dtype) if self.use_madgrad else None
                # the pass that needs whole tensors; then the elementwise core (MADGRAD decays with lambda_t)
                decay = stable_decay_factor(lr_t if lamb is None else lamb, sigma_here, group["weight_decay"])
                rows = [block for p in b["params"] for block, in row_blocks(p)]
                run_by_tensor_batches(self._decay_and_norm_loss, (rows, b["param_norms"]), device_type=device.type,
                                      decay=decay, lr=lr_t, normloss_factor=normloss_factor, eps=group["eps"])
                if lamb is not None:
                    self._madgrad_update(
                        b["params"], b["grads"], [s["grad_sum_sq"] for s in states], [s["s"] for s in states],
                        [s["x0"] for s in states] if group["momentum"] != 0.0 else [],
                        lamb=lamb, momentum=group["momentum"], softplus=self.softplus,
                        beta_softplus=self.beta_softplus, device_type=device.type,
                    )
                    continue
                first, second = [s["grad_ma"] for s in states], [s["neg_grad_ma"] for s in states]
                pos, neg = (first, second) if t % 2 == 1 else (second, first)
                self._update(
                    b["params"], b["grads"], pos, neg, [s["variance_ma"] for s in states],
                    [s["max_variance_ma"] for s in states] if self.amsgrad else [],
                    neg_step_size=scalar(-(lr / bias_correction(beta1, t)), device, dtype),
                    sqrt_bias_correction2=scalar(math.sqrt(bias_correction(beta2, t)), device, dtype),
                    beta1=beta1, beta2=beta2, eps=group["eps"], softplus=self.softplus,
                    beta_softplus=self.beta_softplus, amsgrad=self.amsgrad, device_type=device.type,
                )
            if self.lookahead_active and step % self.lookahead_mergetime == 0:
                for (_, device, _), b in buckets.items():
                    self._merge(b["params"], [s["lookahead_params"] for s in b["states"]],
                                alpha=self.lookahead_alpha, device_type=device.type)
            if self.lookahead_active and self.lookahead_validation_load and step % self.num_batches_per_epoch == 0:
                for b in buckets.values():
                    self._backup_and_load(b["params"])
        return loss
