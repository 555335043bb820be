"""The CUDA check, for a session that has a GPU machine: one short run, one report.

For every implemented optimizer, on CUDA float32 parameters shaped like a few of RVC's:
  1. steps eagerly under ``torch.cuda.set_sync_debug_mode("error")``: any host synchronisation
     (``.item()``, a blocking copy) in the step raises, so the report lists offenders;
  2. the compiled update gives the eager numbers (rtol 1e-5) without recompiling between steps;
  3. the step time on RVC v2's generator set, as a ratio to torch's fused AdamW in the same run.
Writes a markdown report to the path given (default gpu_report.md).
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings

import torch

from rvc_optim import create_optimizer, list_optimizers, optimizer_info
from rvc_optim.benchmark import bytes_per_param, make_parameters
from rvc_optim.driver import ProtocolDriver

SHAPES = [(512, 192, 7), (256,), (192, 768), (1024, 1024, 5, 1), (1, 1, 1)]


def _params(device: str, shapes=SHAPES, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device)) for s in shapes]


def _steps(name: str, params, compiled, steps: int = 3, sync_check: bool = False):
    info = optimizer_info(name)
    kwargs = {"num_iterations": 100} if info.protocol.run_length else {}
    if compiled is not None and info.capabilities.compiled:
        kwargs["compiled"] = compiled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = create_optimizer(name, params, **kwargs)
    driver = ProtocolDriver(opt, info)
    driver.train()
    gen = torch.Generator(device="cpu").manual_seed(1)
    grads = [[(torch.randn(p.shape, generator=gen) * 1e-3).to(p.device) for p in params] for _ in range(steps)]
    for i in range(steps):
        for p, g in zip(params, grads[i]):
            p.grad = g
        strict = sync_check and i > 0  # the first step creates state (allowed to sync once)
        if strict:
            torch.cuda.set_sync_debug_mode("error")
        try:
            driver.step()
        finally:
            if strict:
                torch.cuda.set_sync_debug_mode("default")
    if params[0].is_cuda:
        torch.cuda.synchronize()
    return opt


def main(report_path: str = "gpu_report.md") -> int:
    assert torch.cuda.is_available(), "no CUDA device"
    lines = [f"# GPU check: {torch.cuda.get_device_name()}, torch {torch.__version__}", ""]
    lines += ["| optimizer | host syncs in steps 2-3 | compiled = eager | ms/step (generator) | ratio to floor |",
              "|---|---|---|---:|---:|"]
    names = list_optimizers(available_only=True)
    bench_params = make_parameters("generator")
    bench_params = [torch.nn.Parameter(p.detach().cuda()) for p in bench_params]
    for p in bench_params:
        p.grad = torch.randn_like(p) * 1e-3
    fused_ms = None
    failures = 0
    for name in ["AdamW"] + [n for n in names if n != "AdamW"]:
        row = [name]
        try:
            _steps(name, _params("cuda"), compiled=False, sync_check=True)
            row.append("none")
        except RuntimeError as err:
            row.append("SYNC: " + str(err).splitlines()[0][:80])
            failures += 1
        try:
            if not optimizer_info(name).capabilities.compiled:
                raise LookupError("no compiled update")
            eager = _params("cuda")
            _steps(name, eager, compiled=False)
            comp = _params("cuda")
            _steps(name, comp, compiled=True)
            ok = all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(comp, eager))
            row.append("yes" if ok else "NO")
            failures += not ok
        except LookupError:
            row.append("n/a (torch's own)")
        except Exception as err:  # report and go on: this is a survey
            row.append(f"error: {type(err).__name__}")
            traceback.print_exc()
            failures += 1
        try:
            info = optimizer_info(name)
            kwargs = {"num_iterations": 1000} if info.protocol.run_length else {}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt = create_optimizer(name, bench_params, **kwargs)
            ProtocolDriver(opt, info).train()
            for _ in range(3):
                opt.step()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                opt.step()
            torch.cuda.synchronize()
            ms = (time.perf_counter() - start) * 100
            fused_ms = fused_ms or ms
            ratio = (ms / fused_ms) * 28 / bytes_per_param(opt, bench_params)
            row += [f"{ms:.2f}", f"{ratio:.2f}"]
            del opt
        except Exception as err:
            row += [f"error: {type(err).__name__}", ""]
            failures += 1
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    with open(report_path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
