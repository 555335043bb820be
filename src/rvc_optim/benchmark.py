"""Step-time benchmark on the parameters of RVC's v2 40k generator and discriminator.

For each optimizer: milliseconds per step (median of repeated steps after warm-up, gradients
pre-filled, threads fixed), optimizer state in bytes per parameter, and the ratio to its
memory-traffic floor, calibrated with torch's fused AdamW timed on the same parameters in the same
run, each timed step interleaved with a fused-AdamW step so both see the same machine load::

    ratio = (t_opt / t_fused_adamw) * 28 / bytes_per_param(opt)

``bytes_per_param`` is what one update must move: 4 bytes to read and 4 to write the fp32 parameter,
4 to read the gradient, and for every state tensor its size twice if the update writes it, once if it
only reads it (an optimizer class lists such tensors in ``read_only_state``); an optimizer that must
finish a global reduction before it can update (``needs_reduction_pass``) counts one more pass over
what it reads. Fused AdamW moves 28 bytes per parameter, so its own ratio is 1.0 by construction.
Absolute times on shared machines swing by 1.5x between runs; ratios taken in one run do not.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import torch

from rvc_optim.registry import create_optimizer, list_optimizers, optimizer_info

__all__ = ["BenchResult", "add_arguments", "bytes_per_param", "load_shapes", "run_from_args", "time_optimizer"]

SETS = {"generator": ("generator_v2_40k",), "discriminator": ("discriminator_v2",),
        "union": ("generator_v2_40k", "discriminator_v2")}
FUSED_ADAMW_BYTES = 28.0
# Baselines measured in every run: torch's AdamW three ways.
BASELINES = {
    "AdamW (fused)": {"fused": True},
    "AdamW (foreach)": {"fused": False, "foreach": True},
    "AdamW (for-loop)": {"fused": False, "foreach": False},
}


def load_shapes(model: str) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of one RVC v2 model (package data read off RVC's classes)."""
    text = resources.files("rvc_optim.data").joinpath("rvc_v2_shapes.json").read_text()
    models = json.loads(text)["models"]
    if model not in models:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(models)}")
    return [(name, tuple(shape)) for name, shape in models[model]["parameters"]]


