"""The benchmark's machinery on a tiny parameter set (no timing assertions) and the records' floors."""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch

from rvc_optim.catalog import RECORDS
from rvc_optim.optim._compile import clear_graphs, compile_available
from rvc_optim.records import memory_floor
from rvc_optim.registry import create_optimizer, optimizer_info

IMPLEMENTED = [r.name for r in RECORDS if r.available]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.name)
def test_every_record_has_a_floor(record):
    floor = record.floor_bytes_per_param
    assert math.isfinite(floor) and floor >= 12.0, f"{record.name}: floor_bytes_per_param not filled"
    assert floor % 4 == 0


def _allocated_state(name: str) -> tuple[float, torch.optim.Optimizer]:
    """Bytes of per-parameter state tensors per weight-matrix parameter after two steps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    info = optimizer_info(name)
    extra = {"num_iterations": 100} if info.protocol.run_length else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = create_optimizer(name, model, **extra)
    if info.protocol.train_eval:
        optimizer.train()
    for _ in range(2):
        model(torch.randn(8, 16)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    # Full-size buffers of the weight matrices: factored or per-dimension statistics (AdaFactor, CAME,
    # SM3) do not grow with the parameter count and count 0 in the floor, and those optimizers keep a
    # full second moment for 1-D tensors, a few percent of a real model's parameters.
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    numel = sum(p.numel() for p in matrices)
    total = sum(v.numel() * v.element_size() for p in matrices
                for v in optimizer.state.get(p, {}).values() if torch.is_tensor(v) and v.numel() == p.numel())
    return total / numel, optimizer


@pytest.mark.parametrize("name", IMPLEMENTED)
def test_floor_matches_the_state_the_class_allocates(name):
    """The record's floor is memory_floor(read-written, read-only, reduction) for a split of the state the
    class really keeps (each fp32 tensor of the parameter's size is one unit); where the class says which
    tensors it only reads and whether it needs a reduction pass, the floor must use exactly that."""
    state_bytes, optimizer = _allocated_state(name)
    units = state_bytes / 4.0
    # State smaller than the parameters (per-neuron, factored or per-dimension statistics: a fraction of
    # a buffer in total) counts as 0 in memory_floor; whole buffers count one each.
    units = math.floor(units + 1e-9)
    floor = optimizer_info(name).floor_bytes_per_param
    splits = {(ro, red): memory_floor(units - ro, ro, red) for ro in range(int(units) + 1) for red in (False, True)}
    assert floor in splits.values(), f"{name}: floor {floor} fits no split of {units:g} state buffers"
    declared_ro = getattr(optimizer, "read_only_state", None)
    declared_red = getattr(optimizer, "needs_reduction_pass", None)
    if declared_ro is not None or declared_red is not None:
        assert floor == memory_floor(units - len(declared_ro or ()), len(declared_ro or ()), bool(declared_red))


# --- the benchmark's machinery, on the tiny synthetic set --------------------------------------------------

from rvc_optim import benchmark  # noqa: E402


class _NoOp(torch.optim.Optimizer):
    """A step that does nothing (what heavyball's classes did when their gradients were gone)."""

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure=None):
        return None


def _tiny_run(rows, builders=None):
    return benchmark.run(rows, ["tiny"], repeats=2, warmup=1, threads=1, builders=builders, echo=lambda *a, **k: None)


def test_rows_come_default_then_compiled_then_published():
    rows, _ = benchmark.plan_rows(["Lion", "Adan"], compiled=True, published=True)
    for name in ("Lion", "Adan"):
        kinds = [r.kind for r in rows if r.algorithm == name]
        assert kinds[:2] == ["default", "compiled"]
        assert set(kinds[2:]) <= {"published"} and len(kinds) > 2
    rows, _ = benchmark.plan_rows(["Lion"], compiled=False, published=True)
    assert [r.kind for r in rows][0] == "default" and "compiled" not in [r.kind for r in rows]


def test_published_rows_use_the_records_settings():
    pub = next(p for p in benchmark.PUBLISHED["Lion"] if p.module == "pytorch_optimizer")
    kwargs = benchmark.published_kwargs("Lion", pub)
    recommended = optimizer_info("Lion").recommended
    assert kwargs["lr"] == recommended["lr"] and tuple(kwargs["betas"]) == tuple(recommended["betas"])
    assert kwargs["weight_decay"] == recommended["weight_decay"]


def test_a_step_that_changes_nothing_is_flagged_not_timed():
    row = benchmark.Row("Lion", "default")
    results = _tiny_run([row], builders={("Lion", "default"): _NoOp})
    (result,) = results
    assert result.status == benchmark.DID_NOT_UPDATE
    assert math.isnan(result.ms) and math.isnan(result.ratio)
    assert benchmark.DID_NOT_UPDATE in benchmark.format_markdown(
        benchmark.make_header([row], ["tiny"], 1, 2, 1, command="x"), results)


def test_a_library_that_clears_gradients_still_updates():
    class ClearsGrad(torch.optim.SGD):
        def step(self, closure=None):
            super().step(closure)
            for group in self.param_groups:
                for p in group["params"]:
                    p.grad = None

    (result,) = _tiny_run([benchmark.Row("Lion", "default")],
                          builders={("Lion", "default"): lambda ps: ClearsGrad(ps, lr=0.1)})
    assert result.status == "ok"


def test_floor_is_the_records_for_ours_and_published():
    rows, _ = benchmark.plan_rows(["Lion"], compiled=False, published=True)
    assert any(r.kind == "published" for r in rows)
    results = _tiny_run(rows)
    floor = optimizer_info("Lion").floor_bytes_per_param
    assert [r.floor for r in results] == [floor] * len(rows)
    for r in results:
        assert r.status == "ok", (r.label, r.status)
        assert r.ratio == pytest.approx((r.ms / r.baseline_ms) * 28.0 / floor)


def test_header_fields(tmp_path):
    rows, notes = benchmark.plan_rows(["Lion"], compiled=False, published=True)
    header = benchmark.make_header(rows, ["tiny"], threads=1, repeats=2, warmup=1)
    for key in ("machine", "threads", "torch", "libraries", "date", "command"):
        assert header[key] not in ("", None), key
    assert "pytorch_optimizer" in header["libraries"]
    text = benchmark.format_markdown(header, [], notes)
    for needle in ("machine:", "torch " + torch.__version__, "date:", "command:", "pytorch_optimizer 4"):
        assert needle in text


def test_result_file_and_readme_table_round_trip(tmp_path):
    rows, notes = benchmark.plan_rows(["Lion"], compiled=False, published=True)
    results = _tiny_run(rows)
    header = benchmark.make_header(rows, ["tiny"], 1, 2, 1, command="python benchmarks/step_time.py --set tiny")
    path = benchmark.write_results(tmp_path / "run", header, results, notes)
    assert path.with_suffix(".md").read_text() == benchmark.format_markdown(header, results, notes)
    loaded_header, loaded = benchmark.load_results(path)
    assert loaded_header == json_roundtrip(header)
    assert [r.label for r in loaded] == [r.label for r in results]
    table = benchmark.readme_table(path)
    lines = table.splitlines()
    assert lines[0].startswith("| optimizer | set | default ms")
    (lion,) = [line for line in lines if line.startswith("| Lion | tiny |")]
    assert f"{results[0].ms:.1f}" in lion and "not run" in lion
    for r in results[1:]:
        assert f"{r.label}: {r.ms:.1f}" in lion


def test_a_default_row_that_compiled_shows_its_builds_in_the_compiled_columns(tmp_path):
    rows, notes = benchmark.plan_rows(["Lion"], compiled=False, published=False)
    (eager,) = _tiny_run(rows)
    assert eager.graphs == 0  # RVC_OPTIM_COMPILE=0 in the suite: the default ran eager
    compiled = benchmark.RowResult(**{**vars(eager), "graphs": 1, "first_step_s": 12.3, "warm_build_s": 4.4})
    header = benchmark.make_header(rows, ["tiny"], 1, 2, 1, command="python benchmarks/step_time.py --set tiny")
    for result, expected in ((eager, "| not run |  |  |"), (compiled, "| = default |  | 12 / 4 |")):
        path = benchmark.write_results(tmp_path / "run", header, [result], notes)
        (line,) = [line for line in benchmark.readme_table(path).splitlines() if line.startswith("| Lion |")]
        assert expected in line, line


@pytest.mark.skipif(not compile_available("cpu"), reason="no C++ compiler for torch.compile on this machine")
def test_graphs_counts_the_chunk_graphs_a_compiled_first_step_builds():
    clear_graphs()  # a graph another test built would be reused, not built
    rows = [benchmark.Row("Lion", "compiled")]
    (result,) = benchmark.run(rows, ["tiny"], repeats=1, warmup=0, threads=1, echo=lambda *a, **k: None,
                              builders={("Lion", "compiled"): lambda params: create_optimizer("Lion", params, compiled=True)})
    assert result.status == "ok" and result.graphs >= 1


def test_a_default_row_runs_in_a_child_only_where_auto_compiles_it(monkeypatch):
    monkeypatch.setenv("RVC_OPTIM_COMPILE", "auto")
    large = 1 << 30
    assert benchmark.Row("Lion", "default").compiles(large) is compile_available("cpu")
    assert not benchmark.Row("Lion", "default").compiles(1000)  # below the CPU threshold
    # auto leaves updates that read shapes eager on a CPU
    for whole_tensor_only in ("AdaFactor", "SM3"):
        assert not benchmark.Row(whole_tensor_only, "default").compiles(large), whole_tensor_only
    # flat-chunk updates (A2Grad and Apollo have nothing elementwise)
    for flat_only in ("A2Grad", "Ranger21", "Fromage", "Apollo"):
        assert benchmark.Row(flat_only, "default").compiles(large) is compile_available("cpu"), flat_only
    monkeypatch.setenv("RVC_OPTIM_COMPILE", "0")
    assert not benchmark.Row("Lion", "default").compiles(large)


def json_roundtrip(obj):
    import json

    return json.loads(json.dumps(obj))


def test_a_build_that_does_not_finish_is_reported_not_waited_for(tmp_path):
    out = benchmark._run_child([sys.executable, "-c", "import time; time.sleep(30)"], str(tmp_path), timeout=0.5)
    assert out == "build did not finish in 0 s" or out.startswith("build did not finish")


def test_bytes_per_param_is_the_records_floor():
    params = benchmark.make_parameters("tiny")
    for name in ("Lion", "Prodigy", "AdamW"):
        optimizer = create_optimizer(name, params)
        assert benchmark.bytes_per_param(optimizer, params) == optimizer_info(name).floor_bytes_per_param


def test_heavyball_without_compiling_updates_once_gradients_are_reattached():
    """heavyball clears .grad in step(): a benchmark that does not re-attach them times a no-op."""
    import heavyball
    import heavyball.utils

    saved, heavyball.utils.compile_mode = heavyball.utils.compile_mode, None
    try:
        pub = benchmark.Published("heavyball", "heavyball", "AdamW", compiles=True)
        row = benchmark.Row("AnyPrecisionAdamW", "published", pub)
        (result,) = _tiny_run([row], builders={(row.algorithm, row.label): benchmark.builder_for(row)})
    finally:
        heavyball.utils.compile_mode = saved
    assert result.status == "ok"


def test_state_bytes_counts_tensors_in_lists_and_each_storage_once():
    """SOAP keeps its per-dimension factors in lists; a tensor shared by two entries is counted once and
    the parameters themselves never."""
    from rvc_optim.state_size import state_bytes

    p = torch.nn.Parameter(torch.zeros(10))
    opt = torch.optim.SGD([p], lr=0.1)
    shared = torch.zeros(3, 3)
    opt.state[p] = {"exp_avg": torch.zeros(10), "GG": [torch.zeros(4, 4), []], "Q": [shared, shared],
                    "nested": {"x": torch.zeros(2)}, "param": p}
    assert state_bytes(opt) == 4 * (10 + 16 + 9 + 2)


def test_summary_takes_each_row_from_the_latest_file_and_skips_our_own_published_rows(tmp_path):
    import dataclasses
    import json

    from rvc_optim.benchmark import RowResult, summary_table

    def write(name, rows):
        path = tmp_path / name
        path.write_text(json.dumps({"header": {}, "results": [dataclasses.asdict(r) for r in rows]}))
        return path

    def row(kind, label, set_name, ratio, graphs=0):
        return RowResult("Lion", kind, label, set_name, "ok", ms=ratio * 10, ratio=ratio, graphs=graphs)

    first = write("step_time_cpu_first.json", [
        row("default", "default", "generator", 2.0), row("published", "torch-optimi Lion", "generator", 3.0),
        row("default", "default", "discriminator", 1.5), row("published", "torch-optimi Lion", "discriminator", 2.5)])
    second = write("step_time_cpu_second.json", [
        row("default", "default", "generator", 1.1, graphs=2), row("published", "torch-optimi Lion", "generator", 2.9),
        row("published", "rvc-optim Lion", "generator", 0.9)])
    table = summary_table([first, second]).splitlines()
    assert table[0] == "| optimizer | default path | G: ours / fastest published | D: ours / fastest published | from |"
    # G from the second file (compiled there), D from the first; our own row at another setting is not "published"
    assert table[2] == ("| Lion | compiled / eager | 1.10 / 2.90 (torch-optimi Lion) | 1.50 / 2.50 (torch-optimi Lion) "
                        "| second, first |")


def test_the_header_names_the_caches_and_vector_width(tmp_path):
    """Two result files from machines with the same model name must still say which machine each was."""
    cache = tmp_path / "cache"
    for index, (level, kind, size) in enumerate([(1, "Data", "32K"), (1, "Instruction", "32K"),
                                                 (2, "Unified", "1024K"), (3, "Unified", "32768K")]):
        folder = cache / f"index{index}"
        folder.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(f"{value}\n")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 avx512f\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert benchmark.cpu_details(cache, cpuinfo) == "L1d 32K, L2 1024K, L3 32768K, AVX-512"
    cpuinfo.write_text("model name\t: Old\nflags\t\t: fpu avx avx2\n")
    assert benchmark.cpu_details(tmp_path / "absent", cpuinfo) == "AVX2"
    assert benchmark.cpu_details(tmp_path / "absent", tmp_path / "absent") == ""
    header = benchmark.make_header([], ["tiny"], 1, 2, 1, command="x")
    assert header["machine"].startswith(benchmark.cpu_model())
    assert benchmark.cpu_details() in header["machine"]
