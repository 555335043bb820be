"""Bad input (issue #16): one line naming the input and what is wrong, exit status 2, no traceback,
and nothing made (no run folder, no demo data) before the check."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from rvc_optim.cli import main
from rvc_optim.train.checkpoint import _model_shapes
from rvc_optim.train.config import get_config
from rvc_optim.train.data import read_filelist
from rvc_optim.train.demo_data import make_demo_experiment
from rvc_optim.train.model import build_discriminator, build_generator
from rvc_optim.train.weight_norm_keys import to_legacy_state_dict


def _error_line(argv: list[str], tmp_path: Path, capsys) -> str:
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), "--no-progress", "--no-tensorboard", *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "weights_only" not in err and "allow_pickle" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert not run.exists(), "a folder was made before the input was checked"
    return lines[0]


@pytest.mark.parametrize("argv, message", [
    (["--optim-arg", "lr=abc"], "--optim-arg lr='abc': AdamW's lr takes a number (like 0.0001)"),
    (["--optimizer", "Prodigy", "--optim-arg", "d_coef=abc"], "Prodigy's d_coef takes a number"),
    (["--betas", "0.9"], "--betas 0.9: AdamW takes 2 betas, like --betas 0.8,0.99"),
    (["--optim-arg", "betas=0.9"], "AdamW's betas takes 2 numbers"),
])
def test_malformed_optimizer_values(argv, message, tmp_path, capsys):
    assert message in _error_line(["--demo", *argv], tmp_path, capsys)


def _save_model(model_or_shapes, path: Path) -> Path:
    if isinstance(model_or_shapes, dict):  # shapes only: stride-0 tensors keep the file small
        sd = {k: torch.zeros(1).expand(shape) if shape else torch.zeros(()) for k, shape in model_or_shapes.items()}
    else:
        sd = to_legacy_state_dict(model_or_shapes.state_dict())
    torch.save({"model": sd, "iteration": 1}, path)
    return path


def test_pretrained_that_is_not_a_checkpoint(tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    line = _error_line(["--demo", "--pretrained-g", str(junk)], tmp_path, capsys)
    assert f"--pretrained-g {junk} is not a PyTorch checkpoint" in line
    good = _save_model(build_generator(get_config("tiny")), tmp_path / "g.pth")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert "is not a PyTorch checkpoint" in _error_line(["--demo", "--pretrained-g", str(cut)], tmp_path, capsys)


def test_pretrained_of_the_wrong_model(tmp_path, capsys):
    d = _save_model(build_discriminator(get_config("tiny")), tmp_path / "f0D.pth")
    line = _error_line(["--demo", "--pretrained-g", str(d)], tmp_path, capsys)
    assert "it looks like the discriminator of the tiny config" in line and len(line) < 600
    g32 = _save_model(_model_shapes("generator", get_config("32k")), tmp_path / "f0G32k.pth")
    line = _error_line(["--demo", "--pretrained-g", str(g32)], tmp_path, capsys)
    assert "it looks like the generator of the 32k config" in line and "keys differ from the generator of the tiny" in line
    assert len(line) < 600


@pytest.fixture
def copied(experiment, tmp_path) -> Path:
    """A copy of the experiment (its filelist still names the original's files)."""
    return Path(shutil.copytree(experiment, tmp_path / "copy"))


def test_feature_file_of_random_bytes(copied, tmp_path, capsys):
    feat = next((copied / "3_feature768").glob("*.npy"))
    feat.write_bytes(np.random.default_rng(0).bytes(3000))
    line = _error_line(["--data", str(copied), "--steps", "1"], tmp_path, capsys)
    assert f"{feat} is not a feature array" in line


def test_truncated_wav(copied, tmp_path, capsys):
    wav = next((copied / "0_gt_wavs").glob("*.wav"))
    wav.write_bytes(wav.read_bytes()[:400])
    line = _error_line(["--data", str(copied), "--steps", "1"], tmp_path, capsys)
    assert f"{wav} looks truncated" in line


def test_filelist_of_a_copied_or_moved_experiment(tmp_path):
    original = tmp_path / "logs" / "voice"
    make_demo_experiment(original, get_config("tiny"), n_items=2, seconds=1.5, seed=3)
    copy = Path(shutil.copytree(original, tmp_path / "copy"))
    with pytest.warns(UserWarning, match="point outside .*; 8 of them are read from the same names inside"):
        rows = read_filelist(copy / "filelist.txt")
    assert all(r.wav.is_relative_to(copy.resolve()) for r in rows)
    shutil.rmtree(original)  # stale absolute paths: the moved experiment still reads
    with pytest.warns(UserWarning, match="point outside"):
        assert len(read_filelist(copy / "filelist.txt")) == 2


def test_experiment_without_config_json_infers_it(copied, tmp_path, capsys):
    (copied / "config.json").unlink()
    code = main(["train", "--data", str(copied), "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "1",
                 "--no-progress", "--no-tensorboard"])
    assert code == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "has no config.json (RVC writes it when its training starts): inferred the tiny config from 0_gt_wavs at 16000 Hz, 768-d features" in out


def test_resume_latest_without_out_says_where_it_looks(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("rvc-optim train: error: --resume latest looks in --out: pass --out FOLDER, or the run "
                           "folder itself: --resume FOLDER")
    assert not any(tmp_path.iterdir())
