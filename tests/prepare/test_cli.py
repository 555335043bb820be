"""``rvc-optim prepare`` and ``rvc-optim index`` from the command line; ``train --no-index``."""

from __future__ import annotations

import re

import pytest

from rvc_optim.cli import main


def test_prepare_help_states_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("default 40k", "default rmvpe", "default rvc", "default 0", "default: the CPU count",
                   "default 8", "default 10 s", "cuda if available", "48 Hz", "-42 dB", "1500 ms", "400 ms",
                   "15 ms", "500 ms", "3.7 s", "0.3 s", "0.9*0.75", "2.5"):
        assert needle in text, needle


def test_prepare_then_index_from_the_command_line(recordings, embedder_path, tmp_path, capsys):
    out = tmp_path / "logs" / "voice"
    code = main(["prepare", str(recordings[0]), "--out", str(out), "--f0", "pm", "--embedder", str(embedder_path),
                 "--sample-rate", "32k", "--jobs", "1", "--no-progress", "--min-seconds", "5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "skipped" in captured.err and "corrupt.wav" in captured.err
    assert re.search(r"used \d+ files .* s of audio", captured.out)
    assert main(["index", str(out)]) == 0
    assert "added_IVF" in capsys.readouterr().out and list(out.glob("added_IVF*_Flat_nprobe_1_voice_v2.index"))


@pytest.mark.parametrize("extra, message", [
    (["--f0", "rmvpe"], "rmvpe"),  # no weights given
    (["--speaker-id", "-1"], "--speaker-id"),
])
def test_prepare_bad_arguments_are_one_line(recordings, embedder_path, tmp_path, capsys, extra, message):
    code = main(["prepare", str(recordings[0]), "--out", str(tmp_path / "o"), "--embedder", str(embedder_path),
                 "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("rvc-optim prepare: error:") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_index_of_a_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["index", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rvc-optim index: error:") and err.count("\n") == 1


def test_train_offers_no_index(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--no-index" in capsys.readouterr().out


@pytest.mark.parametrize("no_index", [False, True])
def test_train_builds_the_index_beside_the_model(tmp_path, capsys, no_index):
    from rvc_optim.train.config import get_config
    from rvc_optim.train.demo_data import make_demo_experiment

    data, run = tmp_path / "logs" / "voice", tmp_path / "run"
    make_demo_experiment(data, get_config("tiny"), n_items=2, seconds=1.5)
    argv = ["train", "--data", str(data), "--out", str(run), "--config", "tiny", "--steps", "1", "--batch-size", "1",
            "--log-every", "0", "--eval-every", "0", "--no-tensorboard", "--no-progress", "--device", "cpu"]
    assert main(argv + ["--no-index"] * no_index) == 0
    built = list(run.glob("added_IVF*_Flat_nprobe_1_run_v2.index"))
    assert len(built) == (0 if no_index else 1)
    assert ("index for retrieval" in capsys.readouterr().out) is not no_index
