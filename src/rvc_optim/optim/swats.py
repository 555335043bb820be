"""SWATS (Switching from Adam to SGD).

Paper: "Improving Generalization Performance by Switching from Adam to SGD", N. S. Keskar, R. Socher,
2017, arXiv:1712.07628.

Adam, which watches for the moment an SGD learning rate could take over. For each parameter, at step k
(from 1) with g <- g + wd * p (L2 decay, in both phases)::

    Adam phase:
        m <- beta1 * m + (1 - beta1) * g;  v <- beta2 * v + (1 - beta2) * g^2  (v <- max(v_max, v): AMSGrad)
        P = -lr * sqrt(1 - beta2^k) / (1 - beta1^k) * m / (sqrt(v) + eps);   p <- p + P
        if P.g != 0:
            gamma = (P.P) / (-P.g)                 the SGD rate whose step, projected on P, equals P
            lambda <- beta2 * lambda + (1 - beta2) * gamma;   Lambda = lambda / (1 - beta2^k)
            if k > 1 and |Lambda - gamma| <= 1e-8 + 1e-6 |gamma| and Lambda > 0:
                the whole group switches to SGD at rate Lambda, starting with the next parameter
    SGD phase (the paper's momentum, buffer b from 0):
        b <- beta1 * b + g;   p <- p - Lambda * (1 - beta1) * b
        (nesterov: p <- p - Lambda * (1 - beta1) * (g + beta1 * b))

The switch is a one-way, per-group event, decided on the device: the group keeps ``switched`` (a 0-d
bool tensor) and ``sgd_lr`` (Lambda, a 0-d tensor) in its dict, so a state_dict saved before or after
the switch resumes exactly. On a CPU the flag is read each step (free there) and the Adam work is
skipped once switched; on an accelerator every parameter runs both candidate steps and
``torch.where``-style selections commit one of them, so no value is ever read back to the host. Pick
SWATS for an Adam start that settles into SGD's generalisation; in noisy GAN training the criterion
rarely fires, and the SGD rate it picks ignores any LR scheduler.
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
    check_betas,
    check_eps,
    check_lr,
    check_weight_decay,
    group_by_device_and_dtype,
    params_with_grad,
    run_closure,
    scalar,
    scalar_dtype,
    state_tensor,
    statistic_dtype,
    step_counter,
)

__all__ = ["SWATS", "swats_adam_", "swats_sgd_"]

# torch.allclose's defaults, with rtol as the reference passes it: the switch test.
SWITCH_RTOL, SWITCH_ATOL = 1e-6, 1e-8


def _dots(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)]).sum()


def _selects(active: Tensor | float) -> bool:
    """Whether a step is computed aside and committed by weight (a device flag, or 0.0), not in place."""
    return isinstance(active, Tensor) or active != 1.0


def _commit_(targets: list[Tensor], new: list[Tensor], active: Tensor | float) -> None:
    """targets <- new where active is 1, unchanged where 0: a lerp with weight 0 or 1 is exact."""
    torch._foreach_lerp_(targets, new, [active] * len(targets) if isinstance(active, Tensor) else active)


def swats_adam_(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    *,
    active: Tensor | float,
    step_size: Tensor | float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> tuple[Tensor, Tensor]:
    """Adam's step P, committed where ``active`` (1.0, or a 0-d 0/1 tensor on an accelerator); returns
    (sum P * g, sum P * P). ``max_exp_avg_sqs`` is empty without AMSGrad."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    select = _selects(active)
    # With a device flag the moments are computed aside and committed by an exact 0/1 lerp.
    m = torch._foreach_mul(exp_avgs, beta1) if select else exp_avgs
    v = torch._foreach_mul(exp_avg_sqs, beta2) if select else exp_avg_sqs
    if not select:
        torch._foreach_mul_(m, beta1)
        torch._foreach_mul_(v, beta2)
    torch._foreach_add_(m, grads, alpha=1.0 - beta1)
    torch._foreach_addcmul_(v, grads, grads, value=1.0 - beta2)
    second = v
    if max_exp_avg_sqs:
        second = torch._foreach_maximum(max_exp_avg_sqs, v)
    denom = torch._foreach_sqrt(second)
    torch._foreach_add_(denom, eps)
    steps = torch._foreach_div(m, denom)
    torch._foreach_mul_(steps, -step_size)
    if select:
        for state, new in ((exp_avgs, m), (exp_avg_sqs, v)) + (((max_exp_avg_sqs, second),) if max_exp_avg_sqs else ()):
            _commit_(state, new, active)
        add_scaled_(params, steps, active)
    else:
        if max_exp_avg_sqs:
            torch._foreach_copy_(max_exp_avg_sqs, second)
        torch._foreach_add_(params, steps)
    return _dots(steps, grads), _dots(steps, steps)


