"""Muon (MomentUm Orthogonalized by Newton-Schulz), with an internal AdamW for everything else.

Source: Keller Jordan, Yuchen Jin, Vlado Boza, Jiacheng You, Franz Cesista, Laker Newhouse, Jeremy
Bernstein, "Muon: An optimizer for hidden layers in neural networks", 2024, a blog post
(kellerjordan.github.io/posts/muon); the authors' code is github.com/KellerJordan/Muon. Scaled up in
"Muon is Scalable for LLM Training", Liu et al., 2025, arXiv:2502.16982.

Update of a hidden weight W (viewed as a matrix of ``out`` rows by ``in * k`` columns) with gradient
G, momentum M, momentum coefficient mu, learning rate lr and decay wd::

    M <- lerp(M, G, 1 - mu)                     momentum
    U <- lerp(G, M, mu)                         Nesterov look-ahead (U = M without Nesterov)
    X <- U / (||U||_F + 1e-7)                   (transposed when out > in * k)
    5 times:  A <- X X^T;  X <- a X + (b A + c A A) X      (a, b, c) = (3.4445, -4.7750, 2.0315)
    W <- W * (1 - lr * wd) - lr * sqrt(max(1, out / (in * k))) * X

The quintic Newton-Schulz iteration pushes every singular value of U towards 1 (into about
[0.7, 1.2]), so the step is the nearest semi-orthogonal matrix to the momentum: the same size in every
direction, however badly the gradient is conditioned. Tensors that are not hidden matrices (biases,
gains, weight-norm magnitudes, embeddings, the input layer on a raw signal and the output head) are
trained by AdamW (m, v by lerp; W <- W (1 - lr wd) - lr m_hat / (sqrt(v_hat) + eps)).

Pick it for an experiment in fast convergence: its lr is a spectral step (about 0.02), not an AdamW lr.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction
from rvc_optim.optim._foreach import (
    add_scaled_,
    advance_host_steps,
    bias_correction,
    check_betas,
    check_eps,
    check_lr,
    check_momentum,
    check_nonnegative_int,
    check_weight_decay,
    decay_weights_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
)

__all__ = [
    "ADAMW",
    "MUON",
    "NS_COEFFICIENTS",
    "Muon",
    "default_role",
    "muon_adamw_update",
    "muon_apply_update",
    "newton_schulz",
    "orthogonalize",
]

MUON, ADAMW = "muon", "adamw"
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7
# Names of tensors that are never hidden matrices: biases, weight-norm magnitudes (legacy and
# parametrized), and embeddings (RVC's emb_g, emb_pitch, emb_phone, the relative-position emb_rel_k/v).
_ADAMW_SUFFIXES = ("bias", "weight_g", "original0")
_EMBEDDING = re.compile(r"(^|[._])emb")
# What a param group may set, by the role of its tensors (``use_muon`` picks one; none: both).
_MUON_KEYS = ("lr", "momentum", "weight_decay", "nesterov", "ns_steps")
_ADAMW_KEYS = ("adamw_lr", "adamw_betas", "adamw_eps", "adamw_weight_decay")
_AUTHORS_ADAMW_KEYS = {"lr": "adamw_lr", "betas": "adamw_betas", "eps": "adamw_eps", "weight_decay": "adamw_weight_decay"}


# --- routing ------------------------------------------------------------------------------------------


def matrix_shape(t: Tensor) -> tuple[int, int]:
    """The matrix a weight is orthogonalised as: ``[out, in * k...]`` (conv kernels flattened)."""
    return t.shape[0], t.numel() // t.shape[0]


def default_role(name: str | None, param: Tensor, embedding: bool = False) -> str:
    """Keller Jordan's rule (hidden matrices to Muon; embeddings, the first and last layers, gains and
    biases to AdamW) read on an RVC-style conv net:

    * AdamW: fewer than 2 dimensions; one element per output channel (weight-norm magnitudes
      ``[C, 1, 1]``, gains); one output channel (an output head such as RVC's ``conv_post`` layers,
      a ``[1, n]`` matrix has no direction to orthogonalise); a conv reading a one-channel signal
      (``[C, 1, k]``: the waveform-input layers, RVC's ``noise_convs`` and the discriminators'
      first convs); names ending in ``bias``/``weight_g``/``original0``; embeddings (an
      ``nn.Embedding`` weight, or a name with a component starting with ``emb``: ``emb_g``,
      ``enc_p.emb_phone``, ``emb_pitch``, ``emb_rel_k``);
    * Muon: every other tensor of 2 or more dimensions, conv kernels included.

    Without a name (plain tensors) only the shape rules apply.
    """
    if param.dim() < 2 or param.numel() == param.shape[0] or param.shape[0] == 1:
        return ADAMW
    if param.dim() >= 3 and param.shape[1] == 1:
        return ADAMW
    if embedding or (name is not None and (name.endswith(_ADAMW_SUFFIXES) or _EMBEDDING.search(name))):
        return ADAMW
    return MUON


def _matches(name: str | None, patterns: Sequence[str]) -> bool:
    return name is not None and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


# --- the update -------------------------------------------------------------------------------------------


def newton_schulz(X: Tensor, steps: int = 5, coefficients: Sequence[float] = NS_COEFFICIENTS) -> Tensor:
    """The authors' quintic Newton-Schulz iteration on a batch ``[B, m, n]`` (or one ``[m, n]``) with ``m <= n``.

    In bfloat16 the authors' operations are kept one by one (their rounding is the reference's). In
    float32/float64, on matrices wide enough for it to be cheaper (``n > 1.5 m``), the same polynomial
    runs on the ``m x m`` Gram matrix (:func:`_gram_newton_schulz`).
    """
    a, b, c = coefficients
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + NS_EPS)
    if X.dtype != torch.bfloat16 and gram_form_is_cheaper(X.shape[-2], X.shape[-1], steps):
        return _gram_newton_schulz(X, steps, coefficients)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    return X


def newton_schulz_multiply_adds(m: int, n: int, steps: int = 5) -> tuple[int, int]:
    """Multiply-adds of the iteration on an ``m x n`` matrix (``m <= n``): the authors' form
    (per step ``X X^T``, ``A A`` and ``B X``) and the Gram form (``X X^T`` and ``Q X`` once, per step
    ``A A``, ``P Q`` and ``P (A P)``, the last two skipped once each)."""
    plain = steps * (2 * m * m * n + m**3)
    gram = 2 * m * m * n + (steps + 3 * (steps - 1)) * m**3
    return plain, gram


def gram_form_is_cheaper(m: int, n: int, steps: int = 5) -> bool:
    """Whether the Gram form does fewer multiply-adds (``n > 1.5 m`` for more than one step)."""
    plain, gram = newton_schulz_multiply_adds(m, n, steps)
    return gram < plain


def _gram_newton_schulz(X: Tensor, steps: int, coefficients: Sequence[float]) -> Tensor:
    """Each step is ``X <- P X`` with ``P = a I + b A + c A^2`` a polynomial of ``A = X X^T``; so
    ``A <- P A P`` and the product ``Q`` of the ``P``s can be carried on the ``m x m`` matrices alone,
    and ``X`` multiplied once at the end: ``2 m^2 n + 17 m^3`` multiply-adds instead of
    ``10 m^2 n + 5 m^3`` (2x fewer for RVC's [1024, 5120] kernels, more on wider ones; more on square
    ones, where it is not used). The same in exact arithmetic; in float32 it rounds differently
    (measured in the parity test), and bfloat16 keeps the authors' form."""
    a, b, c = coefficients
    A = X @ X.mT
    Q = None
    for i in range(steps):
        P = torch.baddbmm(A, A, A, beta=b, alpha=c)
        P.diagonal(dim1=-2, dim2=-1).add_(a)
        Q = P if Q is None else P @ Q
        if i < steps - 1:
            A = P @ (A @ P)
    return X if Q is None else Q @ X


