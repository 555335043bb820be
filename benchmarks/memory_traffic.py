#!/usr/bin/env python
"""Time reading and writing float32 streams beside fused AdamW (see :mod:`rvc_optim.memory_traffic`).

The size defaults to the element count of RVC v2's 40k generator (the benchmark's G set). Example::

    python benchmarks/memory_traffic.py --threads 2 --output benchmarks/results/memory_traffic_cpu
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import asdict
from datetime import datetime, timezone

import torch

from rvc_optim.benchmark import load_shapes, machine_description, write_report
from rvc_optim.memory_traffic import measure, stream_costs


def markdown(header: dict, results: list[dict], costs: dict[str, float]) -> str:
    lines = [f"# Stream reads and writes beside fused AdamW ({header['numel']:,} float32 elements)", ""]
    lines += [f"- {key}: {value}" for key, value in header.items()]
    lines += ["", "| kernel | streams read | written | ms | fused AdamW ms | time / AdamW's | GB/s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        mark = "" if r["changed"] else " (did not change its output: not a measurement)"
        lines.append(f"| {r['name']}{mark} | {r['reads']} | {r['writes']} | {r['ms']:.2f} | {r['adamw_ms']:.2f} "
                     f"| {r['ms'] / r['adamw_ms']:.2f} | {r['gb_per_s']:.1f} |")
    lines += ["", f"One stream read: {costs['read']:.2f} of a fused-AdamW step; one stream written: "
              f"{costs['write']:.2f}. AdamW's 4 reads and 3 writes at these rates: "
              f"{costs['adamw_at_these_rates']:.2f} (it took 1.00).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=None,
                        help="elements per stream (default: RVC v2 40k generator's parameter count)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eager", action="store_true", help="eager kernels (default: torch.compile)")
    parser.add_argument("--output", required=True, help="result path without suffix (.json and .md are written)")
    args = parser.parse_args()
    if args.numel is not None and args.numel < 1:
        parser.error("--numel must be at least 1")
    torch.set_num_threads(args.threads)
    numel = args.numel or sum(math.prod(shape) for _, shape in load_shapes("generator_v2_40k"))
    measured = measure(numel, args.repeats, args.warmup, compiled=not args.eager)
    costs = stream_costs(measured)
    results = [asdict(r) for r in measured]
    header = {
        "machine": machine_description(),
        "threads": args.threads,
        "torch": torch.__version__,
        "compiled": not args.eager,
        "numel": numel,
        "repeats": args.repeats,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python"] + sys.argv),
    }
    data = {"header": header, "results": results, "stream_costs": costs}
    print(write_report(args.output, data, markdown(header, results, costs)).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
