"""The compiled path: same numbers as the eager path, compiled once, not once per step.

"Not once per step" is checked with dynamo's ``error_on_recompile``: after the first two steps a
cache miss on an already-compiled update raises.

Compiling takes 10-60 s per graph on this CPU, so these tests are few, tiny and shared: one
parametrised test over one optimizer for each way an update meets the runner (``REPRESENTATIVES``), on
three small tensors. Every optimizer's compiled path was checked this way when it was written (all pass,
2026-12-06); run ``REPRESENTATIVES = <all>`` locally after changing the runner.
"""

from __future__ import annotations


import threading
import weakref

import pytest
import torch
import torch._dynamo
from torch._inductor import config as inductor_config
from torch._inductor.choices import InductorChoices
from torch._inductor.virtualized import V

from rvc_optim import create_optimizer
from rvc_optim.capabilities import capabilities_of
from rvc_optim.catalog import RECORDS
from rvc_optim.driver import ProtocolDriver
from rvc_optim.optim._compile import (
    BLOCK_NUMEL,
    CPU_AUTO_COMPILE_NUMEL,
    ENV_VAR,
    ChunkFusionChoices,
    FlatViews,
    SizeDependentError,
    UpdateFunction,
    _chunk_statistic_dims,
    _compile_chunks,
    cache_blocks,
    clear_graphs,
    compile_available,
    graphs_built,
    resolve_compiled,
    run_by_tensor_batches,
)

# One optimizer for each way an update meets the runner, so the compiled tests stay few (each builds graphs
# for 20-60 s on 2 cores): plain elementwise (Lion), a 0-d lerp weight and a host schedule
# (ScheduleFreeAdamW), global sums returned from chunks (Prodigy, DAdaptAdaGrad; DAdaptAdam, whose first pass
# only reads when compiled on a CPU and leaves the stores to the second), whole lists with per-tensor
# norms and Lookahead (Ranger21), mixed dtypes and an empty optional list (AnyPrecisionAdamW), factored
# state in whole-tensor batches (AdaFactor: eager on a CPU even when asked to compile), one multi-tensor norm and trust ratios (LAMB), local rates taken
# before the update and passed in as per-tensor 0-d tensors (LARS on a CPU; A2Grad, with 0-d step scalars),
# a switch decided on the device (SWATS).
REPRESENTATIVES = ("Lion", "ScheduleFreeAdamW", "Prodigy", "DAdaptAdam", "DAdaptAdaGrad", "Ranger21",
                   "AnyPrecisionAdamW", "AdaFactor", "LAMB", "LARS", "A2Grad", "SWATS")
COMPILED = [r for r in RECORDS if r.name in REPRESENTATIVES and r.available and capabilities_of(r.cls).compiled]
# AdaFactor, CAME and SM3: lists of different lengths, which the chunk graphs refuse. Off a CPU they are
# compiled only by dynamo's whole-list graph (with compiled=True); on a CPU, where that graph ran slower
# than eager, they stay eager.
DYNAMO_ONLY = {"AdaFactor", "CAME", "SM3"}


def test_the_representatives_have_compiled_paths():
    assert [r.name for r in COMPILED] == [r.name for r in RECORDS if r.name in REPRESENTATIVES]


