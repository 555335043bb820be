#!/usr/bin/env python
"""Compiled steps with and without the chunk graphs' fusion choices, side by side in one process.

For each optimizer and set: two instances on the same parameters, one whose chunk graphs are built with
inductor's own fusion choices and one with ``ChunkFusionChoices`` (the default), each timed step followed
by a fused-AdamW step, the two in turn, their order alternating from round to round; ratio = (ms / fused AdamW ms) * 28 / the record's floor, as in ``step_time.py``.
Inductor's on-disk cache is off, so both build. Example::

    python benchmarks/chunk_fusion.py --optimizers LAMB Prodigy DAdaptAdam --set discriminator generator \\
        --threads 2 --output benchmarks/results/chunk_fusion_cpu
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone

os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"

import torch  # noqa: E402
from torch._inductor.choices import InductorChoices  # noqa: E402

from rvc_optim import benchmark  # noqa: E402
from rvc_optim.optim import _compile  # noqa: E402
from rvc_optim.registry import create_optimizer, optimizer_info  # noqa: E402

VARIANTS = {"inductor's choices": InductorChoices, "ChunkFusionChoices": _compile.ChunkFusionChoices}


class Variant:
    """One optimizer instance whose chunk graphs are built, and kept, with one kind of fusion choices."""

    def __init__(self, name: str, params: list[torch.nn.Parameter], choices: type) -> None:
        kwargs = {"num_iterations": benchmark.RUN_LENGTH} if optimizer_info(name).protocol.run_length else {}
        self.optimizer = create_optimizer(name, params, compiled=True, **kwargs)
        self.choices, self.graphs = choices, {}

    def step(self) -> None:
        _compile._GRAPHS, _compile._GRAPH_COUNTS = self.graphs, {}
        _compile.ChunkFusionChoices = self.choices  # what ChunkGraph builds with
        self.optimizer.step()


def time_set(name: str, set_name: str, repeats: int, warmup: int) -> list[dict]:
    params = benchmark.make_parameters(set_name)
    floor = optimizer_info(name).floor_bytes_per_param
    variants = {label: Variant(name, params, choices) for label, choices in VARIANTS.items()}
    before = [p.detach().clone() for p in params]
    builds = {}
    for label, variant in variants.items():
        start = time.perf_counter()
        variant.step()
        builds[label] = time.perf_counter() - start
    adamw = torch.optim.AdamW(params, lr=1e-4, fused=True)
    for _ in range(warmup):
        for variant in variants.values():
            variant.step()
        adamw.step()
    times = {label: [] for label in variants}
    adamw_times = {label: [] for label in variants}
    for round_ in range(repeats):
        # the order alternates from round to round: the first step of a round was measured faster
        for label, variant in (list(variants.items()) if round_ % 2 == 0 else reversed(variants.items())):
            start = time.perf_counter()
            variant.step()
            times[label].append(time.perf_counter() - start)
            start = time.perf_counter()
            adamw.step()
            adamw_times[label].append(time.perf_counter() - start)
    _compile.ChunkFusionChoices = VARIANTS["ChunkFusionChoices"]
    if all(torch.equal(b, p.detach()) for b, p in zip(before, params)):
        raise RuntimeError(f"{name} on {set_name}: the parameters did not change")
    rows = []
    for label in variants:
        ms, base = 1000 * statistics.median(times[label]), 1000 * statistics.median(adamw_times[label])
        rows.append({"optimizer": name, "set": set_name, "choices": label, "ms": ms, "adamw_ms": base,
                     "ratio": ms / base * benchmark.FUSED_ADAMW_BYTES / floor, "build_s": builds[label]})
    return rows


def markdown(header: dict, rows: list[dict]) -> str:
    lines = ["# Compiled steps with and without the chunk graphs' fusion choices", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", "| optimizer | set | fusion choices | ms/step | fused AdamW ms | ratio to floor | build (s) |",
              "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['optimizer']} | {r['set']} | {r['choices']} | {r['ms']:.1f} | {r['adamw_ms']:.1f} "
              f"| {r['ratio']:.2f} | {r['build_s']:.0f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", nargs="+", required=True)
    parser.add_argument("--set", nargs="+", default=["discriminator"], choices=sorted(benchmark.SETS))
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", required=True, help="result path without suffix (.json and .md are written)")
    args = parser.parse_args()
    for name in args.optimizers:  # an unknown name fails here, before any work
        try:
            optimizer_info(name)
        except ValueError as err:
            parser.error(f"--optimizers: {err}")
    torch.set_num_threads(args.threads)
    rows = [row for name in args.optimizers for set_name in args.set
            for row in time_set(name, set_name, args.repeats, args.warmup)]
    header = {"machine": benchmark.machine_description(), "threads": args.threads, "torch": torch.__version__,
              "repeats": args.repeats, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": shlex.join(["python"] + sys.argv)}
    print(benchmark.write_report(args.output, {"header": header, "results": rows}, markdown(header, rows)).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
