"""SM3: an AdaGrad with one accumulator per slice along each dimension (SM3-II).

Paper: "Memory-Efficient Adaptive Optimization", R. Anil, V. Gupta, T. Koren, Y. Singer, 2019,
arXiv:1901.11150.

Update for a parameter p of shape n_1 x ... x n_r with gradient g; the cover set is one slice per index
of each dimension, so accumulator a_i is a vector along dimension i (kept as [1, .., n_i, .., 1])::

    nu  = min_i a_i + g^2                   (broadcast to p's shape)
    a_i <- max of nu over every dimension but i
    u   = g / sqrt(nu + eps)
    with momentum mu:  m <- mu m + (1 - mu) u;  u = m
    p   <- p - lr u

Tensors of rank 0 or 1 keep a full AdaGrad accumulator (a <- a + g^2). A [512, 192, 3] kernel keeps
512 + 192 + 3 numbers of second-moment state. Pick it when optimizer memory is the constraint and an
AdaGrad-style decaying step suits the run (the authors warm the lr up over a few percent of the steps);
lr is AdaGrad's scale (about 0.1), not AdamW's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction, run_by_tensor_batches
from rvc_optim.optim._foreach import (
    add_scaled_,
    check_eps,
    check_lr,
    check_momentum,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
)

__all__ = ["SM3", "sm3_update"]


def accumulator_shapes(shape: torch.Size) -> list[tuple[int, ...]]:
    """One accumulator per dimension, in broadcastable shape; a full one for rank 0 and 1."""
    if len(shape) <= 1:
        return [tuple(shape)]
    return [tuple(n if j == i else 1 for j in range(len(shape))) for i, n in enumerate(shape)]


def sm3_update(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *accumulators: list[Tensor],
    lr: Tensor | float,
    momentum: float,
    eps: float,
) -> None:
    """``accumulators[i]`` holds the i-th accumulator of every tensor of rank above i (rank 0 and 1
    tensors: one full accumulator), so the lists shorten with i; tensors are sorted by falling rank."""
    accumulators = tuple(accs for accs in accumulators if accs)  # a batch of vectors has no second one
    nu = _squares_over_covers(accumulators, grads)
    # The max over all dimensions but i has no multi-tensor op in torch: this loop is that reduction.
    maxima: list[list[Tensor]] = [[] for _ in accumulators]
    for v in nu:
        for i, m in enumerate(_maxima(v)):
            maxima[i].append(m)
    for accs, new in zip(accumulators, maxima):
        torch._foreach_copy_(accs, new)
    torch._foreach_add_(nu, eps)
    torch._foreach_rsqrt_(nu)
    torch._foreach_mul_(nu, grads)
    if momentum > 0.0:
        torch._foreach_lerp_(momentum_buffers, nu, 1.0 - momentum)
        nu = momentum_buffers
    add_scaled_(params, nu, -lr)


def _squares_over_covers(accumulators: tuple[list[Tensor], ...], grads: list[Tensor]) -> list[Tensor]:
    """``nu = cover + g * g`` per tensor, broadcast to the full shape. A cover that is already a new
    tensor of the full shape (the min of a matrix's or a kernel's accumulators) takes the squares in
    place: on a CPU another new tensor the size of a large kernel would cost its page faults."""
    covers, fresh = _covers(accumulators)
    nu = list(covers)
    owned = [fresh[i] and c.shape == g.shape for i, (c, g) in enumerate(zip(covers, grads))]
    in_place = [i for i, own in enumerate(owned) if own]
    others = [i for i, own in enumerate(owned) if not own]
    if in_place:
        torch._foreach_addcmul_([covers[i] for i in in_place], [grads[i] for i in in_place],
                                [grads[i] for i in in_place])
    if others:
        for i, t in zip(others, torch._foreach_addcmul([covers[i] for i in others], [grads[i] for i in others],
                                                        [grads[i] for i in others])):
            nu[i] = t
    return nu


def _covers(accumulators: tuple[list[Tensor], ...]) -> tuple[list[Tensor], list[bool]]:
    """For each tensor, the min over the accumulators that cover each element (broadcast, small ones
    first), and whether it is a new tensor (a min) rather than an accumulator itself. A size-1
    dimension's accumulator holds the max over the whole tensor, never below another one's, so it is
    left out of the min (a full-size pass fewer for conv kernels [O, I, k, 1]) unless every dimension
    has size 1."""
    covers: list[Tensor | None] = [None] * len(accumulators[0])
    fresh = [False] * len(covers)
    for accs in accumulators:
        used = [i for i, acc in enumerate(accs) if acc.numel() > 1]
        first = [i for i in used if covers[i] is None]
        rest = [i for i in used if covers[i] is not None]
        for i in first:
            covers[i] = accs[i]
        if rest:
            mins = torch._foreach_minimum([covers[i] for i in rest], [accs[i] for i in rest])
            for i, m in zip(rest, mins):
                covers[i], fresh[i] = m, True
    return [c if c is not None else accumulators[0][i] for i, c in enumerate(covers)], fresh


def _maxima(t: Tensor) -> list[Tensor]:
    """For each dimension i, the max of ``t`` over every other dimension (shape [1, .., n_i, .., 1]).
    Size-1 dimensions are squeezed out first (their max is the whole tensor's); then two passes over
    ``t`` (:func:`_maxima_of_full_rank`)."""
    if t.dim() <= 1:
        return [t]
    if 1 not in t.shape:
        return _maxima_of_full_rank(t)
    squeezed = t.squeeze()
    maxima = _maxima_of_full_rank(squeezed) if squeezed.dim() > 1 else [squeezed]
    whole = maxima[0].amax()
    inner = iter(maxima)
    out = []
    for i, n in enumerate(t.shape):
        shape = [1] * t.dim()
        shape[i] = n
        out.append((next(inner) if n > 1 else whole).reshape(shape))
    return out


def _maxima_of_full_rank(t: Tensor) -> list[Tensor]:
    """:func:`_maxima` for a tensor of rank 2 or more without size-1 dimensions: the max over the last
    dimension, from which the leading ones are reduced, and the max over all leading dimensions of a
    2-D view."""
    last = t.amax(dim=-1, keepdim=True)
    lead = list(range(t.dim() - 1))
    out = [last.amax(dim=[d for d in lead if d != i], keepdim=True) if t.dim() > 2 else last for i in lead]
    out.append(_max_over_rows(t.reshape(-1, t.shape[-1])).view([1] * (t.dim() - 1) + [t.shape[-1]]))
    return out


def _max_over_rows(rows: Tensor, width: int = 1024) -> Tensor:
    """``rows.amax(dim=0)`` for an [m, c] tensor, with k rows folded into one first (k * c up to
    ``width`` columns, k dividing m): torch reduces the first dimension of a tensor with few columns (a
    conv kernel's k) slowly, 130 ms a step for SM3 on RVC's generator against 17 ms folded. Exact: a
    maximum does not round."""
    m, c = rows.shape
    k = 1
    while 2 * k * c <= width and m % (2 * k) == 0:
        k *= 2
    return rows.reshape(m // k, k * c).amax(dim=0).view(k, c).amax(dim=0)


class SM3(Optimizer):
    """SM3-II, with the argument names and defaults of pytorch_optimizer's ``SM3`` (the authors' code is
    TensorFlow 1 only and takes a learning rate and a momentum).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 0.1).
        momentum: the momentum's decay mu in m <- mu m + (1 - mu) u; 0 keeps no buffer (default 0).
        eps: added to the accumulated square inside the square root (default 1e-30).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``, see
            :mod:`rvc_optim.optim._compile`). Off a CPU only: the update reads tensor shapes, so it
            needs dynamo's whole-list graph, which on a CPU built for minutes and ran slower than eager.

    Deviations from the reference (pytorch_optimizer 4.1.0):
        - No ``beta``: its beta > 0 is the port's own running average, which turns the accumulators into
          maxima that never shrink; the authors have none (the port's default, beta=0, is the paper).
        - The momentum buffer exists only with momentum > 0, as in the authors' code; the port allocates
          it always.
        - Sparse gradients are rejected; the port has a sparse path for the first dimension.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-1,
        momentum: float = 0.0,
        eps: float = 1e-30,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_momentum(momentum)
        check_eps(eps)
        super().__init__(params, dict(lr=lr, momentum=momentum, eps=eps))
        self._update = UpdateFunction(sm3_update, compiled, elementwise=False)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "SM3")
            momentum = group["momentum"]
            for device, dtype, (p, g) in group_by_device_and_dtype(params, grads):
                order = sorted(range(len(p)), key=lambda i: -p[i].dim())
                p, g = [p[i] for i in order], [g[i] for i in order]
                states = [self.state[q] for q in p]
                buffers = [state_tensor(st, "momentum_buffer", q) for st, q in zip(states, p)] if momentum > 0 else []
                accumulators: list[list[Tensor]] = []
                for st, q in zip(states, p):
                    for i, shape in enumerate(accumulator_shapes(q.shape)):
                        if i == len(accumulators):
                            accumulators.append([])
                        accumulators[i].append(state_tensor(st, f"accumulator_{i}", q, lambda x: x.new_zeros(shape)))
                run_by_tensor_batches(
                    self._update, (p, g, buffers, *accumulators),
                    lr=scalar(group["lr"], device, dtype), momentum=momentum, eps=group["eps"],
                    device_type=device.type,
                )
        return loss