def test_switch_reads_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "0")
    assert resolve_compiled(None) is False
    monkeypatch.setenv(ENV_VAR, "1")
    assert resolve_compiled(None) is compile_available("cpu")
    monkeypatch.setenv(ENV_VAR, "auto")
    # on a CPU for large updates only: there the build pays for itself within 1,000 steps (measured)
    assert resolve_compiled(None, "cpu") is False
    assert resolve_compiled(None, "cpu", CPU_AUTO_COMPILE_NUMEL - 1) is False
    assert resolve_compiled(None, "cpu", CPU_AUTO_COMPILE_NUMEL) is compile_available("cpu")
    assert resolve_compiled(None, "cuda") is compile_available("cuda")
    assert resolve_compiled(False) is False
    monkeypatch.setenv(ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_compiled(None)


def _run(record, compiled: bool, steps: int, forbid_recompiles_after: int | None = None):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in ((8, 4), (16,), (3, 2, 5))]
    settings = {**record.test_settings, "compiled": compiled}
    from rvc_optim import create_optimizer

    optimizer = create_optimizer(record.name, params, **settings)
    driver = ProtocolDriver(optimizer, record)
    driver.train()
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        if optimizer.param_groups[0].get("lr") is not None and not record.protocol.owns_schedule:
            for group in optimizer.param_groups:  # a changing lr must not recompile
                group["lr"] = group["lr"] * 0.9
        # After the first steps every update function has met its inputs; from then on any cache miss
        # (a Python float that changed, a guard on a step count) is a recompile, and an error.
        strict = forbid_recompiles_after is not None and i >= forbid_recompiles_after
        built = graphs_built()
        with torch._dynamo.config.patch(error_on_recompile=strict):
            driver.step()
        rebuilt = [fn for fn, count in graphs_built().items() if fn in built and count != built[fn]]
        assert not strict or not rebuilt, f"{record.name}: {rebuilt} built another chunk graph at step {i}"
    return [p.detach().clone() for p in params]


@pytest.mark.compiled
@pytest.mark.skipif(not compile_available("cpu"), reason="no C++ compiler for torch.compile on this machine")
@pytest.mark.parametrize("record", COMPILED, ids=lambda r: r.name)
def test_compiled_matches_eager_and_compiles_once(record):
    torch._dynamo.reset()
    clear_graphs()
    steps = 7  # past a Lookahead merge (every 5 steps) and any warm-up's first steps
    eager = _run(record, compiled=False, steps=steps)
    torch._dynamo.utils.counters.clear()
    built = sum(graphs_built().values())
    compiled = _run(record, compiled=True, steps=steps, forbid_recompiles_after=2)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] + sum(graphs_built().values()) - built
    if record.name in DYNAMO_ONLY:  # eager on a CPU whatever was asked: the same path, the same bits
        assert graphs == 0, f"{record.name}: built {graphs} graphs on a CPU"
        for a, b in zip(compiled, eager):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        return
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert graphs >= 1, f"{record.name}: nothing was compiled"


def test_cache_blocks_cover_every_element_once_in_order():
    """Large tensors are sliced into flat views of the block size, their tails and small tensors batched;
    every element appears in exactly one block, aligned across the lists."""
    shapes = [(3,), (40, 7), (5, 2, 3), (1,), (100,)]
    a = [torch.arange(torch.Size(s).numel(), dtype=torch.float64).reshape(s) for s in shapes]
    b = [t.clone() * 2 for t in a]
    blocks = list(cache_blocks([a, b], block_numel=64))
    for block_a, block_b in blocks:
        # a batch closes once it holds a block's worth; what it took last was at most one block
        assert sum(t.numel() for t in block_a) < 2 * 64
        for x, y in zip(block_a, block_b):
            torch.testing.assert_close(y, x * 2)
            x.add_(1000.0)  # views: writes reach the tensors
    for t in a:
        assert bool((t >= 1000.0).all()) and bool((t < 2000.0).all())  # each element written once
    assert any(len(block[0]) > 1 for block in blocks)  # small tensors were batched
    assert any(block[0][0].numel() == 64 and block[0][0]._base is not None for block in blocks)  # slices


def test_tensor_batches_keep_tensors_whole_in_order_with_floats_and_state_prefixes():
    """Whole-tensor updates on a CPU run over batches of whole tensors closed at BLOCK_NUMEL elements,
    0-d scalars read as floats, and shorter lists sliced as the prefix (or suffix) of the tensors."""
    sizes = [3, BLOCK_NUMEL, 5, 1, 100]
    a = [torch.zeros(n) for n in sizes]
    prefix, suffix = a[:2], a[3:]
    seen = []

    def fn(xs, ps, ss, empty, *, scale):
        seen.append((list(xs), list(ps), list(ss), list(empty), type(scale)))

    update = UpdateFunction(fn, compiled=False, elementwise=False)
    run_by_tensor_batches(update, (a, prefix, suffix, []), suffix={2}, device_type="cpu", scale=torch.tensor(2.0))
    assert [len(xs) for xs, *_ in seen] == [2, 3]  # the batch closes once it reaches BLOCK_NUMEL
    assert [t for xs, *_ in seen for t in xs] == a  # the same tensors, whole, in order
    assert [ps for _, ps, *_ in seen] == [prefix, []]
    assert [ss for _, _, ss, *_ in seen] == [[], suffix]
    assert all(empty == [] and kind is float for *_, empty, kind in seen)


