"""A2Grad (adaptive accelerated stochastic gradient descent).

Paper: "Optimal Adaptive and Accelerated Stochastic Gradient Descent", Q. Deng, Y. Cheng, G. Lan, 2018,
arXiv:1810.00553.

Nesterov-style acceleration (three sequences: the evaluation point p, the aggregated point xbar and the
gradient sequence x) whose step size adapts to how far the gradients stray from their running average.
For step k = 0, 1, ... with gradient g at p, Lipschitz guess L (``lips``) and scale beta::

    gbar <- (k * gbar + g) / (k + 1)           gbar starts at the first gradient, so delta_0 = 0
    delta = g - gbar,  s = ||delta||^2
    uni: v <- v + s                                               h = sqrt(v)
    inc: v <- (k / (k + 1))^2 * v + s                             h = sqrt(v)
    exp: vt <- s (k = 0), rho * vt + (1 - rho) * s (later);  v <- max(v, vt);  h = sqrt((k + 1) * v)
    c = 1 / (2L / (k + 1) + beta * h)
    x <- x - c * g
    xbar <- (1 - a_k) * xbar + a_k * x,  a_k = 2 / (k + 2)        (a_0 = 1)
    p <- (1 - a_{k+1}) * xbar + a_{k+1} * x                       the next evaluation point

Only p and x are stored: xbar_{k+1} = p_k - a_k * c * g, so p <- (1 - a') p + a' x - (1 - a') a c g
with a' = a_{k+1}. There is no learning rate: the first step is g / (2L), and later steps shrink as
the gradients' spread accumulates. Pick it for convex-like problems where a Lipschitz guess is
available; on RVC it is of theoretical interest (raise ``lips`` for smaller steps).

The two published ports disagree (they differ after one step). torch-optimizer's ``A2GradUni/Inc/Exp``
(from severilov/A2Grad_optimizer) index the sequences as the paper does, a_k = 2/(k+2) and
gamma_k = 2L/(k+1) from k = 0; pytorch_optimizer's ``A2Grad`` is one step ahead (gamma = 2L/(k+2),
a' = 2/(k+4)) and multiplies the incremental variant's h by sqrt(k+2), which the incremental average
(already a weighted sum that grows with k) does not call for. This module follows the paper's indexing
and so matches torch-optimizer; both ports, and this module, take one h per tensor (the squared norm of
delta) rather than the paper's per-coordinate diagonal scaling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction, resolve_compiled
from rvc_optim.optim._foreach import (
    add_scaled_,
    check_nonnegative,
    check_positive,
    group_by_device_and_dtype,
    lerp_,
    params_with_grad,
    run_closure,
    scalar,
    scalar_dtype,
)

__all__ = ["A2Grad", "a2grad_apply", "a2grad_coefficients", "a2grad_spreads_", "a2grad_update"]

VARIANTS = ("uni", "inc", "exp")


def a2grad_update(
    params: list[Tensor],
    grads: list[Tensor],
    avg_grads: list[Tensor],
    x_ks: list[Tensor],
    v_ks: list[Tensor],
    v_kks: list[Tensor],
    *,
    k: int | Tensor,
    beta: float,
    lips: float,
    rho: float,
    variant: str,
) -> None:
    """One A2Grad step at index k (0 on the first). ``v_ks``/``v_kks`` are 0-d tensors, one per parameter
    (``v_kks`` empty unless variant is 'exp'). Needs whole tensors: the norms of delta are per tensor. ``k``
    is a Python int eagerly and a 0-d tensor when compiled (one graph for every step)."""
    # With d = gbar - g: ||delta|| = k / (k + 1) ||d||, and the new average is g + k / (k + 1) d.
    shrink = k / (k + 1)
    torch._foreach_sub_(avg_grads, grads)
    norms = torch.stack(torch._foreach_norm(avg_grads, 2, dtype=scalar_dtype(avg_grads[0].dtype)))
    torch._foreach_mul_(avg_grads, shrink)
    torch._foreach_add_(avg_grads, grads)
    coefs = a2grad_coefficients((norms * shrink) ** 2, v_ks, v_kks, k=k, beta=beta, lips=lips, rho=rho,
                                variant=variant)
    a, a_next = 2.0 / (k + 2), 2.0 / (k + 3)
    # x <- x - c g;  p <- lerp(p, x, a') - (1 - a') a c g
    # On a CPU the coefficients are read as floats (a CPU tensor: free, no device sync); per tensor, no
    # temporaries.
    if params[0].device.type == "cpu" and not isinstance(k, Tensor):
        for p, g, x, c in zip(params, grads, x_ks, coefs.tolist()):
            x.add_(g, alpha=-c)
            p.lerp_(x, a_next)
            p.add_(g, alpha=-(1.0 - a_next) * a * c)
        return
    steps = torch._foreach_mul(grads, list(coefs.unbind()))
    torch._foreach_sub_(x_ks, steps)
    lerp_(params, x_ks, a_next)
    add_scaled_(params, steps, -(1.0 - a_next) * a)


def a2grad_coefficients(squares: Tensor, v_ks: list[Tensor], v_kks: list[Tensor], *, k: int | Tensor, beta: float,
                        lips: float, rho: float, variant: str) -> Tensor:
    """Each tensor's step coefficient ``c = 1 / (2L / (k + 1) + beta * h)`` as one 1-d tensor, from the
    squared spreads ``||delta||^2`` of this step; updates ``v_ks`` (and ``v_kks`` for 'exp') in place."""
    v = torch.stack(v_ks)
    if variant == "uni":
        v = v + squares
    elif variant == "inc":
        v = v * (k / (k + 1)) ** 2 + squares
    else:
        v_kk = torch.stack(v_kks) * rho + squares * (1.0 - rho)
        v_kk = torch.where(k == 0, squares, v_kk) if isinstance(k, Tensor) else squares if k == 0 else v_kk
        torch._foreach_copy_(v_kks, list(v_kk.unbind()))
        v = torch.maximum(v, v_kk)
    torch._foreach_copy_(v_ks, list(v.unbind()))
    h = (v * (k + 1)).sqrt() if variant == "exp" else v.sqrt()
    return 1.0 / (2.0 * lips / (k + 1) + beta * h)


def a2grad_spreads_(avg_grads: list[Tensor], grads: list[Tensor]) -> Tensor:
    """``d = gbar - g`` written over each average, and ``[d . d]`` as one 1-d tensor: a CPU's first pass,
    tensor by tensor, each dot product reading its ``d`` while it is in the cache."""
    squares = []
    for d, g in zip(avg_grads, grads):
        d.sub_(g)
        flat = d.reshape(-1)
        squares.append(torch.dot(flat, flat))
    return torch.stack(squares)


def a2grad_apply(params: list[Tensor], grads: list[Tensor], diffs: list[Tensor], x_ks: list[Tensor],
                 coefs: list[Tensor], *, shrink: Tensor | float, a: Tensor | float, a_next: Tensor | float) -> None:
    """The elementwise rest of a step after :func:`a2grad_spreads_`, with each tensor's coefficient c as a
    0-d tensor in ``coefs``: ``gbar <- g + shrink * d`` (over d), ``x <- x - c g`` and
    ``p <- lerp(p, x, a') - (1 - a') a c g``."""
    steps = torch._foreach_mul(grads, coefs)
    torch._foreach_mul_(diffs, shrink)
    torch._foreach_add_(diffs, grads)
    torch._foreach_sub_(x_ks, steps)
    lerp_(params, x_ks, a_next)
    add_scaled_(params, steps, -(1.0 - a_next) * a)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"Invalid variant: {variant!r} (must be one of {', '.join(VARIANTS)})")


class A2Grad(Optimizer):
    """A2Grad, one class for the three averaging variants of the paper (torch-optimizer has a class per
    variant, with the same defaults: beta 10, lips 10, rho 0.5).

    Args:
        params: parameters or param groups.
        beta: scale of the adaptive term beta * h in the step's denominator (default 10).
        lips: L, the Lipschitz-constant guess; the first step is g / (2L) (default 10).
        rho: smoothing of the exponential variant's average of ||delta||^2 (default 0.5).
        variant: 'uni' (uniform sum), 'inc' (incremental weights) or 'exp' (exponential average with a
            running maximum) (default 'uni').
        compiled: use the compiled update (flat chunks, k a 0-d tensor: on accelerators the norms and
            the step fused per tensor, on a CPU the norms eager and the rest one elementwise graph; None:
            decided by ``RVC_OPTIM_COMPILE``).

    State per parameter: ``avg_grad`` and ``x_k`` (the size of the parameter), ``v_k`` (and ``v_kk`` for
    'exp') as 0-d tensors. The group keeps ``step`` (k + 1 after a step).

    Deviations from the reference (torch-optimizer):
        * no ``lr`` argument: the reference accepts one and ignores it; here the step comes from lips and
          beta only, and an LR scheduler has nothing to change.
        * k is counted per group (``group['step']``), the reference counts per parameter; they agree
          whenever every parameter gets a gradient at every step.
        * ``v_k``/``v_kk`` are 0-d tensors on the parameter's device (the reference keeps Python floats
          read with ``.item()`` every step); the average is updated as gbar + (g - gbar) / (k + 1).
    """

    read_only_state = ()
    needs_reduction_pass = True  # the norms of delta come before the step

    def __init__(
        self,
        params: Any,
        beta: float = 10.0,
        lips: float = 10.0,
        rho: float = 0.5,
        variant: Literal["uni", "inc", "exp"] = "uni",
        *,
        compiled: bool | None = None,
    ) -> None:
        check_nonnegative(beta, "beta")
        check_positive(lips, "lips")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"Invalid rho value: {rho} (must be in [0, 1])")
        _check_variant(variant)
        super().__init__(params, dict(beta=beta, lips=lips, rho=rho, variant=variant))
        self._update = UpdateFunction(a2grad_update, compiled, elementwise=False, flat=True)
        self._apply = UpdateFunction(a2grad_apply, compiled)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "A2Grad")
            if not params:
                continue
            _check_variant(group["variant"])
            k = group.get("step", 0)
            group["step"] = k + 1
            exp = group["variant"] == "exp"
            for p, g in zip(params, grads):
                state = self.state[p]
                if not state:
                    state["avg_grad"] = g.clone(memory_format=torch.preserve_format)
                    state["x_k"] = p.detach().clone(memory_format=torch.preserve_format)
                    state["v_k"] = torch.zeros((), dtype=scalar_dtype(p.dtype), device=p.device)
                if exp and "v_kk" not in state:
                    state["v_kk"] = torch.zeros((), dtype=scalar_dtype(p.dtype), device=p.device)
            keys = ("avg_grad", "x_k", "v_k") + (("v_kk",) if exp else ())
            lists = [[self.state[p][key] for p in params] for key in keys]
            for device, dtype, (p, g, avg, x, v, *v_kk) in group_by_device_and_dtype(params, grads, *lists):
                # k as a 0-d tensor where the update compiles (a Python int would build a graph per step)
                compiles = resolve_compiled(self._update.compiled, device.type, sum(t.numel() for t in p))
                if compiles and device.type == "cpu":
                    # compiled on a CPU: the spreads' norms eager (BLAS dot products read faster than
                    # inductor's sums here: RVC's generator 77 ms a step against 94 fused, the
                    # discriminator 121 against 153), the rest one elementwise graph
                    self._step_with_eager_norms(p, g, avg, x, v, v_kk[0] if v_kk else [], group,
                                                scalar(k, device, v[0].dtype))
                    continue
                self._update(
                    p, g, avg, x, v, v_kk[0] if v_kk else [],
                    k=scalar(k, device, v[0].dtype) if compiles else k, beta=group["beta"], lips=group["lips"],
                    rho=group["rho"], variant=group["variant"], device_type=device.type,
                )
        return loss

    def _step_with_eager_norms(self, params: list[Tensor], grads: list[Tensor], avg_grads: list[Tensor],
                               x_ks: list[Tensor], v_ks: list[Tensor], v_kks: list[Tensor], group: dict[str, Any],
                               k: Tensor) -> None:
        shrink = k / (k + 1)
        coefs = a2grad_coefficients(a2grad_spreads_(avg_grads, grads) * shrink**2, v_ks, v_kks, k=k,
                                    beta=group["beta"], lips=group["lips"], rho=group["rho"],
                                    variant=group["variant"])
        self._apply(params, grads, avg_grads, x_ks, list(coefs.to(params[0].dtype).unbind()), shrink=shrink,
                    a=2.0 / (k + 2), a_next=2.0 / (k + 3), device_type="cpu")
