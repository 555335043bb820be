"""Runs that are not lost (issue #16): a resumed run continues where it lives with its own length and
settings, a changed setting is refused by name (or accepted with --override), SIGINT / SIGTERM save
the current step and exit 130 / 143, orphaned temp files are removed, and the CSV log is cut at the
resume step."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rvc_optim.cli import main

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _steps(run: Path) -> list[int]:
    with open(run / "train_log.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.fixture
def half_run(experiment, tmp_path, monkeypatch) -> Path:
    """A 4-step run with its checkpoint at step 2 as the newest (the step-4 pair removed), the log
    holding rows up to step 4 (a run that died after logging past its last save)."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "elsewhere" / "voice"
    code = main(["train", "--data", str(experiment), "--config", "tiny", "--out", str(run), "--steps", "4",
                 "--batch-size", "1", "--log-every", "1", "--save-every", "2", "--eval-every", "0",
                 "--keep-last", "0", "--no-progress", "--no-tensorboard", "--lr", "2e-4"])
    assert code == 0
    for p in ("G_4.pth", "D_4.pth"):
        (run / p).unlink()
    return run


def test_resume_continues_in_place_with_the_run_settings(half_run, tmp_path, capsys):
    capsys.readouterr()
    (half_run / ".G_3.pth.x1y2.tmp").write_bytes(b"partial")  # a write killed mid-way
    assert main(["train", "--resume", str(half_run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from step 2 of 4 in {half_run}" in out
    assert "removed" in out and not (half_run / ".G_3.pth.x1y2.tmp").exists()
    assert not (tmp_path / "runs").exists(), "the resumed run was written elsewhere"
    assert (half_run / "G_4.pth").exists() and (half_run / "voice.pth").exists()
    assert _steps(half_run) == [1, 2, 3, 4], "stale or duplicate rows in train_log.csv"


def test_resume_refuses_a_changed_setting_unless_override(half_run, capsys):
    capsys.readouterr()
    assert main(["train", "--resume", str(half_run), "--lr", "1e-3", "--batch-size", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.0002 -> 0.001" in err and "--batch-size 1 -> 2" in err and "different run" in err
    assert "--override" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--resume", str(half_run), "--lr", "1e-3", "--override", "--no-progress"]) == 0
    assert "changed --lr 0.0002 -> 0.001" in capsys.readouterr().out


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_the_current_step(sig, code, experiment, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "rvc_optim.cli", "train", "--data", str(experiment), "--config", "tiny",
            "--out", str(run), "--batch-size", "1", "--log-every", "1", "--eval-every", "0", "--save-every", "0",
            "--no-progress", "--no-tensorboard"]
    proc = subprocess.Popen([*argv, "--steps", "1000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while not ((run / "train_log.csv").exists() and len(_steps(run)) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(sig)
    if sig == signal.SIGINT:  # a second Ctrl-C while saving waits for the write
        time.sleep(0.3)
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    last = [line for line in err.splitlines() if line.startswith("saved step")]
    assert len(last) == 1 and last[0].endswith(f"; resume with: rvc-optim train --resume {run}"), err
    saved = int(last[0].split()[2].rstrip(";"))
    assert saved >= 2 and (run / f"G_{saved}.pth").exists() and (run / f"D_{saved}.pth").exists()
    resumed = subprocess.run([*argv[:4], "--resume", str(run), "--steps", str(saved + 1), "--no-progress"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {saved} of {saved + 1} in {run}" in resumed.stdout
    assert _steps(run)[-2:] == [saved, saved + 1]