def test_blocked_run_sums_reductions_and_reads_cpu_scalars_as_floats():
    seen_types = []

    def fn(xs, ys, *, scale):
        seen_types.append(type(scale))
        torch._foreach_add_(xs, ys, alpha=scale)
        return torch.stack([x.sum() for x in xs]).sum(), torch.stack([y.sum() for y in ys]).sum()

    xs = [torch.ones(300_000), torch.ones(10), torch.ones(7, 3)]
    ys = [torch.full_like(x, 2.0) for x in xs]
    total_x, total_y = UpdateFunction(fn, compiled=False)(xs, ys, scale=torch.tensor(0.5), device_type="cpu")
    assert len(seen_types) > 1 and set(seen_types) == {float}
    numel = sum(x.numel() for x in xs)
    assert total_x.item() == 2.0 * numel and total_y.item() == 2.0 * numel
    assert all(bool((x == 2.0).all()) for x in xs)


def test_compile_chunks_are_full_flat_views_in_order_and_keep_tiny_tensors_eager():
    tensors = [torch.zeros(n) for n in (5, 1, 900, 40, 3)] + [torch.zeros(4, 4).t(), torch.zeros(3, 7)]
    chunks, rest = _compile_chunks([tensors, [t.clone() for t in tensors]])
    assert len(chunks) == 1 and chunks[0][0] is None and len(chunks[0][1][0]) == 16  # padded to a full chunk
    flat = chunks[0][1][0]
    assert [t.numel() for t in flat[:5]] == [5, 900, 40, 3, 21]
    assert all(t.dim() == 1 and t.is_contiguous() for t in flat)
    assert flat[4].data_ptr() == tensors[6].data_ptr()  # a view on the tensor's memory, not a copy
    assert all(bool((t == 0).all()) and t.numel() == 2 for t in flat[5:])  # padding: fresh zeros
    assert [t.numel() for t in rest[0]] == [1, 16]  # one element, and not contiguous: eager


def test_whole_tensor_chunks_are_grouped_by_rank_and_padded_to_the_minimum_size():
    tensors = [torch.zeros(5), torch.zeros(2), torch.zeros(3, 4), torch.zeros(6), torch.zeros(2, 2, 2)]
    chunks, rest = _compile_chunks([tensors], whole=True, min_numel=3)
    assert [(rank, [t.shape for t in lists[0][:2]]) for rank, lists in chunks] == [
        (1, [(5,), (6,)]), (2, [(3, 4), (2, 2)]), (3, [(2, 2, 2), (2, 2, 2)])]
    assert all(len(lists[0]) == 16 for _, lists in chunks)
    assert chunks[0][1][0][2].shape == (3,)  # a 1-D pad of min_numel elements
    assert chunks[0][1][0][0] is tensors[0]  # whole tensors, not views
    assert [t.shape for t in rest[0]] == [(2,)]


def test_whole_tensor_chunks_take_a_list_of_row_statistics_and_pad_it_with_size_1():
    """Nero's per-neuron state, [rows, 1] beside [rows, cols]: its pads have size 1 where its tensors
    do, and its graph takes that dim as 1 (a tensor with one column beside it says nothing either way)."""
    params = [torch.zeros(4, 1), torch.zeros(3, 5), torch.zeros(6, 2)]
    rows = [torch.zeros(p.shape[0], 1) for p in params]
    (rank, (p_chunk, row_chunk)), = _compile_chunks([params, rows], whole=True)[0]
    assert rank == 2 and [t.shape for t in row_chunk[3:]] == [(2, 1)] * 13
    assert [t.shape for t in p_chunk[3:]] == [(2, 2)] * 13
    assert _chunk_statistic_dims(update_for_shapes, [p_chunk, row_chunk], 2, (False, False)) == ((), (1,))
    with pytest.raises(SizeDependentError, match="other than by statistics dims"):
        _chunk_statistic_dims(update_for_shapes, [p_chunk, [torch.zeros(p.shape[0] + 1, 1) for p in p_chunk]], 2,
                              (False, False))


