"""What the convergence benchmark writes and how it rates: CSVs, the markdown table, plots, ratings.

Files in the output folder:

* ``runs.csv``: one row per run (task, optimizer, setting, seed; status ``ok`` / ``diverged`` /
  ``error``; final validation loss; step where divergence was detected; seconds per step; bytes of
  optimizer state; wall seconds). Appended and flushed after every run: ``--resume`` reads it.
* ``curves.csv``: every validation of every run (step, training seconds so far, loss).
* ``summary.csv`` and ``results.md``: per task and optimizer, the best setting's mean and spread.
* ``ratings.csv``: the measured 1-5 rating per task and optimizer, with its provenance.
* ``<task>_loss_vs_steps.png``, ``<task>_loss_vs_seconds.png``, ``<task>_final_loss.png``.

The rating (per task), from the summary, is deliberately simple. Every optimizer starts from the same
weights (per seed), so the validation loss at step 0 is common to all; what an optimizer achieves is
the descent from there, and it is rated by its share of the best optimizer's descent:

* ``descent share = (start loss - final loss) / (start loss - final loss of the best optimizer)``, each
  loss the best setting's mean over its seeds (the start loss: their step-0 validations);
* 5 stars for a share ``>= 95%``, 4 for ``>= 85%``, 3 for ``>= 70%``, 2 for ``>= 50%``, else 1
  (:data:`RATING_THRESHOLDS`);
* one star less (never below 1) where more than a third of the optimizer's runs diverged;
* 1 star where every run of the best setting diverged.

The target loss for "steps / seconds to target" is AdamW's best mean final loss on that task (what RVC
trains with; the median of all best means where AdamW was not run): the first validation at or below
it, averaged over the best setting's seeds, reported only where every seed reached it.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

from rvc_optim.evaluate.sweep import RunKey, Setting, best_factor
from rvc_optim.evaluate.tasks import RunOutcome

__all__ = ["RATING_THRESHOLDS", "RUN_FIELDS", "Summary", "ResultStore", "rating", "summarize",
           "write_reports", "markdown_tables", "read_markdown_tables", "read_csv", "run_ident", "write_csv"]

RATING_THRESHOLDS = ((0.95, 5), (0.85, 4), (0.70, 3), (0.50, 2))  # (least descent share, stars)
DIVERGENCE_PENALTY_ABOVE = 1 / 3
TARGET_OPTIMIZER = "AdamW"
RUN_FIELDS = ["task", "optimizer", "argument", "factor", "value", "seed", "steps", "status", "final_loss",
              "diverged_at", "step_seconds", "state_bytes", "wall_seconds", "error"]
CURVE_FIELDS = ["task", "optimizer", "factor", "seed", "step", "seconds", "loss"]


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts (no file: no rows)."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(text: str | None) -> float:
    """A CSV cell as a float (empty: NaN)."""
    return float(text) if text not in (None, "") else math.nan


class ResultStore:
    """``runs.csv`` and ``curves.csv`` in ``folder``: what is done, and appending a finished run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runs_path, self.curves_path = folder / "runs.csv", folder / "curves.csv"
        self.rows = read_csv(self.runs_path)
        self._done = {run_ident(r): r for r in self.rows}
        self._drop_orphaned_curves()

    def _drop_orphaned_curves(self) -> None:
        """Curve rows of a run that was interrupted before its ``runs.csv`` row (written last, the run's
        "done" mark) are removed, so that the run, done again, is not counted twice."""
        curves = read_csv(self.curves_path)
        kept = [c for c in curves if run_ident(c) in self._done]
        if len(kept) != len(curves):
            write_csv(self.curves_path, CURVE_FIELDS, kept)

    def done(self, key: RunKey) -> bool:
        """Whether ``key`` has a row in ``runs.csv`` (finished, diverged or failed)."""
        return key.ident in self._done

    def final_loss(self, key: RunKey) -> float:
        """The final loss of a done run (NaN: diverged or failed)."""
        return _num(self._done[key.ident]["final_loss"])

    def add(self, key: RunKey, setting: Setting, steps: int, outcome: RunOutcome | None, wall: float,
            error: str = "") -> None:
        """Append one run (``outcome`` None: it raised ``error``) to both files, flushed."""
        status = "error" if outcome is None else ("diverged" if outcome.diverged_at is not None else "ok")
        row = {"task": key.task, "optimizer": key.optimizer, "argument": setting.argument,
               "factor": f"{key.factor:.6g}", "value": f"{setting.value:.6g}", "seed": key.seed, "steps": steps,
               "status": status, "final_loss": "" if outcome is None else f"{outcome.final_loss:.6g}",
               "diverged_at": "" if outcome is None or outcome.diverged_at is None else outcome.diverged_at,
               "step_seconds": "" if outcome is None else f"{outcome.step_seconds:.4f}",
               "state_bytes": "" if outcome is None else outcome.state_bytes,
               "wall_seconds": f"{wall:.1f}", "error": error}
        points = [] if outcome is None else outcome.points
        _append(self.curves_path, CURVE_FIELDS, [
            {"task": key.task, "optimizer": key.optimizer, "factor": f"{key.factor:.6g}", "seed": key.seed,
             "step": p.step, "seconds": f"{p.seconds:.3f}", "loss": f"{p.loss:.6g}"} for p in points])
        _append(self.runs_path, RUN_FIELDS, [row])  # last: the run is done once this row is written
        row = {k: str(v) for k, v in row.items()}
        self.rows.append(row)
        self._done[key.ident] = row