def orthogonalize(updates: list[Tensor], steps: int = 5, dtype: torch.dtype = torch.bfloat16,
                  coefficients: Sequence[float] = NS_COEFFICIENTS) -> list[Tensor]:
    """Each update as its ``[out, in * k]`` matrix, orthogonalised and scaled by sqrt(max(1, out / (in k))).

    Updates with the same matrix shape go through one batched iteration, except in bfloat16 on a CPU,
    where each matrix is iterated alone, as the authors' are: there a batched bfloat16 product can round
    differently from the same products taken one by one (measured on an AVX-512 EPYC: 6 of 2,000 batches
    of two [16, 16] products), and bfloat16 on a CPU is only ever asked for to match the authors' bits.
    Returns tensors of the updates' shapes and dtype, in their order.
    """
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, u in enumerate(updates):
        buckets.setdefault(matrix_shape(u), []).append(i)
    one_by_one = dtype == torch.bfloat16 and updates[0].device.type == "cpu"
    out: list[Tensor] = [updates[0]] * len(updates)
    for (m, n), index in buckets.items():
        for batch in ([[i] for i in index] if one_by_one else [index]):
            if one_by_one:  # a matrix, not a batch of one: single products
                X = updates[batch[0]].reshape(m, n).to(dtype)
            else:
                X = torch.stack([updates[i].reshape(m, n) for i in batch]).to(dtype)
            tall = m > n
            X = newton_schulz(X.mT if tall else X, steps, coefficients)
            X = X.mT if tall else X
            if tall:
                X *= (m / n) ** 0.5
            X = X.to(dtype=updates[0].dtype, memory_format=torch.contiguous_format)
            for i, x in zip(batch, [X] if one_by_one else X.unbind(0)):
                out[i] = x.view(updates[i].shape)
    return out


