"""Fixtures for the prepare tests: synthetic recordings and, until the f0/features modules exist in
this checkout, stand-ins that follow their interface (``make_f0_estimator``, ``coarse_f0``,
``F0_METHODS``; ``load_embedder``, ``save_random_embedder``).

The stand-ins are installed only when ``rvc_optim.prepare.f0`` / ``.features`` cannot be imported;
they carry ``FAKE = True`` so tests that need the real ones can skip.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import rvc_optim.prepare
from rvc_optim.train.demo_data import coarse_pitch, demo_features, speech_with_pauses

ALL_F0 = ("pm", "harvest", "dio", "crepe", "crepe-tiny", "fcpe", "rmvpe")


class FakeF0:
    """f0 150 Hz where a 10 ms frame is louder than -40 dB, else 0; RVC's frame count."""

    def __init__(self, method: str) -> None:
        self.method = method

    def __call__(self, audio16k: np.ndarray) -> np.ndarray:
        n = len(audio16k) // 160 + 1
        padded = np.pad(np.asarray(audio16k, np.float64), (0, n * 160 - len(audio16k)))
        rms = np.sqrt(np.mean(padded.reshape(n, 160) ** 2, axis=1))
        return np.where(rms > 0.01, 150.0, 0.0).astype(np.float32)

    def batch(self, audios):
        return [self(a) for a in audios]


def _make_f0_estimator(method, *, weights=None, device="cpu"):
    if method not in ALL_F0:
        raise ValueError(f"unknown f0 method {method!r}")
    if method == "rmvpe" and (weights is None or not Path(weights).is_file()):
        raise ValueError("rmvpe needs its weights: pass --f0-weights PATH/rmvpe.pt")
    return FakeF0(method)


class FakeEmbedder:
    def __call__(self, audio16k):
        return demo_features(np.asarray(audio16k, np.float32))

    def batch(self, audios):
        return [self(a) for a in audios]


def _load_embedder(path, *, device="cpu"):
    if not Path(path).exists():
        raise ValueError(f"{path}: no embedder there")
    return FakeEmbedder()


def _save_random_embedder(path, *, fmt="transformers", hidden_size=768, layers=12, seed=0, small=True):
    path = Path(path)
    if fmt == "transformers":
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text("{}")
    else:
        path.write_bytes(b"fake")
    return path


def _install(name: str, **attrs) -> None:
    try:
        __import__(f"rvc_optim.prepare.{name}")
    except ImportError:
        module = types.ModuleType(f"rvc_optim.prepare.{name}")
        module.__dict__.update(attrs, FAKE=True)
        sys.modules[module.__name__] = module
        setattr(rvc_optim.prepare, name, module)


_install("f0", F0_METHODS=ALL_F0, make_f0_estimator=_make_f0_estimator, coarse_f0=coarse_pitch)
_install("features", load_embedder=_load_embedder, save_random_embedder=_save_random_embedder)


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


