"""Fixtures for the prepare tests: synthetic recordings (good ones in several formats and every bad
kind) and a small random-weights HuBERT saved as a transformers folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_optim.train.demo_data import speech_with_pauses

speech = speech_with_pauses


@pytest.fixture(scope="session")
def embedder_path(tmp_path_factory) -> Path:
    from rvc_optim.prepare.features import save_random_embedder

    return save_random_embedder(tmp_path_factory.mktemp("emb") / "hubert", fmt="transformers")


def write_recordings(folder: Path) -> dict[str, str]:
    """The test recordings: three good ones (mono 40 kHz wav, stereo 44.1 kHz wav, 48 kHz flac, and an
    ogg when libsndfile writes it) and the bad kinds; returns ``{file name: what it is}``."""
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / "a_mono.wav", speech(5.0, 40000, seed=1), 40000, subtype="PCM_16")
    left = speech(5.0, 44100, seed=2)
    sf.write(folder / "b_stereo.wav", np.stack([left, 0.5 * left], axis=1), 44100)
    sf.write(folder / "c_48k.flac", speech(4.0, 48000, seed=3), 48000)
    kinds = {"a_mono.wav": "good", "b_stereo.wav": "good", "c_48k.flac": "good"}
    try:
        sf.write(folder / "d.ogg", speech(4.0, 22050, seed=4), 22050, format="OGG", subtype="VORBIS")
        kinds["d.ogg"] = "good"
    except Exception:
        pass
    (folder / "notes.txt").write_text("not audio\n")
    sf.write(folder / "silent.wav", np.zeros(40000 * 2, np.float32), 40000)
    sf.write(folder / "short.wav", speech(0.2, 40000, seed=5, gaps=0), 40000)
    whole = (folder / "a_mono.wav").read_bytes()
    (folder / "corrupt.wav").write_bytes(whole[:30])
    (folder / "empty.wav").write_bytes(b"")
    kinds.update({"notes.txt": "bad", "silent.wav": "bad", "short.wav": "bad", "corrupt.wav": "bad", "empty.wav": "bad"})
    return kinds


@pytest.fixture(scope="session")
def recordings(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("rec") / "voice"
    return folder, write_recordings(folder)