def muon_apply_update(params: list[Tensor], updates: list[Tensor], *, lr: Tensor | float, weight_decay: float) -> None:
    decay_weights_(params, lr, weight_decay)
    add_scaled_(params, updates, -lr)


def muon_adamw_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    lr: Tensor | float,
    bias_correction1: Tensor | float,
    bias_correction2: Tensor | float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """The authors' auxiliary AdamW, in their order of operations (so that float32 runs round as theirs):
    ``p <- p (1 - lr wd) - lr (m / bc1) / (sqrt(v / bc2) + eps)``."""
    decay_weights_(params, lr, weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_lerp_(exp_avg_sqs, torch._foreach_mul(grads, grads), 1.0 - beta2)
    denom = torch._foreach_div(exp_avg_sqs, bias_correction2)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(exp_avgs, bias_correction1)
    torch._foreach_div_(update, denom)
    add_scaled_(params, update, -lr)


# --- the optimizer -----------------------------------------------------------------------------------------


def _resolve_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"Invalid ns_dtype: {value!r} (bfloat16, float32, float64 or None)")
    return dtype


class Muon(Optimizer):
    """Muon for hidden matrices and AdamW for the rest, routed by name and shape.

    Args:
        params: an ``nn.Module``, ``(name, tensor)`` pairs (``model.named_parameters()``), tensors, or
            param groups of any of these. A group may carry ``use_muon`` (True/False, the authors'
            format: its ``lr``/``betas``/``eps``/``weight_decay`` are then the AdamW ones when False)
            and may set any of ``lr``, ``momentum``, ``weight_decay``, ``nesterov``, ``ns_steps`` and
            ``adamw_lr``, ``adamw_betas``, ``adamw_eps``, ``adamw_weight_decay``. A group without
            ``use_muon`` is split by :func:`default_role`; if it sets ``lr`` but not ``adamw_lr``,
            its AdamW part gets ``adamw_lr * lr / (the constructor's lr)`` (so lr 0 freezes the whole
            group and a scheduler's factor reaches both parts).
        lr: Muon's learning rate, in units of spectral norm per step (default 0.02).
        momentum: momentum coefficient mu (default 0.95).
        weight_decay: decoupled weight decay of the Muon weights, multiplied by lr (default 0).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: the internal AdamW's settings
            (default 3e-4, (0.9, 0.95), 1e-10, 0: the authors').
        nesterov: Nesterov look-ahead (default True, as the authors hard-code).
        ns_steps: Newton-Schulz iterations (default 5).
        ns_dtype: the iteration's dtype: ``"bfloat16"`` (the authors'), ``"float32"``, ``"float64"``, or
            None (default): bfloat16 on CUDA, float32 elsewhere (a CPU's bfloat16 matrix products are
            about 11x slower than float32 ones: measured 2.1 s against 0.18 s on this project's 2-core
            CPU for a batch of eight 512x768 products).
        muon_patterns, adamw_patterns: ``fnmatch`` patterns of names sent to Muon / to AdamW whatever
            the default rule says (AdamW patterns win over Muon ones; a group's ``use_muon`` over both).
        compiled: use the ``torch.compile``d elementwise updates (None: ``RVC_OPTIM_COMPILE``).

    ``param_roles()`` returns each tensor's name (``#i`` for unnamed ones) and role.

    Deviations from the reference (the authors' ``SingleDeviceMuonWithAuxAdam``):

    * a conv kernel ``[out, in, k]`` is orthogonalised as one ``[out, in * k]`` matrix and scaled by
      ``sqrt(max(1, out / (in * k)))``; the authors run a 3-D tensor as ``out`` separate ``in x k``
      matrices scaled by ``sqrt(max(1, in / k))``, and scale a flattened 4-D kernel by its last two
      dimensions (``sqrt(max(1, kh / kw))``);
    * routing is automatic (the authors need every group marked ``use_muon``);
    * the Nesterov mix goes to a temporary: ``p.grad`` is not overwritten;
    * matrices of one shape share one batched Newton-Schulz iteration (in bfloat16 on a CPU each runs
      alone, as the authors': batched bfloat16 products round differently there); outside bfloat16 it runs on
      the Gram matrix where that is cheaper (the same polynomial, 2x fewer multiply-adds on RVC's
      widest kernels);
    * none in the AdamW part: it counts ``step`` as the authors do (a Python int per tensor, so the
      bias corrections are exact host arithmetic) and keeps their order of operations.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 0.02,
        momentum: float = 0.95,
        weight_decay: float = 0.0,
        adamw_lr: float | Tensor = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-10,
        adamw_weight_decay: float = 0.0,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: str | torch.dtype | None = None,
        muon_patterns: Sequence[str] = (),
        adamw_patterns: Sequence[str] = (),
        *,
        compiled: bool | None = None,
    ) -> None:
        self._options = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=bool(nesterov), ns_steps=ns_steps,
            adamw_lr=adamw_lr, adamw_betas=tuple(adamw_betas), adamw_eps=adamw_eps,
            adamw_weight_decay=adamw_weight_decay,
        )
        self._check(self._options)
        self._ns_dtype = _resolve_dtype(ns_dtype)
        self._patterns = (tuple(muon_patterns), tuple(adamw_patterns))
        self._embeddings: set[int] = set()
        if isinstance(params, nn.Module):
            self._embeddings = {id(m.weight) for m in params.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
            params = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
        super().__init__(params, {})
        self._adamw = UpdateFunction(muon_adamw_update, compiled)
        self._apply = UpdateFunction(muon_apply_update, compiled)

    @staticmethod
    def _check(options: dict[str, Any]) -> None:
        check_lr(options["lr"])
        check_momentum(options["momentum"])
        check_weight_decay(options["weight_decay"])
        check_nonnegative_int(options["ns_steps"], "ns_steps")
        check_lr(options["adamw_lr"], "learning rate (adamw_lr)")
        check_betas(options["adamw_betas"], name="adamw_betas")
        check_eps(options["adamw_eps"], "adamw_eps")
        check_weight_decay(options["adamw_weight_decay"])

    # --- routing ---------------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group: split by role into a Muon group and an AdamW group (either may be empty)."""
        group = dict(param_group)
        items = group.pop("params")
        items = [items] if isinstance(items, Tensor) else list(items)
        use_muon = group.pop("use_muon", None)
        settings = self._group_settings(group, use_muon)
        routed: dict[str, list[Any]] = {MUON: [], ADAMW: []}
        for item in items:
            name, param = item if isinstance(item, tuple) else (None, item)
            routed[self._role(name, param, use_muon)].append(item)
        for role, role_items in routed.items():
            if role_items:
                super().add_param_group({"params": role_items, "use_muon": role == MUON, **settings[role]})

    def _group_settings(self, group: dict[str, Any], use_muon: bool | None) -> dict[str, dict[str, Any]]:
        if use_muon is False:  # the authors' AdamW group: lr, betas, eps, weight_decay are AdamW's
            group = {_AUTHORS_ADAMW_KEYS.get(k, k): v for k, v in group.items()}
        unknown = sorted(set(group) - set(_MUON_KEYS) - set(_ADAMW_KEYS) - {"param_names"})
        if unknown:
            raise ValueError(f"Muon param group: unknown option(s) {', '.join(unknown)}")
        options = {**self._options, **group}
        if "lr" in group and "adamw_lr" not in group and use_muon is None:
            base = float(self._options["lr"])
            options["adamw_lr"] = self._options["adamw_lr"] * (float(group["lr"]) / base) if base else group["lr"]
        self._check(options)
        return {
            MUON: {k: options[k] for k in _MUON_KEYS},
            ADAMW: {k.removeprefix("adamw_"): options[k] for k in _ADAMW_KEYS},
        }

    def _role(self, name: str | None, param: Tensor, use_muon: bool | None) -> str:
        muon_patterns, adamw_patterns = self._patterns
        if use_muon is not None:
            role = MUON if use_muon else ADAMW
        elif _matches(name, adamw_patterns):
            role = ADAMW
        elif _matches(name, muon_patterns):
            role = MUON
        else:
            role = default_role(name, param, id(param) in self._embeddings)
        if role == MUON and param.dim() < 2:
            raise ValueError(f"Muon: {name or 'a tensor'} of shape {tuple(param.shape)} is not a matrix; route it to AdamW")
        return role

    def param_roles(self) -> dict[str, str]:
        """Each tensor's name (``#i``, counted over all groups, for unnamed tensors) -> ``"muon"`` or ``"adamw"``."""
        roles: dict[str, str] = {}
        index = 0
        for group in self.param_groups:
            names = group.get("param_names") or [None] * len(group["params"])
            for name in names:
                roles[name if name is not None else f"#{index}"] = MUON if group["use_muon"] else ADAMW
                index += 1
        return roles

    def routing_summary(self) -> str:
        """One line: how many tensors and elements go to Newton-Schulz and how many to AdamW."""
        counts = {MUON: [0, 0], ADAMW: [0, 0]}
        for group in self.param_groups:
            count = counts[MUON if group["use_muon"] else ADAMW]
            count[0] += len(group["params"])
            count[1] += sum(p.numel() for p in group["params"])
        (mt, mp), (at, ap) = counts[MUON], counts[ADAMW]
        return f"{mt} tensors / {mp:,} params to Newton-Schulz (Muon), {at} tensors / {ap:,} params to AdamW"

    # --- steps -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "Muon")
            if params:
                (self._muon_step if group["use_muon"] else self._adamw_step)(group, params, grads)
        return loss

    def _muon_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        bufs = [state_tensor(self.state[p], "momentum_buffer", p) for p in params]
        mu = group["momentum"]
        for device, dtype, (ps, gs, ms) in group_by_device_and_dtype(params, grads, bufs):
            torch._foreach_lerp_(ms, gs, 1.0 - mu)
            updates = torch._foreach_lerp(gs, ms, mu) if group["nesterov"] else ms
            ns_dtype = self._ns_dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
            orthogonal = orthogonalize(updates, group["ns_steps"], ns_dtype)
            self._apply(ps, orthogonal, lr=scalar(group["lr"], device, dtype),
                        weight_decay=group["weight_decay"], device_type=device.type)

    def _adamw_step(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        steps = advance_host_steps(self.state, params, ("exp_avg", "exp_avg_sq"))
        beta1, beta2 = group["betas"]
        by_step: dict[int, list[int]] = {}
        for i, step in enumerate(steps):
            by_step.setdefault(step, []).append(i)
        for step, index in by_step.items():
            ps = [params[i] for i in index]
            lists = (ps, [grads[i] for i in index], *([self.state[p][k] for p in ps] for k in ("exp_avg", "exp_avg_sq")))
            for device, dtype, tensors in group_by_device_and_dtype(*lists):
                self._adamw(
                    *tensors,
                    lr=scalar(group["lr"], device, dtype),
                    bias_correction1=scalar(bias_correction(beta1, step), device, dtype),
                    bias_correction2=scalar(bias_correction(beta2, step), device, dtype),
                    beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                    device_type=device.type,
                )
