"""RVC's audio steps: reading, resampling, high-pass, slicer, chunks, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from rvc_optim.prepare.audio import AudioError, chunks, highpass, load_audio, normalize, slice_at_silences

from .conftest import speech

SR = 40000


def test_slicer_cuts_at_silences_and_keeps_the_sound():
    audio = speech(6.0, SR, seed=0, gaps=2)  # three 2 s stretches, 0.8 s of silence between them
    pieces = slice_at_silences(audio, SR)
    assert len(pieces) == 3
    for p in pieces:
        assert 1.9 * SR <= len(p) <= 3.0 * SR  # the sound and at most 500 ms of silence each side
    assert sum(np.sum(p**2) for p in pieces) == pytest.approx(np.sum(audio**2), rel=1e-6)


def test_slicer_keeps_short_silences_inside_a_piece():
    rng = np.random.default_rng(0)
    loud = 0.3 * rng.standard_normal(2 * SR)
    audio = np.concatenate([loud, np.zeros(int(0.2 * SR)), loud])  # 200 ms < RVC's 400 ms minimum
    assert len(slice_at_silences(audio, SR)) == 1


def test_chunks_are_rvcs_3_7_s_with_0_3_s_overlap():
    piece = np.arange(int(9.0 * SR), dtype=np.float64)
    out = chunks(piece, SR)
    assert [len(c) for c in out[:-1]] == [int(3.7 * SR)] * (len(out) - 1)
    assert [c[0] for c in out] == [int(SR * 3.4 * i) for i in range(len(out))]
    assert out[-1][-1] == piece[-1] and len(out[-1]) <= 4.0 * SR
    assert len(chunks(piece[: int(4.0 * SR)], SR)) == 1  # up to 3.7 + 0.3 s stays whole


def test_normalize_is_rvcs_formula_and_drops_clipped_or_silent():
    x = np.array([0.1, -0.4, 0.2])
    assert np.allclose(normalize(x), x / 0.4 * 0.9 * 0.75 + 0.25 * x)
    assert normalize(np.array([0.0, 2.6])) is None
    assert normalize(np.zeros(10)) is None


def test_highpass_removes_rumble_keeps_voice():
    t = np.arange(SR * 2) / SR
    rumble, voice = np.sin(2 * np.pi * 15 * t), np.sin(2 * np.pi * 200 * t)
    assert np.std(highpass(rumble, SR)[SR:]) < 0.05
    assert np.std(highpass(voice, SR)[SR:]) == pytest.approx(np.std(voice), rel=0.02)


def test_load_audio_mixes_stereo_and_resamples(tmp_path):
    left = speech(1.0, 44100, seed=1, gaps=0)
    sf.write(tmp_path / "s.wav", np.stack([left, np.zeros_like(left)], axis=1), 44100, subtype="FLOAT")
    audio = load_audio(tmp_path / "s.wav", SR)
    assert abs(len(audio) - SR) <= 1
    assert np.max(np.abs(audio)) == pytest.approx(0.25, rel=0.05)  # the mean of the two channels


@pytest.mark.parametrize("content, reason", [(b"", "not a readable audio file"), (b"hello", "not a readable audio file")])
def test_load_audio_refuses_non_audio_in_one_line(tmp_path, content, reason):
    (tmp_path / "x.wav").write_bytes(content)
    with pytest.raises(AudioError, match=reason) as info:
        load_audio(tmp_path / "x.wav", SR)
    assert "\n" not in str(info.value) and str(tmp_path) not in str(info.value)
