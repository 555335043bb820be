"""Shared pieces of the multi-tensor updates, each written once.

The optimizer classes gather a param group's tensors, group them by device and dtype, and hand the
lists to their algorithm's update function. The pieces several algorithms share live here:
argument checks with messages that name the argument, collecting parameters that have gradients
(rejecting sparse ones clearly), lazily created state, step counters, per-step scalars as 0-d
tensors, bias correction, decoupled weight decay, and the global sums and dots that step-size
estimates (D-Adaptation, Prodigy) and Ranger21's sigma reduce a whole list of tensors to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

__all__ = [
    "adam_step_correction",
    "add_scaled_",
    "addcdiv_scaled_",
    "advance_host_steps",
    "bias_correction",
    "check_betas",
    "check_eps",
    "check_lr",
    "check_momentum",
    "check_nonnegative",
    "check_nonnegative_int",
    "check_positive",
    "check_weight_decay",
    "decay_weights_",
    "eager_on_cpu",
    "foreach_abs_sums",
    "foreach_dot",
    "foreach_l2_norms",
    "foreach_mul_by_constant_",
    "foreach_square_sum",
    "foreach_sum_",
    "foreach_sums_of_nonnegative",
    "group_by_device_and_dtype",
    "group_value",
    "lerp_",
    "params_with_grad",
    "per_tensor_scalars",
    "run_closure",
    "scalar",
    "state_tensor",
    "statistic_dtype",
    "step_counter",
    "write_into_",
]


# --- argument checks -------------------------------------------------------------------------------


def check_lr(lr: float | Tensor, name: str = "learning rate") -> None:
    if isinstance(lr, Tensor) and lr.numel() != 1:
        raise ValueError(f"Invalid {name}: a tensor lr must have one element, got shape {tuple(lr.shape)}")
    if not 0.0 <= float(lr):
        raise ValueError(f"Invalid {name}: {float(lr)} (lr must be >= 0)")


def check_nonnegative(value: float, name: str) -> None:
    if not 0.0 <= value:
        raise ValueError(f"Invalid {name} value: {value} (must be >= 0)")


def check_eps(eps: float, name: str = "eps") -> None:
    check_nonnegative(eps, f"epsilon ({name})")


def check_weight_decay(weight_decay: float) -> None:
    check_nonnegative(weight_decay, "weight_decay")


def check_betas(betas: Sequence[float], count: int = 2, name: str = "betas") -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        raise ValueError(f"Invalid {name}: expected {count} values, got {betas!r}")
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i} of {name}: {beta} (must be in [0, 1))")


# --- gathering tensors ------------------------------------------------------------------------------


def run_closure(closure: Callable[[], Any] | None) -> Any:
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def params_with_grad(group: dict[str, Any], optimizer_name: str) -> tuple[list[Tensor], list[Tensor]]:
    """The group's parameters that have a gradient, and those gradients. Sparse gradients raise."""
    params, grads = [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(
                f"{optimizer_name} does not support sparse gradients; build the embedding with sparse=False "
                "or use torch's SGD or Adagrad"
            )
        params.append(p)
        grads.append(p.grad)
    return params, grads


def state_tensor(
    state: dict[str, Any], key: str, like: Tensor, init: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """``state[key]``, created on first use as ``init(like)`` (zeros by default)."""
    value = state.get(key)
    if value is None:
        value = init(like) if init is not None else torch.zeros_like(like, memory_format=torch.preserve_format)
        state[key] = value
    return value


def group_by_device_and_dtype(*tensorlists: list[Tensor]) -> Iterator[tuple[torch.device, torch.dtype, list[list[Tensor]]]]:
    """Split parallel tensor lists into lists that share a device and dtype (of the first list)."""
    grouped = _group_tensors_by_device_and_dtype(list(tensorlists))
    for (device, dtype), (lists, _) in grouped.items():
        yield device, dtype, lists


# --- per-step scalars --------------------------------------------------------------------------------


def scalar_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """Scalars are float64 for float64 parameters and float32 otherwise (never bf16/fp16)."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


def scalar(value: float | Tensor, device: torch.device, param_dtype: torch.dtype) -> Tensor:
    """A 0-d tensor on ``device`` holding ``value``: how per-step scalars enter compiled updates.

    A Python number becomes a fill kernel (``torch.full``): no blocking host-to-device copy, so no
    host synchronisation on an accelerator. So does a CPU tensor bound for another device (reading a
    CPU value is no synchronisation; copying it to the device would be a blocking copy).
    """
    dtype = scalar_dtype(param_dtype)
    if isinstance(value, Tensor):
        if value.device.type != "cpu" or torch.device(device).type == "cpu":
            return value.to(device=device, dtype=dtype).reshape(())
        value = value.item()  # a CPU tensor: reading it is free; torch.full then writes it on the device
    return torch.full((), value, dtype=dtype, device=device)


def bias_correction(beta: float, step: Tensor | float) -> Tensor | float:
    """``1 - beta ** step``: Adam's correction for a moment started at zero."""
    return 1.0 - beta**step


# --- shared update pieces ------------------------------------------------------------------------------


def add_scaled_(targets: list[Tensor], tensors: list[Tensor], scale: Tensor | float) -> None:
    """``targets += scale * tensors``, one fused multiply-add for a Python float ``scale`` (the CPU eager
    path), a multiply and an add for a 0-d tensor (accelerators and the compiled path, where ``alpha``
    cannot be a tensor)."""
    if isinstance(scale, Tensor):
        torch._foreach_add_(targets, torch._foreach_mul(tensors, scale))
    else:
        torch._foreach_add_(targets, tensors, alpha=scale)


def lerp_(targets: list[Tensor], ends: list[Tensor], weight: Tensor | float) -> None:
    """``targets <- lerp(targets, ends, weight)`` for a Python float or a 0-d tensor ``weight``.

    ``_foreach_lerp_`` has no overload for a 0-d tensor weight: its argument parser reads it back with
    ``.item()``, a host synchronisation on an accelerator (and, traced for the compiled path, a read
    inside the graph). Off the CPU the weight therefore goes in as a list of 0-d tensors: the same
    rounding for float32 and float64 tensors; for bfloat16/float16 ones the kernel rounds the weight to
    the tensors' dtype, an error of at most 2**-9 of the increment. A CPU tensor is read on the host,
    which costs nothing, and gives the exact scalar ``lerp``."""
    if isinstance(weight, Tensor) and weight.device.type != "cpu":
        torch._foreach_lerp_(targets, ends, [weight] * len(targets))
    else:
        torch._foreach_lerp_(targets, ends, weight)


_IN_PLACE = {torch.mul: torch._foreach_mul_, torch.div: torch._foreach_div_, torch.rsqrt: torch._foreach_rsqrt_,
             torch.abs: torch._foreach_abs_}


def write_into_(outs: list[Tensor], fn: Callable[..., Tensor], tensors: list[Tensor], *others: list[Tensor]) -> list[Tensor]:
    """``outs[i] <- fn(tensors[i], *others[i])`` for ``torch.mul``, ``torch.div``, ``torch.rsqrt`` or
    ``torch.abs``, written over ``outs`` (spent temporaries of the same shapes), which are returned.

    On an eager CPU step each tensor takes one pass with ``out=``; elsewhere a multi-tensor copy and the
    multi-tensor in-place op. (On a CPU a new tensor the size of a large kernel costs its page faults,
    hence writing over spent ones; a copy and an in-place op read the data twice.)"""
    if eager_on_cpu(outs[0]):
        for i, out in enumerate(outs):
            fn(tensors[i], *(other[i] for other in others), out=out)
    else:
        torch._foreach_copy_(outs, tensors)
        _IN_PLACE[fn](outs, *others)
    return outs


def addcdiv_scaled_(targets: list[Tensor], numerators: list[Tensor], denominators: list[Tensor],
                    scale: Tensor | float) -> None:
    """``targets += scale * numerators / denominators``: one fused pass for a Python float ``scale``,
    a divide, a multiply and an add for a 0-d tensor."""
    if isinstance(scale, Tensor):
        quotients = torch._foreach_div(numerators, denominators)
        torch._foreach_mul_(quotients, scale)
        torch._foreach_add_(targets, quotients)
    else:
        torch._foreach_addcdiv_(targets, numerators, denominators, value=scale)


def decay_weights_(params: list[Tensor], lr: Tensor | float, weight_decay: float) -> None:
    """Decoupled weight decay (Loshchilov and Hutter): ``p <- p * (1 - lr * weight_decay)``."""
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * weight_decay)


def foreach_mul_by_constant_(tensors: list[Tensor], factor: float) -> None:
    """``t *= factor`` for every tensor, computed like ``Tensor.mul_(factor)`` whatever the dtype.

    torch's CPU ``_foreach_mul_`` with a Python number rounds the number to the tensors' dtype first:
    for bfloat16 buffers 0.99 becomes 0.98828125 and 0.999 becomes 1.0 (a variance that never decays).
    With a 0-d float32/float64 tensor it computes like ``Tensor.mul_`` (in float32 for reduced-precision
    tensors; checked in torch 2.13). ``torch.full`` writes the value on the device: no host-to-device copy.
    """
    if tensors:
        dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
        torch._foreach_mul_(tensors, torch.full((), factor, dtype=dtype, device=tensors[0].device))


# --- more argument checks ------------------------------------------------------------------------------


def check_positive(value: float | Tensor, name: str) -> None:
    if not 0.0 < float(value):
        raise ValueError(f"Invalid {name}: {float(value)} (must be > 0)")


def check_momentum(momentum: float, name: str = "momentum") -> None:
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid {name} value: {momentum} (must be in [0, 1))")


def check_nonnegative_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or int(value) != value or value < 0:
        raise ValueError(f"Invalid {name} value: {value} (must be an integer >= 0)")


# --- step counters and group statistics ----------------------------------------------------------------


def step_counter(like: Tensor, value: float = 0.0) -> Tensor:
    """A per-parameter step count: a 0-d float32 tensor on ``like``'s device, as torch.optim keeps it.

    The convention for every counter the update reads (bias corrections): on the device, so counting
    and reading it needs no host synchronisation. Two modules keep theirs elsewhere and say why:
    AnyPrecisionAdamW (on the CPU, as the authors', bias corrections computed there) and Ranger21 (a
    Python int: its warm-up, warm-down and Lookahead schedule is decided on the host).
    """
    return torch.full((), float(value), dtype=torch.float32, device=like.device)


def statistic_dtype(device: torch.device) -> torch.dtype:
    """The dtype of a step-size estimate's group values (d and its running sums): float64, except on
    MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def group_value(value: float | Tensor, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """A group value (a Python number from the defaults or a reference's state_dict, or a tensor saved
    on any device) as a 0-d tensor on ``device``, by default in :func:`statistic_dtype`. A number is
    written there by a fill kernel, not copied from the host (a blocking copy on CUDA)."""
    dtype = dtype or statistic_dtype(device)
    if not isinstance(value, Tensor):
        return torch.full((), value, dtype=dtype, device=device)
    return torch.as_tensor(value, dtype=dtype, device=device).reshape(())


def adam_step_correction(beta1: float, beta2: float, step: Tensor | float) -> Tensor | float:
    """``sqrt(1 - beta2^step) / (1 - beta1^step)``: both of Adam's bias corrections folded into the
    step size, as D-Adaptation and Prodigy apply them."""
    return bias_correction(beta2, step) ** 0.5 / bias_correction(beta1, step)


# --- global sums: one 0-d tensor (or one per tensor) from a list, with multi-tensor kernels -------------
#
# torch has no multi-tensor signed sum (``_foreach_norm`` takes absolute values). On the CPU a kernel
# launch costs nothing, so one fused reduction per tensor beats building temporaries; elsewhere the
# sums come from multi-tensor norms. Sums over float64 tensors are float64, all others float32.


def _per_tensor(tensors: list[Tensor]) -> bool:
    return tensors[0].device.type == "cpu" and tensors[0].dtype in (torch.float32, torch.float64)


def foreach_sum_(tensors: list[Tensor]) -> Tensor:
    """``sum_i sum t_i`` as one 0-d tensor; overwrites ``tensors`` (pass temporaries).

    On accelerators, from two multi-tensor L1 norms: ``sum x = 2 sum max(x, 0) - sum |x|``. Under
    torch.compile the per-tensor sums are traced into the graph, where inductor fuses each with the
    ops that made its tensor.
    """
    acc = scalar_dtype(tensors[0].dtype)
    if _per_tensor(tensors) or torch.compiler.is_compiling():
        return torch.stack([t.sum(dtype=acc) for t in tensors]).sum()
    total = torch.stack(torch._foreach_norm(tensors, 1, dtype=acc)).sum()
    torch._foreach_clamp_min_(tensors, 0.0)
    positive = torch.stack(torch._foreach_norm(tensors, 1, dtype=acc)).sum()
    return 2.0 * positive - total


def foreach_dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    """``sum_i <a_i, b_i>`` over the two lists, as one 0-d tensor. On the CPU one fused ``dot`` per
    tensor, with no temporaries; elsewhere one multi-tensor multiply and :func:`foreach_sum_`."""
    if _per_tensor(a):
        acc = scalar_dtype(a[0].dtype)
        return torch.stack([torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)]).sum(dtype=acc)
    return foreach_sum_(torch._foreach_mul(a, b))


def foreach_abs_sums(tensors: list[Tensor]) -> Tensor:
    """``[sum |t| for t in tensors]`` as one 1-d tensor: one multi-tensor L1 norm on accelerators; on
    the CPU ``abs().sum()`` per tensor, as under torch.compile (the CPU's ord-1 norm kernel took 2.5x
    as long as abs and sum on cache-sized blocks, torch 2.13)."""
    acc = scalar_dtype(tensors[0].dtype)
    if _per_tensor(tensors) or torch.compiler.is_compiling():
        return torch.stack([t.abs().sum(dtype=acc) for t in tensors])
    return torch.stack(torch._foreach_norm(tensors, 1, dtype=acc))


def foreach_sums_of_nonnegative(tensors: list[Tensor]) -> Tensor:
    """``[sum t for t in tensors]`` as one 1-d tensor, for tensors with no negative entry (second
    moments, squares): their L1 norms, or on the CPU, where ord-1 norms are slow, plain sums."""
    if _per_tensor(tensors):
        acc = scalar_dtype(tensors[0].dtype)
        return torch.stack([t.sum(dtype=acc) for t in tensors])
    return foreach_abs_sums(tensors)


def foreach_square_sum(tensors: list[Tensor]) -> Tensor:
    """``sum_i sum t_i**2`` as one 0-d tensor (squared L2 norms: torch.compile cannot trace
    ``_foreach_powsum``)."""
    norms = foreach_l2_norms(tensors)
    return (norms * norms).sum()


# Tensors of more elements than this take their L2 norm on a CPU from BLAS's dot product, which reads
# about 1.5x as fast as torch's norm kernel there (RVC's generator: 8.6 against 13.2 ms for its 106
# tensors over 2**16 elements), and rounds no worse (a float32 tensor of 5M elements: 1.5e-5 relative
# error against 1.2e-4 for the norm kernel, measured against float64); smaller ones stay in one
# multi-tensor norm, whose per-tensor cost is lower.
DOT_NORM_NUMEL = 1 << 16


def foreach_l2_norms(tensors: list[Tensor]) -> Tensor:
    """``[||t||_2 for t in tensors]`` as one 1-d tensor, accumulated in float64 for float64 tensors and
    in float32 otherwise: one multi-tensor norm, except for the large float32/float64 tensors of an eager
    CPU step, whose norms are ``sqrt(t . t)`` (see :data:`DOT_NORM_NUMEL`)."""
    acc = scalar_dtype(tensors[0].dtype)
    if not eager_on_cpu(tensors[0]):
        return torch.stack(torch._foreach_norm(tensors, 2, dtype=acc))
    large = [t.numel() > DOT_NORM_NUMEL and t.is_contiguous() for t in tensors]
    if not any(large):
        return torch.stack(torch._foreach_norm(tensors, 2, dtype=acc))
    small = iter(torch._foreach_norm([t for t, big in zip(tensors, large) if not big], 2, dtype=acc)
                 if not all(large) else ())
    return torch.stack([torch.dot(t.view(-1), t.view(-1)).sqrt() if big else next(small)
                        for t, big in zip(tensors, large)])


def eager_on_cpu(t: Tensor) -> bool:
    """Whether ``t`` is a real float32/float64 CPU tensor outside any tracing (where reading a size is
    free and a per-tensor loop is allowed)."""
    return _per_tensor([t]) and not torch.compiler.is_compiling() and not isinstance(t, FakeTensor)


def advance_host_steps(
    optimizer_state: dict[Tensor, dict[str, Any]],
    params: list[Tensor],
    keys: Sequence[str],
    init: Callable[[Tensor], Tensor] | None = None,
) -> list[int]:
    """Count one more step for each parameter (a Python int in its state, as the references keep it, for
    updates whose bias corrections are host arithmetic) and create its ``keys`` lazily; returns the counts."""
    steps = []
    for p in params:
        state = optimizer_state[p]
        state["step"] = int(state.get("step", 0)) + 1
        steps.append(state["step"])
        for key in keys:
            state_tensor(state, key, p, init)
    return steps


def per_tensor_scalars(values: Tensor) -> list[float] | list[Tensor]:
    """One scalar per tensor from a 1-D tensor: Python floats on an eager CPU step with float32/float64
    tensors (read for free, and exact in the fused foreach forms), 0-d tensors elsewhere (no host read;
    and in a compiled update's trace, where there is no value to read)."""
    if eager_on_cpu(values):
        return values.tolist()
    return list(values.unbind())
