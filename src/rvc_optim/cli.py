"""The ``rvc-optim`` command: list, show, recommend, bench, train, prepare, index and evaluate."""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from rvc_optim.catalog import GOALS, RECORDS
from rvc_optim.registry import list_optimizers, normalize_name, optimizer_info

__all__ = ["main", "markdown_table", "render_list", "render_recommendation", "render_show"]

WIDTH = 100
# How `recommend` marks an optimizer that is registered but not implemented in this version.
NOT_AVAILABLE_MARK = "(not yet available)"


def _status(record) -> str:
    return "available" if record.available else "not yet available"


def markdown_table() -> str:
    """The guide's table with the measured ratings beside its stars, generated from the records (the
    README embeds it; a test keeps them equal). The measured columns' headers link the results."""
    tasks = list(dict.fromkeys(m.task for r in RECORDS for m in r.measured))
    results = next((str(Path(m.source_file).parent / "results.md") for r in RECORDS for m in r.measured), "")
    measured_headers = [f"[Measured: {t}]({results})" if results else f"Measured: {t}" for t in tasks]
    header = ["Guide's rating", "Optimizer", *measured_headers, "Category", "Best for", "Source", "Status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in RECORDS:
        by_task = {m.task: m for m in r.measured}
        cells = [_measured_cell(by_task.get(t)) for t in tasks]
        lines.append("| " + " | ".join([f"{r.stars} {r.rating:.1f}", r.name, *cells, r.category, r.best_for,
                                        r.source, _status(r)]) + " |")
    return "\n".join(lines)


def _measured_cell(m) -> str:
    """One measured rating in the README's table: ``4/5``, ``1/5 (diverged)`` or ``-`` (not measured)."""
    if m is None:
        return "-"
    return f"{m.rating}/5" + ("" if math.isfinite(m.final_loss) else " (diverged)")


def _measured(record) -> str:
    """The measured ratings in short (``rvc 4/5, vocoder 5/5``), or "not measured"."""
    return ", ".join(f"{m.task} {m.rating}/5" for m in record.measured) or "not measured"


def render_list(names: Sequence[str]) -> str:
    rows = [("RATING", "NAME", "CATEGORY", "BEST FOR", "STATUS", "MEASURED")]
    for name in names:
        r = optimizer_info(name)
        rows.append((f"{r.rating:.1f}", r.name, r.category, r.best_for, _status(r), _measured(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _wrap(text: str, indent: str = "  ") -> str:
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=indent)


def render_show(name: str) -> str:
    r = optimizer_info(name)
    out = [
        f"{r.name}  {r.stars} ({r.rating:.1f}/5)  [{r.category}]  {_status(r)}",
        f"  best for: {r.best_for}",
        *([f"  measured: {m.describe()}" for m in r.measured] or ["  measured: not measured (rvc-optim evaluate)"]),
        f"  paper:    {r.paper.citation()}",
        f"  class:    {r.class_path.replace(':', '.')}  (source: {r.source})",
    ]
    if r.aliases:
        out.append(f"  aliases:  {', '.join(r.aliases)}")
    out += ["", "What it does:", _wrap(r.description), "", "When to use it:", _wrap(r.when_to_use)]
    out += ["", "State kept:", _wrap(r.state), _wrap(_measured_state(r))]
    out += ["", "Recommended settings (create_optimizer uses these for anything you leave out):"]
    out += [f"  {k} = {v!r}" for k, v in r.recommended.items()] or ["  (the class defaults)"]
    out += ["", "Protocol:"] + [f"  - {line}" for line in r.protocol.lines()]
    if r.available:
        caps = r.capabilities
        takes = [k for k in ("lr", "betas", "eps", "weight_decay", "momentum") if caps.accepts(k)]
        out += ["", "Capabilities (read from the class):", f"  takes: {', '.join(takes) or 'none of the generic ones'}"
                + (f" ({caps.num_betas} betas)" if caps.betas else "")]
        out.append(f"  fused kernel: {'yes' if caps.fused else 'no'};  compiled update: {'yes' if caps.compiled else 'no'};"
                   f"  sparse gradients: {'yes' if caps.sparse_grad else 'no'};"
                   f"  state before first step: {'yes' if caps.state_before_step else 'no'}")
    if r.corrections:
        out += ["", "Corrections to the guide:"] + [_wrap("- " + c) for c in r.corrections]
    return "\n".join(out)


def _recommended_name(name: str) -> str:
    """A goal's optimizer, marked when this version does not implement it yet."""
    return name if optimizer_info(name).available else f"{name} {NOT_AVAILABLE_MARK}"


def _measured_state(record) -> str:
    """The bytes of optimizer state per parameter, measured (:mod:`rvc_optim.state_size`)."""
    if not record.available:
        return "bytes of state per parameter: not measured (not implemented yet)"
    from rvc_optim.state_size import SAMPLE_SHAPES, measure_state_bytes

    shapes = ", ".join("x".join(map(str, s)) for _, s in SAMPLE_SHAPES)
    numel = sum(math.prod(s) for _, s in SAMPLE_SHAPES)
    return (f"bytes of state per parameter: {measure_state_bytes(record.name):.2f} (measured at the recommended "
            f"settings after one float32 step on {len(SAMPLE_SHAPES)} tensors of RVC v2's generator, "
            f"{numel / 1e6:.2f}M parameters: {shapes})")


def render_recommendation(goal: str | None) -> str:
    """The goals' recommendations; an optimizer not implemented in this version is marked as such."""
    goals = GOALS if goal is None else [g for g in GOALS if normalize_name(g.key) == normalize_name(goal)]
    out = []
    for g in goals:
        out.append(f"{g.title} [{g.key}]: {', '.join(_recommended_name(n) for n in g.names)}")
        out.append(_wrap(g.reason))
        out.append("")
    return "\n".join(out).rstrip()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rvc-optim",
        description="The 43 optimizers RVC voice models are trained with: list, inspect, benchmark, train.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="print the optimizer table", description="Print the optimizer table.")
    p.add_argument("--category", help="only this category (e.g. 'LR-Free', 'Schedule-Free')")
    p.add_argument("--min-rating", type=float, help="only optimizers rated at least this (2.0 to 5.0)")
    p.add_argument("--available", action="store_true", help="only optimizers implemented in this version")
    p.add_argument("--markdown", action="store_true", help="print the README's markdown table instead")

    p = sub.add_parser("show", help="print one optimizer's record", description="Print one optimizer's record: "
                       "paper, description, recommended settings, protocol, capabilities.")
    p.add_argument("name", help="optimizer name (any case; aliases accepted)")

    goal_keys = [g.key for g in GOALS]
    p = sub.add_parser("recommend", help="which optimizer for which goal",
                       description="Recommend optimizers for a goal: " + ", ".join(goal_keys) + ".")
    p.add_argument("--goal", choices=goal_keys, help="one goal (default: all)")

    from rvc_optim import benchmark

    benchmark.add_arguments(sub.add_parser(
        "bench", help="time one optimizer step on RVC v2's parameters",
        description="Time one optimizer step on the parameters of RVC's v2 40k generator and discriminator, "
                    "as a ratio to the memory-traffic floor calibrated with torch's fused AdamW in the same run."))

    try:
        from rvc_optim.train import cli as train_cli
    except ImportError:
        train_cli = None
    if train_cli is not None:
        train_cli.add_arguments(sub.add_parser(
            "train", help="train an RVC v2 voice model", description=train_cli.DESCRIPTION))
    try:  # needs the prepare modules (their heavy dependencies are imported only when they run)
        from rvc_optim.prepare import cli as prepare_cli

        prepare_cli.add_parsers(sub)
    except ImportError:
        pass
    from rvc_optim.evaluate import cli as evaluate_cli

    evaluate_cli.add_arguments(sub.add_parser(
        "evaluate", help="convergence benchmark: measured ratings", description=evaluate_cli.DESCRIPTION))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            if args.markdown:
                print(markdown_table())
                return 0
            names = list_optimizers(args.category, args.min_rating, available_only=args.available)
            if not names:
                print("no optimizer matches", file=sys.stderr)
                return 1
            print(render_list(names))
        elif args.command == "show":
            print(render_show(args.name))
        elif args.command == "recommend":
            print(render_recommendation(args.goal))
        elif args.command == "bench":
            from rvc_optim import benchmark

            return benchmark.run_from_args(args)
        elif args.command == "train":
            from rvc_optim.train import cli as train_cli

            return train_cli.run(args)
        elif args.command in ("prepare", "index"):
            from rvc_optim.prepare import cli as prepare_cli

            return prepare_cli.run(args)
        elif args.command == "evaluate":
            from rvc_optim.evaluate import cli as evaluate_cli

            return evaluate_cli.run(args)
    except ValueError as err:
        print(f"rvc-optim: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`rvc-optim list | head`): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
