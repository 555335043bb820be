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
* **compiled** (inductor; automatic on CUDA, and on a CPU for large updates): every tensor is viewed as 1-D and the
  lists are cut into chunks of :data:`CHUNK_TENSORS` tensors (the last one padded with tiny zero
  tensors). ``fn`` is traced once for a chunk with symbolic sizes and compiled by inductor without
  dynamo (:class:`ChunkGraph`): one graph serves every chunk of every parameter set, so the build takes
  seconds, inductor fuses each tensor's whole update into one loop, and a call is the generated kernel's
  call (about 30 us a chunk, against 250 us through ``torch.compile``'s guards and size reads, which
  cost Lion a third of its step on RVC's generator set). The views of lists that persist from step to
  step (parameters, state) are kept (:class:`FlatViews`).

The choice between eager and compiled:

* the optimizer's ``compiled`` argument: ``True``, ``False`` or ``None`` (automatic);
* for ``None``, the environment variable ``RVC_OPTIM_COMPILE``: ``1`` (compile wherever a compiler is
  available: CUDA with Triton, or a CPU with a C++ compiler on the path), ``0`` (eager) or ``auto`` (the
  default): compile on CUDA, and on a CPU for an elementwise (or ``flat``) update of at least
  :data:`CPU_AUTO_COMPILE_NUMEL` elements, where the cold build (14-46 s on 2 cores) pays for itself
  within 1,000 steps (measured on RVC's sets: ``benchmarks/results/step_time_cpu_default_*.md``).
  A small model (the demo's) stays eager, where a build would not pay.

A compiled update that fails to build falls back to the eager function with one warning. An update of
whole tensors that the chunk graphs cannot take (lists of different lengths, sizes branched on) is
compiled by dynamo over the whole lists only when compiling was asked for (``compiled=True`` or
``RVC_OPTIM_COMPILE=1``): that graph builds for minutes on RVC's sets, so ``auto`` (on CUDA) runs it
eager instead. On a CPU an update of whole tensors whose shapes it reads (not ``flat``) always runs
eager, by cache-sized batches where the optimizer calls it through :func:`run_by_tensor_batches`: there
its compiled graphs were slower than eager (measured on RVC's generator set: AdaFactor's factored update
built for 230 s and ran at 282 ms against 247 eager; Ranger21's first pass ran at 286 ms against 84 and
its decay at 75 against 36, the build unfinished after 260 s; Nero's chunk graphs on row views ran at
62 ms against 57 eager on the generator set and 101 against 72 on the discriminator's, side by side).
Whole-tensor chunks are grouped by rank; a list may hold statistics of the first list's tensors (Nero's
per-row state [rows, 1] beside [rows, cols]): its graph takes those dims as 1.

What ``fn`` must be, for blocking and chunking to be correct (``elementwise=True``, the default): the
result for element ``j`` of tensor ``i`` depends only on element ``j`` of tensor ``i`` of each list, and
every list has the same shapes. Global reductions are allowed as return values: a function that returns
a tuple of 0-d tensors returns sums over all elements, and the runner adds them over blocks. A function
that needs whole tensors (a per-tensor norm) passes ``elementwise=False`` and always runs over whole
lists; if it never reads their shapes (a norm, not a row mean), ``flat=True`` too, and the compiled path
runs it on the same flat-view chunks as an elementwise one (one graph). Per-step scalars are passed as 0-d tensors (a Python float for a hyper-parameter that is a
constant of the run); ``fn`` must accept a Python float in their place (see :func:`add_scaled_`).
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
import weakref
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import sympy
import torch
from torch import Tensor
from torch._inductor import config as inductor_config
from torch._inductor.choices import InductorChoices
from torch._inductor.virtualized import V

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


# ``auto`` compiles on a CPU where an update's tensors hold at least this many elements: there the cold
# build pays for itself within 1,000 steps for the updates that run on flat chunks (measured on RVC's
# generator and discriminator together, 108M elements, against the eager path: repaid within 40-468
# steps; one graph serves both optimizers of a training run. Fromage's did not pay, and stays eager).
CPU_AUTO_COMPILE_NUMEL = 1 << 25


def resolve_compiled(compiled: bool | None, device_type: str = "cpu", numel: int | None = None) -> bool:
    """The effective choice for ``compiled`` on ``device_type``, for an update over ``numel`` elements.

    ``auto`` compiles on CUDA, and on a CPU for updates of at least :data:`CPU_AUTO_COMPILE_NUMEL`
    elements (``numel`` None: not known to be that large, so not compiled).
    """
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
    if device_type == "cpu":
        return numel is not None and numel >= CPU_AUTO_COMPILE_NUMEL and compile_available("cpu")
    return device_type == "cuda" and compile_available(device_type)


def _compile_requested(compiled: bool | None) -> bool:
    """Whether compiling was asked for (``compiled=True`` or ``RVC_OPTIM_COMPILE=1``), not left to auto."""
    if compiled is not None:
        return bool(compiled)
    return os.environ.get(ENV_VAR, "auto").strip().lower() in ("1", "true", "yes", "on")


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


class FlatViews:
    """1-D views of the tensors in a list, kept from step to step for the lists that persist.

    Making a view costs about 2 us a tensor in Python, and the compiled path needs 1-D views of every
    tensor of every list, every step: 5 ms a step for Lion on RVC's generator set, a sixth of the update.
    A list whose tensors are the same objects on the same memory as at the previous call (parameters,
    optimizer state) gets the views made then; checking that costs a tenth as much. A list of new tensors
    (gradients set to None between steps) gets new views, and keeps nothing alive: its tensors are held
    only by weak references until they have been seen twice.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, int], tuple[list[weakref.ref], list[int], list[Tensor] | None]] = {}

    def __call__(self, tensors: list[Tensor]) -> list[Tensor]:
        key = (id(tensors[0]), len(tensors))
        pointers = list(map(Tensor.data_ptr, tensors))
        entry = self._entries.get(key)
        if entry is not None and entry[1] == pointers and all(r() is t for r, t in zip(entry[0], tensors)):
            if entry[2] is not None:
                return entry[2]
            views = list(map(Tensor.flatten, tensors))  # contiguous tensors: flatten is a view
            self._entries[key] = (entry[0], pointers, views)
            return views
        if len(self._entries) > 64:  # lists of new tensors every step: nothing to keep
            self._entries.clear()
        self._entries[key] = (list(map(weakref.ref, tensors)), pointers, None)
        return list(map(Tensor.flatten, tensors))


class SizeDependentError(RuntimeError):
    """An update whose trace or generated code depends on tensor sizes: it cannot be compiled by chunks."""


Chunk = tuple[int | None, list[list[Tensor]]]  # (rank of whole tensors, or None for flat views; the lists)


def _statistic_dims(tensors: Sequence[Tensor], firsts: Sequence[Tensor]) -> tuple[int, ...]:
    """The dims in which a list of whole tensors holds statistics of the first list's (per-row or
    per-column, kept with size 1): those where some tensor has size 1 and the first list's does not."""
    return tuple(d for d in range(firsts[0].dim())
                 if any(t.shape[d] == 1 and f.shape[d] != 1 for t, f in zip(tensors, firsts)))


def _pad(like: Tensor, rank: int | None, min_numel: int, ones: tuple[int, ...] = ()) -> Tensor:
    """A fresh zero tensor to fill a chunk: zeros stay zeros under an optimizer update with a zero
    gradient, and add nothing to a returned sum. Size 1 in the dims ``ones`` (a statistics list's)."""
    side = 2
    while side ** (rank or 1) < min_numel:
        side += 1
    return torch.zeros([1 if d in ones else side for d in range(rank or 1)], dtype=like.dtype, device=like.device)


def _compile_chunks(tensor_lists: Sequence[list[Tensor]], flat_views: Callable[[list[Tensor]], list[Tensor]] | None = None,
                    *, whole: bool = False, min_numel: int = 2) -> tuple[list[Chunk], list[list[Tensor]]]:
    """Chunks of :data:`CHUNK_TENSORS` tensors for the compiled path, and what stays eager.

    Elementwise updates get flat views (``flat_views``, a :class:`FlatViews`, reuses those of lists that
    persist); updates of whole tensors (``whole``) get the tensors themselves, grouped by rank, one graph
    per rank. Tensors of fewer than ``min_numel`` elements (at least 2: sizes 0 and 1 would need their own
    graph) and non-contiguous ones stay on the eager path; the last chunk of a kind is padded (:func:`_pad`).
    This runs every step over every tensor, so it is written with C-level ``map`` where it can be.
    """
    numels = map(Tensor.numel, tensor_lists[0])
    contiguous = zip(*(map(Tensor.is_contiguous, lst) for lst in tensor_lists))
    scalar_lists = [lst[0].dim() == 0 for lst in tensor_lists]  # one 0-d value per tensor (layer-wise state)
    keep = [n >= min_numel and all(c) for n, c in zip(numels, contiguous)]
    if not any(keep):
        return [], [list(lst) for lst in tensor_lists]
    rest = [[t for t, k in zip(lst, keep) if not k] for lst in tensor_lists]
    if whole:
        kept = [[t for t, k in zip(lst, keep) if k] for lst in tensor_lists]
        by_rank: dict[int, list[int]] = {}
        for i, t in enumerate(kept[0]):
            by_rank.setdefault(t.dim(), []).append(i)
        groups = [(rank, [[lst[i] for i in index] for lst in kept]) for rank, index in sorted(by_rank.items())]
    else:
        flatten = flat_views or (lambda lst: list(map(Tensor.flatten, lst)))
        lists = tensor_lists if all(keep) else [[t for t, k in zip(lst, keep) if k] for lst in tensor_lists]
        groups = [(None, [list(lst) if scalar else list(flatten(lst))  # copies: padded below
                          for lst, scalar in zip(lists, scalar_lists)])]
    chunks: list[Chunk] = []
    for rank, lists in groups:
        n = len(lists[0])
        if n % CHUNK_TENSORS:
            for out, scalar in zip(lists, scalar_lists):
                ones = () if scalar or rank is None else _statistic_dims(out, lists[0])
                out.extend(out[0].new_zeros(()) if scalar else _pad(out[0], rank, min_numel, ones)
                           for _ in range(CHUNK_TENSORS - n % CHUNK_TENSORS))
        chunks += [(rank, [lst[i:i + CHUNK_TENSORS] for lst in lists]) for i in range(0, n, CHUNK_TENSORS)]
    return chunks, rest


class UpdateFunction:
    """A multi-tensor update function and the paths it runs on (see the module docstring).

    Call it like the function itself, with ``device_type`` naming the device of the lists. The compiled
    function is built lazily on the first compiled call and shared by every optimizer instance.
    """

    def __init__(self, fn: Callable[..., Any], compiled: bool | None = None, *, elementwise: bool = True,
                 flat: bool = False, min_numel: int = 2) -> None:
        self.fn = fn
        self.compiled = compiled
        self.elementwise = elementwise
        self.flat = flat or elementwise  # whole tensors whose shapes fn never reads (norms): flat views serve
        self.min_numel = max(2, min_numel)
        self._whole_by_chunks = True
        self._stay_eager = False
        self._flat_views = FlatViews()

    def __call__(self, *tensor_lists: list[Tensor], device_type: str = "cpu", **scalars: Any) -> Any:
        if any(not lst for lst in tensor_lists):  # an optional list left empty: whole lists, nothing to cut
            if not any(tensor_lists):
                return None
            return self._with_empty_lists(tensor_lists, device_type, scalars)
        if self.compiles(tensor_lists, device_type):
            try:
                return self._run_compiled(tensor_lists, scalars, device_type)
            except Exception as err:  # a backend that cannot build this graph here
                if self.compiled:
                    raise
                self._stay_eager = True
                warnings.warn(f"torch.compile failed for {self.fn.__name__} ({type(err).__name__}: {err}); using foreach")
        if device_type == "cpu" and self.elementwise:
            return self._run_blocked(tensor_lists, scalars)
        return self.fn(*tensor_lists, **scalars)

    def compiles(self, tensor_lists: Sequence[list[Tensor]], device_type: str) -> bool:
        """Whether a call over these lists takes the compiled path (for an optimizer whose passes are
        laid out differently there)."""
        if device_type == "cpu" and not self.flat:  # whole tensors: eager on a CPU (module docstring)
            return False
        return not self._stay_eager and resolve_compiled(self.compiled, device_type,
                                                         self._auto_numel(tensor_lists, device_type))

    def _auto_numel(self, tensor_lists: Sequence[list[Tensor]], device_type: str) -> int | None:
        """The element count ``auto`` decides by on a CPU: updates on flat views only (their build is one
        graph; a whole-tensor update builds one per rank, and may need dynamo's whole-list graph)."""
        if self.compiled is not None or device_type != "cpu" or not self.flat:
            return None
        return sum(map(Tensor.numel, tensor_lists[0]))

    def _with_empty_lists(self, tensor_lists: Sequence[list[Tensor]], device_type: str, scalars: dict[str, Any]) -> Any:
        """Run with the empty lists (an optional state, such as a switched-off compensation buffer) taken
        out, and put back as empty lists in every call of ``fn``."""
        present = tuple(i for i, lst in enumerate(tensor_lists) if lst)
        key = (self.fn, self.compiled, self.elementwise, self.flat, self.min_numel, len(tensor_lists),
               present)
        if key not in _WITHOUT_EMPTY:
            _WITHOUT_EMPTY[key] = UpdateFunction(_without_empty(self.fn, len(tensor_lists), present), self.compiled,
                                                 elementwise=self.elementwise, flat=self.flat, min_numel=self.min_numel)
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

    def _run_compiled(self, tensor_lists: Sequence[list[Tensor]], scalars: dict[str, Any], device_type: str) -> Results:
        if not self.flat and self._whole_by_chunks:
            try:
                return self._run_chunks(tensor_lists, scalars)
            except Exception:  # noqa: BLE001 - sizes branched on, or inductor's own failure: dynamo's whole-list graph
                self._whole_by_chunks = False
        if not self.flat:
            if not _compile_requested(self.compiled):
                # auto: dynamo's graph over the whole lists builds for minutes on RVC's sets (over 210 s on a
                # CPU for AdaFactor, CAME and SM3 on G), so an update the chunk graphs cannot take stays eager
                self._stay_eager = True
                return self.fn(*tensor_lists, **scalars)
            return _compiled(self.fn, dynamic=False)(*tensor_lists, **scalars)
        return self._run_chunks(tensor_lists, scalars)

    def _run_chunks(self, tensor_lists: Sequence[list[Tensor]], scalars: dict[str, Any]) -> Results:
        if len({len(lst) for lst in tensor_lists}) > 1:  # state for some tensors only
            raise SizeDependentError(f"{self.fn.__name__} takes lists of different lengths")
        chunks, rest = _compile_chunks(tensor_lists, self._flat_views, whole=not self.flat, min_numel=self.min_numel)
        graphs = [chunk_graph(self.fn, chunk, scalars, rank, self.min_numel) for rank, chunk in chunks]
        total: Results = None  # every graph built before any runs: a refused one leaves nothing half done
        for graph, (_, chunk) in zip(graphs, chunks):
            total = _add_results(total, graph(chunk, scalars))
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


# Graphs built per function beyond this many (a Python float that changes every step would build one per
# step) make the update fall back to eager, as dynamo's recompile limit does.
GRAPH_LIMIT = 16
# The traced example sizes: large, since inductor decides from them whether a loop is worth running in
# parallel.
_EXAMPLE_NUMEL = 1 << 16


# The multi-tensor ops the updates use, traced as one op per tensor (see _per_tensor_decompositions).
_FOREACH_OPS = ("abs", "add", "addcdiv", "addcmul", "clamp_max", "clamp_min", "copy", "div", "exp", "lerp", "log",
                "log1p", "maximum", "minimum", "mul", "neg", "norm", "pow", "rsqrt", "sign", "sqrt", "sub", "zero")


def _per_tensor(name: str, inplace: bool, overload: str) -> Callable[..., Any]:
    op = getattr(torch.ops.aten, name)

    def decomposed(*args: Any, **kwargs: Any) -> Any:
        n = len(next(a for a in args if isinstance(a, (list, tuple))))

        def pick(value: Any, i: int) -> Any:
            if isinstance(value, (list, tuple)):
                return value[i]
            if overload == "Tensor" and name in ("addcdiv", "addcmul") and isinstance(value, Tensor) and value.dim() == 1:
                return value[i]  # a 1-d tensor of per-tensor scalars
            return value

        outs = []
        for i in range(n):
            a = [pick(v, i) for v in args]
            k = {key: pick(v, i) for key, v in kwargs.items()}
            if name == "norm":  # _foreach_norm(tensors, ord=2, dtype=None)
                ord_ = a[1] if len(a) > 1 else k.get("ord", 2)
                dtype = a[2] if len(a) > 2 else k.get("dtype")
                outs.append(torch.ops.aten.linalg_vector_norm(a[0], ord_, dtype=dtype))
            elif name == "lerp" and isinstance(a[2], torch.SymFloat):
                # a 0-d weight read in the trace: inductor's lerp with a scalar weight branches on its value
                weight = torch.ops.aten.scalar_tensor(a[2], dtype=a[0].dtype, device=a[0].device)
                outs.append(torch.ops.aten.lerp.Tensor(a[0], a[1], weight))
            elif name in ("addcdiv", "addcmul") and len(a) == 4:  # value: positional here, keyword-only there
                outs.append(op(*a[:3], value=a[3], **k))
            else:
                outs.append(op(*a, **k))
        if inplace:
            for target, out in zip(args[0], outs):
                target.copy_(out)
            return None
        return outs

    return decomposed


@functools.cache
def _per_tensor_decompositions() -> dict[Any, Callable[..., Any]]:
    """``aten._foreach_*`` as one op per tensor, for the chunk graphs' trace. Inductor lowers a foreach op
    to one combined kernel across the tensors, which it cannot fuse with a reduction over one of them, so
    an update with sums (D-Adapt's, Prodigy's) read each tensor once per op group; traced per tensor, each
    tensor's reads, sums and writes can share one loop."""
    table: dict[Any, Callable[..., Any]] = {}
    for name in _FOREACH_OPS:
        for inplace in (False, True):
            packet = getattr(torch.ops.aten, f"_foreach_{name}{'_' if inplace else ''}", None)
            if packet is None:
                continue
            for overload in packet.overloads():
                table[getattr(packet, overload)] = _per_tensor(name, inplace, overload)
    return table


class ChunkFusionChoices(InductorChoices):
    """Inductor's fusion heuristics for the chunk graphs, less the distance limit on horizontal fusion.

    Inductor does not fuse two loops over shared data whose nodes lie more than 64 apart in the graph,
    lest a fused kernel keep buffers alive longer. In a chunk graph every state write is copied back at
    the graph's end, so the loop that writes a tensor's state counts as far from everything, and a sum
    over the same tensor could not join it: LAMB's graph took three loops per tensor (one for ||p||,
    ||u|| and u; one for p; one more reading g, m and v again to write m and v), two without the limit.
    Prodigy's and DAdaptAdam's graphs lose a loop per tensor too; no other graph of ours changes.
    Measured side by side in one process (``benchmarks/results/chunk_fusion_cpu.md``), ratio to the
    floor with inductor's choices and with these: LAMB 1.68 -> 1.30 on RVC's discriminator (whose large
    tensors do not stay in the cache between loops) and 1.42 -> 1.25 on its generator, DAdaptAdam 1.17 ->
    1.04 and 1.25 -> 1.16, Prodigy 1.27 -> 1.19 and 1.22 -> 1.25 (within the noise). A chunk graph's
    temporaries are one tensor's, so no buffer lives longer. Fusion still needs shared data
    (``score_fusion_memory_threshold``), as by default.
    """

    @staticmethod
    def can_fuse_horizontal(scheduler: Any, node1: Any, node2: Any, shared_data_score: int) -> bool:
        if shared_data_score >= inductor_config.score_fusion_memory_threshold:
            return True
        return InductorChoices.can_fuse_horizontal(scheduler, node1, node2, shared_data_score)

    def uuid(self) -> str:  # inductor's cache key
        return "rvc_optim.ChunkFusionChoices.1"


class ChunkGraph:
    """``fn`` compiled once for chunks of :data:`CHUNK_TENSORS` tensors per list, of any sizes.

    Built without dynamo: ``fn`` is traced by ``make_fx`` with symbolic sizes on example tensors, and the
    graph is compiled by inductor (``torch._inductor.standalone_compile``). Calling it is then a call of
    the generated kernel: no guards, no size reads in Python, about 30 us per chunk against about 250 us
    through ``torch.compile``'s dynamo frame (measured on 16 tiny tensors, one CPU thread). With no
    guards, what the graph assumes is the caller's to keep, and :meth:`UpdateFunction._run_compiled` keeps
    it: contiguous tensors of at least ``min_numel`` elements, of rank ``rank`` (``None``: 1-D views), the
    dtypes and device it was built for, and the same Python-number scalars (baked in as constants; they
    are part of the cache key). A trace that branches on a size is refused, since no size is checked.
    """

    def __init__(self, fn: Callable[..., Any], dtypes: tuple[torch.dtype, ...], device: torch.device,
                 tensor_scalars: dict[str, tuple[torch.dtype, torch.device]], constants: dict[str, Any],
                 rank: int | None = None, min_numel: int = 2, scalar_lists: tuple[bool, ...] = (),
                 statistic_dims: tuple[tuple[int, ...], ...] = ()) -> None:
        from torch.fx.experimental.proxy_tensor import make_fx

        self.tensor_names = tuple(tensor_scalars)
        n_lists, k = len(dtypes), CHUNK_TENSORS
        self.returns: str | None = None  # what fn returns: None, "tensor" or "tuple"

        def flat_fn(*args: Tensor) -> tuple[Tensor, ...]:
            for t in args[:k]:  # what the caller guarantees, so that fn's trace need not branch on it
                torch._check(t.numel() >= min_numel)
            lists = [list(args[i * k:(i + 1) * k]) for i in range(n_lists)]
            named = dict(zip(self.tensor_names, args[n_lists * k:]))
            # fn on one tensor of each list at a time, its results summed as chunks' are: each tensor's
            # ops stay next to each other in the graph, where inductor fuses them into one loop (it does
            # not fuse nodes more than 64 apart, which a whole-list trace puts them with a few ops).
            out: Results = None
            for j in range(k):
                out = _add_results(out, fn(*([lst[j]] for lst in lists), **named, **constants))
            self.returns = None if out is None else "tensor" if isinstance(out, Tensor) else "tuple"
            return (out,) if isinstance(out, Tensor) else tuple(out or ())

        # Tensor j of every list has the same example shape, and no other tensor shares a size with it:
        # one symbol per dim of index j (equal sizes share a symbol), so the lists' equal shapes are no
        # assumption of the trace, and any guard left on a size is a branch of fn on it.
        shapes = [(_EXAMPLE_NUMEL + j,) if rank is None else tuple(3 + j + 16 * d for d in range(rank)) for j in range(k)]
        scalar_lists = scalar_lists or (False,) * n_lists
        statistic_dims = statistic_dims or ((),) * n_lists
        examples = [torch.zeros(() if scalar else [1 if d in ones else size for d, size in enumerate(shape)],
                                dtype=dtype, device=device)
                    for dtype, scalar, ones in zip(dtypes, scalar_lists, statistic_dims) for shape in shapes]
        examples += [torch.zeros((), dtype=dtype, device=dev) for dtype, dev in tensor_scalars.values()]
        graph = make_fx(flat_fn, tracing_mode="symbolic", decomposition_table=_per_tensor_decompositions())(*examples)
        fakes = [node.meta["val"] for node in graph.graph.nodes if node.op == "placeholder"]
        shape_env = fakes[0].fake_mode.shape_env
        _forget_value_symbols(fn, graph, shape_env)
        # what flat_fn's torch._check states, and the caller guarantees
        allowed = {sympy.Ge(fake.numel().node.expr, min_numel) for fake in fakes[:k]
                   if isinstance(fake.numel(), torch.SymInt)}
        self._refuse_size_guards(fn, shape_env, allowed)
        if rank is not None:  # small examples, large hints: inductor parallelises loops by their hinted size
            hint = sympy.Integer(max(2, round(_EXAMPLE_NUMEL ** (1 / max(rank, 1)))))
            for fake in fakes[:k]:
                for size in fake.shape:
                    if isinstance(size, torch.SymInt) and isinstance(size.node.expr, sympy.Symbol):
                        shape_env.backed_var_to_val[size.node.expr] = hint
        traced_guards = set(guard.expr for guard in shape_env.guards)
        # The choices are inductor's per-thread handler, set once from the config and kept: set here for
        # this build only (a user's own torch.compile keeps inductor's), and named in the config too,
        # which keys inductor's cache.
        with V.set_choices_handler(ChunkFusionChoices()):
            self.compiled = torch._inductor.standalone_compile(
                graph, fakes, dynamic_shapes="from_example_inputs", fake_mode=fakes[0].fake_mode,
                options={"config_patches": {"size_asserts": False, "inductor_choices_class": ChunkFusionChoices}})
        # Inductor's one size choice that changes rounding only: a float sum over more than 4096
        # elements accumulates in cascaded chunks (cpp.py, "chunk size to balance accuracy and
        # performance"). Any other guard it adds (32-bit indexing, say) is refused.
        self._refuse_size_guards(fn, shape_env, allowed | traced_guards | {
            guard.expr for guard in shape_env.guards
            if isinstance(guard.expr, (sympy.StrictGreaterThan, sympy.LessThan)) and guard.expr.rhs == 4096})

    @staticmethod
    def _refuse_size_guards(fn: Callable[..., Any], shape_env: Any, allowed: set[Any]) -> None:
        """A branch on a size: the graph would be wrong for other sizes, and nothing checks them."""
        branches = [guard.expr for guard in shape_env.guards if guard.expr not in allowed]
        if branches:
            raise SizeDependentError(f"{fn.__name__} depends on tensor sizes ({branches[0]}); it cannot run by chunks")

    def __call__(self, chunk: Sequence[list[Tensor]], scalars: dict[str, Any]) -> Results:
        args = [t for lst in chunk for t in lst] + [scalars[name] for name in self.tensor_names]
        out = self.compiled(*args)
        if self.returns is None:
            return None
        return out[0] if self.returns == "tensor" else tuple(out)


def _forget_value_symbols(fn: Callable[..., Any], graph: torch.fx.GraphModule, shape_env: Any) -> None:
    """Drop the float symbols that fake tensors give 0-d float64 CPU inputs (the scalars of a float64
    update on a CPU) for their values, in case ``.item()`` reads them. A chunk graph never reads one (a
    read would be a host sync on an accelerator); left in the shape environment, they make inductor ask
    dynamo to restart its analysis with them specialised, which a graph built without dynamo cannot
    do (``TensorifyScalarRestartAnalysis``: before this, every float64 update on a CPU failed to build).
    """
    from torch.utils._sympy.symbol import SymT, symbol_is_type

    values = {s for s in shape_env.backed_var_to_val if symbol_is_type(s, SymT.FLOAT)}
    for node in graph.graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.SymFloat) and val.node.expr.free_symbols & values:
            raise SizeDependentError(f"{fn.__name__} reads a scalar's value; it cannot run by chunks")
    for symbol in values:
        del shape_env.backed_var_to_val[symbol]


_GRAPHS: dict[tuple[Any, ...], ChunkGraph] = {}
_GRAPH_COUNTS: dict[Callable[..., Any], int] = {}


def chunk_graph(fn: Callable[..., Any], chunk: Sequence[list[Tensor]], scalars: dict[str, Any],
                rank: int | None = None, min_numel: int = 2) -> ChunkGraph:
    """The :class:`ChunkGraph` of ``fn`` for this chunk's dtypes, device and rank and these scalars, built once."""
    tensor_scalars = {k: (v.dtype, v.device) for k, v in scalars.items() if isinstance(v, Tensor)}
    constants = {k: v for k, v in scalars.items() if not isinstance(v, Tensor)}
    dtypes = tuple(lst[0].dtype for lst in chunk)
    scalar_lists = tuple(lst[0].dim() == 0 for lst in chunk)
    statistic_dims = _chunk_statistic_dims(fn, chunk, rank, scalar_lists)
    device = chunk[0][0].device
    key = (fn, dtypes, scalar_lists, statistic_dims, device, rank, min_numel, tuple(sorted(tensor_scalars.items())),
           tuple(sorted(constants.items())))
    graph = _GRAPHS.get(key)
    if graph is None:
        if _GRAPH_COUNTS.get(fn, 0) >= GRAPH_LIMIT:
            raise RuntimeError(f"{fn.__name__} has built {GRAPH_LIMIT} graphs (one per dtype, rank and set of "
                               "Python-number scalars): a Python-number scalar changes from call to call (pass "
                               "per-step values as 0-d tensors), or param groups differ in too many settings")
        graph = _GRAPHS[key] = ChunkGraph(fn, dtypes, device, tensor_scalars, constants, rank, min_numel, scalar_lists,
                                          statistic_dims)
        _GRAPH_COUNTS[fn] = _GRAPH_COUNTS.get(fn, 0) + 1
    return graph


def _chunk_statistic_dims(fn: Callable[..., Any], chunk: Sequence[list[Tensor]], rank: int | None,
                          scalar_lists: tuple[bool, ...]) -> tuple[tuple[int, ...], ...]:
    """For whole tensors, each list's statistics dims (:func:`_statistic_dims`), which its graph takes as
    size 1; every other dim must equal the first list's, tensor by tensor."""
    if rank is None:
        return ((),) * len(chunk)
    dims = tuple(() if scalar else _statistic_dims(lst, chunk[0]) for lst, scalar in zip(chunk, scalar_lists))
    for lst, ones, scalar in zip(chunk, dims, scalar_lists):
        if not scalar and any(t.shape[d] != (1 if d in ones else f.shape[d])
                              for t, f in zip(lst, chunk[0]) for d in range(rank)):
            raise SizeDependentError(f"{fn.__name__} takes tensors whose shapes differ other than by statistics dims")
    return dims


def graphs_built() -> dict[str, int]:
    """How many chunk graphs each update function has built: a test's check that a run compiled once.
    Functions that share a name (the wrappers for empty optional lists) are counted together."""
    built: dict[str, int] = {}
    for fn, count in _GRAPH_COUNTS.items():
        built[fn.__qualname__] = built.get(fn.__qualname__, 0) + count
    return built


def clear_graphs() -> None:
    """Forget every chunk graph built in this process (as ``torch._dynamo.reset`` does for dynamo's)."""
    _GRAPHS.clear()
    _GRAPH_COUNTS.clear()


_VIEW_ALIGN = 16  # elements: each view starts 64 bytes (float32) from the last, as a new tensor would


def batch_buffer(buffers: dict[tuple[torch.device, torch.dtype], Tensor], tensors: list[Tensor]) -> Tensor:
    """A flat buffer for one temporary of any batch of ``tensors`` that :func:`run_by_tensor_batches`
    forms (under BLOCK_NUMEL elements plus its last tensor), kept in ``buffers`` between steps: on a CPU a
    parameter-sized temporary made every step costs its page faults, every step."""
    numel = BLOCK_NUMEL + max(t.numel() for t in tensors) + _VIEW_ALIGN * len(tensors)
    key = (tensors[0].device, tensors[0].dtype)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[key] = torch.empty(numel, dtype=key[1], device=key[0])
    return buffer


def views_of(buffer: Tensor, tensors: list[Tensor]) -> list[Tensor]:
    """Views of ``buffer`` shaped as ``tensors``, one after another (a new buffer if it is too small).
    Each starts on a multiple of 16 elements, aligned as a new tensor is: a reduction over a view that
    starts elsewhere adds in another order (measured: last-bit differences in AdaFactor's means)."""
    starts, offset = [], 0
    for t in tensors:
        starts.append(offset)
        offset += -(-t.numel() // _VIEW_ALIGN) * _VIEW_ALIGN
    if buffer.numel() < offset:
        buffer = buffer.new_empty(offset)
    return [buffer[start:start + t.numel()].view(t.shape) for start, t in zip(starts, tensors)]


def run_by_tensor_batches(update: UpdateFunction, lists: tuple[list[Tensor], ...], suffix: Collection[int] = (), *,
                          device_type: str, work_buffers: dict[Any, Tensor] | None = None, **scalars: Any) -> None:
    """Run ``update``, a function of whole tensors, over the lists ``(params, ...)``.

    On a CPU it runs over batches of whole tensors of about BLOCK_NUMEL elements (a larger tensor alone),
    so that the many passes of one batch stay in the cache instead of streaming every tensor through
    memory once per op, and with Python-float scalars (fused ``alpha=`` forms), as the runner's blocked
    path does for elementwise updates. Elsewhere, and when compiled, it runs once over the whole lists. A list shorter than
    ``params`` holds the state of a prefix of its tensors, or of a suffix for the indices in ``suffix``.
    With ``work_buffers`` (a dict the optimizer keeps), ``update`` also takes ``buffer``: a flat
    buffer for one temporary of the batch (:func:`batch_buffer`), or None over whole lists.
    """
    params = lists[0]
    if device_type != "cpu" or update.compiles(lists, device_type):
        if work_buffers is not None:
            scalars["buffer"] = None
        update(*lists, device_type=device_type, **scalars)  # one graph over the whole lists when compiled
        return
    if work_buffers is not None and params:
        scalars["buffer"] = batch_buffer(work_buffers, params)
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