def run_ident(row: dict[str, str]) -> tuple[str, str, str, int]:
    """A runs.csv or curves.csv row's run, as :attr:`RunKey.ident`."""
    return (row["task"], row["optimizer"], f"{float(row['factor']):.6g}", int(row["seed"]))


def write_csv(path: Path, names: Sequence[str], rows: Iterable[dict]) -> None:
    """Write ``rows`` to ``path`` whole, atomically (a temporary file, then renamed)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    _append(tmp, names, rows)
    tmp.replace(path)


def _append(path: Path, names: Sequence[str], rows: Iterable[dict]) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        if new:
            writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------------
# Summary and rating
# --------------------------------------------------------------------------------------------------


@dataclass
class Summary:
    """One optimizer on one task. Losses are the best setting's; ``sweep_spread`` is the range of the
    first seed's final losses over the settings that did not diverge (how much the setting matters)."""

    task: str
    optimizer: str
    best_setting: str
    final_loss: float
    final_loss_std: float
    seeds: int
    sweep_spread: float
    runs: int
    diverged_runs: int
    steps_to_target: float
    seconds_to_target: float
    step_ms: float
    state_kib: float
    best_factor: float = 1.0
    start_loss: float = math.nan
    descent_share: float = math.nan
    rating: int = 0

    @property
    def divergence_rate(self) -> float:
        return self.diverged_runs / self.runs if self.runs else math.nan


def rating(descent_share: float, divergence_rate: float) -> int:
    """The measured 1-5 rating (see the module docstring); a NaN share (every run diverged) is 1."""
    if not math.isfinite(descent_share):
        return 1
    stars = next((s for limit, s in RATING_THRESHOLDS if descent_share >= limit), 1)
    if divergence_rate > DIVERGENCE_PENALTY_ABOVE:
        stars -= 1
    return max(1, stars)


def _time_to_target(curves: list[list[dict]], target: float) -> tuple[float, float]:
    """Mean (step, seconds) of the first validation at or below ``target``; NaN unless every run got there."""
    hits = []
    for points in curves:
        hit = next((p for p in points if _num(p["loss"]) <= target), None)
        if hit is None:
            return math.nan, math.nan
        hits.append((int(hit["step"]), _num(hit["seconds"])))
    if not hits:
        return math.nan, math.nan
    return statistics.mean(h[0] for h in hits), statistics.mean(h[1] for h in hits)


