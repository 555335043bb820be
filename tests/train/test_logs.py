"""Logs that tell the truth (issue #16): the logged lr is the step size applied (read as the record's
protocol says), the protocol is printed at the start, the summary judges a trend on windows (or says
it cannot), the run's config.json states its precision and length, caches get the normal file mode."""

from __future__ import annotations

import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import pytest

from rvc_optim.train.config import get_config
from rvc_optim.train.data import RVCDataset, find_experiment, read_filelist, spec_cache_path
from rvc_optim.train.loop import TrainResult, train

from .test_loop import make_tc


@pytest.mark.parametrize("name", ["Prodigy", "ScheduleFreeAdamW"])
def test_logged_lr_is_the_step_size_applied(name, experiment, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(make_tc(experiment, tmp_path, optimizer=name, steps=2, lr=1.0 if name == "Prodigy" else 1e-3))
    out = capsys.readouterr().out
    row = result.history[-1]
    if name == "Prodigy":
        assert "generator optimizer Prodigy: lr multiplies a step size" in out
        assert row["d_g"] is not None and row["d_g"] < 1e-3, row  # d starts at 1e-6, not the lr of 1.0
        assert row["lr_g"] == pytest.approx(row["d_g"] * 1.0)
    else:
        assert "owns its schedule" in out
        assert row["d_g"] is None and 0 < row["lr_g"] < 1e-3, row  # in warm-up: below the base lr


def _result(values: list[float]) -> TrainResult:
    return TrainResult(step=len(values), epoch=1, epochs_done=1.0, run_dir=Path("."), checkpoint=None, export=None,
                       history=[{"loss_mel": v} for v in values], skipped_steps=0, seconds_per_step=0.1)


def test_summary_judges_on_windows_or_says_it_cannot():
    assert "too few logged points to judge: 2" in _result([5.0, 6.0]).trend()
    assert "did not fall" not in _result([5.0, 6.0]).trend()
    assert _result([9, 8, 7, 8, 7, 6, 7, 6, 5.0]).trend().endswith("fell)")
    assert "did not fall" in _result([5, 9, 1, 9, 9, 9, 9, 9, 9.0]).trend()


def test_run_config_json_states_precision_and_length(experiment, tmp_path):
    train(make_tc(experiment, tmp_path, steps=2))
    section = json.loads((tmp_path / "config.json").read_text())["train"]
    assert section["fp16_run"] is False and section["precision"] == "fp32"
    assert section["steps"] == 2 and section["epochs"] == 1  # 4 batches per epoch


def test_spectrogram_cache_has_the_normal_file_mode(experiment, tmp_path):
    copy = Path(shutil.copytree(experiment, tmp_path / "copy"))
    for p in copy.rglob("*.spec.pt"):
        p.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the copy's rows point at the original
        rows = read_filelist(find_experiment(copy).filelist)
    RVCDataset(rows[:1], get_config("tiny"))[0]
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(spec_cache_path(rows[0].wav).stat().st_mode) == 0o666 & ~mask
