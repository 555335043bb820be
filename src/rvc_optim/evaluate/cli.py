"""``rvc-optim evaluate``: the argparse part (``benchmarks/convergence.py`` calls the same code)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from rvc_optim.evaluate.tasks import TASKS

__all__ = ["DESCRIPTION", "add_arguments", "options_from_args", "run"]

DESCRIPTION = (
    "Convergence benchmark: train with each optimizer on two tasks (RVC: the tiny config on the demo data, "
    "G and D both using the optimizer; vocoder: the generator's decoder alone with mel L1 + multi-resolution "
    "STFT loss), from the same initial weights and data order, at the recommended settings and a sweep around "
    "them, over several seeds. Writes runs.csv, curves.csv, summary.csv, results.md, ratings.csv and PNG plots "
    "to --out; --resume continues an interrupted run."
)
#: The smoke configuration (--smoke): what the test suite runs, a minute or two on a busy 2-core CPU.
SMOKE = {"optimizers": ["AdamW", "Lion"], "steps": 4, "seeds": 1, "evals": 2}


def _names(text: str) -> list[str]:
    """``"AdamW, Lion"`` -> ``["AdamW", "Lion"]``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``rvc-optim evaluate`` (and of ``benchmarks/convergence.py``)."""
    p.add_argument("--optimizers", type=_names, help="comma-separated names (default: every available one)")
    p.add_argument("--tasks", type=_names, default=list(TASKS), help=f"comma-separated, of {','.join(TASKS)} (default: both)")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps of the rvc task (default 50)")
    p.add_argument("--vocoder-steps", type=int, help="steps of the vocoder task (default 3 x --steps: its step costs a quarter)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the best setting (the sweep runs the first; default 3)")
    p.add_argument("--no-sweep", dest="sweep", action="store_false", help="the recommended settings only")
    p.add_argument("--evals", type=int, default=5, help="validations per run after step 0 (default 5)")
    p.add_argument("--out", type=Path, default=Path("runs/evaluate"), help="output folder (default runs/evaluate)")
    p.add_argument("--resume", action="store_true", help="continue the runs in --out, skipping those done")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fair on a shared machine)")
    p.add_argument("--max-minutes", type=float, help="stop starting runs after this long (then --resume)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="write no PNGs (no matplotlib needed)")
    p.add_argument("--smoke", action="store_true", help="the smoke configuration: AdamW,Lion unless --optimizers, "
                   f"{SMOKE['steps']} steps, 1 seed, no sweep; results labelled as a smoke run")
    p.add_argument("--merge", type=Path, nargs="+", default=[], metavar="FOLDER",
                   help="first combine these run folders (chunks of the same plan run side by side, each on some "
                        "of the optimizers) into --out, then go on as --resume: runs nothing they hold")
    p.add_argument("--publish-ratings", type=Path, metavar="CSV",
                   help="also copy ratings.csv here (src/rvc_optim/data/measured_ratings.csv: the records load it)")


def options_from_args(args: argparse.Namespace):
    """:class:`~rvc_optim.evaluate.runner.EvalOptions` from the parsed flags (names resolved, checked)."""
    from rvc_optim.evaluate.runner import EvalOptions
    from rvc_optim.registry import list_optimizers, optimizer_info

    if args.smoke:
        args.optimizers = args.optimizers or SMOKE["optimizers"]
        args.steps, args.seeds, args.evals, args.sweep = SMOKE["steps"], SMOKE["seeds"], SMOKE["evals"], False
    names = [optimizer_info(n).name for n in args.optimizers] if args.optimizers else list_optimizers(available_only=True)
    missing = [n for n in names if not optimizer_info(n).available]
    if missing:
        raise ValueError(f"not implemented in this version: {', '.join(missing)}")
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown or not args.tasks:
        raise ValueError(f"--tasks: choose from {', '.join(TASKS)}")
    for flag in ("steps", "seeds", "evals", "threads"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1")
    if args.plots and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("the plots need matplotlib: pip install 'rvc-optim[evaluate]', or pass --no-plots")
    vocoder = args.vocoder_steps or (args.steps if args.smoke else 3 * args.steps)
    return EvalOptions(optimizers=names, out=args.out, tasks=args.tasks, steps={"rvc": args.steps, "vocoder": vocoder},
                       seeds=args.seeds, sweep=args.sweep, evals=args.evals, resume=args.resume, threads=args.threads,
                       max_minutes=args.max_minutes, plots=args.plots, smoke=args.smoke,
                       publish_ratings=args.publish_ratings, merge=args.merge)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print where the results are and whether the plan is complete."""
    from rvc_optim.evaluate.runner import run_benchmark
    from rvc_optim.registry import list_optimizers

    opts = options_from_args(args)
    if not args.optimizers:
        skipped = [n for n in list_optimizers() if n not in opts.optimizers]
        if skipped:
            print(f"not implemented in this version, not evaluated: {', '.join(skipped)}", flush=True)
    try:
        summaries, complete = run_benchmark(opts)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished runs are in {opts.out / 'runs.csv'}; the same command with --resume "
              "continues", flush=True)
        return 130
    print(f"{len(summaries)} optimizer/task summaries in {opts.out / 'results.md'}", flush=True)
    if not complete:
        print(f"stopped after --max-minutes {args.max_minutes:g}: run the same command with --resume to continue",
              flush=True)
        return 3
    return 0
