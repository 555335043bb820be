"""Shared pieces of the multi-tensor updates, each written once.

The optimizer classes gather a param group's tensors, group them by device and dtype, and hand the
lists to their algorithm's update function. The pieces several algorithms share live here:
argument checks with messages that name the argument, collecting parameters that have gradients
(rejecting sparse ones clearly), lazily created state, per-step scalars as 0-d tensors, bias
correction and decoupled weight decay.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

__all__ = [
    "bias_correction",
    "check_betas",
    "check_eps",
    "check_lr",
    "check_nonnegative",
    "check_weight_decay",
    "decay_weights_",
    "foreach_mul_by_constant_",
    "group_by_device_and_dtype",
    "params_with_grad",
    "run_closure",
    "scalar",
    "state_tensor",
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
        value = value.item()
    return torch.full((), value, dtype=dtype, device=device)


def bias_correction(beta: float, step: Tensor | float) -> Tensor | float:
    """``1 - beta ** step``: Adam's correction for a moment started at zero."""
    return 1.0 - beta**step


# --- shared update pieces ------------------------------------------------------------------------------


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
