"""Running the benchmark: the plan over tasks, optimizers, settings and seeds; resume; progress; budget."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from rvc_optim.evaluate.results import CURVE_FIELDS, RUN_FIELDS, ResultStore, Summary, read_csv, run_ident, \
    write_csv, write_reports
from rvc_optim.evaluate.sweep import RunKey, plan_runs, run_kwargs, runs_per_optimizer, sweep_settings
from rvc_optim.evaluate.tasks import TASKS, measure

__all__ = ["EvalOptions", "run_benchmark", "merge_folders", "ResumeMismatch"]

#: What must match between a run folder and a ``--resume`` of it (optimizers and tasks may differ: chunks).
PLAN_KEYS = ("steps", "seeds", "sweep", "evals")


class ResumeMismatch(ValueError):
    """``--resume`` with other steps / seeds / sweep than the folder was started with, or a fresh run over results."""


@dataclass
class EvalOptions:
    """What ``rvc-optim evaluate`` was asked for (see :mod:`rvc_optim.evaluate.cli` for each flag)."""

    optimizers: list[str]
    out: Path
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    steps: dict[str, int] = field(default_factory=lambda: {"rvc": 50, "vocoder": 150})
    seeds: int = 3
    sweep: bool = True
    evals: int = 5
    resume: bool = False
    threads: int = 1
    max_minutes: float | None = None
    plots: bool = True
    smoke: bool = False
    publish_ratings: Path | None = None
    merge: list[Path] = field(default_factory=list)

    def eval_every(self, task: str) -> int:
        return max(1, math.ceil(self.steps[task] / self.evals))


def machine_description(threads: int) -> dict:
    """The machine, the versions and the start time, for results.md and meta.json."""
    import rvc_optim

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(rvc_optim.__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"version": rvc_optim.__version__ + (f" ({commit})" if commit else ""), "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores "
                       f"({platform.processor() or 'unknown CPU'}), load average at start "
                       f"{os.getloadavg()[0]:.1f}",
            "threads": threads, "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _plan(opts: EvalOptions) -> dict:
    """What must match between chunks of one benchmark (:data:`PLAN_KEYS`)."""
    return {"steps": opts.steps, "seeds": opts.seeds, "sweep": opts.sweep, "evals": opts.evals}


def _prepare_folder(opts: EvalOptions) -> dict:
    """The output folder's ``meta.json``: written fresh, or checked against a ``--resume``."""
    opts.out.mkdir(parents=True, exist_ok=True)
    meta_path = opts.out / "meta.json"
    plan = _plan(opts)
    if (opts.out / "runs.csv").exists() and not opts.resume:
        raise ResumeMismatch(f"{opts.out} already holds results: pass --resume to continue them, or another --out")
    if opts.resume and meta_path.exists():
        saved = json.loads(meta_path.read_text(encoding="utf-8"))
        for key in PLAN_KEYS:
            if saved.get(key) != plan[key]:
                raise ResumeMismatch(f"--resume: {opts.out} was started with {key}={saved.get(key)!r}, this run "
                                     f"asks for {plan[key]!r}; use the same settings or another --out")
        return saved
    meta = {**plan, **machine_description(opts.threads), "smoke": opts.smoke,
            "source_file": (opts.out / "runs.csv").as_posix()}
    meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