def make_parameters(set_name: str, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for model in SETS[set_name]:
        for _, shape in load_shapes(model):
            p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
            p.grad = torch.randn(shape, generator=gen) * 1e-3
            params.append(p)
    return params


def bytes_per_param(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> float:
    """The memory traffic one update must move, per parameter (see the module docstring)."""
    numel = sum(p.numel() for p in params)
    read_only = set(getattr(optimizer, "read_only_state", ()))
    moved = 12.0 * numel
    read = 8.0 * numel
    for p in params:
        for key, value in optimizer.state.get(p, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                size = value.numel() * value.element_size()
                moved += size if key in read_only else 2 * size
                read += size
    if getattr(optimizer, "needs_reduction_pass", False):
        moved += read
    return moved / numel


def state_bytes_per_param(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> float:
    numel = sum(p.numel() for p in params)
    total = 0
    for p in params:
        for value in optimizer.state.get(p, {}).values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total / numel


@dataclass
class BenchResult:
    label: str
    set_name: str
    ms: float
    first_step_s: float
    state_bytes: float
    traffic_bytes: float
    ratio: float


Builder = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]


def registry_builder(name: str, **kwargs) -> Builder:
    """Build ``name`` through the registry (its recommended settings), in training mode."""

    def build(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimizer = create_optimizer(name, params, **kwargs)
        if optimizer_info(name).protocol.train_eval:
            optimizer.train()
        return optimizer

    return build


def _timed_step(optimizer: torch.optim.Optimizer) -> float:
    start = time.perf_counter()
    optimizer.step()
    return time.perf_counter() - start


def _copy(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    with torch.no_grad():
        local = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for p, src in zip(local, params):
            p.grad = src.grad.clone()
    return local


def time_optimizer(label: str, build: Builder, params: list[torch.nn.Parameter], set_name: str,
                   repeats: int, warmup: int, baseline: torch.optim.Optimizer) -> BenchResult:
    """Time one optimizer on its own copy of ``params``, interleaving each timed step with one step of
    the fused-AdamW ``baseline`` so that both see the same machine load; the ratio uses the two medians."""
    local = _copy(params)
    optimizer = build(local)
    first = _timed_step(optimizer)  # creates state; compiles where compiled
    for _ in range(warmup):
        optimizer.step()
    times, base_times = [], []
    for _ in range(repeats):
        times.append(_timed_step(optimizer))
        base_times.append(_timed_step(baseline))
    ms, base_ms = 1000 * statistics.median(times), 1000 * statistics.median(base_times)
    traffic = bytes_per_param(optimizer, local)
    result = BenchResult(label, set_name, ms, first, state_bytes_per_param(optimizer, local), traffic,
                         ratio=(ms / base_ms) * FUSED_ADAMW_BYTES / traffic)
    del optimizer, local
    gc.collect()
    return result


def registry_rows(names: list[str], compiled: str) -> list[tuple[str, Builder]]:
    """The rows for registry optimizers: eager and/or compiled where the class has a compiled update."""
    rows: list[tuple[str, Builder]] = [(label, registry_builder("AdamW", **kw)) for label, kw in BASELINES.items()]
    for name in names:
        info = optimizer_info(name)
        if not info.available:
            print(f"  skipping {name}: not implemented yet")
            continue
        extra = {"num_iterations": 1000} if info.protocol.run_length is not None else {}
        if info.capabilities.compiled:
            modes = {"0": [False], "1": [True], "both": [False, True]}.get(compiled, [None])
            for mode in modes:
                tag = {False: "eager", True: "compiled", None: "auto"}[mode]
                rows.append((f"{name} ({tag})", registry_builder(name, **extra, compiled=mode)))
        elif name != "AdamW":
            label = f"{name} (fused)" if info.capabilities.fused else name
            rows.append((label, registry_builder(name, **extra)))
    return rows


def run(rows: list[tuple[str, Builder]], sets: list[str], repeats: int, warmup: int,
        threads: int) -> list[BenchResult]:
    """Time every row on every parameter set; rows are ``(label, builder)``."""
    torch.set_num_threads(threads)
    results: list[BenchResult] = []
    for set_name in sets:
        params = make_parameters(set_name)
        baseline = registry_builder("AdamW", fused=True)(_copy(params))
        for _ in range(warmup + 1):
            baseline.step()
        for label, build in rows:
            result = time_optimizer(label, build, params, set_name, repeats, warmup, baseline)
            results.append(result)
            print(f"  {set_name:13s} {label:40s} {result.ms:9.1f} ms  ratio {result.ratio:5.2f}"
                  f"  (first step {result.first_step_s:.1f} s)", flush=True)
        del params, baseline
        gc.collect()
    return results


def format_table(results: list[BenchResult]) -> str:
    lines = ["| set | optimizer | ms/step | first step (s) | state B/param | traffic B/param | ratio to floor |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.set_name} | {r.label} | {r.ms:.1f} | {r.first_step_s:.1f} | {r.state_bytes:.1f} | "
                     f"{r.traffic_bytes:.1f} | {r.ratio:.2f} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--optimizers", nargs="*", default=None,
                        help="registry names to time (default: every available one; AdamW baselines always run)")
    parser.add_argument("--set", dest="sets", nargs="*", choices=list(SETS), default=None,
                        help="parameter sets (default: generator discriminator union)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per optimizer (median reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after the first")
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()), help="torch threads")
    parser.add_argument("--compiled", choices=["auto", "0", "1", "both"], default="both",
                        help="for optimizers with a compiled update: eager (0), compiled (1), both, or auto")
    parser.add_argument("--quick", action="store_true",
                        help="generator set only, few repeats, AdamW baselines and Lion (eager): a smoke run")
    parser.add_argument("--output", help="also write the markdown table to this file")


def run_from_args(args: argparse.Namespace, extra_rows: list[tuple[str, Builder]] | None = None) -> int:
    if args.quick:
        names = args.optimizers if args.optimizers is not None else [n for n in ("Lion",) if optimizer_info(n).available]
        sets = args.sets or ["generator"]
        repeats, warmup = args.repeats or 3, args.warmup or 1
        compiled = "0" if args.compiled == "both" else args.compiled
    else:
        names = args.optimizers if args.optimizers is not None else list_optimizers(available_only=True)
        sets = args.sets or list(SETS)
        repeats, warmup, compiled = args.repeats or 10, args.warmup or 3, args.compiled
    names = [optimizer_info(n).name for n in names]
    print(f"torch {torch.__version__}, {args.threads} threads, sets {', '.join(sets)}")
    rows = registry_rows(names, compiled) + list(extra_rows or [])
    results = run(rows, sets, repeats, warmup, args.threads)
    table = format_table(results)
    print()
    print(table)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(table + "\n")
    return 0 if all(math.isfinite(r.ms) for r in results) else 1
