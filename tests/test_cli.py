"""The rvc-optim command: list, show, recommend, help, errors."""

from __future__ import annotations

import pytest

from rvc_optim.catalog import GOALS, RECORDS
from rvc_optim.cli import NOT_AVAILABLE_MARK, main
from rvc_optim.records import OptimizerInfo
from rvc_optim.registry import optimizer_info


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_prints_every_optimizer(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for record in RECORDS:
        assert record.name in out
    assert out.splitlines()[1].split()[1] == "AdamW"  # the guide's order


def test_list_filters(capsys):
    code, out, _ = run(capsys, "list", "--category", "LR-Free", "--min-rating", "4")
    lines = out.splitlines()[1:]
    assert code == 0 and lines
    assert {line.split()[1] for line in lines} == {r.name for r in RECORDS if r.category == "LR-Free" and r.rating >= 4}


def test_show_prints_paper_protocol_and_advice(capsys):
    code, out, _ = run(capsys, "show", "schedule-free-adamw")
    assert code == 0
    assert "The Road Less Scheduled" in out and "2405.15682" in out
    assert "optimizer.train()" in out and "no LR scheduler" in out
    assert "When to use it" in out


def test_show_unknown_name_suggests(capsys):
    code, _, err = run(capsys, "show", "adamww")
    assert code == 2 and "AdamW" in err


@pytest.mark.parametrize("goal", [g.key for g in GOALS])
def test_recommend_each_goal(capsys, goal):
    code, out, _ = run(capsys, "recommend", "--goal", goal)
    record = next(g for g in GOALS if g.key == goal)
    assert code == 0 and all(name in out for name in record.names)


def _recommendation_lines(out: str) -> dict[str, str]:
    return {g.key: next(line for line in out.splitlines() if line.startswith(f"{g.title} [{g.key}]:")) for g in GOALS}


def _assert_unavailable_marked(out: str) -> None:
    for key, line in _recommendation_lines(out).items():
        listed = line.split("]: ", 1)[1]
        for name in next(g for g in GOALS if g.key == key).names:
            marked = f"{name} {NOT_AVAILABLE_MARK}" in listed
            available = optimizer_info(name).available
            assert name in listed, f"{key}: {name} missing from {line!r}"
            assert marked != available, (
                f"recommend --goal {key}: {name} is {'available' if available else 'not available'} "
                f"but {'is' if marked else 'is not'} marked {NOT_AVAILABLE_MARK!r}: {line!r}")


def test_recommend_never_names_an_unavailable_optimizer_unmarked(capsys, monkeypatch):
    code, out, _ = run(capsys, "recommend")
    assert code == 0
    _assert_unavailable_marked(out)
    # Once everything exists the check above has nothing to catch: take one recommended optimizer of
    # every goal away and check again.
    taken = {g.names[0] for g in GOALS}
    real = OptimizerInfo.available
    monkeypatch.setattr(OptimizerInfo, "available", property(lambda r: r.name not in taken and real.fget(r)))
    code, out, _ = run(capsys, "recommend")
    assert code == 0
    _assert_unavailable_marked(out)
    assert out.count(NOT_AVAILABLE_MARK) >= len(taken)


def test_large_batch_recommends_available_optimizers(capsys):
    code, out, _ = run(capsys, "recommend", "--goal", "large-batch")
    assert code == 0 and "LAMB" in out and "LARS" in out and NOT_AVAILABLE_MARK not in out


def test_recommend_all_goals(capsys):
    code, out, _ = run(capsys, "recommend")
    assert code == 0 and all(g.title in out for g in GOALS)


@pytest.mark.parametrize("command", ["list", "show", "recommend", "bench"])
def test_help_on_every_command(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: rvc-optim " + command in capsys.readouterr().out


def test_list_unknown_category_is_a_clear_error(capsys):
    code, _, err = run(capsys, "list", "--category", "lr free-ish")
    assert code == 2 and "LR-Free" in err
