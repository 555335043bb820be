"""Sophia (SophiaG, the authors' code) and a Hutchinson estimate of the Hessian's diagonal.

Paper: "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model Pre-training", H. Liu,
Z. Li, D. Hall, P. Liang, T. Ma, 2023, arXiv:2305.14342. Reference code: ``SophiaG`` in
github.com/Liuhong99/Sophia (the same file as the ``sophia-opt`` 0.2.2 package).

Update for a parameter p with gradient g, momentum m, diagonal curvature estimate h, learning rate lr,
decay wd, clipping scale rho and batch size bs::

    every k steps (update_hessian):   h <- beta2 * h + (1 - beta2) * hhat     hhat: a diagonal estimate
    every step:   p <- p * (1 - lr * wd)                                      decoupled weight decay
                  m <- beta1 * m + (1 - beta1) * g
                  p <- p - lr * clip(m / max(rho * bs * h, 0) + 1e-15), -1, 1)

Each coordinate moves by at most lr: where the curvature is large the step is m / (rho bs h), a
Newton-like step; where it is small or unknown (h = 0 before the first estimate) it is a sign step.

The estimate ``hhat``:

* ``update_hessian()`` with no argument, as the authors: ``g * g`` of the gradients present. With a
  loss on labels sampled from the model's own output distribution this is the Gauss-Newton-Bartlett
  estimate of the paper; with the real labels it is the empirical Fisher.
* :func:`hutchinson_diagonal`: ``z * (H z)`` for a Rademacher probe z (E[z (H z)] = diag H), from one
  extra backward through the gradient's graph (``backward(create_graph=True)``). It needs no labels,
  so it works for regression and GAN losses such as RVC's mel L1 and LSGAN terms. Pass it to
  ``update_hessian(estimates)``; :meth:`Sophia.refresh_curvature` does both from the gradients'
  graphs, and is what the training engine calls every ``update_period`` steps (RVC's generator and
  discriminator each on their own loss, after a backward with ``create_graph=True``).

Why Hutchinson in the engine: RVC's losses (mel L1, LSGAN, feature matching, KL) have no output
distribution to sample labels from, so the Gauss-Newton-Bartlett estimate does not apply, and ``g * g``
of the real loss is the empirical Fisher, a different quantity (``estimator="squared_grad"`` keeps it
available at no extra cost). Double backward works through every op of RVC's generator and
discriminator (weight norm, convolutions, transposed convolutions, attention, the STFT of the mel
loss; checked on the tiny config on a CPU). Under fp16 with a ``GradScaler`` the gradients' graph is
that of the scaled loss (``unscale_`` rescales the values, not the graph), so a Hutchinson refresh
there estimates ``scale * diag H``; use fp32 or bf16 with Sophia.

Pick it as an experiment where a curvature-aware step may help and an extra backward every 10 steps is
affordable; its lr is about AdamW's. State: ``exp_avg`` and ``hessian`` (two tensors the size of the
parameter) and a step count.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from rvc_optim.optim._compile import UpdateFunction
from rvc_optim.optim._foreach import (
    add_scaled_,
    check_betas,
    check_lr,
    check_nonnegative,
    check_positive,
    check_weight_decay,
    decay_weights_,
    foreach_mul_by_constant_,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    state_tensor,
    step_counter,
)

__all__ = ["Sophia", "hutchinson_diagonal", "sophia_hessian_update", "sophia_update"]

# The authors' constant in the denominator (SophiaG has no eps argument).
_DENOMINATOR_FLOOR = 1e-15
_ESTIMATORS = ("hutchinson", "squared_grad")
Estimates = Mapping[Tensor, Tensor] | Sequence[Tensor | None]


def sophia_update(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    hessians: list[Tensor],
    *,
    lr: Tensor | float,
    rho_bs: Tensor | float,
    beta1: float,
    weight_decay: float,
    maximize: bool,
) -> None:
    decay_weights_(params, lr, weight_decay)
    foreach_mul_by_constant_(exp_avgs, beta1)
    if maximize:
        torch._foreach_sub_(exp_avgs, grads, alpha=1.0 - beta1)
    else:
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
    # clip(m / d, -1, 1) is sign(m) * min(|m| / d, 1) bit for bit, since d > 0; max(., 0) keeps a
    # negative curvature estimate (Hutchinson's can be) from reversing the step (the paper's max{rho h, eps}).
    den = torch._foreach_mul(hessians, rho_bs)
    torch._foreach_clamp_min_(den, 0.0)
    torch._foreach_add_(den, _DENOMINATOR_FLOOR)
    ratio = torch._foreach_div(exp_avgs, den)
    torch._foreach_clamp_min_(ratio, -1.0)
    torch._foreach_clamp_max_(ratio, 1.0)
    add_scaled_(params, ratio, -lr)


def sophia_hessian_update(hessians: list[Tensor], estimates: list[Tensor], *, beta2: float, square: bool) -> None:
    """``h <- beta2 h + (1 - beta2) e``, with ``e = estimate**2`` for ``square`` (the authors' g * g)."""
    foreach_mul_by_constant_(hessians, beta2)
    if square:
        torch._foreach_addcmul_(hessians, estimates, estimates, value=1.0 - beta2)
    else:
        torch._foreach_add_(hessians, estimates, alpha=1.0 - beta2)


def _rademacher(like: Tensor, generator: torch.Generator | None) -> Tensor:
    probe = torch.randint(0, 2, like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return probe.mul_(2).sub_(1)


def hutchinson_diagonal(
    loss_or_grads: Tensor | Sequence[Tensor | None],
    params: Sequence[Tensor],
    *,
    samples: int = 1,
    generator: torch.Generator | Mapping[torch.device, torch.Generator] | None = None,
) -> list[Tensor]:
    """Hutchinson's estimate of the Hessian's diagonal: the mean of ``z * (H z)`` over ``samples``
    Rademacher probes ``z`` (entries +-1), one per parameter in ``params`` order.

    ``loss_or_grads`` is a scalar loss (its gradients are taken here, with a graph) or the gradients
    of ``params`` themselves computed with ``create_graph=True`` (``[p.grad for p in params]`` after
    ``loss.backward(create_graph=True)``). ``H z`` is one Hessian-vector product per probe, a
    backward through the gradients' graph; the graph is released after the last probe. A gradient
    with no graph (``None``, or one that does not depend on any parameter) has a zero estimate.
    ``generator`` draws the probes (one per device as a mapping, or one for all); ``None``: torch's
    global generator. The estimates are detached tensors shaped like the parameters.
    """
    params = list(params)
    if isinstance(loss_or_grads, Tensor):
        if loss_or_grads.numel() != 1:
            raise ValueError("hutchinson_diagonal: pass a scalar loss or a sequence of gradients")
        grads = list(torch.autograd.grad(loss_or_grads, params, create_graph=True, allow_unused=True))
    else:
        grads = list(loss_or_grads)
    if len(grads) != len(params):
        raise ValueError(f"hutchinson_diagonal: {len(grads)} gradients for {len(params)} parameters")
    check_positive(samples, "samples")
    estimates = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    if not live:
        return estimates
    for sample in range(samples):
        probes = [_rademacher(grads[i], _generator_for(generator, grads[i].device)) for i in live]
        products = torch.autograd.grad(
            [grads[i] for i in live], [params[i] for i in live], grad_outputs=probes,
            retain_graph=sample < samples - 1, allow_unused=True,
        )
        for i, z, hz in zip(live, probes, products):
            if hz is not None:
                estimates[i].addcmul_(z, hz.detach(), value=1.0 / samples)
    return estimates


def _generator_for(generator: Any, device: torch.device) -> torch.Generator | None:
    if isinstance(generator, Mapping):
        return generator[device]
    return generator


class Sophia(Optimizer):
    """SophiaG with the authors' argument names and defaults (``sophia_opt.SophiaG``), plus the
    Hutchinson refresh the training engine drives.

    Args:
        params: parameters or param groups.
        lr: learning rate, the largest step of any coordinate (default 1e-4).
        betas: (beta1, beta2): decay of the gradient momentum and of the curvature average
            (default (0.965, 0.99)).
        rho: clipping scale; the step is clipped where ``|m| > rho * bs * h`` (default 0.04).
        weight_decay: decoupled weight decay, multiplied by lr (default 0.1).
        maximize: ascend the objective (default False).
        bs: the batch size ``step()`` uses when it is not given one (default 5120, the authors'
            default of ``step(bs=...)``). Only ``rho * bs`` matters.
        update_period: steps between curvature estimates the caller promises (default 10); a run
            that steps more than this without a new estimate gets one warning.
        estimator: what :meth:`refresh_curvature` estimates: ``"hutchinson"`` (default: ``z * (H z)``
            from gradients computed with ``create_graph=True``) or ``"squared_grad"`` (``g * g``, as
            ``update_hessian()``).
        seed: seed of the Hutchinson probes drawn by :meth:`refresh_curvature` (a generator of the
            optimizer's own, so training is reproducible and resumes exactly).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``).

    ``step(closure=None, bs=None)`` takes the batch size per call as the authors' does.
    ``update_hessian(estimates=None)`` folds an estimate into ``hessian``: none given, ``g * g`` of
    the gradients present (the authors' method); or one estimate per parameter, as a mapping
    ``{param: tensor}`` or a sequence over the parameters of all groups in order (``None`` skips).

    Deviations from the reference:
        - the denominator is ``max(rho * bs * h, 0) + 1e-15``; the reference's ``rho * bs * h + 1e-15``
          is the same for the reference's own estimate (``g * g >= 0``) but would reverse and blow up
          the step where a Hutchinson estimate is negative;
        - ``step`` is a 0-d float32 tensor on the parameter's device (the reference keeps it on the
          CPU); it is counted but, as in the reference, not used;
        - no ``capturable`` argument: this update reads no device value on any device;
        - ``bs``, ``update_period``, ``estimator`` and ``seed`` are additions; ``update_hessian``
          also accepts estimates; ``bs`` given to ``step`` applies to every group, as there.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.965, 0.99),
        rho: float = 0.04,
        weight_decay: float = 1e-1,
        *,
        maximize: bool = False,
        bs: float = 5120,
        update_period: int = 10,
        estimator: str = "hutchinson",
        seed: int = 0,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_nonnegative(rho, "rho")
        check_weight_decay(weight_decay)
        check_positive(bs, "bs")
        check_positive(update_period, "update_period")
        if estimator not in _ESTIMATORS:
            raise ValueError(f"Invalid estimator: {estimator!r} (one of {', '.join(_ESTIMATORS)})")
        defaults = dict(lr=lr, betas=tuple(betas), rho=rho, weight_decay=weight_decay, maximize=maximize, bs=bs)
        super().__init__(params, defaults)
        self.update_period = int(update_period)
        self.estimator = estimator
        self.seed = int(seed)
        self.probe_draws = 0  # Hutchinson refreshes so far: the probes' seed (kept in the state dict)
        self._steps_without_estimate = 0  # counted on the host: the staleness warning reads no device value
        self._warned_stale = False
        self._update = UpdateFunction(sophia_update, compiled)
        self._hessian_update = UpdateFunction(sophia_hessian_update, compiled)

    def _state(self, p: Tensor) -> dict[str, Any]:
        """The authors' state, created on first touch by either method."""
        state = self.state[p]
        if "step" not in state:
            state["step"] = step_counter(p)
        state_tensor(state, "exp_avg", p)
        state_tensor(state, "hessian", p)
        return state

    def _estimate_lists(self, estimates: Estimates | None):
        """Per group: (hessians, estimate tensors, whether to square them)."""
        flat = None
        if estimates is not None and not isinstance(estimates, Mapping):
            flat = list(estimates)
            total = sum(len(g["params"]) for g in self.param_groups)
            if len(flat) != total:
                raise ValueError(f"update_hessian: {len(flat)} estimates for {total} parameters")
        offset = 0
        for group in self.param_groups:
            if estimates is None:
                params, found = params_with_grad(group, "Sophia")
            else:
                pick = (lambda i, p: estimates.get(p)) if flat is None else (lambda i, p: flat[offset + i])
                pairs = [(p, pick(i, p)) for i, p in enumerate(group["params"])]
                params = [p for p, e in pairs if e is not None]
                found = [e.detach() for _, e in pairs if e is not None]
            offset += len(group["params"])
            yield group, [self._state(p)["hessian"] for p in params], found

    @torch.no_grad()
    def update_hessian(self, estimates: Estimates | None = None) -> None:
        updated = False
        for group, hessians, found in self._estimate_lists(estimates):
            for device, _, (h, e) in group_by_device_and_dtype(hessians, found):
                self._hessian_update(h, e, beta2=group["betas"][1], square=estimates is None,
                                     device_type=device.type)
                updated = True
        if updated:
            self._steps_without_estimate = 0

    def refresh_curvature(self, loss_scale: Tensor | float | None = None) -> None:
        """The engine's refresh: an estimate (``estimator``) from the gradients present, folded in by
        :meth:`update_hessian`. Hutchinson needs them computed with ``create_graph=True``; it draws its
        probes from the optimizer's own generator and then detaches the gradients, which frees their
        graph. Gradients without a graph skip the refresh with a warning.

        ``loss_scale``: what the loss was multiplied by before backward (a GradScaler's scale, as a 0-d
        tensor so that nothing is read back). ``scaler.unscale_`` divides the gradients' values, not the
        graph behind them, so Hutchinson's products come out ``loss_scale`` times too large and are
        divided by it here; the squared-gradient estimate reads the unscaled gradients and needs nothing."""
        params = [p for g in self.param_groups for p in params_with_grad(g, "Sophia")[0]]
        if self.estimator == "squared_grad":
            self.update_hessian()
            return
        if not any(p.grad.requires_grad for p in params):
            if params:
                warnings.warn("Sophia.refresh_curvature: the gradients have no graph (run backward with "
                              "create_graph=True on refresh steps); the Hutchinson refresh was skipped",
                              stacklevel=2)
            return
        seed = (self.seed * 0x9E3779B1 + self.probe_draws) % (1 << 63)
        generators = {p.device: torch.Generator(device=p.device) for p in params}
        for gen in generators.values():
            gen.manual_seed(seed)
        estimates = hutchinson_diagonal([p.grad for p in params], params, generator=generators)
        if loss_scale is not None:
            torch._foreach_div_(estimates, loss_scale)
        self.probe_draws += 1
        for p in params:
            p.grad = p.grad.detach()
        self.update_hessian(dict(zip(params, estimates)))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, bs: float | None = None) -> Any:
        loss = run_closure(closure)
        stepped = False
        for group in self.param_groups:
            params, grads = params_with_grad(group, "Sophia")
            states = [self._state(p) for p in params]
            rho_bs = group["rho"] * (group["bs"] if bs is None else bs)
            if states:
                torch._foreach_add_([s["step"] for s in states], 1.0)
            exp_avgs = [s["exp_avg"] for s in states]
            hessians = [s["hessian"] for s in states]
            for device, dtype, (p, g, m, h) in group_by_device_and_dtype(params, grads, exp_avgs, hessians):
                self._update(
                    p, g, m, h,
                    lr=scalar(group["lr"], device, dtype), rho_bs=scalar(rho_bs, device, dtype),
                    beta1=group["betas"][0], weight_decay=group["weight_decay"], maximize=group["maximize"],
                    device_type=device.type,
                )
                stepped = True
        if stepped:
            self._count_step_without_estimate()
        return loss

    def _count_step_without_estimate(self) -> None:
        self._steps_without_estimate += 1
        if self._steps_without_estimate > self.update_period and not self._warned_stale:
            self._warned_stale = True
            warnings.warn(
                f"Sophia: {self._steps_without_estimate} steps without a curvature estimate (update_period "
                f"{self.update_period}); call update_hessian() or refresh_curvature() every update_period "
                "steps, otherwise the steps are clipped sign steps of size lr",
                stacklevel=3,
            )

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        out["probe_draws"] = self.probe_draws
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.probe_draws = int(state_dict.pop("probe_draws", 0))
        super().load_state_dict(state_dict)