def update_for_shapes(params, rows):
    """A stand-in update function, named in the refusals above."""


def test_a_list_of_per_tensor_scalars_is_chunked_beside_its_tensors_as_it_is():
    tensors = [torch.zeros(n) for n in (5, 1, 900)] + [torch.zeros(3, 7)]
    per_tensor = [torch.full((), float(i)) for i in range(4)]  # layer-wise state: one 0-d value a tensor
    chunks, rest = _compile_chunks([tensors, per_tensor])
    (_, (flat, values)), = chunks
    assert [t.numel() for t in flat[:3]] == [5, 900, 21]
    assert [v.dim() for v in values] == [0] * 16
    assert values[0] is per_tensor[0] and values[2] is per_tensor[3]  # the state itself, updated in place
    assert all(float(v) == 0.0 for v in values[3:])  # padding: fresh zeros
    assert rest[1] == [per_tensor[1]]  # beside its one-element tensor, eager


def test_graphs_built_counts_functions_that_share_a_name_together(monkeypatch):
    def make():
        def update(params):
            return None
        return update

    first, second = make(), make()  # two closures, one qualified name (as the empty-list wrappers)
    monkeypatch.setattr("rvc_optim.optim._compile._GRAPH_COUNTS", {first: 1, second: 2})
    assert graphs_built() == {first.__qualname__: 3}


def test_flat_views_are_kept_for_persistent_lists_only():
    views = FlatViews()
    params = [torch.zeros(2, 3), torch.zeros(4)]
    first = views(params)
    second = views(params)  # seen twice: the views are made once more and kept
    assert views(params) is second and first is not second
    assert [v.shape for v in second] == [(6,), (4,)] and second[0].data_ptr() == params[0].data_ptr()
    params[0].data = torch.ones(2, 3)  # new memory under the same tensor: new views
    assert views(params)[0].data_ptr() == params[0].data_ptr()
    grads = [torch.zeros(5)]
    views(grads)
    views(grads)
    assert views([torch.zeros(5)])[0].data_ptr() != grads[0].data_ptr()  # a new list of new tensors
    entry_refs = [e[0] for e in views._entries.values()]
    assert all(isinstance(r, weakref.ref) for refs in entry_refs for r in refs)  # holds nothing alive

@pytest.mark.compiled
@pytest.mark.skipif(not compile_available("cpu"), reason="no C++ compiler for torch.compile on this machine")
def test_a_function_that_branches_on_sizes_is_refused_not_compiled_wrong(monkeypatch):
    def halve_large(xs: list[torch.Tensor]) -> None:
        for x in xs:
            if x.numel() > 100:  # traced on large examples, this branch would be baked in for every size
                x.mul_(0.5)

    with pytest.raises(RuntimeError, match="depends on tensor sizes"):
        UpdateFunction(halve_large, compiled=True)([torch.ones(3)], device_type="cpu")
    monkeypatch.setenv(ENV_VAR, "1")
    small = [torch.ones(3) for _ in range(2)]
    with pytest.warns(UserWarning, match="depends on tensor sizes"):
        UpdateFunction(halve_large)(small, device_type="cpu")  # automatic: falls back to eager
    assert all(bool((x == 1.0).all()) for x in small)


def test_auto_decides_by_the_update_size_and_keeps_whole_tensor_updates_eager(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "auto")
    big = [torch.zeros(CPU_AUTO_COMPILE_NUMEL)]
    assert UpdateFunction(lambda xs: None)._auto_numel([big], "cpu") == CPU_AUTO_COMPILE_NUMEL
    assert UpdateFunction(lambda xs: None, elementwise=False)._auto_numel([big], "cpu") is None
    assert UpdateFunction(lambda xs: None, compiled=False)._auto_numel([big], "cpu") is None
    assert resolve_compiled(None, "cuda") is compile_available("cuda")  # elsewhere auto is unchanged