def swats_sgd_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    active: Tensor | float,
    lr: Tensor | float,
    beta1: float,
    weight_decay: float,
    nesterov: bool,
) -> None:
    """The SGD phase's step, committed where ``active`` (as in :func:`swats_adam_`)."""
    if weight_decay != 0.0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    select = _selects(active)
    bufs = torch._foreach_mul(momentum_buffers, beta1) if select else momentum_buffers
    if not select:
        torch._foreach_mul_(bufs, beta1)
    torch._foreach_add_(bufs, grads)
    direction = torch._foreach_add(grads, bufs, alpha=beta1) if nesterov else bufs
    add_scaled_(params, direction, -lr * (1.0 - beta1) * active)
    if select:
        _commit_(momentum_buffers, bufs, active)


def _cpu_value(t: Tensor) -> Any:
    """A CPU tensor's value (reading it is free), or the tensor itself elsewhere."""
    return t.item() if t.device.type == "cpu" else t


class SWATS(Optimizer):
    """SWATS, with the arguments and defaults of torch-optimizer's ``SWATS`` (the established port; the
    authors released no code).

    Args:
        params: parameters or param groups.
        lr: Adam's learning rate (default 1e-3); the SGD phase uses the rate found at the switch.
        betas: (beta1, beta2): Adam's decays; beta2 also averages the SGD-rate estimate and beta1 is the
            SGD phase's momentum (default (0.9, 0.999)).
        eps: added to Adam's denominator (default 1e-3, the reference's).
        weight_decay: L2 penalty added to the gradient, in both phases (default 0).
        amsgrad: use the maximum of the second moments in the Adam phase (default False).
        nesterov: Nesterov momentum in the SGD phase (default False).
        compiled: use the ``torch.compile``d update (None: decided by ``RVC_OPTIM_COMPILE``).

    State per parameter: ``step``, ``exp_avg``, ``exp_avg_sq``, ``exp_avg2`` (lambda, 0-d),
    ``max_exp_avg_sq`` (AMSGrad), ``momentum_buffer`` (created at the first SGD step on a CPU, with the
    rest of the state on an accelerator, where the switch is not known on the host). The group keeps
    ``switched`` and ``sgd_lr``.

    Deviations from the reference (torch-optimizer, a port of Mrpatekful/swats):
        * the SGD phase follows the paper: b <- beta1 * b + g and p <- p - Lambda * (1 - beta1) * b. The
          reference scales its stored buffer by (1 - beta1) in place every step (an aliasing bug), so
          its momentum shrinks; the first SGD step is the same in both. Nesterov (not in the paper) is
          torch's look-ahead g + beta1 * b on the same buffer and scale; the reference's differs.
        * the switch is recorded as ``group['switched']``/``group['sgd_lr']`` (device tensors), not by
          rewriting ``group['phase']`` and ``group['lr']`` from a value read to the host; an LR
          scheduler changes Adam's lr and not the switched rate.
        * the gradient is not modified (the reference adds the decay and the SGD scaling into
          ``p.grad``).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        nesterov: bool = False,
        *,
        compiled: bool | None = None,
    ) -> None:
        check_lr(lr)
        check_betas(betas)
        check_eps(eps)
        check_weight_decay(weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        nesterov=nesterov)
        super().__init__(params, defaults)
        self._adam = UpdateFunction(swats_adam_, compiled)
        self._sgd = UpdateFunction(swats_sgd_, compiled)
        # On a CPU the switch flag is read each step (free there); tests turn this off to run the
        # accelerators' path, which never reads it.
        self._read_flag_on_cpu = True

    def _init_state(self, p: Tensor, amsgrad: bool, on_host: bool) -> dict[str, Any]:
        state = self.state[p]
        if "step" not in state:
            state["step"] = step_counter(p)
            state["exp_avg2"] = torch.zeros((), dtype=scalar_dtype(p.dtype), device=p.device)
        for key in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if amsgrad else ()) + (
                () if on_host else ("momentum_buffer",)):
            state_tensor(state, key, p)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = params_with_grad(group, "SWATS")
            if not params:
                continue
            device = params[0].device
            if "switched" not in group:
                group["switched"] = torch.zeros((), dtype=torch.bool, device=device)
                group["sgd_lr"] = torch.zeros((), dtype=statistic_dtype(device), device=device)
            flag = group["switched"]
            switched = _cpu_value(flag) if self._read_flag_on_cpu else flag  # a bool on a CPU, else the flag
            if switched is True:
                self._sgd_phase(group, params, grads)
            else:
                self._adam_phase(group, params, grads, switched)
        return loss

    def _sgd_phase(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """The whole group is in SGD (known on the host): one multi-tensor step."""
        steps = [self._init_state(p, group["amsgrad"], True)["step"] for p in params]
        torch._foreach_add_(steps, 1.0)
        bufs = [state_tensor(self.state[p], "momentum_buffer", p) for p in params]
        for device, dtype, (p, g, b) in group_by_device_and_dtype(params, grads, bufs):
            self._sgd(p, g, b, active=1.0, lr=scalar(group["sgd_lr"], device, dtype), beta1=group["betas"][0],
                      weight_decay=group["weight_decay"], nesterov=group["nesterov"], device_type=device.type)

    def _adam_phase(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    switched: bool | Tensor) -> None:
        """Parameter by parameter, in order: the switch takes effect from the parameter after the one
        that triggers it, as in the reference."""
        beta1, beta2 = group["betas"]
        on_host = switched is False
        sgd_lr = group["sgd_lr"]
        for p, g in zip(params, grads):
            state = self._init_state(p, group["amsgrad"], on_host)
            state["step"] += 1
            k = float(state["step"]) if on_host else state["step"].to(sgd_lr.dtype)
            kind = dict(device_type=p.device.type)
            if switched is True:  # switched earlier in this loop, on a CPU
                buf = state_tensor(state, "momentum_buffer", p)
                self._sgd([p], [g], [buf], active=1.0, lr=scalar(sgd_lr, p.device, p.dtype), beta1=beta1,
                          weight_decay=group["weight_decay"], nesterov=group["nesterov"], **kind)
                continue
            adam = 1.0 if on_host else 1.0 - switched.to(scalar_dtype(p.dtype))
            bias1, bias2 = 1.0 - beta1**k, 1.0 - beta2**k
            lr = group["lr"] if on_host or not isinstance(group["lr"], Tensor) else scalar(group["lr"], p.device, p.dtype)
            step_size = lr * bias2**0.5 / bias1  # in the reference's order of operations
            maxes = [state["max_exp_avg_sq"]] if group["amsgrad"] else []
            pg, pp = self._adam([p], [g], [state["exp_avg"]], [state["exp_avg_sq"]], maxes, active=adam,
                                step_size=scalar(step_size, p.device, p.dtype),
                                beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"], **kind)
            if not on_host:  # the SGD candidate, committed only where the group had already switched
                self._sgd([p], [g], [state["momentum_buffer"]], active=switched.to(scalar_dtype(p.dtype)),
                          lr=scalar(sgd_lr, p.device, p.dtype), beta1=beta1, weight_decay=group["weight_decay"],
                          nesterov=group["nesterov"], **kind)
            trigger, rate = self._switch_test(state, pg, pp, k, bias2, beta2, adam)
            if on_host:
                if trigger.item():  # on_host: a CPU tensor, read for free (accelerators use torch.where)
                    switched, sgd_lr = True, rate.to(sgd_lr.dtype)
                    group["switched"], group["sgd_lr"] = torch.ones((), dtype=torch.bool, device=sgd_lr.device), sgd_lr
            else:
                sgd_lr = torch.where(trigger, rate.to(sgd_lr.dtype), sgd_lr)
                switched = switched | trigger
        if not on_host:
            group["switched"], group["sgd_lr"] = switched, sgd_lr

    @staticmethod
    def _switch_test(state: dict[str, Any], pg: Tensor, pp: Tensor, k: Any, bias2: Any, beta2: float,
                     adam: Any) -> tuple[Tensor, Tensor]:
        """Update lambda from this step's gamma = P.P / -P.g (where P.g != 0 and the parameter took
        Adam's step) and return (switch now?, Lambda)."""
        lam = state["exp_avg2"]
        pg, pp = pg.to(lam.dtype), pp.to(lam.dtype)
        gamma = pp / -pg
        counted = pg != 0
        if isinstance(adam, Tensor):
            counted = counted & (adam > 0)
        new = torch.where(counted, torch.add(lam * beta2, gamma, alpha=1.0 - beta2), lam)
        lam.copy_(new)
        rate = new / bias2
        close = (rate - gamma).abs() <= SWITCH_ATOL + SWITCH_RTOL * gamma.abs()
        return counted & close & (rate > 0) & (k > 1), rate