def merge_folders(out: Path, parts: list[Path], plan: dict) -> None:
    """Combine run folders of ``plan`` (chunks run side by side, by separate processes or machines,
    each on some of the optimizers) into ``out``, which must hold no results yet: their runs and
    curves, and a ``meta.json`` that names the parts. A run found in two parts is an error."""
    if (out / "runs.csv").exists():
        raise ResumeMismatch(f"--merge: {out} already holds results; merge into a new --out")
    metas = []
    for part in parts:
        if not (part / "meta.json").is_file() or not (part / "runs.csv").is_file():
            raise ResumeMismatch(f"--merge: {part} is not a run folder (no meta.json and runs.csv)")
        metas.append(json.loads((part / "meta.json").read_text(encoding="utf-8")))
        for key in PLAN_KEYS:
            if metas[-1].get(key) != plan[key]:
                raise ResumeMismatch(f"--merge: {part} was run with {key}={metas[-1].get(key)!r}, this run "
                                     f"asks for {plan[key]!r}; use the same settings")
    runs, curves, found_in = [], [], {}
    for part in parts:
        part_runs = read_csv(part / "runs.csv")
        for row in part_runs:
            ident = run_ident(row)
            if ident in found_in:
                raise ResumeMismatch(f"--merge: the run {ident} is in both {found_in[ident]} and {part}")
            found_in[ident] = part
        done = {run_ident(r) for r in part_runs}
        runs += part_runs
        curves += [c for c in read_csv(part / "curves.csv") if run_ident(c) in done]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "curves.csv", CURVE_FIELDS, curves)
    write_csv(out / "runs.csv", RUN_FIELDS, runs)
    meta = {**metas[0], "started": min(m["started"] for m in metas),
            "parts": [{"folder": part.as_posix(), "machine": m["machine"], "threads": m["threads"],
                       "started": m["started"], "version": m["version"]} for part, m in zip(parts, metas)],
            "source_file": (out / "runs.csv").as_posix()}
    (out / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _planned_steps(opts: EvalOptions, store: ResultStore) -> tuple[int, int]:
    """(total, done) optimizer steps of the whole plan, for the progress bar's ETA."""
    total = done = 0
    for task in opts.tasks:
        for name in opts.optimizers:
            total += runs_per_optimizer(len(sweep_settings(name, opts.sweep)), opts.seeds) * opts.steps[task]
            done += sum(r["task"] == task and r["optimizer"] == name for r in store.rows) * opts.steps[task]
    return total, min(done, total)


def _run_one(task, key: RunKey, setting, opts: EvalOptions, store: ResultStore, bar) -> None:
    """One run, measured and stored (an exception is stored as an error, never dropped)."""
    steps = opts.steps[key.task]
    start, advanced = time.perf_counter(), [0]

    def tick() -> None:
        advanced[0] += 1
        bar.update(1)

    try:
        session = task.session(key.optimizer, run_kwargs(key.optimizer, setting, steps), key.seed, steps)
        outcome = measure(session, steps, opts.eval_every(key.task), tick)
        store.add(key, setting, steps, outcome, time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - recorded, then the benchmark goes on
        store.add(key, setting, steps, None, time.perf_counter() - start, f"{type(err).__name__}: {err}")
    bar.update(steps - advanced[0])  # a run that stopped early still counts as done


def _optimizer_runs(task, name: str, opts: EvalOptions, store: ResultStore, bar, deadline: float) -> bool:
    """Every run of one optimizer on one task; False when the time budget ran out."""
    settings = {s.factor: s for s in sweep_settings(name, opts.sweep)}
    for stage in (1, 2):
        losses = {f: store.final_loss(RunKey(task.name, name, f, 0)) for f in settings
                  if store.done(RunKey(task.name, name, f, 0))}
        for key in plan_runs(task.name, name, list(settings.values()), opts.seeds, losses):
            if store.done(key):
                continue
            if time.monotonic() > deadline:
                return False
            bar.set_postfix_str(f"{task.name} {name} x{key.factor:.3g} seed {key.seed}")
            _run_one(task, key, settings[key.factor], opts, store, bar)
    return True


def run_benchmark(opts: EvalOptions) -> tuple[list[Summary], bool]:
    """Run (or continue) the plan in ``opts.out``; write the reports. Returns the summaries and whether
    the plan is complete (False: ``--max-minutes`` stopped it; ``--resume`` continues)."""
    from tqdm.auto import tqdm

    from rvc_optim.evaluate.tasks import make_task

    torch.set_num_threads(opts.threads)
    if opts.merge:
        merge_folders(opts.out, opts.merge, _plan(opts))
        opts = replace(opts, resume=True)
    meta = _prepare_folder(opts)
    store = ResultStore(opts.out)
    total, done = _planned_steps(opts, store)
    deadline = time.monotonic() + 60 * opts.max_minutes if opts.max_minutes else math.inf
    complete = True
    with tempfile.TemporaryDirectory(prefix="rvc-optim-evaluate-") as data, \
            tqdm(total=total, initial=done, unit="step", dynamic_ncols=True, desc="evaluate") as bar:
        for task_name in opts.tasks:
            task = make_task(task_name, Path(data))
            for name in opts.optimizers:
                complete = complete and _optimizer_runs(task, name, opts, store, bar, deadline)
                if not complete:
                    break
            if not complete:
                break
    summaries = write_reports(opts.out, meta, plots=opts.plots)
    if opts.publish_ratings is not None:
        opts.publish_ratings.write_text((opts.out / "ratings.csv").read_text(encoding="utf-8"), encoding="utf-8")
    return summaries, complete