@pytest.mark.parametrize("mode", ["auto", "1"])
def test_dynamo_whole_list_graph_only_when_compiling_was_asked_for(monkeypatch, mode):
    """An update of whole tensors that the chunk graphs refuse (here: lists of different lengths, as
    AdaFactor's factored and unfactored state) would fall back to dynamo's graph over the whole lists,
    which builds for minutes on RVC's sets. Under ``auto`` (which compiles on CUDA) it runs eager;
    with ``RVC_OPTIM_COMPILE=1`` dynamo builds it off a CPU, and on a CPU (where that graph ran slower
    than eager) it still runs eager."""
    import rvc_optim.optim._compile as compile_module

    monkeypatch.setenv(ENV_VAR, mode)
    monkeypatch.setattr(compile_module, "compile_available", lambda device_type: True)
    dynamo_builds = []

    def fake_dynamo(fn, dynamic):
        dynamo_builds.append(fn)
        return fn

    monkeypatch.setattr(compile_module, "_compiled", fake_dynamo)

    def scale_(xs, ys):  # ys: state for a prefix of xs only
        torch._foreach_mul_(xs[:len(ys)], ys)

    update = UpdateFunction(scale_, elementwise=False)
    xs, ys = [torch.ones(4), torch.ones(3, 2)], [torch.full((4,), 2.0)]
    update(xs, ys, device_type="cuda")  # CPU tensors: "cuda" only selects the path
    update(xs, ys, device_type="cuda")
    torch.testing.assert_close(xs[0], torch.full((4,), 4.0))
    assert len(dynamo_builds) == (2 if mode == "1" else 0)

    on_cpu = UpdateFunction(scale_, elementwise=False, compiled=True if mode == "1" else None)
    for _ in range(2):
        on_cpu(xs, ys, device_type="cpu")
    torch.testing.assert_close(xs[0], torch.full((4,), 16.0))
    assert len(dynamo_builds) == (2 if mode == "1" else 0), "dynamo built a whole-list graph on a CPU"


ACCELERATOR_TRACE_SHAPES = [(64, 32, 7), (128,), (33, 7), (256, 64), (16, 8, 5, 1), (1,), (300,)]
# (DYNAMO_ONLY's whole-list graph is replaced below by the eager function: its branches are the fake-CUDA
# sync test's.)


@pytest.mark.parametrize("record", [r for r in RECORDS if r.available and capabilities_of(r.cls).compiled],
                         ids=lambda r: r.name)
def test_the_accelerator_graphs_trace_with_no_host_read(record, monkeypatch):
    """Off a CPU the compiled updates take other branches (0-d device scalars, norms inside the
    update): graphs that cannot be built without a GPU, but can be traced. On the meta device, which
    takes every non-CPU branch, each optimizer's compiled path is traced into its chunk graphs and the
    traced graph itself runs instead of inductor's code. A graph that reads a device value back
    (``aten._local_scalar_dense``: A2Grad's lerp with a 0-d weight did, once per tensor) or branches on
    a size fails here."""
    import rvc_optim.optim._compile as compile_module

    traced = []

    def trace_only(graph, fakes, **options):
        traced.append(graph)
        return graph

    monkeypatch.setattr(compile_module, "compile_available", lambda device_type: True)
    monkeypatch.setattr(torch._inductor, "standalone_compile", trace_only)
    monkeypatch.setattr(compile_module, "_compiled", lambda fn, dynamic: fn)
    # Prodigy's one documented read, when its state is created (an all-zero parameter keeps a 0-d p0)
    monkeypatch.setattr("rvc_optim.optim.prodigy._any_nonzero", lambda tensors: [True] * len(tensors))
    params = [torch.nn.Parameter(torch.randn(shape, device="meta")) for shape in ACCELERATOR_TRACE_SHAPES]
    extra = {"num_iterations": 100} if record.protocol.run_length is not None else {}
    clear_graphs()
    try:
        optimizer = create_optimizer(record.name, params, compiled=True, **extra)
        if callable(getattr(optimizer, "train", None)):
            optimizer.train()
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, device="meta")
            optimizer.step()
    finally:
        clear_graphs()
    reads = [node.format_node() for graph in traced for node in graph.graph.nodes
             if node.target is torch.ops.aten._local_scalar_dense.default]
    assert not reads, f"{record.name}'s compiled graph reads a device value: {reads[0]}"
    assert traced or record.name in DYNAMO_ONLY


