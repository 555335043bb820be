"""How an optimizer's multi-tensor update runs: three paths, chosen in one place.

Every optimizer this project writes keeps its math in one multi-tensor function
``fn(*tensor_lists, **scalars)`` written with ``torch._foreach_*`` ops, and calls it through
:class:`UpdateFunction`, which picks the path:

* **eager on an accelerator**: ``fn`` over whole lists, per-step scalars as 0-d device tensors, so no
  value is read back to the host.
* **eager on a CPU** (the default there): the lists are cut into cache-sized blocks, small tensors
  batched together and large ones sliced into flat views of :data:`BLOCK_NUMEL` elements, and ``fn``
  runs once per block. A whole-list foreach op streams every tensor through DRAM before the next op
  starts; a block's temporaries stay in the core's cache between ops. Per-step 0-d CPU tensors are
  read as Python floats (free on a CPU), so ``fn`` can use ``alpha=`` forms. Measured on RVC's
  generator set (Lion, 2 cores): whole-list foreach 2.8x the memory floor, a per-tensor loop 2.7x,
  blocks of 2**17 elements 2.1x (:data:`BLOCK_NUMEL`).
* **compiled** (``torch.compile``, automatic on CUDA, opt-in on a CPU): every tensor is viewed as 1-D
  and the lists are cut into chunks of :data:`CHUNK_TENSORS` tensors (the last one padded with tiny
  zero tensors), compiled once with dynamic sizes. One graph serves every chunk of every parameter
  set, so the build takes seconds to a minute instead of minutes per parameter set, and inductor still
  fuses each tensor's whole update into one loop.

The choice between eager and compiled:

* the optimizer's ``compiled`` argument: ``True``, ``False`` or ``None`` (automatic);
* for ``None``, the environment variable ``RVC_OPTIM_COMPILE``: ``1`` (compile wherever a compiler is
  available: CUDA with Triton, or a CPU with a C++ compiler on the path), ``0`` (eager) or ``auto`` (the
  default: compile on CUDA only). On a CPU the build (18-66 s per algorithm on 2 cores, measured on RVC's
  generator set) pays for itself within 1,000 steps for the optimizers with many passes (schedule-free
  AdamW/Adam, Adan, AnyPrecisionAdamW, DAdaptAdaGrad) but not for the others, and never for small
  models: ``benchmarks/results/step_time_cpu_compiled_generator.log``.

A compiled update that fails to build falls back to the eager function with one warning.

What ``fn`` must be, for blocking and chunking to be correct (``elementwise=True``, the default): the
result for element ``j`` of tensor ``i`` depends only on element ``j`` of tensor ``i`` of each list, and
every list has the same shapes. Global reductions are allowed as return values: a function that returns
a tuple of 0-d tensors returns sums over all elements, and the runner adds them over blocks. A function
that needs whole tensors (a per-tensor norm) passes ``elementwise=False`` and always runs over whole
lists. Per-step scalars are passed as 0-d tensors (a Python float for a hyper-parameter that is a
constant of the run); ``fn`` must accept a Python float in their place (see :func:`add_scaled_`).
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
from torch import Tensor

__all__ = [
    "BLOCK_NUMEL",
    "CHUNK_TENSORS",
    "ENV_VAR",
    "UpdateFunction",
    "cache_blocks",
    "compile_available",
    "resolve_compiled",
    "run_by_tensor_batches",
]

ENV_VAR = "RVC_OPTIM_COMPILE"
# Elements per block on the CPU eager path: 1 MiB of float32 per operand, so a block's operands and
# temporaries stay in the shared L3 between ops (measured on RVC's generator set: 2**17 and 2**18 best
# for Lion; 2**18 halves the blocks, and the per-op overhead, of the optimizers with many ops).
BLOCK_NUMEL = 1 << 18
# Tensors per compiled call: fewer calls against a larger graph to build.
CHUNK_TENSORS = 16
_FLOAT_DTYPES = (torch.float32, torch.float64)


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


Results = Tensor | tuple[Tensor, ...] | None


def _add_results(total: Results, part: Results) -> Results:
    """Sum the per-block reductions a function returns: a 0-d tensor, a tuple of them, or None."""
    if part is None or total is None:
        return part if total is None else total
    if isinstance(part, Tensor):
        return total + part
    return tuple(a + b for a, b in zip(total, part))


def _aligned(items: Sequence[Tensor]) -> bool:
    """Whether one index's tensors can be sliced together: same size, all contiguous."""
    numel = items[0].numel()
    return all(t.numel() == numel and t.is_contiguous() for t in items)