def _optimizer_summary(task: str, name: str, rows: list[dict]) -> Summary:
    """The summary of one optimizer's runs on one task (target and rating filled in later). A best
    setting at either end of the sweep is marked "(edge)": the optimum may lie beyond it."""
    sweep = {_num(r["factor"]): _num(r["final_loss"]) for r in rows if r["seed"] == "0"}
    best = best_factor(sweep) if sweep else 1.0
    best_rows = [r for r in rows if _num(r["factor"]) == best]
    finite = [_num(r["final_loss"]) for r in best_rows if math.isfinite(_num(r["final_loss"]))]
    spread = [v for v in sweep.values() if math.isfinite(v)]
    timed = [_num(r["step_seconds"]) for r in rows if math.isfinite(_num(r["step_seconds"]))]
    state = [_num(r["state_bytes"]) for r in rows if math.isfinite(_num(r["state_bytes"]))]
    return Summary(
        task=task, optimizer=name,
        best_setting=(f"{best_rows[0]['argument']}={_num(best_rows[0]['value']):.3g}" if best_rows else "")
        + (" (edge)" if len(sweep) > 1 and best in (min(sweep), max(sweep)) and math.isfinite(sweep[best]) else ""),
        final_loss=statistics.mean(finite) if finite else math.nan,
        final_loss_std=statistics.stdev(finite) if len(finite) > 1 else 0.0 if finite else math.nan,
        seeds=len(finite), sweep_spread=max(spread) - min(spread) if spread else math.nan, runs=len(rows),
        diverged_runs=sum(r["status"] != "ok" for r in rows), steps_to_target=math.nan,
        seconds_to_target=math.nan, step_ms=1000 * statistics.median(timed) if timed else math.nan,
        state_kib=max(state) / 1024 if state else math.nan, best_factor=best,
    )


def summarize(rows: list[dict[str, str]], curve_rows: list[dict[str, str]]) -> list[Summary]:
    """One :class:`Summary` per (task, optimizer) in ``rows``, with targets and ratings filled in,
    ordered by task, then final loss (diverged last)."""
    curves: dict[tuple, list[dict]] = {}
    for c in curve_rows:
        curves.setdefault((c["task"], c["optimizer"], _num(c["factor"]), c["seed"]), []).append(c)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["optimizer"]), []).append(r)
    out = [_optimizer_summary(task, name, rs) for (task, name), rs in groups.items()]
    best_curves = {(s.task, s.optimizer): [curves.get((s.task, s.optimizer, s.best_factor, r["seed"]), [])
                                          for r in groups[(s.task, s.optimizer)]
                                          if _num(r["factor"]) == s.best_factor and r["status"] == "ok"] for s in out}
    for s in out:
        starts = [_num(points[0]["loss"]) for points in best_curves[(s.task, s.optimizer)] if points]
        s.start_loss = statistics.mean(starts) if starts else math.nan
    for task in dict.fromkeys(s.task for s in out):
        mine = [s for s in out if s.task == task]
        finite = [s for s in mine if math.isfinite(s.final_loss)]
        best = min(finite, key=lambda s: s.final_loss, default=None)
        reference = next((s.final_loss for s in mine if s.optimizer == TARGET_OPTIMIZER), math.nan)
        target = reference if math.isfinite(reference) else \
            statistics.median(s.final_loss for s in finite) if finite else math.nan
        best_descent = best.start_loss - best.final_loss if best is not None else math.nan
        for s in mine:
            if best_descent > 0:  # NaN (no start loss) or nothing descended: no share, 1 star
                s.descent_share = (s.start_loss - s.final_loss) / best_descent
            s.rating = rating(s.descent_share, s.divergence_rate)
            s.steps_to_target, s.seconds_to_target = _time_to_target(best_curves[(task, s.optimizer)], target)
    return sorted(out, key=lambda s: (s.task, not math.isfinite(s.final_loss), s.final_loss, s.optimizer))


# --------------------------------------------------------------------------------------------------
# Reports: summary.csv, results.md (and parsing it back), ratings.csv, plots
# --------------------------------------------------------------------------------------------------

TABLE_HEADER = ("Rank", "Optimizer", "Best setting", "Final loss (mean ± std)", "Share of best descent", "Seeds",
                "Sweep spread", "Diverged or failed", "Steps to target", "Seconds to target", "Step ms",
                "State KiB", "Measured", "Guide")


def _fmt(value: float, spec: str = ".4f") -> str:
    return "—" if not math.isfinite(value) else format(value, spec)