def test_batch_buffer_views_are_aligned_disjoint_and_kept_between_calls():
    from rvc_optim.optim._compile import batch_buffer, views_of

    tensors = [torch.empty(n) for n in (5, 17, 16, 1, 40)]
    buffers: dict = {}
    buffer = batch_buffer(buffers, tensors)
    assert batch_buffer(buffers, tensors) is buffer
    views = views_of(buffer, tensors)
    assert [v.shape for v in views] == [t.shape for t in tensors]
    starts = [v.data_ptr() - buffer.data_ptr() for v in views]
    assert all(start % 64 == 0 for start in starts)  # as a new tensor is aligned: reductions add alike
    ends = [start + v.numel() * 4 for start, v in zip(starts, views)]
    assert all(end <= nxt for end, nxt in zip(ends, starts[1:]))


def test_run_by_tensor_batches_passes_a_buffer_only_to_cpu_batches(monkeypatch):
    seen = []
    update = UpdateFunction(lambda xs, buffer: seen.append(buffer), compiled=False, elementwise=False)
    xs = [torch.ones(BLOCK_NUMEL), torch.ones(3)]
    run_by_tensor_batches(update, (xs,), device_type="cpu", work_buffers={})
    assert len(seen) == 2 and all(b is not None and b.numel() >= BLOCK_NUMEL for b in seen)
    seen.clear()
    run_by_tensor_batches(update, (xs,), device_type="cuda", work_buffers={})  # whole lists: no buffer
    assert seen == [None]


class _FarScheduler:
    """A scheduler to which every pair of nodes lies far apart (more than 64 nodes)."""

    def are_long_distant_nodes(self, node1, node2) -> bool:
        return True


class _Node:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_name(self) -> str:
        return self.name


def test_chunk_graphs_fuse_loops_over_shared_data_however_far_apart():
    """Inductor refuses far nodes (a chunk graph's state writes sit at its end, far from everything);
    the chunk graphs' choices take them when they share data, and still refuse what shares too little."""
    a, b = _Node("a"), _Node("b")
    enough = inductor_config.score_fusion_memory_threshold
    with inductor_config.patch({"triton.mix_order_reduction": False}):
        assert not InductorChoices.can_fuse_horizontal(_FarScheduler(), a, b, enough)
        assert ChunkFusionChoices.can_fuse_horizontal(_FarScheduler(), a, b, enough)
        assert not ChunkFusionChoices.can_fuse_horizontal(_FarScheduler(), a, b, enough - 1)


@pytest.mark.skipif(not compile_available("cpu"), reason="no C++ compiler for torch.compile on this machine")
def test_a_chunk_graph_build_leaves_inductors_own_choices_to_everything_else():
    """Inductor keeps one choices handler per thread, made from its config at first use: ours is set for
    a chunk graph's build only, so a user's torch.compile afterwards gets inductor's own, even in a
    thread whose first inductor build was ours (inductor's cache off, so that the build schedules)."""
    params = [torch.nn.Parameter(torch.randn(40 + i)) for i in range(3)]
    for p in params:
        p.grad = torch.randn_like(p)
    seen = {}

    def build_then_look() -> None:
        clear_graphs()
        with inductor_config.patch({"force_disable_caches": True}):
            create_optimizer("Lion", params, compiled=True).step()
        seen["graphs"] = sum(graphs_built().values())
        seen["choices"] = V.choices

    thread = threading.Thread(target=build_then_look)
    thread.start()
    thread.join()
    assert seen["graphs"] >= 1
    assert type(seen["choices"]) is InductorChoices