def cache_blocks(tensor_lists: Sequence[list[Tensor]], block_numel: int = BLOCK_NUMEL) -> Iterator[list[list[Tensor]]]:
    """Cut parallel tensor lists into blocks of about ``block_numel`` elements.

    Tensors larger than a block are sliced into flat views of ``block_numel`` elements (their tail joins
    the small tensors); smaller ones are batched until a batch holds ``block_numel`` elements. Each block
    is a list of parallel lists, as ``fn`` takes them.
    """
    batch: list[list[Tensor]] = [[] for _ in tensor_lists]
    batch_numel = 0

    def add(items: Sequence[Tensor]) -> bool:
        nonlocal batch_numel
        for out, t in zip(batch, items):
            out.append(t)
        batch_numel += items[0].numel()
        return batch_numel >= block_numel

    for items in zip(*tensor_lists):
        numel = items[0].numel()
        if numel > block_numel and _aligned(items):
            flat = [t.view(-1) for t in items]
            whole = numel - numel % block_numel
            for start in range(0, whole, block_numel):
                yield [[f[start:start + block_numel]] for f in flat]
            items = [f[whole:] for f in flat]
            if not items[0].numel():
                continue
        if add(items):
            yield batch
            batch = [[] for _ in tensor_lists]
            batch_numel = 0
    if batch[0]:
        yield batch


