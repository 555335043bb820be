"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner.

Paper: "SOAP: Improving and Stabilizing Shampoo using Adam", N. Vyas, D. Morwani, R. Zhao, M. Kwun,
I. Shapira, D. Brandfonbrener, L. Janson, S. Kakade, 2024, arXiv:2409.11321. This is the authors'
current algorithm (nikhilvyas/SOAP after commit f42d296, "momentum change": the first moment lives in
the eigenbasis).

For a tensor with (merged) dimensions d_1..d_n, each preconditioned dimension i keeps a d_i x d_i
average of gradient outer products ``GG_i`` and its eigenbasis ``Q_i``. With ``rot(x)`` applying
``Q_i^T`` along every preconditioned mode and ``rot_back(x)`` applying ``Q_i``::

    first call:  GG_i <- lerp(GG_i, G_(i) G_(i)^T, 1 - shampoo_beta);  Q_i <- eigh(GG_i) (descending)
                 (the parameters do not move)
    later:       g' = rot(g);  t <- t + 1
                 m <- beta1 m + (1 - beta1) g';  v <- beta2 v + (1 - beta2) g'^2
                 u = rot_back(m / (sqrt(v) + eps))          [u /= rms(u) if normalize_grads]
                 p <- p - lr * sqrt(1 - beta2^t) / (1 - beta1^t) * u;  p <- p - lr * wd * p
                 m <- rot_back(m) with the old Q;  GG_i <- lerp(GG_i, G_(i) G_(i)^T, 1 - shampoo_beta)
                 every precondition_frequency steps: order Q_i's columns by diag(Q_i^T GG_i Q_i)
                 (descending, permuting v's mode i alike) and Q_i <- qr(GG_i Q_i)   (one power step)
                 m <- rot(m) with the new Q

Pick it for fast convergence per step when a d x d matrix per dimension and a matrix product per
dimension and step are affordable; at RVC scale it costs far more per step than AdamW.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction
from rvc_optim.optim._foreach import (
    add_scaled_,
    adam_step_correction,
    check_betas,
    check_eps,
    check_lr,
    check_nonnegative_int,
    check_positive,
    check_weight_decay,
    decay_weights_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
)

__all__ = ["SOAP", "soap_direction_", "soap_apply_", "merged_shape"]

DATA_FORMATS = ("channels_first", "channels_last")
_TINY = 1e-30  # the authors' regulariser of eigh and of the rms in normalize_grads


def soap_direction_(
    projected: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """Adam's moments in the eigenbasis; ``projected`` (the rotated gradient) becomes ``m / (sqrt(v) + eps)``."""
    torch._foreach_lerp_(exp_avgs, projected, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, projected, projected, value=1.0 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_add_(denom, eps)
    torch._foreach_copy_(projected, exp_avgs)
    torch._foreach_div_(projected, denom)


def soap_apply_(
    params: list[Tensor],
    updates: list[Tensor],
    *,
    step_size: Tensor | float,
    lr: Tensor | float,
    weight_decay: float,
) -> None:
    """``p <- p - step_size * u``, then the decoupled decay ``p <- p - lr * wd * p`` (after the step)."""
    add_scaled_(params, updates, -step_size)
    decay_weights_(params, lr, weight_decay)


def merged_shape(shape: Sequence[int], max_precond_dim: int) -> tuple[int, ...]:
    """Consecutive dimensions merged while their product stays <= ``max_precond_dim`` (the authors'
    ``merge_dims``): [4, 3, 3, 3] -> [108], [512, 256, 16] -> [512, 4096] for 10000."""
    merged, running = [], 1
    for size in shape:
        if running * size <= max_precond_dim:
            running *= size
        elif running > 1:
            merged.append(running)
            running = size
        else:
            merged.append(size)
    if running > 1 or not merged:
        merged.append(running)
    return tuple(merged)


@dataclass(frozen=True)
class _Layout:
    """How one parameter is seen by the preconditioner: the (permuted, merged) working shape and which
    of its modes have a factor. Parameters with equal layouts are rotated as one batch."""

    shape: tuple[int, ...]  # the parameter's own shape
    work: tuple[int, ...]  # the working shape (merged, after the channels_last permutation)
    channels_last: bool  # 4-D, merged, data_format channels_last: work is of p.permute(0, 3, 1, 2)
    factors: tuple[bool, ...]  # per working mode: has a GG/Q pair

    def to_work(self, t: Tensor) -> Tensor:
        if self.channels_last:
            t = t.permute(0, 3, 1, 2)
        return t.reshape(self.work)

    def from_work(self, t: Tensor) -> Tensor:
        if self.channels_last:
            s = self.shape
            return t.reshape(s[0], s[3], s[1], s[2]).permute(0, 2, 3, 1)
        return t.reshape(self.shape)


def _layout(p: Tensor, group: dict[str, Any], data_format: str) -> _Layout:
    shape, max_dim = tuple(p.shape), group["max_precond_dim"]
    if p.dim() == 1:
        return _Layout(shape, shape, False, (group["precondition_1d"] and shape[0] <= max_dim,))
    channels_last = group["merge_dims"] and data_format == "channels_last" and p.dim() == 4
    work = shape
    if group["merge_dims"]:
        permuted = (shape[0], shape[3], shape[1], shape[2]) if channels_last else shape
        work = merged_shape(permuted, max_dim)
    return _Layout(shape, work, channels_last, tuple(size <= max_dim for size in work))


def _work_dtype(p: Tensor) -> torch.dtype:
    """State and rotations in the parameter's dtype, in float32 for half-precision parameters."""
    return p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32


def _rotate(x: Tensor, qs: Sequence[Tensor | None], back: bool) -> Tensor:
    """Apply ``Q^T`` (``back``: ``Q``) along every mode of a batch ``x`` [B, d_1, .., d_n], mode by mode:
    each product moves its mode to the end, so after n modes the order is the original one. A mode
    without a factor is only moved. ``qs`` holds one batch [B, d_i, d_i] (or None) per mode."""
    batch = x.shape[0]
    for q in qs:
        rest = x.shape[2:]
        if q is None:
            x = x.movedim(1, -1)
            continue
        flat = x.reshape(batch, x.shape[1], -1).transpose(1, 2)
        x = (flat @ (q.transpose(1, 2) if back else q)).reshape(batch, *rest, x.shape[1])
    return x


def _normalize_(x: Tensor) -> Tensor:
    """Each tensor of the batch divided by (1e-30 + its root mean square)."""
    dims = tuple(range(1, x.dim()))
    rms = x.square().mean(dim=dims, keepdim=True).sqrt() if dims else x.abs()
    return x.div_(rms.add_(_TINY))


def _batches(params: list[Tensor], layouts: dict[Tensor, _Layout]) -> dict[Any, list[int]]:
    """Indices of the parameters that can be rotated together: same layout, device and dtype."""
    out: dict[Any, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        out[(layouts[p], p.device, _work_dtype(p))].append(i)
    return out


def _stacked_factors(states: list[dict[str, Any]], layout: _Layout, key: str) -> list[Tensor | None]:
    return [torch.stack([s[key][k] for s in states]) if has else None for k, has in enumerate(layout.factors)]


class SOAP(Optimizer):
    """SOAP, with the authors' argument names and defaults (nikhilvyas/SOAP ``SOAP``).

    Args:
        params: parameters or param groups.
        lr: learning rate (default 3e-3).
        betas: Adam's (beta1, beta2) in the eigenbasis (default (0.95, 0.95)).
        shampoo_beta: decay of the factors GG; a negative value means betas[1] (default -1).
        eps: added to sqrt(v) (default 1e-8).
        weight_decay: decoupled decay, ``p <- p - lr * wd * p`` after the step (default 0.01).
        precondition_frequency: steps between eigenbasis refreshes (one power step and a QR; default 10).
        max_precond_dim: dimensions above this are left without a factor (default 10000).
        merge_dims: merge consecutive dimensions while their product is <= max_precond_dim (default False).
        precondition_1d: give 1-D tensors a factor too; otherwise they get plain Adam (default False).
        normalize_grads: divide each update by its root mean square (default False).
        data_format: ``"channels_first"`` or ``"channels_last"`` (4-D tensors are permuted to
            channels-first before merging; as in the authors' code, only with merge_dims).
        correct_bias: Adam's bias corrections (default True).
        compiled: use the ``torch.compile``d elementwise update (None: decided by ``RVC_OPTIM_COMPILE``,
            see :mod:`rvc_optim.optim._compile`).

    Deviations from the reference:
        - tensors that share a layout are rotated as one batched matrix product, and factors of one size
          are decomposed as one batch (the authors loop over tensors and factors); the same LAPACK calls
          per matrix, so the results agree to float64 rounding.
        - m's turn out of the old bases and into the new ones after each step is one product per mode,
          by ``Q_new^T Q_old`` (kept between refreshes, where it is ``Q^T Q``), instead of two rotations
          of the whole tensor: the same values to float64 rounding, one rotation per step fewer.
        - the factors and rotations of bfloat16/float16 parameters are kept in float32 (the authors'
          factors are made in the default dtype, and a half-precision gradient cannot be averaged into
          them). Loading a state_dict casts them to the parameter's dtype (torch's rule for state) and
          back to float32, so a half-precision resume is not bit-identical.
        - the eigendecompositions make the same casts as the authors' code (eigh on the factor rounded to
          float32, in the factor's dtype; the refresh's products and QR in float32), so their results
          carry float32 rounding for float64 parameters too, on purpose.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float = -1,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        normalize_grads: bool = False,
        data_format: str = "channels_first",
        correct_bias: bool = True,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        if not shampoo_beta < 1.0:
            raise ValueError(f"Invalid shampoo_beta value: {shampoo_beta} (must be < 1; negative means betas[1])")
        check_eps(eps)
        check_weight_decay(weight_decay)
        check_nonnegative_int(precondition_frequency, "precondition_frequency")
        check_positive(precondition_frequency, "precondition_frequency")
        check_nonnegative_int(max_precond_dim, "max_precond_dim")
        if data_format not in DATA_FORMATS:
            raise ValueError(f"Invalid data_format: {data_format!r} (must be one of {DATA_FORMATS})")
        defaults = dict(
            lr=lr, betas=tuple(betas), shampoo_beta=shampoo_beta, eps=eps, weight_decay=weight_decay,
            precondition_frequency=int(precondition_frequency), max_precond_dim=int(max_precond_dim),
            merge_dims=merge_dims, precondition_1d=precondition_1d, normalize_grads=normalize_grads,
            correct_bias=correct_bias,
        )
        super().__init__(params, defaults)
        self._data_format = data_format
        self._direction = UpdateFunction(soap_direction_, compiled)
        self._apply = UpdateFunction(soap_apply_, compiled)
        self._transitions: dict[tuple[int, int], Any] = {}  # of the last step, kept between refreshes
        self.register_load_state_dict_post_hook(_factors_back_to_float32)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        transitions: dict[tuple[int, int], Any] = {}  # the products Q_old^T Q_new used by this step
        for group in self.param_groups:
            params, grads = params_with_grad(group, "SOAP")
            if not params:
                continue
            layouts = {p: _layout(p, group, self._data_format) for p in params}
            fresh = [i for i, p in enumerate(params) if "Q" not in self.state[p]]
            ready = [i for i, p in enumerate(params) if "Q" in self.state[p]]
            for i in fresh:
                self._init_state(params[i], group, layouts[params[i]])
            ready_params = [params[i] for i in ready]
            ready_grads = [grads[i] for i in ready]
            if ready_params:
                self._adam_step(group, ready_params, ready_grads, layouts)
            old_bases = {p: list(self.state[p]["Q"]) for p in ready_params}
            self._accumulate_factors(params, grads, layouts)
            self._decompose([params[i] for i in fresh], layouts)
            due = [p for p in ready_params if self.state[p]["step"] % self.state[p]["precondition_frequency"] == 0]
            self._refresh(due, layouts)
            self._carry_momentum(ready_params, layouts, old_bases, transitions)
        self._transitions = transitions
        return loss

    def _carry_momentum(self, params: list[Tensor], layouts: dict[Tensor, _Layout],
                        old_bases: dict[Tensor, list[Any]], transitions: dict[tuple[int, int], Any]) -> None:
        """m <- rot(rot_back(m) with the old bases) with the new ones, as the authors do every step, in
        one product per mode: Q_new^T Q_old. That is Q^T Q between refreshes, which is not I (a float32 QR
        basis is orthonormal to about 1e-7), so it is applied, and kept from step to step."""
        for (layout, _, dtype), idx in _batches(params, layouts).items():
            chosen = [params[i] for i in idx]
            qs = []
            for k, has in enumerate(layout.factors):
                pairs = [(old_bases[p][k], self.state[p]["Q"][k]) for p in chosen] if has else []
                qs.append(torch.stack([self._transition(a, b, transitions) for a, b in pairs]) if has else None)
            x = torch.stack([layout.to_work(self.state[p]["exp_avg"]) for p in chosen])
            x = _rotate(x, qs, back=False)
            for p, m in zip(chosen, x.unbind(0)):
                self.state[p]["exp_avg"].copy_(layout.from_work(m))

    def _transition(self, old: Tensor, new: Tensor, transitions: dict[tuple[int, int], Any]) -> Tensor:
        """``Q_old^T Q_new`` (rotating by it applies its transpose), computed once per pair of bases."""
        key = (id(old), id(new))
        cached = self._transitions.get(key) or transitions.get(key)
        if cached is None or cached[0] is not old or cached[1] is not new:
            cached = (old, new, old.transpose(0, 1) @ new)
        transitions[key] = cached
        return cached[2]

    def _init_state(self, p: Tensor, group: dict[str, Any], layout: _Layout) -> None:
        state, dtype = self.state[p], _work_dtype(p)
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.contiguous_format)
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.contiguous_format)
        state["GG"] = [torch.zeros(d, d, dtype=dtype, device=p.device) if has else []
                       for d, has in zip(layout.work, layout.factors)]
        state["Q"] = None
        state["precondition_frequency"] = group["precondition_frequency"]
        beta = group["shampoo_beta"]
        state["shampoo_beta"] = beta if beta >= 0 else group["betas"][1]

    def _rotate_all(self, params: list[Tensor], tensors: list[Tensor], layouts: dict[Tensor, _Layout],
                    back: bool, normalize: bool = False) -> list[Tensor]:
        """Each tensor rotated into (``back``: out of) its parameter's eigenbasis, in its own shape."""
        out: list[Tensor] = [tensors[0]] * len(tensors)
        for (layout, _, dtype), idx in _batches(params, layouts).items():
            states = [self.state[params[i]] for i in idx]
            x = torch.stack([layout.to_work(tensors[i].to(dtype)) for i in idx])
            x = _rotate(x, _stacked_factors(states, layout, "Q"), back)
            if normalize:
                x = _normalize_(x.contiguous())
            for i, xi in zip(idx, x.unbind(0)):
                out[i] = layout.from_work(xi)
        return out

    def _adam_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                   layouts: dict[Tensor, _Layout]) -> None:
        beta1, beta2 = group["betas"]
        projected = [g.contiguous() for g in self._rotate_all(params, grads, layouts, back=False)]
        by_step: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            self.state[p]["step"] += 1
            by_step[self.state[p]["step"]].append(i)
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        for device, _, (m, v, g) in group_by_device_and_dtype(exp_avgs, exp_avg_sqs, projected):
            self._direction(g, m, v, beta1=beta1, beta2=beta2, eps=group["eps"], device_type=device.type)
        updates = self._rotate_all(params, projected, layouts, back=True, normalize=group["normalize_grads"])
        for t, idx in by_step.items():
            correction = adam_step_correction(beta1, beta2, t) if group["correct_bias"] else 1.0
            chosen = ([params[i] for i in idx], [updates[i] for i in idx])
            for device, dtype, (p, u) in group_by_device_and_dtype(*chosen):
                lr = scalar(group["lr"], device, dtype)
                self._apply(p, u, step_size=lr * correction, lr=lr, weight_decay=group["weight_decay"],
                            device_type=device.type)

    def _accumulate_factors(self, params: list[Tensor], grads: list[Tensor], layouts: dict[Tensor, _Layout]) -> None:
        """GG_i <- lerp(GG_i, G_(i) G_(i)^T, 1 - shampoo_beta), one batched product per mode and layout."""
        for (layout, _, dtype), idx in _batches(params, layouts).items():
            states = [self.state[params[i]] for i in idx]
            x = torch.stack([layout.to_work(grads[i].to(dtype)) for i in idx])
            for k, has in enumerate(layout.factors):
                if not has:
                    continue
                mode = x.movedim(k + 1, 1).reshape(len(idx), layout.work[k], -1)
                outer = (mode @ mode.transpose(1, 2)).unbind(0)
                for s, o in zip(states, outer):
                    s["GG"][k].lerp_(o, 1.0 - s["shampoo_beta"])

    def _decompose(self, params: list[Tensor], layouts: dict[Tensor, _Layout]) -> None:
        """First bases: eigenvectors of each factor, largest eigenvalue first (batched by size)."""
        slots = [(self.state[p], k) for p in params for k, has in enumerate(layouts[p].factors) if has]
        for p in params:
            self.state[p]["Q"] = [[] for _ in layouts[p].factors]
        for chosen in _by_size(slots):
            gg = torch.stack([s["GG"][k] for s, k in chosen])
            q = _eigenvectors(gg)
            for (s, k), qi in zip(chosen, q.unbind(0)):
                s["Q"][k] = qi

    def _refresh(self, params: list[Tensor], layouts: dict[Tensor, _Layout]) -> None:
        """One power step and a QR per factor, columns first ordered by their eigenvalue estimates;
        exp_avg_sq's modes are permuted alike."""
        slots = [(self.state[p], k) for p in params for k, has in enumerate(layouts[p].factors) if has]
        orders: dict[tuple[int, int], Tensor] = {}
        for chosen in _by_size(slots):
            gg = torch.stack([s["GG"][k] for s, k in chosen]).float()
            q = torch.stack([s["Q"][k] for s, k in chosen]).float()
            estimates = torch.diagonal(q.transpose(1, 2) @ gg @ q, dim1=1, dim2=2)
            order = torch.argsort(estimates, dim=1, descending=True)
            q = torch.take_along_dim(q, order.unsqueeze(1), dim=2)
            q = torch.linalg.qr(gg @ q).Q
            for (s, k), qi, oi in zip(chosen, q.unbind(0), order.unbind(0)):
                s["Q"][k] = qi.to(s["GG"][k].dtype)
                orders[(id(s), k)] = oi
        for p in params:
            state, layout = self.state[p], layouts[p]
            v = layout.to_work(state["exp_avg_sq"])
            for k, has in enumerate(layout.factors):
                if has:
                    v = v.index_select(k, orders[(id(state), k)])
            state["exp_avg_sq"].copy_(layout.from_work(v))


def _by_size(slots: list[tuple[dict[str, Any], int]]) -> list[list[tuple[dict[str, Any], int]]]:
    """Factor slots grouped by matrix size, dtype and device, for batched decompositions."""
    out: dict[Any, list[tuple[dict[str, Any], int]]] = defaultdict(list)
    for s, k in slots:
        gg = s["GG"][k]
        out[(gg.shape[0], gg.dtype, gg.device)].append((s, k))
    return list(out.values())


def _eigenvectors(gg: Tensor) -> Tensor:
    """Eigenvectors of a batch of factors, largest eigenvalue first, as the authors compute them: on the
    factor rounded to float32, plus 1e-30 I, in the factor's dtype (retried in float64 on failure)."""
    dtype = gg.dtype
    work = gg.float().to(dtype)
    eye = torch.eye(gg.shape[-1], dtype=dtype, device=gg.device)
    try:
        q = torch.linalg.eigh(work + _TINY * eye).eigenvectors
    except RuntimeError:  # a float32 eigh that did not converge
        q = torch.linalg.eigh(work.double() + _TINY * eye.double()).eigenvectors.to(dtype)
    return torch.flip(q, [-1])


def _factors_back_to_float32(optimizer: Optimizer) -> None:
    """torch's load_state_dict casts floating state to the parameter's dtype; the state of half-precision
    parameters is kept in float32."""
    for p, state in optimizer.state.items():
        if _work_dtype(p) == p.dtype:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key] = state[key].float()
        for key in ("GG", "Q"):
            if state.get(key) is not None:
                state[key] = [t.float() if isinstance(t, Tensor) else t for t in state[key]]
