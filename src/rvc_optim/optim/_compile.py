"""One switch for compiled optimizer updates.

Every optimizer this project writes keeps its math in one multi-tensor function. That function runs
eagerly (``torch._foreach_*`` kernels) or through ``torch.compile``, which fuses the whole update into a
few loops that reach the memory-traffic floor where foreach cannot. The choice is made once here:

* the optimizer's ``compiled`` argument: ``True``, ``False`` or ``None`` (automatic);
* for ``None``, the environment variable ``RVC_OPTIM_COMPILE``: ``1`` (compile wherever a compiler is
  available: CUDA with Triton, or a CPU with a C++ compiler on the path), ``0`` (eager) or ``auto`` (the
  default: compile on CUDA only). On a CPU, inductor takes minutes to build the update over RVC's 560
  generator tensors (measured: over 5 minutes on 2 cores for ScheduleFreeAdamW), a stall at the first
  step of every new parameter set that no short CPU run recovers, so there compiling is opt-in.

A compiled update that fails to build falls back to the eager function with one warning; the
numbers agree either way (to float32 rounding: inductor may reorder arithmetic). Per-step scalars
(learning rate, bias corrections, weights, d) must reach the update as 0-d tensors, so the graph is
compiled once per parameter set rather than once per value.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ENV_VAR", "UpdateFunction", "compile_available", "resolve_compiled"]

ENV_VAR = "RVC_OPTIM_COMPILE"


@functools.lru_cache(maxsize=None)
def compile_available(device_type: str) -> bool:
    """Whether ``torch.compile`` can build kernels for this device type here."""
    if not hasattr(torch, "compile"):
        return False
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    if device_type == "cpu":
        return any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))
    return False


def resolve_compiled(compiled: bool | None, device_type: str = "cpu") -> bool:
    """The effective choice for ``compiled`` on ``device_type``."""
    if compiled is not None:
        if compiled and not compile_available(device_type):
            warnings.warn(f"compiled=True but torch.compile is not available for {device_type}; using foreach")
            return False
        return bool(compiled)
    mode = os.environ.get(ENV_VAR, "auto").strip().lower()
    if mode in ("0", "false", "no", "off", "eager"):
        return False
    if mode in ("1", "true", "yes", "on"):
        return compile_available(device_type)
    if mode != "auto":
        raise ValueError(f"{ENV_VAR} must be 0, 1 or auto, got {mode!r}")
    return device_type == "cuda" and compile_available(device_type)


class UpdateFunction:
    """A multi-tensor update function and, on demand, its compiled twin.

    Call it like the function itself; ``device_type`` picks the path. The compiled function is built
    lazily on the first compiled call and shared by every optimizer instance of the same algorithm.
    """

    def __init__(self, fn: Callable[..., Any], compiled: bool | None = None) -> None:
        self.fn = fn
        self.compiled = compiled
        self._failed = False

    def __call__(self, *args: Any, device_type: str = "cpu", **kwargs: Any) -> Any:
        if self._failed or not resolve_compiled(self.compiled, device_type):
            return self.fn(*args, **kwargs)
        try:
            return _compiled(self.fn)(*args, **kwargs)
        except Exception as err:  # a backend that cannot build this graph here
            if self.compiled:
                raise
            self._failed = True
            warnings.warn(f"torch.compile failed for {self.fn.__name__} ({type(err).__name__}: {err}); using foreach")
            return self.fn(*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    return torch.compile(fn, dynamic=False)