def _flat_alias(t: Tensor) -> Tensor:
    """A 1-D tensor on ``t``'s memory that is not a view in autograd's sense: dynamo guards on a view's
    base (its strides and rank), which would recompile the update for every shape of parameter."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


def _compile_chunks(tensor_lists: Sequence[list[Tensor]]) -> tuple[list[list[list[Tensor]]], list[list[Tensor]]]:
    """Chunks of :data:`CHUNK_TENSORS` flat tensors for the compiled path, and what stays eager.

    Tensors of fewer than two elements (sizes 0 and 1 specialise a dynamic graph) and non-contiguous
    ones stay on the eager path; the last chunk is padded with two-element zero tensors.
    """
    chunkable = [[] for _ in tensor_lists]
    rest = [[] for _ in tensor_lists]
    for items in zip(*tensor_lists):
        target, items = (chunkable, [_flat_alias(t) for t in items]) if (
            items[0].numel() >= 2 and _aligned(items)) else (rest, items)
        for out, t in zip(target, items):
            out.append(t)
    # Largest first: inductor sizes its loops, and decides whether to parallelise them, from the sizes
    # of the chunk it compiles with; a first chunk of biases would give single-threaded loops.
    order = sorted(range(len(chunkable[0])), key=lambda i: -chunkable[0][i].numel())
    chunkable = [[lst[i] for i in order] for lst in chunkable]
    n = len(order)
    if n % CHUNK_TENSORS:
        pad = CHUNK_TENSORS - n % CHUNK_TENSORS
        for out in chunkable:
            out.extend(torch.zeros(2, dtype=out[0].dtype, device=out[0].device) for _ in range(pad))
    chunks = [[lst[i:i + CHUNK_TENSORS] for lst in chunkable] for i in range(0, n, CHUNK_TENSORS)]
    return chunks, rest


class UpdateFunction:
    """A multi-tensor update function and the paths it runs on (see the module docstring).

    Call it like the function itself, with ``device_type`` naming the device of the lists. The compiled
    function is built lazily on the first compiled call and shared by every optimizer instance.
    """

    def __init__(self, fn: Callable[..., Any], compiled: bool | None = None, *, elementwise: bool = True) -> None:
        self.fn = fn
        self.compiled = compiled
        self.elementwise = elementwise
        self._failed = False

    def __call__(self, *tensor_lists: list[Tensor], device_type: str = "cpu", **scalars: Any) -> Any:
        if any(not lst for lst in tensor_lists):  # an optional list left empty: whole lists, nothing to cut
            if not any(tensor_lists):
                return None
            if self.elementwise:
                return self._with_empty_lists(tensor_lists, device_type, scalars)
        if not self._failed and resolve_compiled(self.compiled, device_type):
            try:
                return self._run_compiled(tensor_lists, scalars)
            except Exception as err:  # a backend that cannot build this graph here
                if self.compiled:
                    raise
                self._failed = True
                warnings.warn(f"torch.compile failed for {self.fn.__name__} ({type(err).__name__}: {err}); using foreach")
        if device_type == "cpu" and self.elementwise:
            return self._run_blocked(tensor_lists, scalars)
        return self.fn(*tensor_lists, **scalars)

    def _with_empty_lists(self, tensor_lists: Sequence[list[Tensor]], device_type: str, scalars: dict[str, Any]) -> Any:
        """Run with the empty lists (an optional state, such as a switched-off compensation buffer) taken
        out, and put back as empty lists in every call of ``fn``."""
        present = tuple(i for i, lst in enumerate(tensor_lists) if lst)
        key = (self.fn, self.compiled, len(tensor_lists), present)
        if key not in _WITHOUT_EMPTY:
            _WITHOUT_EMPTY[key] = UpdateFunction(_without_empty(self.fn, len(tensor_lists), present), self.compiled)
        return _WITHOUT_EMPTY[key](*(tensor_lists[i] for i in present), device_type=device_type, **scalars)

    def _run_blocked(self, tensor_lists: Sequence[list[Tensor]], scalars: dict[str, Any]) -> Results:
        if all(lst[0].dtype in _FLOAT_DTYPES for lst in tensor_lists if lst):
            # Reading a CPU tensor is free; with reduced-precision tensors the 0-d tensors stay, since
            # torch's CPU foreach kernels round a Python scalar to the tensors' dtype first.
            scalars = {k: v.item() if isinstance(v, Tensor) and v.dim() == 0 else v for k, v in scalars.items()}
        total: Results = None
        for block in cache_blocks(tensor_lists, BLOCK_NUMEL):
            total = _add_results(total, self.fn(*block, **scalars))
        return total

    def _run_compiled(self, tensor_lists: Sequence[list[Tensor]], scalars: dict[str, Any]) -> Results:
        if not self.elementwise:
            return _compiled(self.fn, dynamic=False)(*tensor_lists, **scalars)
        chunks, rest = _compile_chunks(tensor_lists)
        total: Results = None
        compiled = _compiled(self.fn, dynamic=True)
        with fx_config.patch(use_duck_shape=False):  # equal sizes must not become a guard
            for chunk in chunks:
                total = _add_results(total, compiled(*chunk, **scalars))
        if rest[0]:
            total = _add_results(total, self.fn(*rest, **scalars))
        return total


_WITHOUT_EMPTY: dict[tuple[Any, ...], UpdateFunction] = {}


def _without_empty(fn: Callable[..., Any], n: int, present: tuple[int, ...]) -> Callable[..., Any]:
    def without_empty(*lists: list[Tensor], **scalars: Any) -> Any:
        full: list[list[Tensor]] = [[] for _ in range(n)]
        for i, lst in zip(present, lists):
            full[i] = lst
        return fn(*full, **scalars)

    without_empty.__name__ = fn.__name__
    return without_empty


@functools.lru_cache(maxsize=None)
def _compiled(fn: Callable[..., Any], dynamic: bool) -> Callable[..., Any]:
    return torch.compile(fn, dynamic=dynamic)


def run_by_tensor_batches(update: UpdateFunction, lists: tuple[list[Tensor], ...], suffix: Collection[int] = (), *,
                          device_type: str, **scalars: Any) -> None:
    """Run ``update``, a function of whole tensors, over the lists ``(params, ...)``.

    On a CPU it runs over batches of whole tensors of about BLOCK_NUMEL elements (a larger tensor alone),
    so that the many passes of one batch stay in the cache instead of streaming every tensor through
    memory once per op, and with Python-float scalars (fused ``alpha=`` forms), as the runner's blocked
    path does for elementwise updates. Elsewhere, and when compiled, it runs once over the whole lists. A list shorter than
    ``params`` holds the state of a prefix of its tensors, or of a suffix for the indices in ``suffix``.
    """
    params = lists[0]
    if device_type != "cpu" or resolve_compiled(update.compiled, device_type):
        update(*lists, device_type=device_type, **scalars)  # one graph over the whole lists when compiled
        return
    if params and params[0].dtype in (torch.float32, torch.float64):  # CPU only: reading is free here
        scalars = {k: v.item() if isinstance(v, Tensor) and v.dim() == 0 else v for k, v in scalars.items()}
    n, start, size = len(params), 0, 0
    for i, p in enumerate(params):
        size += p.numel()
        if size < BLOCK_NUMEL and i < n - 1:
            continue
        batch = []
        for k, lst in enumerate(lists):
            offset = n - len(lst) if k in suffix else 0
            batch.append(lst[max(start - offset, 0):max(i + 1 - offset, 0)])
        update(*batch, device_type=device_type, **scalars)
        start, size = i + 1, 0
