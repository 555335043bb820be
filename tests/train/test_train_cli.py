"""``rvc-optim train``: every flag documented, clear errors instead of tracebacks, and a short
``--demo`` run end to end (data made, loss logged, checkpoints, TensorBoard, export that loads back,
``--resume latest``)."""

from __future__ import annotations

import argparse
import csv

import pytest
import torch

from rvc_optim.cli import main
from rvc_optim.train import cli as train_cli
from rvc_optim.train.data import collate, find_experiment, read_filelist, RVCDataset
from rvc_optim.train.config import get_config
from rvc_optim.train.export import load_exported



FLAGS = [
    "--data", "--demo", "--out", "--config", "--export-name", "--optimizer", "--optimizer-d", "--optim-arg",
    "--optim-arg-d", "--lr", "--betas", "--eps", "--lr-decay", "--steps", "--epochs", "--batch-size", "--seed",
    "--num-workers", "--log-every", "--eval-every", "--save-every", "--keep-last", "--resume",
    "--reset-optimizer", "--pretrained-g", "--pretrained-d", "--no-tensorboard", "--no-progress", "--precision",
    "--grad-clip", "--max-skipped", "--device", "--override",
]


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    documented = {opt for action in parser._actions for opt in action.option_strings if action.help}
    assert set(FLAGS) <= documented, f"flags without help: {sorted(set(FLAGS) - documented)}"
    for flag in FLAGS:
        assert flag in text, f"{flag} missing from --help"
    words = " ".join(text.split())
    assert "Without --out the run continues in that folder" in words and "with --resume FOLDER" in words


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--demo", "--optimizer", "adamww"], "did you mean AdamW"),
        (["--data", "/nonexistent/exp"], "no such folder"),
        ([], "pass --data"),
        (["--demo", "--optim-arg", "weight_decy=0.1"], "Did you mean weight_decay"),
        (["--demo", "--optim-arg", "warmup"], "expects key=value"),
        (["--demo", "--optim-arg", "num_iterations=5"], "sets num_iterations itself"),
        (["--demo", "--optimizer-d", "Lion", "--optim-arg-d", "eps=1e-8"], "Lion has no argument 'eps'"),
        (["--demo", "--resume", "latest", "--override"], "no G_<step>.pth / D_<step>.pth pair"),
    ],
)
def test_bad_input_is_a_clear_error(argv, message, tmp_path, capsys):
    code = main(["train", "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "demo_data").exists(), "data was made before the arguments were checked"


def test_bad_data_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "not_an_experiment").mkdir()
    assert main(["train", "--data", str(tmp_path / "not_an_experiment"), "--out", str(tmp_path / "run")]) == 2
    assert "neither an RVC experiment" in capsys.readouterr().err


def test_demo_end_to_end_then_resume(tmp_path, capsys):
    out = tmp_path / "voice"
    common = ["train", "--demo", "--out", str(out), "--batch-size", "2", "--log-every", "1", "--no-progress"]
    code = main([*common, "--steps", "2", "--eval-every", "2", "--save-every", "1", "--keep-last", "1"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "mel loss (x c_mel): first" in text and "model for inference" in text
    files = sorted(p.name for p in out.iterdir())
    assert files == ["D_2.pth", "G_2.pth", "config.json", "demo_data", "tensorboard", "train_log.csv", "voice.pth"]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    with open(out / "train_log.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2]

    # the exported small model loads like RVC's loader and converts the first demo item
    net_g = load_exported(out / "voice.pth")
    cfg = get_config("tiny")
    exp = find_experiment(out / "demo_data")
    item = RVCDataset(read_filelist(exp.filelist)[:1], cfg)[0]
    phone, lengths, pitch, pitchf, *_, sid = collate([item])
    audio = net_g.infer(phone, lengths, pitch, pitchf, sid)[0]
    assert audio.shape == (1, 1, int(lengths[0]) * cfg.hop_length) and torch.isfinite(audio).all()

    # another optimizer on resume: refused with the way out; then a plain resume continues the run
    assert main([*common, "--steps", "3", "--resume", "latest", "--optimizer", "Lion"]) == 2
    assert "--reset-optimizer" in capsys.readouterr().err
    assert main([*common, "--steps", "3", "--resume", "latest", "--no-tensorboard", "--keep-last", "1"]) == 0
    assert (out / "G_3.pth").exists() and not (out / "G_2.pth").exists()
    with open(out / "train_log.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3]


# ---------------------------------------------------------------------- --optim-arg parsing and settings
def test_optim_arg_values_are_python_literals():
    from rvc_optim.train.optim_setup import parse_optim_args

    got = parse_optim_args(["a=3", "b=1e-3", "c=True", "d=(0.9, 0.99)", "e=None", "f=hello", "g=false", "h='x=y'"])
    assert got == {"a": 3, "b": 1e-3, "c": True, "d": (0.9, 0.99), "e": None, "f": "hello", "g": False, "h": "x=y"}
    assert type(got["a"]) is int and type(got["b"]) is float


def test_lr_far_from_one_warns_for_multiplier_optimizers():
    import warnings

    from rvc_optim import list_optimizers, optimizer_info
    from rvc_optim.train.optim_setup import optimizer_settings

    multipliers = [n for n in list_optimizers(available_only=True) if optimizer_info(n).protocol.lr_role == "multiplier"]
    steps = [n for n in list_optimizers(available_only=True) if optimizer_info(n).protocol.lr_role == "step"]
    assert multipliers, "Adadelta (torch) at least takes lr as a multiplier"
    record = optimizer_info(multipliers[0])
    with pytest.warns(UserWarning, match=f"For {record.name}, lr multiplies"):
        optimizer_settings(record, lr=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert optimizer_settings(record, lr=0.5) == {"lr": 0.5}
        assert optimizer_settings(optimizer_info(steps[0]), lr=1e-4, betas=(0.9, 0.99), eps=1e-8) == {
            "lr": 1e-4, "betas": (0.9, 0.99), "eps": 1e-8}
        assert optimizer_settings(record) == {}  # nothing given: the record's recommendation applies


@pytest.mark.parametrize("layout", ["rvc", "applio"])
def test_data_flag_reads_rvc_and_applio_folders(layout, experiment, tmp_path, capsys):
    from rvc_optim.train.demo_data import make_demo_experiment

    data = experiment
    if layout == "applio":
        data = tmp_path / "applio" / "logs" / "voice"
        make_demo_experiment(data, get_config("tiny"), n_items=2, seconds=1.5, seed=1, layout="applio")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--steps", "1",
                 "--batch-size", "1", "--no-progress", "--no-tensorboard", "--optim-arg", "weight_decay=0.0",
                 "--export-name", "mine"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "mine.pth").exists() and (tmp_path / "run" / "G_1.pth").exists()
