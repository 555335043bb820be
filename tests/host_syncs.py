"""Count host synchronisations the way a GPU would see them, without a GPU.

An optimizer step runs on fake CUDA tensors (:class:`~torch._subclasses.fake_tensor.FakeTensorMode`:
shapes and devices, no data, no GPU needed) under a :class:`HostSyncCounter`, a ``TorchDispatchMode``
that sees every aten call, including those made inside torch's C++ argument parser (a 0-d tensor
passed where a Python number is expected is read with ``.item()`` there). It counts

* reads of device values: ``aten._local_scalar_dense`` / ``aten.is_nonzero`` / ``aten.equal`` on a
  tensor that is not on the CPU, and device-to-host copies. They are answered with a dummy value
  (``1``, ``1.0`` or ``True``) so the step can go on;
* host-to-device copies (``aten._to_copy`` or ``aten.copy_`` from a CPU tensor to a device one): a
  blocking copy on CUDA unless the source is pinned;
* decompositions that check their result on the host inside the operator (``torch.linalg.eigh``), one
  each.

Reads of CPU values (torch's non-capturable Adam keeps its ``step`` counter on the CPU) are not
syncs and are not counted; writing a Python number into a device tensor (``torch.full``) is a fill
kernel, not a copy, and is not counted either.

Where a fake tensor differs from a real one: ``FakeTensor.tolist()`` reads each element (a real
CUDA tensor is copied to the host once), so a ``tolist()`` of n values counts n.

A CPU build of torch has no CUDA device guard, so the few Python bindings that take one fail on a
fake CUDA tensor. Inside :func:`fake_cuda` they are routed around it to the same operators:
``Tensor.copy_`` to ``torch.ops.aten.copy_``, ``float(t)`` and ``int(t)`` to ``t.item()``, and
``t.cuda()`` to ``t.to("cuda:0")`` (a CPU build cannot resolve a bare ``"cuda"`` to an index in
``to()``: give the index, or pass a tensor's ``device``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.optim import optimizer as torch_optimizer
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncCounter", "HostSyncs", "count_host_syncs", "fake_cuda", "fake_cuda_params", "PARAM_SHAPES"]

aten = torch.ops.aten

_READS = {aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default, aten.equal.default}
_SCALAR_READS = {aten._local_scalar_dense.default, aten.item.default}
# torch's fused kernels without a fake implementation (one in-place kernel launch each, reading no
# value back: their grad_scale and found_inf are device tensors). While counting they do nothing.
_NO_FAKE_KERNEL = {aten._fused_sgd_.default, aten._fused_sgd_.tensor_lr, aten._fused_adagrad_.default}
# Decompositions whose CUDA kernel reads its convergence flag back to the host inside the operator
# (torch's ``_linalg_check_errors``); a fake tensor never runs that check, so the call itself is counted.
_CHECKED_ON_HOST = {aten._linalg_eigh.default}

# A few tensors like RVC's: conv weights (3-D), a bias (1-D), a linear weight (2-D).
PARAM_SHAPES: tuple[tuple[int, ...], ...] = ((8, 4, 3), (8,), (6, 8), (4, 5, 7))


def _on_device(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type not in ("cpu", "meta")


def _on_cpu(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "cpu"


def _dummy(t: torch.Tensor) -> bool | int | float:
    if t.dtype == torch.bool:
        return True
    if t.dtype.is_floating_point or t.dtype.is_complex:
        return 1.0
    return 1


class HostSyncCounter(TorchDispatchMode):
    """Counts reads of device values and host-to-device copies (see the module's docstring).

    ``events`` names each counted one (``"read aten._local_scalar_dense.default"``,
    ``"copy cpu->cuda aten._to_copy.default"``) in order, so a failing count says what it saw.
    """

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.cpu_reads = 0  # reads of CPU values: seen, and not syncs

    @property
    def count(self) -> int:
        return len(self.events)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _READS:
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if any(_on_device(t) for t in tensors):
                self.events.append(f"read {func}")
                return _dummy(tensors[0]) if func in _SCALAR_READS else True
            # A CPU value: not a sync. A fake CPU tensor has no data, unless it is a known constant.
            self.cpu_reads += 1
            t = tensors[0]
            if func not in _SCALAR_READS:
                return True
            if isinstance(t, FakeTensor) and t.constant is not None:
                with unset_fake_temporarily():
                    return t.constant.item()
            return _dummy(t)
        if func in _NO_FAKE_KERNEL:
            return None
        if func in _CHECKED_ON_HOST and _on_device(args[0]):
            self.events.append(f"read (error check) {func}")
        if func is aten._to_copy.default:
            src, device = args[0], kwargs.get("device")
            if device is not None and torch.device(device).type != src.device.type:
                self._copy(func, src.device, torch.device(device))
        elif func is aten.copy_.default:
            dst, src = args[0], args[1]
            if isinstance(src, torch.Tensor) and src.device.type != dst.device.type:
                self._copy(func, src.device, dst.device)
        return func(*args, **kwargs)

    def _copy(self, func, src: torch.device, dst: torch.device) -> None:  # noqa: ANN001
        if src.type == "cpu" and dst.type not in ("cpu", "meta"):
            self.events.append(f"copy cpu->{dst.type} {func}")
        elif dst.type == "cpu" and src.type not in ("cpu", "meta"):
            self.events.append(f"read (copy {src.type}->cpu) {func}")


def _copy_without_device_guard(self: torch.Tensor, src: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    return aten.copy_.default(self, src, non_blocking)


def _cuda_without_device_guard(
    self: torch.Tensor, device: Any = None, non_blocking: bool = False, **_: Any
) -> torch.Tensor:
    return self.to(device if device is not None else torch.device("cuda", 0), non_blocking=non_blocking)


_ROUTED = {
    "copy_": _copy_without_device_guard,
    "cuda": _cuda_without_device_guard,
    "__float__": lambda self: float(self.item()),
    "__int__": lambda self: int(self.item()),
}


@contextlib.contextmanager
def fake_cuda() -> Iterator[FakeTensorMode]:
    """A FakeTensorMode in which fake CUDA tensors behave as real ones would, as far as a step goes.

    A few bindings go around the device guard (see the module's docstring), and ``FakeTensor``
    joins the tensor types torch's optimizers take their multi-tensor (foreach) path for by default,
    as they do for real CUDA tensors (a fake ``nn.Parameter`` is a ``FakeTensor``).
    """
    real = {name: getattr(torch.Tensor, name) for name in _ROUTED}
    foreach_types = torch_optimizer._foreach_supported_types
    for name, routed in _ROUTED.items():
        setattr(torch.Tensor, name, routed)
    foreach_types.append(FakeTensor)
    try:
        with FakeTensorMode() as mode:
            yield mode
    finally:
        for name, method in real.items():
            setattr(torch.Tensor, name, method)
        foreach_types.remove(FakeTensor)


def fake_cuda_params(
    shapes: Sequence[tuple[int, ...]] = PARAM_SHAPES, dtype: torch.dtype = torch.float32
) -> list[torch.nn.Parameter]:
    """Parameters on the fake CUDA device (call inside :func:`fake_cuda`)."""
    return [torch.nn.Parameter(torch.randn(shape, device="cuda", dtype=dtype)) for shape in shapes]


@dataclass
class HostSyncs:
    """What one run counted: the first step, and each later step, with what was seen."""

    first: int
    later: list[int]
    first_events: list[str] = field(default_factory=list)
    later_events: list[list[str]] = field(default_factory=list)
    cpu_reads: list[int] = field(default_factory=list)  # per step, first included: seen, not counted


def count_host_syncs(
    make_step: Callable[[list[torch.nn.Parameter]], Callable[[], Any]],
    steps: int = 4,
    shapes: Sequence[tuple[int, ...]] = PARAM_SHAPES,
    grad: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> HostSyncs:
    """Run ``steps`` optimizer steps on fake CUDA parameters and count each step's host syncs.

    ``make_step(params)`` builds the optimizer (and puts it in training mode where its protocol says
    so) and returns the function that takes one step. Fresh fake CUDA gradients (``grad(p, i)`` for
    step ``i`` where given, else random) are set before each step, outside the count; only the step
    itself is counted. Updates are eager
    (``RVC_OPTIM_COMPILE=0``): a compiled update is a fake tensor's business no more than a GPU's.
    """
    old = os.environ.get("RVC_OPTIM_COMPILE")
    os.environ["RVC_OPTIM_COMPILE"] = "0"
    try:
        with fake_cuda():
            params = fake_cuda_params(shapes)
            step = make_step(params)
            counters: list[HostSyncCounter] = []
            for i in range(steps):
                for p in params:
                    p.grad = grad(p, i) if grad is not None else torch.randn_like(p)
                with HostSyncCounter() as counter:
                    step()
                counters.append(counter)
    finally:
        if old is None:
            os.environ.pop("RVC_OPTIM_COMPILE", None)
        else:
            os.environ["RVC_OPTIM_COMPILE"] = old
    events = [c.events for c in counters]
    return HostSyncs(
        first=len(events[0]),
        later=[len(e) for e in events[1:]],
        first_events=events[0],
        later_events=events[1:],
        cpu_reads=[c.cpu_reads for c in counters],
    )
