"""The benchmark's matmul floor of the matrix optimizers: the FLOPs estimators on small shapes counted by
hand, and the amortised / refresh-step columns on the tiny set."""

from __future__ import annotations

import math

import pytest

from rvc_optim import benchmark
from rvc_optim.benchmark import Row, StepFlops, muon_flops, shampoo_flops, soap_dims, soap_flops


def test_muon_flops_by_hand():
    # multiply-adds of an m x n matrix (m <= n), 5 steps: the authors' form 5 (2 m^2 n + m^3), the Gram
    # form 2 m^2 n + 17 m^3; the floor takes the smaller, 2 FLOPs each.
    # (4, 2, 3) is a [4, 6] matrix: 5 x (192 + 64) = 1280 either way (n = 1.5 m: the break-even)
    # (3, 8): the authors' 5 x (144 + 27) = 855, the Gram form 144 + 459 = 603
    # a [6, 1, 1] gain and a bias are not matrices
    assert muon_flops([(4, 2, 3), (3, 8), (6, 1, 1), (5,)], {}) == StepFlops(2 * (1280 + 603))
    # 2 steps of [3, 8]: the authors' 2 x 171 = 342, the Gram form 144 + (2 + 3) x 27 = 279
    assert muon_flops([(8, 3)], {"ns_steps": 2}).step == 2 * 279
    # square: the authors' form, 5 x (2 x 512 + 512) = 7680 (the Gram form would take 1024 + 17 x 512)
    assert muon_flops([(8, 8)], {}).step == 2 * 7680


def test_muon_runs_the_form_its_floor_counts():
    from rvc_optim.optim import muon

    assert [muon.gram_form_is_cheaper(m, n) for m, n in [(4, 6), (3, 8), (8, 8), (1024, 5120)]] == [False, True, False, True]


def test_shampoo_flops_by_hand():
    settings = {"max_preconditioner_dim": 4, "precondition_frequency": 5, "precondition_1d": True}
    # (4, 3, 1), 12 elements: d = 4 and 3 give 4*d*12 = 192 + 144 each step, 11 d^3 = 704 + 297 per refresh
    # (6, 2): 6 is above the limit (diagonal, no matmul): d = 2 gives 96 and 88
    # (3,): 4*3*3 = 36 and 297
    flops = shampoo_flops([(4, 3, 1), (6, 2), (3,)], settings)
    assert flops == StepFlops(336 + 96 + 36, 1001 + 88 + 297, 5)
    assert flops.amortised == pytest.approx(468 + 1386 / 5)
    assert shampoo_flops([(3,)], {**settings, "precondition_1d": False}).step == 0


def test_soap_dims_merge_as_the_authors():
    merged = {"merge_dims": True, "max_precond_dim": 10000}
    assert soap_dims((4, 3, 3, 3), merged) == [108]
    assert soap_dims((6, 4), merged) == [24]
    assert soap_dims((4, 3, 3, 3), {"merge_dims": True, "max_precond_dim": 10}) == [4, 9, 3]
    assert soap_dims((20, 3), {"merge_dims": True, "max_precond_dim": 10}) == [3]
    assert soap_dims((5,), {}) == [] and soap_dims((5,), {"precondition_1d": True}) == [5]


def test_soap_flops_by_hand():
    # (4, 3), 12 elements: 10 * d * 12 = 480 + 360 each step; (2 + 8/3) d^3 per refresh
    flops = soap_flops([(4, 3), (5,)], {})
    assert flops.step == 840 and flops.period == 10
    assert flops.refresh == pytest.approx((2 + 8 / 3) * (64 + 27))


def test_every_estimator_is_keyed_by_a_registered_name():
    from rvc_optim.registry import optimizer_info

    assert all(optimizer_info(name).name == name for name in benchmark.MATMUL_FLOPS)


def test_matrix_rows_time_whole_refresh_periods():
    rows = [Row("Shampoo", "default")]
    results = benchmark.run(rows, ["tiny"], repeats=2, warmup=0, threads=1, echo=lambda *a, **k: None)
    (result,) = results
    assert result.status == "ok"
    period = benchmark.algorithm_settings("Shampoo")["precondition_frequency"]
    assert period > 1
    assert result.refresh_ms >= result.amortised_ms > 0
    assert math.isclose(result.matmul_ratio, result.amortised_ms / result.matmul_floor_ms)
    assert result.matmul_gflops > 0
    header = benchmark.make_header(rows, ["tiny"], 1, 2, 0, command="test")
    assert "matmul floor" in benchmark.format_markdown(header, results)