def _table_row(rank: int, s: Summary) -> tuple[str, ...]:
    """The cells of one optimizer's row of the markdown table (:data:`TABLE_HEADER`)."""
    from rvc_optim.registry import optimizer_info

    loss = "diverged" if not math.isfinite(s.final_loss) else f"{s.final_loss:.4f} ± {s.final_loss_std:.4f}"
    return (str(rank), s.optimizer, s.best_setting, loss, _fmt(100 * s.descent_share, ".0f") + "%" * math.isfinite(
        s.descent_share), str(s.seeds), _fmt(s.sweep_spread),
            f"{s.diverged_runs}/{s.runs}", _fmt(s.steps_to_target, ".0f"), _fmt(s.seconds_to_target, ".1f"),
            _fmt(s.step_ms, ".0f"), _fmt(s.state_kib, ".0f"), f"{s.rating}/5",
            f"{optimizer_info(s.optimizer).rating:.1f}/5")


def markdown_tables(summaries: list[Summary]) -> dict[str, str]:
    """One markdown table per task, best first."""
    out = {}
    for task in dict.fromkeys(s.task for s in summaries):
        lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
        ranked = [s for s in summaries if s.task == task]
        lines += ["| " + " | ".join(_table_row(i, s)) + " |" for i, s in enumerate(ranked, 1)]
        out[task] = "\n".join(lines)
    return out


def read_markdown_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The tables of ``results.md`` back as rows of dicts, per task (a ``## Task: <name>`` heading
    precedes each)."""
    tables: dict[str, list[dict[str, str]]] = {}
    task, header = None, None
    for line in text.splitlines():
        if line.startswith("## Task: "):
            task, header = line.removeprefix("## Task: ").split()[0], None
            tables[task] = []
        elif task and line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            else:
                tables[task].append(dict(zip(header, cells)))
    return tables


def write_ratings(summaries: list[Summary], path: Path, steps: dict[str, int], version: str, source: str) -> None:
    """``ratings.csv``: optimizer, task, rating, final_loss, steps, seeds, version, source_file."""
    names = ["optimizer", "task", "rating", "final_loss", "steps", "seeds", "version", "source_file"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for s in summaries:
            writer.writerow({"optimizer": s.optimizer, "task": s.task, "rating": s.rating,
                             "final_loss": _fmt(s.final_loss, ".6g").replace("—", "nan"),
                             "steps": steps.get(s.task, ""), "seeds": s.seeds, "version": version,
                             "source_file": source})


def write_reports(folder: Path, meta: dict, plots: bool = True) -> list[Summary]:
    """summary.csv, results.md, ratings.csv and (``plots``) the PNGs from the runs in ``folder``."""
    summaries = summarize(read_csv(folder / "runs.csv"), read_csv(folder / "curves.csv"))
    with open(folder / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[x.name for x in fields(Summary)] + ["divergence_rate"])
        writer.writeheader()
        writer.writerows({**asdict(s), "divergence_rate": s.divergence_rate} for s in summaries)
    write_ratings(summaries, folder / "ratings.csv", meta["steps"], meta["version"], meta["source_file"])
    if plots:
        write_plots(folder, summaries, read_csv(folder / "curves.csv"))
    (folder / "results.md").write_text(results_markdown(summaries, meta), encoding="utf-8")
    return summaries


def highlights(summaries: list[Summary], top: int = 10) -> list[str]:
    """The closing note's facts: per task the top ``top`` by final loss with their spread, the optimizers
    with diverged or failed runs, and the largest disagreements with the guide's stars (2 or more)."""
    from rvc_optim.registry import optimizer_info

    lines = ["## Highlights", ""]
    for task in dict.fromkeys(s.task for s in summaries):
        ranked = [s for s in summaries if s.task == task and math.isfinite(s.final_loss)][:top]
        lines.append(f"* {task}, top {len(ranked)}: " + ", ".join(
            f"{s.optimizer} {s.final_loss:.4f} ± {s.final_loss_std:.4f}" for s in ranked))
        diverged = [f"{s.optimizer} ({s.diverged_runs}/{s.runs})" for s in summaries if s.task == task and s.diverged_runs]
        lines.append(f"* {task}, diverged or failed runs: {', '.join(diverged) or 'none'}")
    gaps = sorted(((s.rating - optimizer_info(s.optimizer).rating, s) for s in summaries), key=lambda g: -abs(g[0]))
    far = [f"{s.optimizer} on {s.task}: measured {s.rating}/5, guide {optimizer_info(s.optimizer).rating:.1f}"
           for gap, s in gaps if abs(gap) >= 2]
    lines += [f"* largest disagreements with the guide: {'; '.join(far) or 'none of 2 stars or more'}", ""]
    return lines