def _steps(name: str, dtype: torch.dtype, compiled: bool, steps: int = 6, **settings) -> list[torch.Tensor]:
    """``steps`` steps of ``name`` on three small float tensors of ``dtype``, the same gradients each run."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, dtype=dtype)) for shape in ((8, 4), (16,), (3, 2, 5))]
    optimizer = create_optimizer(name, params, compiled=compiled, **settings)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
        optimizer.step()
    return [p.detach().clone() for p in params]


@pytest.mark.compiled
@pytest.mark.skipif(not compile_available("cpu"), reason="no C++ compiler for torch.compile on this machine")
def test_a_float64_update_compiles_on_a_cpu():
    """Its 0-d float64 scalars get value symbols in the trace, which made inductor ask dynamo for a restart
    (``TensorifyScalarRestartAnalysis``): every float64 update failed to build on a CPU."""
    clear_graphs()
    built = sum(graphs_built().values())
    compiled = _steps("Lion", torch.float64, compiled=True, lr=1e-3, weight_decay=0.1)
    assert sum(graphs_built().values()) > built
    for a, b in zip(compiled, _steps("Lion", torch.float64, compiled=False, lr=1e-3, weight_decay=0.1)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.compiled
@pytest.mark.skipif(not compile_available("cpu"), reason="no C++ compiler for torch.compile on this machine")
@pytest.mark.parametrize("settings", [{}, {"rebound": "belief", "weight_decay": 0.01, "weight_decay_type": "stable"}],
                         ids=["constant", "belief-stable"])
def test_apollo_compiled_matches_eager(settings):
    """Apollo's per-step alpha and warm-up rate enter its graph as 0-d tensors (one build for the run),
    and its secant sums add in inductor's order: in float64 the same to 1e-9 (the cancellation in the
    secant turns another order of addition into differences of about 1e-11, measured), in float32 to
    float32 rounding."""
    clear_graphs()
    settings = {"lr": 0.01, "warmup": 3, **settings}
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        before = dict(graphs_built())
        compiled = _steps("Apollo", dtype, compiled=True, **settings)
        assert graphs_built().get("apollo_update", 0) == before.get("apollo_update", 0) + 1, "one build per dtype"
        eager = _steps("Apollo", dtype, compiled=False, **settings)
        for a, b in zip(compiled, eager):
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


@pytest.mark.compiled
@pytest.mark.skipif(not compile_available("cpu"), reason="no C++ compiler for torch.compile on this machine")
def test_nero_row_view_graph_matches_its_eager_update(monkeypatch):
    """Nero's constrained tensors take one chunk graph on [neurons, elements] views with [neurons, 1]
    state, whatever their shapes. It serves accelerators (on a CPU, where it ran slower, Nero is eager),
    so it is built here for CPU tensors through the accelerator branch. The same arithmetic, its sums
    added in another order: float64 to 1e-12, float32 to its rounding."""
    import rvc_optim.optim._compile as compile_module
    from rvc_optim.optim.nero import nero_rows_update, project_

    monkeypatch.setattr(compile_module, "compile_available", lambda device_type: True)
    update = UpdateFunction(nero_rows_update, True, elementwise=False)
    shapes = ((8, 4), (6, 15), (4, 6), (7, 2))  # [neurons, elements]: 2-D, and 3-D and 4-D kernels' views
    clear_graphs()
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        torch.manual_seed(0)
        params = [torch.randn(shape, dtype=dtype) for shape in shapes]
        project_(params)
        rows = [torch.zeros(shape[0], 1, dtype=dtype) for shape in shapes]
        scales = [torch.full((), 0.5 + i, dtype=dtype) for i in range(len(shapes))]
        runs = [([p.clone() for p in params], [r.clone() for r in rows]) for _ in range(2)]
        for step in range(1, 4):
            grads = [torch.randn(shape, dtype=dtype) for shape in shapes]
            scalars = dict(lr=torch.tensor(0.01, dtype=dtype), bias_correction2=torch.tensor(1 - 0.999**step, dtype=dtype),
                           beta=0.999)
            nero_rows_update(runs[0][0], grads, runs[0][1], scales, **scalars)
            update(runs[1][0], grads, runs[1][1], scales, device_type="cuda", **scalars)  # "cuda" selects the path
        assert graphs_built().get("nero_rows_update") == (1 if dtype == torch.float64 else 2), "one build per dtype"
        for a, b in zip(runs[1][0] + runs[1][1], runs[0][0] + runs[0][1]):
            torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * b.abs().max().item())
