"""Nero (neuron-wise normalised steps on a constraint set).

Paper: "Learning by Turning: Neural Architecture Aware Optimisation", Y. Liu, J. Bernstein,
M. Meister, Y. Yue, 2021 (ICML 2021), arXiv:2102.07227. Written from the paper; the behaviour
matched is the authors' (jxbz/nero), through pytorch_optimizer's port of it.

A neuron is a slice of a tensor along its first dimension (a row of a matrix, an output channel of a
conv kernel); each element of a vector is its own neuron. For each tensor p with gradient g, step t::

    at construction, for a constrained tensor:  p <- p - rowmean(p);  p <- p / rownorm(p)
    scale = mean(rownorm(p)) at the first step (0.01 if that is 0)
    v <- beta v + (1 - beta) rownorm(g)^2                one value per neuron
    p <- p - lr scale g / sqrt(v / (1 - beta^t))
    re-project a constrained tensor (zero mean, unit norm per neuron)

Constrained tensors move on the sphere by an angle of about lr per step; unconstrained ones (vectors)
move by about lr relative to their mean magnitude. State: ``exp_avg_sq`` (one value per neuron:
sublinear for matrices and kernels, the size of a vector for vectors) and ``scale``. Pick it to try
architecture-aware steps without tuning a weight decay; it needs lr 1e-3 to 1e-2 and is built before
the first forward pass (the constructor projects the weights).

Which tensors are constrained: those in a group whose ``constraints`` is True that have more than one
dimension and more than one element per neuron. A weight-norm magnitude (``weight_g``,
``parametrizations.weight.original0``, shape [C, 1, 1]) has one element per neuron: projecting it to
zero mean would set it to 0 and kill the layer, so it is left unconstrained, like a vector, with no
configuration. To leave any other tensor unconstrained, put it in a group with ``constraints=False``.
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
    check_lr,
    check_momentum,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    foreach_mul_by_constant_,
    scalar_dtype,
)

__all__ = ["Nero", "is_constrained", "nero_rows_update", "nero_update", "neuron_norms", "project_", "reproject_"]

# A row already within this distance of the constraint set (zero mean, unit norm) is left as it is
# when the optimizer is built, so that rebuilding it on projected weights (a resume) changes no bit.
_ON_CONSTRAINT_TOL = 1e-4


def is_constrained(p: Tensor, constraints: bool) -> bool:
    """Whether Nero projects ``p``: constraints on, more than one dimension and more than one element
    per neuron (weight-norm magnitudes [C, 1, 1] have one and stay free)."""
    return constraints and p.dim() > 1 and p.numel() > p.shape[0]


def _rows(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def neuron_norms(tensors: list[Tensor]) -> list[Tensor]:
    """Each neuron's L2 norm: shape [n, 1, ...] for tensors of two or more dimensions, |t| for vectors.

    One reduction per tensor over its rows (``vector_norm(dim=1)``): a multi-tensor norm over every row
    view measured 10x slower on RVC's generator (96k rows: 1.7 s against 0.17 s per pass on a CPU).
    """
    return [torch.linalg.vector_norm(_rows(t), dim=1).view(t.shape[0], *[1] * (t.dim() - 1)) if t.dim() > 1
            else t.abs() for t in tensors]


def project_(tensors: list[Tensor], keep_on_constraint: bool = False) -> None:
    """Project every neuron to zero mean and unit norm, in place. A neuron whose centred norm is 0 is
    left at zero (the authors' code divides 0 by 0). With ``keep_on_constraint`` a neuron already on
    the constraint set (to 1e-4) is left bit for bit as it is."""
    for p in tensors:
        rows = _rows(p)
        mean = rows.mean(dim=1, keepdim=True)
        centred = rows - mean
        norm = torch.linalg.vector_norm(centred, dim=1, keepdim=True)
        projected = centred / torch.where(norm > 0, norm, torch.ones_like(norm))
        if keep_on_constraint:
            tol = max(_ON_CONSTRAINT_TOL, 8 * torch.finfo(p.dtype).eps)
            done = (mean.abs() <= tol) & ((torch.linalg.vector_norm(rows, dim=1, keepdim=True) - 1).abs() <= tol)
            projected = torch.where(done, rows, projected)
        p.copy_(projected.view_as(p))


def reproject_(tensors: list[Tensor]) -> None:
    """:func:`project_` for tensors one step away from the constraint set, in place: two reading passes
    (row sums, row norms), then ``p <- p inv - mean inv`` with ``inv = 1 / norm``, a multiply and an add
    in place, with no temporary the size of a tensor (:func:`project_` makes three, which cost Nero two
    thirds of its step on RVC's discriminator). The centred norm is taken as ``sqrt(||p||^2 - n mean^2)``: one step from the
    set each row's mean is about lr times its norm, so the subtraction loses nothing worth the name.

    The per-row arithmetic between the passes runs as multi-tensor ops over all the tensors' rows at
    once (eight small ops per tensor took 19 ms of a 110 ms step on RVC's generator, 205 tensors)."""
    if not tensors:
        return
    rows = [_rows(p) for p in tensors]
    norms = [torch.linalg.vector_norm(r, dim=1, keepdim=True) for r in rows]
    if isinstance(rows[0].shape[1], torch.SymInt):  # a chunk graph's trace: a size is a symbol, not a float
        means = [r.sum(dim=1, keepdim=True) / r.shape[1] for r in rows]
        mean_sq = [m * r.shape[1] * m for m, r in zip(means, rows)]
    else:
        widths = [float(r.shape[1]) for r in rows]
        means = torch._foreach_div([r.sum(dim=1, keepdim=True) for r in rows], widths)
        mean_sq = torch._foreach_mul(means, widths)  # n mean mean, in that order
        torch._foreach_mul_(mean_sq, means)
    centred_sq = torch._foreach_mul(norms, norms)
    torch._foreach_sub_(centred_sq, mean_sq)
    torch._foreach_clamp_min_(centred_sq, 0.0)
    torch._foreach_sqrt_(centred_sq)
    norm = torch.cat(centred_sq)  # a centred norm of 0 (a constant row) divides by 1: the row becomes 0
    inverses = torch.where(norm > 0, norm, torch.ones_like(norm)).reciprocal_().split([r.shape[0] for r in rows])
    shifts = torch._foreach_neg(means)
    torch._foreach_mul_(shifts, inverses)
    for p, r, shift, inv in zip(tensors, rows, shifts, inverses):
        if p.is_contiguous():  # r is a view of p: written in place (addcmul with out=r took 1.3x as long)
            r.mul_(inv).add_(shift)
        else:
            p.copy_(torch.addcmul(shift, r, inv).view_as(p))


def _frozen(group: dict[str, Any]) -> bool:
    """A group whose lr is the number 0 is left alone: no step, no projection (a tensor lr is never read
    on the host)."""
    return not isinstance(group["lr"], Tensor) and group["lr"] == 0


def _initial_scale(p: Tensor) -> Tensor:
    """mean(rownorm(p)), or 0.01 where that is 0 (a zero vector): a 0-d tensor, decided on the device."""
    (norms,) = neuron_norms([p])
    scale = norms.mean(dtype=scalar_dtype(p.dtype))
    return torch.where(scale == 0, torch.full_like(scale, 0.01), scale)


def nero_update(params: list[Tensor], grads: list[Tensor], exp_avg_sqs: list[Tensor], scales: list[Tensor], *,
                lr: Tensor | float, bias_correction2: Tensor | float, beta: float, constrained: list[bool]) -> None:
    """One Nero step on tensors sharing a device and dtype; ``constrained`` says which to re-project."""
    norms = neuron_norms(grads)
    foreach_mul_by_constant_(exp_avg_sqs, beta)
    torch._foreach_addcmul_(exp_avg_sqs, norms, norms, value=1.0 - beta)
    denoms = torch._foreach_div(exp_avg_sqs, bias_correction2)
    torch._foreach_sqrt_(denoms)
    # p - lr * scale * g / d, with lr * scale folded into the (per-neuron, small) denominators; a neuron
    # whose gradient has been 0 so far has d = 0 and g = 0: the smallest normal number makes it 0 / tiny.
    steps = torch.stack(scales).to(denoms[0].dtype) * lr
    torch._foreach_div_(denoms, list(steps.unbind()))
    torch._foreach_clamp_min_(denoms, torch.finfo(denoms[0].dtype).tiny)
    torch._foreach_addcdiv_(params, grads, denoms, value=-1.0)
    reproject_([p for p, c in zip(params, constrained) if c])


def nero_rows_update(params: list[Tensor], grads: list[Tensor], exp_avg_sqs: list[Tensor], scales: list[Tensor], *,
                     lr: Tensor, bias_correction2: Tensor, beta: float) -> None:
    """:func:`nero_update` of constrained tensors for the compiled path: every tensor a 2-D view
    [neurons, elements per neuron] and its ``exp_avg_sq`` a view [neurons, 1]. One graph serves every
    shape: per tensor one loop takes the gradient's row norms, one steps and takes the new rows' sums
    and norms, one re-projects."""
    nero_update(params, grads, exp_avg_sqs, scales, lr=lr, bias_correction2=bias_correction2, beta=beta,
                constrained=[True] * len(params))


def _neuron_rows(t: Tensor) -> Tensor:
    """``t`` (of two or more dimensions) as a 2-D view [neurons, elements per neuron]."""
    return t.view(t.shape[0], -1)


class Nero(Optimizer):
    """Nero with the authors' argument names and defaults.

    Args:
        params: parameters or param groups. A group may set its own ``constraints``.
        lr: learning rate (default 0.01).
        beta: decay of the per-neuron squared gradient norm (default 0.999).
        constraints: project tensors of two or more dimensions (with more than one element per neuron) to
            zero mean and unit norm per neuron, at construction and after every step (default True).
        compiled: use the ``torch.compile``d update for the constrained tensors (None: decided by
            ``RVC_OPTIM_COMPILE``): one graph on [neurons, elements per neuron] views of any shape, on
            accelerators. On a CPU the eager update runs whatever is asked: there the graph was slower.

    Deviations from the reference:
        * weight-norm magnitudes and other tensors with one element per neuron are never constrained (the
          authors' code sets them to 0, or NaN); ``constraints`` may differ between groups (the authors'
          is one value for the optimizer, pytorch_optimizer's is per group);
        * a neuron whose centred norm is 0 stays 0 where the authors' code gives NaN; a neuron whose
          gradient has been 0 so far takes no step (0 / tiny), as the authors' NaN-to-0 gives, but a
          NaN or infinite gradient is not silently turned into 0;
        * at construction, neurons already on the constraint set (to 1e-4) are left as they are, so
          that rebuilding the optimizer on projected weights (resuming) changes nothing; parameters
          that do not require gradients and groups whose lr is 0 are not touched at all (a group with
          lr 0 is frozen: no step, no projection);
        * ``scale`` is taken at a tensor's first step (the authors' at construction: the same weights,
          unless they are changed in between); the step count is a Python int per group.
    """

    def __init__(self, params: Any, lr: float | Tensor = 0.01, beta: float = 0.999, constraints: bool = True, *,
                 compiled: bool | None = None) -> None:
        check_lr(lr)
        check_momentum(beta, "beta")
        super().__init__(params, dict(lr=lr, beta=beta, constraints=constraints))
        self._rows_update = UpdateFunction(nero_rows_update, compiled, elementwise=False)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_momentum(group["beta"], "beta")
        if not _frozen(group):
            with torch.no_grad():
                project_([p for p in group["params"] if p.requires_grad and is_constrained(p, group["constraints"])],
                         keep_on_constraint=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "Nero")
            if not params or _frozen(group):
                continue
            group["step"] = group.get("step", 0) + 1
            for p in params:
                state = self.state[p]
                if "scale" not in state:
                    state["scale"] = _initial_scale(p)
                    (norms,) = neuron_norms([p])
                    state["exp_avg_sq"] = torch.zeros_like(norms)
            exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
            scales = [self.state[p]["scale"] for p in params]
            bias_correction2 = bias_correction(group["beta"], group["step"])
            for device, dtype, lists in group_by_device_and_dtype(params, grads, exp_avg_sqs, scales):
                constrained = [is_constrained(x, group["constraints"]) for x in lists[0]]
                lr = scalar(group["lr"], device, dtype)
                if self._rows_update.compiles(lists, device.type):
                    self._compiled_step(lists, constrained, lr=lr, beta=group["beta"],
                                        bias_correction2=scalar(bias_correction2, device, dtype), device=device)
                else:
                    nero_update(*lists, lr=lr, bias_correction2=bias_correction2, beta=group["beta"],
                                constrained=constrained)
        return loss

    def _compiled_step(self, lists: list[list[Tensor]], constrained: list[bool], *, lr: Tensor, beta: float,
                       bias_correction2: Tensor, device: torch.device) -> None:
        """The compiled update of the constrained tensors, on 2-D row views; the others (vectors and
        weight-norm magnitudes, small) and any tensor that is not contiguous (no view of its rows) take the
        eager update. (Inductor 2.13 failed to generate CPU code for the unconstrained update's graph:
        ``KeyError`` in its outer-loop fusion.)"""
        chosen = [i for i, c in enumerate(constrained) if c and all(lst[i].is_contiguous() for lst in lists[:3])]
        if chosen:
            self._rows_update(*([_neuron_rows(lst[i]) for i in chosen] for lst in lists[:3]),
                              [lists[3][i] for i in chosen], lr=lr, bias_correction2=bias_correction2,
                              beta=beta, device_type=device.type)
        rest = sorted(set(range(len(constrained))) - set(chosen))
        if rest:
            nero_update(*([lst[i] for i in rest] for lst in lists), lr=lr, bias_correction2=bias_correction2,
                        beta=beta, constrained=[constrained[i] for i in rest])