def results_markdown(summaries: list[Summary], meta: dict) -> str:
    """``results.md``: what was run, on what, then one table and three plots per task."""
    lines = [f"# Convergence benchmark{' (smoke run)' if meta.get('smoke') else ''}", "",
             f"rvc-optim {meta['version']}, torch {meta['torch']}, {meta['machine']}; {meta['threads']} torch "
             f"thread(s); started {meta['started']}.", "",
             f"Steps: {', '.join(f'{t} {n}' for t, n in meta['steps'].items())}; seeds: {meta['seeds']} (the sweep "
             "runs the first seed, the best setting all of them). Loss: validation mel L1 on held-out clips. "
             "Target: AdamW's final loss. Ratings: see `rvc_optim/evaluate/results.py`.", ""]
    lines += highlights(summaries)
    for task, table in markdown_tables(summaries).items():
        lines += [f"## Task: {task}", "", table, ""]
        lines += [f"![{task}: {what}]({task}_{what}.png)" for what in ("loss_vs_steps", "loss_vs_seconds", "final_loss")]
        lines.append("")
    return "\n".join(lines)


def _pyplot():
    """matplotlib's pyplot on the Agg backend (an optional dependency: the ``evaluate`` extra)."""
    import matplotlib  # the CLI checks first that it is installed (the `evaluate` extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_curve(curve_rows: list[dict], task: str, s: Summary) -> list[tuple[float, float, float]]:
    """``(step, seconds, loss)`` averaged over the best setting's seeds, at the steps every seed reached."""
    by_step: dict[int, list[tuple[float, float]]] = {}
    for c in curve_rows:
        if c["task"] == task and c["optimizer"] == s.optimizer and _num(c["factor"]) == s.best_factor:
            by_step.setdefault(int(c["step"]), []).append((_num(c["seconds"]), _num(c["loss"])))
    n = max((len(v) for v in by_step.values()), default=0)
    return [(step, statistics.mean(v[0] for v in vals), statistics.mean(v[1] for v in vals))
            for step, vals in sorted(by_step.items()) if len(vals) == n]


def write_plots(folder: Path, summaries: list[Summary], curve_rows: list[dict]) -> None:
    """Per task: loss curves against steps and against training seconds, and final losses with error bars."""
    plt = _pyplot()
    for task in dict.fromkeys(s.task for s in summaries):
        mine = [s for s in summaries if s.task == task]
        colors = plt.get_cmap("tab20")
        for axis, column, label in (("steps", 0, "optimizer steps"), ("seconds", 1, "training seconds (CPU)")):
            fig, ax = plt.subplots(figsize=(11, 6))
            for i, s in enumerate(mine):
                curve = _mean_curve(curve_rows, task, s)
                ax.plot([c[column] for c in curve], [c[2] for c in curve], color=colors(i % 20),
                        linestyle=("-", "--", ":")[i // 20 % 3], label=s.optimizer)
            ax.set(xlabel=label, ylabel="validation mel L1 (held-out)", title=f"{task}: best setting, mean of seeds")
            ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            fig.tight_layout()
            fig.savefig(folder / f"{task}_loss_vs_{axis}.png", dpi=90)
            plt.close(fig)
        _final_loss_bars(plt, folder / f"{task}_final_loss.png", task, mine)


def _final_loss_bars(plt, path: Path, task: str, mine: list[Summary]) -> None:
    """Bar chart of the best setting's final loss, standard deviation over seeds as error bars."""
    ok = [s for s in mine if math.isfinite(s.final_loss)]
    diverged = [s.optimizer for s in mine if not math.isfinite(s.final_loss)]
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(ok) + 2), 5))
    ax.bar(range(len(ok)), [s.final_loss for s in ok], yerr=[s.final_loss_std for s in ok], capsize=2)
    ax.set_xticks(range(len(ok)), [s.optimizer for s in ok], rotation=90, fontsize=7)
    low = min((s.final_loss - s.final_loss_std for s in ok), default=0.0)
    ax.set_ylim(bottom=max(0.0, 0.95 * low))
    ax.set(ylabel="final validation mel L1", title=f"{task}: final loss, best setting (± std over seeds)"
           + (f"\ndiverged: {', '.join(diverged)}" if diverged else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
