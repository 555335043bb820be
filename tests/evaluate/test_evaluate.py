"""The convergence benchmark end to end (a smoke run through the CLI), divergence, resume, and the
rating formula on hand-made results. No timing assertions."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from rvc_optim.cli import main
from rvc_optim.evaluate import runner
from rvc_optim.evaluate.results import read_csv, read_markdown_tables, rating, summarize
from rvc_optim.evaluate.runner import EvalOptions, ResumeMismatch, run_benchmark
from rvc_optim.evaluate.sweep import RunKey, plan_runs, run_kwargs, sweep_settings
from rvc_optim.records import attach_measured_ratings, read_measured_ratings
from rvc_optim.registry import optimizer_info, register, unregister


@pytest.fixture
def absurd_sgd():
    """A stand-in optimizer whose recommended lr (1e6) must make any run diverge."""
    register(replace(optimizer_info("SGD"), name="AbsurdSGD", aliases=(), recommended={"lr": 1e6}))
    yield "AbsurdSGD"
    unregister("AbsurdSGD")


def _vocoder_options(out: Path, optimizers: list[str], **kw) -> EvalOptions:
    return EvalOptions(optimizers=optimizers, out=out, tasks=["vocoder"], steps={"vocoder": 2}, seeds=1,
                       sweep=False, evals=1, plots=False, **kw)


def test_smoke_run_writes_tables_plots_and_ratings(tmp_path, capsys):
    out = tmp_path / "smoke"
    code = main(["evaluate", "--optimizers", "AdamW,Lion", "--tasks", "rvc", "--steps", "1", "--seeds", "1",
                 "--no-sweep", "--evals", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for name in ("runs.csv", "curves.csv", "summary.csv", "results.md", "ratings.csv", "meta.json",
                 "rvc_loss_vs_steps.png", "rvc_loss_vs_seconds.png", "rvc_final_loss.png"):
        assert (out / name).is_file(), name
    tables = read_markdown_tables((out / "results.md").read_text(encoding="utf-8"))
    assert set(tables) == {"rvc"}  # the vocoder task runs in the tests below
    for rows in tables.values():
        assert {r["Optimizer"] for r in rows} == {"AdamW", "Lion"}
        assert all(math.isfinite(float(r["Final loss (mean ± std)"].split()[0])) for r in rows)
    assert [(r["task"], r["status"]) for r in read_csv(out / "runs.csv")] == [("rvc", "ok")] * 2
    ratings = read_measured_ratings(out / "ratings.csv")
    assert set(ratings) == {"AdamW", "Lion"} and all(1 <= m.rating <= 5 for m in ratings["AdamW"])


def test_diverging_optimizer_is_recorded_not_dropped(tmp_path, absurd_sgd):
    summaries, complete = run_benchmark(_vocoder_options(tmp_path, ["AdamW", absurd_sgd]))
    assert complete
    rows = {r["optimizer"]: r for r in read_csv(tmp_path / "runs.csv")}
    assert rows[absurd_sgd]["status"] == "diverged" and rows[absurd_sgd]["diverged_at"] != ""
    assert rows["AdamW"]["status"] == "ok"
    table = read_markdown_tables((tmp_path / "results.md").read_text(encoding="utf-8"))["vocoder"]
    assert [r["Optimizer"] for r in table] == ["AdamW", absurd_sgd]  # diverged ones last, still listed
    assert table[1]["Final loss (mean ± std)"] == "diverged" and table[1]["Measured"] == "1/5"
    text = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert f"diverged or failed runs: {absurd_sgd} (1/1)" in text


def test_resume_continues_instead_of_restarting(tmp_path, monkeypatch):
    done: list[RunKey] = []
    real = runner._run_one

    def interrupted_after_first(task, key, *args):
        if done:
            raise KeyboardInterrupt
        real(task, key, *args)
        done.append(key)

    monkeypatch.setattr(runner, "_run_one", interrupted_after_first)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(_vocoder_options(tmp_path, ["AdamW", "Lion"]))
    assert [k.optimizer for k in done] == ["AdamW"]

    with pytest.raises(ResumeMismatch, match="--resume"):
        run_benchmark(_vocoder_options(tmp_path, ["AdamW", "Lion"]))
    with pytest.raises(ResumeMismatch, match="seeds"):
        run_benchmark(replace(_vocoder_options(tmp_path, ["AdamW", "Lion"], resume=True), seeds=2))

    with open(tmp_path / "curves.csv", "a", encoding="utf-8") as f:  # as if Lion was stopped mid-write
        f.write("vocoder,Lion,1,0,0,0.1,9.9\n")
    monkeypatch.setattr(runner, "_run_one", lambda task, key, *args: (done.append(key), real(task, key, *args)))
    run_benchmark(_vocoder_options(tmp_path, ["AdamW", "Lion"], resume=True))
    assert [k.optimizer for k in done] == ["AdamW", "Lion"]  # AdamW was not run again
    assert [r["optimizer"] for r in read_csv(tmp_path / "runs.csv")] == ["AdamW", "Lion"]
    lion = [c for c in read_csv(tmp_path / "curves.csv") if c["optimizer"] == "Lion"]
    assert [c["step"] for c in lion] == ["0", "2"] and "9.9" not in {c["loss"] for c in lion}


def _row(optimizer: str, factor: float, seed: int, loss: float, task: str = "rvc") -> dict[str, str]:
    status = "ok" if math.isfinite(loss) else "diverged"
    return {"task": task, "optimizer": optimizer, "argument": "lr", "factor": f"{factor:g}", "value": f"{factor:g}",
            "seed": str(seed), "steps": "10", "status": status, "final_loss": "" if status != "ok" else str(loss),
            "diverged_at": "" if status == "ok" else "3", "step_seconds": "0.1", "state_bytes": "1024",
            "wall_seconds": "1", "error": ""}


def _curve(row: dict[str, str], start: float) -> list[dict[str, str]]:
    """The validations of a hand-made run: ``start`` at step 0, its final loss at its last step."""
    points = [(0, start)] + ([(10, float(row["final_loss"]))] if row["status"] == "ok" else [])
    return [{"task": row["task"], "optimizer": row["optimizer"], "factor": row["factor"], "seed": row["seed"],
             "step": str(step), "seconds": str(step / 10), "loss": str(loss)} for step, loss in points]


def test_rating_formula_on_hand_made_results():
    assert [rating(x, 0.0) for x in (1.0, 0.96, 0.9, 0.75, 0.6, 0.3, -0.5)] == [5, 5, 4, 3, 2, 1, 1]
    assert rating(1.0, 0.5) == 4 and rating(0.55, 0.5) == 1  # divergence costs a star, never below 1
    assert rating(math.nan, 1.0) == 1
    rows = [_row("AdamW", 1, 0, 2.0), _row("AdamW", 3, 0, 1.0), _row("AdamW", 1 / 3, 0, math.nan),
            _row("AdamW", 3, 1, 1.2), _row("AdamW", 3, 2, 0.8),
            _row("Lion", 1, 0, 2.0), _row("Lion", 1, 1, 2.0),
            _row("SGD", 1, 0, math.nan)]
    starts = {"0": 3.0, "1": 2.8, "2": 3.2}  # the same for every optimizer: the same initial weights per seed
    curves = [c for r in rows for c in _curve(r, starts[r["seed"]])]
    by_name = {s.optimizer: s for s in summarize(rows, curves)}
    adamw, lion = by_name["AdamW"], by_name["Lion"]
    assert adamw.best_setting == "lr=3 (edge)" and lion.best_setting == "lr=1"
    assert adamw.best_factor == 3 and adamw.final_loss == pytest.approx(1.0) and adamw.seeds == 3
    assert adamw.sweep_spread == pytest.approx(1.0) and (adamw.diverged_runs, adamw.runs) == (1, 5)
    # AdamW descends from 3.0 (mean of seeds 0-2) to 1.0; Lion from 2.9 (seeds 0, 1) to 2.0: 0.9 / 2.0
    assert adamw.start_loss == pytest.approx(3.0) and lion.start_loss == pytest.approx(2.9)
    assert (adamw.descent_share, lion.descent_share) == (pytest.approx(1.0), pytest.approx(0.45))
    assert (adamw.rating, lion.rating, by_name["SGD"].rating) == (5, 1, 1)
    assert math.isnan(by_name["SGD"].descent_share)
    assert [s.optimizer for s in summarize(rows, curves)] == ["AdamW", "Lion", "SGD"]
    assert {s.rating for s in summarize(rows, [])} == {1}  # no validations: no start loss, no share


def test_chunks_run_side_by_side_merge_into_one_folder_without_running_again(tmp_path, monkeypatch, capsys):
    """Two folders, each with some of the optimizers (as two processes would write them), merged by
    ``--merge``: every run and curve kept, nothing run again, the reports cover both; a run found in two
    parts, another plan, or a merge into a folder with results is one clear error."""
    run_benchmark(_vocoder_options(tmp_path / "a", ["AdamW"]))
    run_benchmark(_vocoder_options(tmp_path / "b", ["Lion"]))
    run_benchmark(replace(_vocoder_options(tmp_path / "c", ["Lion"]), evals=2))
    ran: list[RunKey] = []
    monkeypatch.setattr(runner, "_run_one", lambda task, key, *args: ran.append(key))
    merged = tmp_path / "merged"
    summaries, complete = run_benchmark(_vocoder_options(merged, ["AdamW", "Lion"], merge=[tmp_path / "a", tmp_path / "b"]))
    assert complete and ran == []
    assert [r["optimizer"] for r in read_csv(merged / "runs.csv")] == ["AdamW", "Lion"]
    parts_curves = read_csv(tmp_path / "a" / "curves.csv") + read_csv(tmp_path / "b" / "curves.csv")
    assert read_csv(merged / "curves.csv") == parts_curves and len(parts_curves) == 4  # steps 0 and 2, each
    assert {s.optimizer for s in summaries} == {"AdamW", "Lion"}
    meta = json.loads((merged / "meta.json").read_text(encoding="utf-8"))
    assert [part["folder"] for part in meta["parts"]] == [(tmp_path / x).as_posix() for x in "ab"]
    assert meta["source_file"] == (merged / "runs.csv").as_posix()

    with pytest.raises(ResumeMismatch, match="already holds results"):
        run_benchmark(_vocoder_options(merged, ["AdamW"], merge=[tmp_path / "a"]))
    with pytest.raises(ResumeMismatch, match=r"\('vocoder', 'AdamW', '1', 0\) is in both"):
        run_benchmark(_vocoder_options(tmp_path / "twice", ["AdamW"], merge=[tmp_path / "a", merged]))
    with pytest.raises(ResumeMismatch, match=f"{tmp_path / 'c'} was run with evals=2"):
        run_benchmark(_vocoder_options(tmp_path / "bad", ["AdamW", "Lion"], merge=[tmp_path / "a", tmp_path / "c"]))
    capsys.readouterr()
    assert main(["evaluate", "--out", str(tmp_path / "bad"), "--merge", str(tmp_path / "a"), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--merge: {tmp_path / 'a'} was run with steps=" in err[0]
    assert not (tmp_path / "bad" / "runs.csv").exists()  # checked before anything is written


def test_plan_sweeps_one_seed_then_the_best_setting():
    settings = sweep_settings("AdamW")
    assert [s.value for s in settings] == pytest.approx([1e-4 / 3, 1e-4, 3e-4])
    assert [s.value for s in sweep_settings("Prodigy")] == pytest.approx([0.5, 1.0, 2.0])
    first = list(plan_runs("rvc", "AdamW", settings, 3, {}))
    assert [(k.factor, k.seed) for k in first] == [(s.factor, 0) for s in settings]
    losses = {settings[0].factor: math.nan, settings[1].factor: 2.0, settings[2].factor: 1.0}
    later = list(plan_runs("rvc", "AdamW", settings, 3, losses))[3:]
    assert [(k.factor, k.seed) for k in later] == [(3.0, 1), (3.0, 2)]
    sf = sweep_settings("ScheduleFreeAdamW")[1]
    assert run_kwargs("ScheduleFreeAdamW", sf, 50) == {"lr": sf.value, "warmup_steps": 5}  # not 1000 of 50
    assert run_kwargs("ScheduleFreeAdamW", sf, 20000) == {"lr": sf.value}


def test_measured_ratings_reach_the_records_and_the_cli(tmp_path, capsys):
    path = tmp_path / "ratings.csv"
    path.write_text("optimizer,task,rating,final_loss,steps,seeds,version,source_file\n"
                    "AdamW,rvc,1,nan,50,3,0.1.0,benchmarks/results/convergence/runs.csv\n"
                    "AdamW,vocoder,4,2.1,150,3,0.1.0,benchmarks/results/convergence/runs.csv\n", encoding="utf-8")
    adamw = attach_measured_ratings((optimizer_info("AdamW"),), path)[0]
    assert [(m.task, m.rating) for m in adamw.measured] == [("rvc", 1), ("vocoder", 4)]
    assert "diverged in every run" in adamw.when_to_use and "guide's 5.0 stars" in adamw.when_to_use
    assert main(["show", "AdamW"]) == 0
    published = [m.describe() for m in optimizer_info("AdamW").measured] or ["not measured"]
    out = capsys.readouterr().out
    assert all(f"measured: {line}" in out for line in published)


def test_the_readme_table_shows_measured_ratings_beside_the_guides(tmp_path, monkeypatch):
    import rvc_optim.cli as cli

    path = tmp_path / "ratings.csv"
    path.write_text("optimizer,task,rating,final_loss,steps,seeds,version,source_file\n"
                    "AdamW,rvc,1,nan,50,3,0.1.0,benchmarks/results/convergence/runs.csv\n"
                    "AdamW,vocoder,4,2.1,150,3,0.1.0,benchmarks/results/convergence/runs.csv\n"
                    "Lion,vocoder,3,2.4,150,3,0.1.0,benchmarks/results/convergence/runs.csv\n", encoding="utf-8")
    monkeypatch.setattr(cli, "RECORDS", attach_measured_ratings(tuple(map(optimizer_info, ["AdamW", "Lion"])), path))
    header, _, adamw, lion = cli.markdown_table().split("\n")
    link = "(benchmarks/results/convergence/results.md)"
    assert header.startswith(f"| Guide's rating | Optimizer | [Measured: rvc]{link} | [Measured: vocoder]{link} |")
    assert adamw.split(" | ")[1:4] == ["AdamW", "1/5 (diverged)", "4/5"]
    assert lion.split(" | ")[1:4] == ["Lion", "-", "3/5"]


def test_published_ratings_agree_with_the_results_they_name():
    """The ratings the records load are the ones their results file gives, for every optimizer and task."""
    from rvc_optim.catalog import MEASURED_RATINGS_FILE
    from rvc_optim.registry import list_optimizers

    published = read_csv(MEASURED_RATINGS_FILE)
    assert {(r["optimizer"], r["task"]) for r in published} == {(n, t) for n in list_optimizers() for t in ("rvc", "vocoder")}
    root = Path(__file__).resolve().parents[2]
    for source in {r["source_file"] for r in published}:
        folder = (root / source).parent
        recomputed = {(s.optimizer, s.task): s.rating
                      for s in summarize(read_csv(folder / "runs.csv"), read_csv(folder / "curves.csv"))}
        assert {(r["optimizer"], r["task"]): int(r["rating"]) for r in published if r["source_file"] == source} == recomputed
    for r in published:
        assert (r["task"], int(r["rating"])) in {(m.task, m.rating) for m in optimizer_info(r["optimizer"]).measured}
