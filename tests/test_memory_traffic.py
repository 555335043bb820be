import torch

from rvc_optim.memory_traffic import KERNELS, Kernel, KernelResult, _checked, measure, stream_costs


def test_every_kernel_is_timed_beside_fused_adamw_and_changes_its_output():
    results = measure(4096, repeats=2, warmup=1, compiled=False)
    assert [r.name for r in results] == [k.name for k in KERNELS]
    for r in results:
        assert r.changed, r.name
        assert r.ms > 0 and r.adamw_ms > 0 and r.gb_per_s > 0
        assert r.gb_per_s == (r.reads + r.writes) * 4 * 4096 / (r.ms / 1000) / 1e9


def test_a_kernel_that_does_nothing_is_caught():
    tensors = [torch.rand(64) + 0.5 for _ in range(4)]
    assert not _checked(Kernel("writes nothing", 1, 1, lambda a, b, c, d: None), lambda *t: None, tensors)
    assert not _checked(Kernel("sums nothing", 1, 0, lambda a, b, c, d: None), lambda *t: torch.zeros(()), tensors)
    writes = Kernel("writes", 1, 1, lambda a, b, c, d: a.mul_(0.5))
    assert _checked(writes, writes.fn, tensors)


def test_stream_costs_are_the_differences_of_the_kernels():
    def result(name, ms):
        kernel = next(k for k in KERNELS if k.name == name)
        return KernelResult(name, kernel.reads, kernel.writes, ms, 10.0, 1.0, True)

    costs = stream_costs([result("read 4 (two dot products)", 8.0), result("read 2 (dot product)", 4.0),
                          result("read 2, write 1 (add in place)", 5.0)])
    assert costs["read"] == 0.2
    assert abs(costs["write"] - 0.1) < 1e-12
    assert abs(costs["adamw_at_these_rates"] - 1.1) < 1e-12
