"""The prepare pipeline: RVC's layout as the trainer reads it, bad input, resume, parallel workers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from rvc_optim.prepare.layout import MANIFEST
from rvc_optim.prepare.pipeline import PrepareError, prepare
from rvc_optim.train.config import get_config
from rvc_optim.train.data import RVCDataset, find_experiment, read_filelist

from .conftest import speech, write_recordings

TINY = get_config("tiny")


def _prepare(src, out, embedder, **kw):
    kw = {"f0": "harvest", "jobs": 1, "min_seconds": 5.0, "progress": False, **kw}
    return prepare(src, out, embedder=embedder, **kw)


@pytest.fixture(scope="module")
def prepared(recordings, embedder_path, tmp_path_factory):
    src, kinds = recordings
    out = tmp_path_factory.mktemp("logs") / "logs" / "voice"
    return _prepare(src, out, embedder_path, config=TINY), kinds


def test_layout_is_read_by_the_trainer(prepared):
    result, kinds = prepared
    exp = find_experiment(result.root)
    assert exp.layout == "rvc" and exp.config is not None
    rows = read_filelist(exp.filelist, layout="rvc")
    assert len(rows) == result.slices + 2  # RVC's two mute rows
    assert sum("mute" in r.wav.name for r in rows) == 2
    ds = RVCDataset(rows, TINY, cache_spectrograms=False)
    spec, wav, phone, pitch, pitchf, sid = ds[0]
    assert phone.shape[1] == 768 and pitch.shape == pitchf.shape and int(sid) == 0
    assert result.files_used == sum(k == "good" for k in kinds.values())


def test_slices_follow_rvcs_formats(prepared):
    result, _ = prepared
    root = result.root
    for wav in sorted((root / "0_gt_wavs").glob("*_*.wav")):
        audio, sr = sf.read(wav, dtype="float32")
        info = sf.info(wav)
        assert sr == TINY.sample_rate and info.subtype == "FLOAT" and audio.ndim == 1
        assert np.max(np.abs(audio)) <= 0.9 + 1e-6
        a16, sr16 = sf.read(root / "1_16k_wavs" / wav.name, dtype="float32")
        hz = np.load(root / "2b-f0nsf" / f"{wav.name}.npy")
        coarse = np.load(root / "2a_f0" / f"{wav.name}.npy")
        feat = np.load(root / "3_feature768" / f"{wav.stem}.npy")
        assert sr16 == 16000 and len(hz) == len(a16) // 160 + 1 == len(coarse)
        assert hz.dtype == np.float32 and coarse.min() >= 1 and coarse.max() <= 255
        assert feat.dtype == np.float32 and feat.shape == ((len(a16) - 400) // 320 + 1, 768)
    assert json.loads((root / "config.json").read_text())["data"]["sampling_rate"] == TINY.sample_rate


def test_bad_files_are_skipped_with_one_line_each(prepared, recordings):
    result, kinds = prepared
    recordings_dir = recordings[0]
    skipped = {Path(path).name: reason for path, reason in result.skipped}
    assert set(skipped) == {name for name, kind in kinds.items() if kind == "bad"}
    assert "silent" in skipped["silent.wav"] and "shorter than one training segment" in skipped["short.wav"]
    assert all("\n" not in reason and reason for reason in skipped.values())
    assert result.seconds > 10
    good = [sf.info(recordings_dir / n).duration for n, kind in kinds.items() if kind == "good"]
    assert result.input_seconds == pytest.approx(sum(good), rel=1e-3)


def test_applio_layout_with_speaker_id(recordings, embedder_path, tmp_path):
    src, _ = recordings
    out = tmp_path / "logs" / "voice"
    result = _prepare(src, out, embedder_path, config=TINY, layout="applio", speaker_id=3)
    exp = find_experiment(out)
    assert exp.layout == "applio" and (out / "model_info.json").is_file()
    rows = read_filelist(exp.filelist)
    assert {r.speaker_id for r in rows} == {3} and len(rows) == result.slices + 2
    assert all(r.wav.name.startswith("3_") or r.wav.name == "mute.wav" for r in rows)
    assert not Path(exp.filelist.read_text().split("|")[0]).is_absolute()
    RVCDataset(rows, TINY, cache_spectrograms=False)


def test_resume_skips_done_files_and_redoes_damaged_ones(recordings, embedder_path, tmp_path, capsys):
    src = tmp_path / "rec"
    shutil.copytree(recordings[0], src)
    out = tmp_path / "logs" / "voice"
    first = _prepare(src, out, embedder_path, config=TINY)
    feature = sorted((out / "3_feature768").glob("1_*.npy"))[0]  # of b_stereo.wav
    stamp = {p: p.stat().st_mtime_ns for p in (out / "3_feature768").glob("*.npy")}

    again = _prepare(src, out, embedder_path, config=TINY)
    assert again.reused == first.files_used + len(first.skipped) - len(again.skipped)
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())  # nothing rewritten

    np.save(feature, np.zeros((3, 768), np.float32))  # a damaged output ...
    (out / "2a_f0" / ".1_0.wav.npy.abc.tmp").write_bytes(b"half")  # ... and a half-written file
    (src / "a_mono.wav").unlink()  # and an input that went away
    third = _prepare(src, out, embedder_path, config=TINY)
    assert np.load(feature).shape[0] > 3
    assert not list(out.rglob("*.tmp"))
    assert not list(out.rglob("0_*.*"))  # a_mono.wav's slices went with it
    assert third.files_used == first.files_used - 1
    assert "no longer in" in capsys.readouterr().err
    assert len(read_filelist(out / "filelist.txt")) == third.slices + 2


def test_too_little_audio_is_refused(tmp_path, embedder_path):
    src = tmp_path / "rec"
    src.mkdir()
    sf.write(src / "one.wav", speech(2.0, 16000, seed=0, gaps=0), 16000)
    with pytest.raises(PrepareError, match="training needs at least 30 s"):
        _prepare(src, tmp_path / "out", embedder_path, config=TINY, min_seconds=30.0)
    assert not (tmp_path / "out" / "filelist.txt").exists()


@pytest.mark.parametrize("setup, message", [
    (lambda p: p.mkdir(), "no files in it"),
    (lambda p: None, "no such folder"),
])
def test_folder_errors(tmp_path, embedder_path, setup, message):
    setup(tmp_path / "rec")
    with pytest.raises(PrepareError, match=message):
        _prepare(tmp_path / "rec", tmp_path / "out", embedder_path)


def test_refuses_foreign_or_differently_prepared_folders(recordings, embedder_path, tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    with pytest.raises(PrepareError, match="not made by rvc-optim prepare"):
        _prepare(recordings[0], tmp_path / "foreign", embedder_path, config=TINY)
    out = tmp_path / "logs" / "voice"
    _prepare(recordings[0], out, embedder_path, config=TINY)
    with pytest.raises(PrepareError, match="other settings"):
        _prepare(recordings[0], out, embedder_path, config=TINY, speaker_id=1)


def test_parallel_workers_write_what_one_process_writes(recordings, embedder_path, tmp_path, prepared):
    out = tmp_path / "logs" / "voice"
    result = _prepare(recordings[0], out, embedder_path, config=TINY, jobs=2)
    one = prepared[0].root
    assert result.slices == prepared[0].slices
    manifest = json.loads((out / MANIFEST).read_text())["inputs"]
    reference = json.loads((one / MANIFEST).read_text())["inputs"]
    def same_content(outputs):  # a float WAV's PEAK chunk holds a timestamp: compare its size only
        return {rel: rec if rel.endswith(".npy") else rec[0] for rel, rec in outputs.items()}

    assert {k: same_content(v["outputs"]) for k, v in manifest.items()} == {
        k: same_content(v["outputs"]) for k, v in reference.items()}


def test_more_recordings_make_the_set_grow(tmp_path, embedder_path):
    src = tmp_path / "rec"
    write_recordings(src)
    out = tmp_path / "logs" / "voice"
    first = _prepare(src, out, embedder_path, config=TINY)
    sf.write(src / "z_new.wav", speech(5.0, 32000, seed=9), 32000)
    second = _prepare(src, out, embedder_path, config=TINY)
    assert second.files_used == first.files_used + 1 and second.reused >= first.files_used
