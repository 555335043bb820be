"""What the step-time benchmark's floor assumes, measured: the cost of reading and writing a stream.

The benchmark turns an algorithm's floor (bytes moved per parameter, :func:`rvc_optim.records.memory_floor`)
into time with one calibration: torch's fused AdamW, which moves 28 bytes per parameter (reads p, g, m
and v; writes p, m and v). That treats a byte read and a byte written as costing the same. Where they
do not, an update that reads more than it writes (a norm pass: LAMB, LARS, Fromage) cannot reach 1.0x
even with perfect code, and one that writes more could pass under it.

:func:`measure` times simple kernels over flat float32 tensors of one size, each interleaved with a
fused-AdamW step of the same size: sums that only read one, two or four streams, in-place updates
that read one or two and write one, Adam's pattern (read four, write three), and a read-and-write
with ``exp`` and ``log1p`` per element (Ranger21's softplus). From those, a stream's read and its
write, in milliseconds, beside fused AdamW's step. ``benchmarks/memory_traffic.py`` writes the result
file.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["KERNELS", "Kernel", "KernelResult", "measure", "stream_costs"]


@dataclass(frozen=True)
class Kernel:
    """``fn(a, b, c, d)`` over four flat tensors: ``reads`` streams read, ``writes`` written."""

    name: str
    reads: int
    writes: int
    fn: Callable[[Tensor, Tensor, Tensor, Tensor], object]


def _adam_pattern(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> None:
    c.mul_(0.9).add_(b, alpha=0.1)
    d.mul_(0.999).addcmul_(b, b, value=0.001)
    a.add_(c / (d.sqrt() + 1e-8), alpha=-1e-6)


def _softplus(a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> None:
    # values stay bounded: log1p(exp(x)) of x <= 20 is at most about 20
    a.copy_(torch.log1p(torch.exp(a.clamp(max=20.0))) * 0.5)


KERNELS = (
    Kernel("read 1 (sum of squares)", 1, 0, lambda a, b, c, d: (a * a).sum()),
    Kernel("read 2 (dot product)", 2, 0, lambda a, b, c, d: (a * b).sum()),
    Kernel("read 4 (two dot products)", 4, 0, lambda a, b, c, d: (a * b + c * d).sum()),
    Kernel("read 1, write 1 (scale in place)", 1, 1, lambda a, b, c, d: a.mul_(0.999)),
    Kernel("read 2, write 1 (add in place)", 2, 1, lambda a, b, c, d: a.add_(b, alpha=1e-3)),
    Kernel("read 4, write 3 (Adam's pattern)", 4, 3, _adam_pattern),
    Kernel("read 1, write 1, exp and log1p", 1, 1, _softplus),
)


@dataclass(frozen=True)
class KernelResult:
    name: str
    reads: int
    writes: int
    ms: float  # median over the timed repeats
    adamw_ms: float  # fused AdamW's median, its steps interleaved with this kernel's
    gb_per_s: float  # (reads + writes) * 4 bytes * numel / ms
    changed: bool  # the kernel wrote, or returned, what it should have (a kernel that does nothing is fast)

    @property
    def relative(self) -> float:
        """The kernel's time over fused AdamW's (which reads 4 streams and writes 3)."""
        return self.ms / self.adamw_ms


def _checked(kernel: Kernel, fn: Callable[..., object], tensors: list[Tensor]) -> bool:
    before = [t.clone() for t in tensors]
    out = fn(*tensors)
    if kernel.writes:
        return not torch.equal(before[0], tensors[0])
    return isinstance(out, Tensor) and bool(torch.isfinite(out)) and float(out) != 0.0


def measure(numel: int, repeats: int = 9, warmup: int = 2, compiled: bool = True) -> list[KernelResult]:
    """Every kernel of :data:`KERNELS` over float32 tensors of ``numel`` elements, ``torch.compile``d
    (inductor: one loop per kernel, as the compiled optimizer updates are) or eager, each timed step
    followed by a fused-AdamW step over ``numel`` parameters."""
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.rand(numel, generator=gen) + 0.5 for _ in range(4)]
    param = torch.nn.Parameter(torch.randn(numel, generator=gen) * 0.02)
    param.grad = torch.randn(numel, generator=gen) * 1e-3
    adamw = torch.optim.AdamW([param], lr=1e-4, fused=True)
    results = []
    with torch.no_grad():
        for kernel in KERNELS:
            fn = torch.compile(kernel.fn, fullgraph=True, dynamic=False) if compiled else kernel.fn
            changed = _checked(kernel, fn, tensors)  # the build, for a compiled kernel
            for _ in range(warmup):
                fn(*tensors)
                adamw.step()
            times, adamw_times = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(*tensors)
                times.append(time.perf_counter() - start)
                start = time.perf_counter()
                adamw.step()
                adamw_times.append(time.perf_counter() - start)
            ms, adamw_ms = 1000 * statistics.median(times), 1000 * statistics.median(adamw_times)
            moved = (kernel.reads + kernel.writes) * 4 * numel
            results.append(KernelResult(kernel.name, kernel.reads, kernel.writes, ms, adamw_ms,
                                        moved / (ms / 1000) / 1e9, changed))
    return results


def stream_costs(results: list[KernelResult]) -> dict[str, float]:
    """A stream's read and its write, as fractions of fused AdamW's step, from the kernels that read
    four streams and that read two with and without writing one: what AdamW's 4 reads and 3 writes
    would cost at those rates beside what it took (1.0)."""
    by_name = {r.name: r for r in results}
    read = by_name["read 4 (two dot products)"].relative / 4
    write = by_name["read 2, write 1 (add in place)"].relative - by_name["read 2 (dot product)"].relative
    return {"read": read, "write": write, "adamw_at_these_rates": 4 * read + 3 * write}
