"""Specification of the training data path: filelists, dataset, bucket sampler, collate, loader, demo data.

Everything runs on a few synthetic slices of the ``tiny`` config (16 kHz, hop 160, 24-frame
segments) made once per module by :func:`make_demo_experiment`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from rvc_optim.train import data as data_mod
from rvc_optim.train.config import ModelConfig, get_config
from rvc_optim.train.data import (
    APPLIO_BOUNDARIES,
    BucketBatchSampler,
    FilelistRow,
    RVCDataset,
    collate,
    find_experiment,
    make_dataloader,
    read_filelist,
    spec_cache_path,
)
from rvc_optim.train.demo_data import coarse_pitch, make_demo_experiment

CFG = get_config("tiny")
N_ITEMS = 6
SECONDS = (1.2, 1.6)  # 120..160 frames: above RVC's lowest boundary (100), above a 24-frame segment


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "logs" / "exp"
    make_demo_experiment(root, CFG, n_items=N_ITEMS, seconds=SECONDS, seed=0)
    return root


@pytest.fixture
def exp(demo_root: Path, tmp_path: Path) -> Path:
    """A private copy of the demo experiment with its filelist rewritten to point into the copy."""
    root = tmp_path / "logs" / "exp"
    shutil.copytree(demo_root, root, ignore=shutil.ignore_patterns("*.spec.pt"))
    text = (root / "filelist.txt").read_text().replace(str(demo_root.resolve()), str(root.resolve()))
    (root / "filelist.txt").write_text(text)
    return root


def _rows(root: Path) -> list[FilelistRow]:
    return read_filelist(root / "filelist.txt")


def _row_of(rows: list[FilelistRow], name: str) -> FilelistRow:
    return next(r for r in rows if r.wav.stem == name)


# --------------------------------------------------------------------------------------------------
# filelists and experiment folders
# --------------------------------------------------------------------------------------------------


def test_read_filelist_rvc_layout(exp: Path) -> None:
    rows = _rows(exp)
    assert len(rows) == N_ITEMS
    assert [r.line for r in rows] == list(range(1, N_ITEMS + 1))
    for r in rows:
        assert r.wav.is_absolute() and r.wav.parent.name == "0_gt_wavs"
        assert r.feature.parent.name == "3_feature768" and r.feature.name == r.wav.stem + ".npy"
        assert r.f0_coarse.name == r.wav.name + ".npy" and r.f0_coarse.parent.name == "2a_f0"
        assert r.f0_hz.parent.name == "2b-f0nsf"
        assert r.speaker_id == 0 and r.source == exp / "filelist.txt"
    assert find_experiment(exp) == (exp / "filelist.txt", "rvc", exp / "config.json")


def test_read_filelist_applio_relative_paths(tmp_path: Path) -> None:
    root = tmp_path / "applio" / "logs" / "voice"
    ex = make_demo_experiment(root, CFG, n_items=2, seconds=1.2, seed=3, layout="applio")
    assert ex.layout == "applio" and ex.config == root / "config.json"
    first = ex.filelist.read_text().splitlines()[0]
    assert first.startswith("logs/voice/sliced_audios/0_0_"), first  # relative, as Applio writes them
    rows = read_filelist(ex.filelist, layout="applio")
    assert all(r.wav.is_file() and r.wav.is_relative_to(root.resolve()) for r in rows)
    assert rows == read_filelist(ex.filelist)  # "auto" resolves relative paths the same way
    with pytest.raises(ValueError, match=r"filelist\.txt, row 1: .*relative"):
        read_filelist(ex.filelist, layout="rvc")
    # Applio's config.json names the rate data.sample_rate; both read back to the same config.
    assert json.loads(ex.config.read_text())["data"]["sample_rate"] == CFG.sample_rate
    assert ModelConfig.from_rvc_json(ex.config) == CFG


def _write_filelist(exp: Path, lines: list[str]) -> Path:
    path = exp / "filelist.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing_file", r"row 2: wav file .*nothere\.wav does not exist"),
        ("four_columns", r"row 2: expected 5 '\|'-separated columns"),
        ("no_f0_three_columns", r"row 2: 3 columns .* f0 models only"),
        ("speaker_not_int", r"row 2: speaker id must be an integer, got 'alice'"),
    ],
)
def test_bad_filelist_rows_name_file_and_row(exp: Path, case: str, pattern: str) -> None:
    good = (exp / "filelist.txt").read_text().splitlines()
    cols = good[1].split("|")
    bad = {
        "missing_file": "|".join([str(exp / "0_gt_wavs" / "nothere.wav"), *cols[1:]]),
        "four_columns": "|".join(cols[:4]),
        "no_f0_three_columns": "|".join([cols[0], cols[1], cols[4]]),
        "speaker_not_int": "|".join([*cols[:4], "alice"]),
    }[case]
    path = _write_filelist(exp, [good[0], bad, good[2]])
    with pytest.raises((ValueError, FileNotFoundError), match=pattern) as info:
        read_filelist(path)
    assert str(path) in str(info.value)


def test_empty_filelist_is_an_error(exp: Path) -> None:
    path = _write_filelist(exp, ["", "   "])
    with pytest.raises(ValueError, match=r"filelist\.txt has no rows \(row 1 missing\)") as info:
        read_filelist(path)
    assert str(path) in str(info.value)


def test_find_experiment_rejects_unknown_and_v1_folders(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    with pytest.raises(ValueError, match="neither an RVC experiment"):
        find_experiment(tmp_path)
    for d in ("0_gt_wavs", "3_feature256", "2a_f0", "2b-f0nsf"):
        (tmp_path / d).mkdir()
    with pytest.raises(ValueError, match="v1 experiment"):
        find_experiment(tmp_path)
    (tmp_path / "3_feature768").mkdir()
    with pytest.raises(FileNotFoundError, match="no filelist.txt"):
        find_experiment(tmp_path)


# --------------------------------------------------------------------------------------------------
# dataset: validation
# --------------------------------------------------------------------------------------------------


def _corrupt(exp: Path, case: str) -> str:
    """Break item ``0_1`` in one way; return the name of the file that is now bad."""
    wav = exp / "0_gt_wavs" / "0_1.wav"
    feat = exp / "3_feature768" / "0_1.npy"
    f0 = exp / "2b-f0nsf" / "0_1.wav.npy"
    if case == "sample_rate":
        audio, _ = sf.read(wav, dtype="float32")
        sf.write(wav, audio, 22050, subtype="FLOAT")
        return wav.name
    if case == "feature_dim":
        np.save(feat, np.load(feat)[:, :256])
        return feat.name
    if case == "too_short":
        audio, sr = sf.read(wav, dtype="float32")
        sf.write(wav, audio[: 20 * CFG.hop_length], sr, subtype="FLOAT")  # 20 < 24 segment frames
        return wav.name
    if case == "nan_feature":
        x = np.load(feat)
        x[5, 7] = np.nan
        np.save(feat, x)
        return feat.name
    if case == "inf_audio":
        audio, sr = sf.read(wav, dtype="float32")
        audio[100] = np.inf
        sf.write(wav, audio, sr, subtype="FLOAT")
        return wav.name
    if case == "pitch_range":
        coarse = exp / "2a_f0" / "0_1.wav.npy"
        x = np.load(coarse)
        x[2] = 300
        np.save(coarse, x)
        return coarse.name
    if case == "nan_f0":
        x = np.load(f0)
        x[3] = np.nan
        np.save(f0, x)
        return f0.name
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, when, pattern",
    [
        ("sample_rate", "init", r"sample rate 22050 Hz but the config expects 16000 Hz"),
        ("feature_dim", "init", r"shape \(\d+, 256\), expected \[frames, 768\]"),
        ("too_short", "init", r"20 aligned frames, shorter than one training segment \(24 frames"),
        ("nan_feature", "item", r"contains NaN or inf"),
        ("inf_audio", "item", r"contains NaN or inf samples"),
        ("nan_f0", "item", r"\(f0 in Hz\) contains NaN or inf"),
        ("pitch_range", "item", r"coarse pitch in \[\d+, 300\]; RVC's pitch embedding takes 0\.\.255"),
    ],
)
def test_bad_items_name_file_and_row(exp: Path, case: str, when: str, pattern: str) -> None:
    """Header problems fail when the data set is built; content problems when the item is loaded."""
    bad_name = _corrupt(exp, case)
    rows = _rows(exp)
    row = _row_of(rows, "0_1")
    if when == "init":
        with pytest.raises(ValueError, match=pattern) as info:
            RVCDataset(rows, CFG, cache_spectrograms=False)
    else:
        ds = RVCDataset(rows, CFG, cache_spectrograms=False)
        with pytest.raises(ValueError, match=pattern) as info:
            ds[rows.index(row)]
    message = str(info.value)
    assert f"filelist.txt, row {row.line}" in message and bad_name in message, message


# --------------------------------------------------------------------------------------------------
# dataset: items, alignment, spectrogram cache
# --------------------------------------------------------------------------------------------------


def test_item_shapes_and_rvc_alignment(exp: Path) -> None:
    rows = _rows(exp)
    ds = RVCDataset(rows, CFG, cache_spectrograms=False)
    hop = CFG.hop_length
    for i, row in enumerate(rows):
        spec, wav, phone, pitch, pitchf, sid = ds[i]
        n_samples = sf.info(row.wav).frames
        t50 = np.load(row.feature).shape[0]
        n = min(2 * t50, n_samples // hop)
        assert spec.shape == (CFG.n_fft // 2 + 1, n) and ds.lengths[i] == n
        assert wav.shape == (1, n * hop) and phone.shape == (n, 768)
        assert pitch.shape == pitchf.shape == (n,)
        assert pitch.dtype == torch.long and pitchf.dtype == torch.float32 and sid.tolist() == [0]
        # features are repeated x2 along time (50 -> 100 frames/s)
        feat = torch.from_numpy(np.load(row.feature))
        torch.testing.assert_close(phone[0::2], feat[: (n + 1) // 2])
        torch.testing.assert_close(phone[1::2], feat[: n // 2])


def test_alignment_when_spectrogram_is_shorter_and_900_frame_cap(exp: Path) -> None:
    rows = _rows(exp)
    row = rows[0]
    # Features longer than the audio: spec frames decide L.
    feat = np.load(row.feature)
    np.save(row.feature, np.concatenate([feat, feat[:40]]))
    n_spec = sf.info(row.wav).frames // CFG.hop_length
    pitch_len = n_spec + 80
    np.save(row.f0_coarse, np.ones(pitch_len, dtype=np.int64))
    np.save(row.f0_hz, np.zeros(pitch_len, dtype=np.float32))
    spec, wav, phone, pitch, pitchf, _ = RVCDataset([row], CFG, cache_spectrograms=False)[0]
    assert spec.shape[1] == phone.shape[0] == pitch.shape[0] == pitchf.shape[0] == n_spec
    assert wav.shape[1] == n_spec * CFG.hop_length
    # A 9.5 s item is truncated to RVC's 900 frames.
    sf.write(row.wav, np.zeros(int(9.5 * CFG.sample_rate), np.float32), CFG.sample_rate, subtype="FLOAT")
    np.save(row.feature, np.zeros((475, 768), np.float32))
    np.save(row.f0_coarse, np.ones(951, dtype=np.int64))
    np.save(row.f0_hz, np.zeros(951, dtype=np.float32))
    ds = RVCDataset([row], CFG, cache_spectrograms=False)
    spec, wav, phone, *_ = ds[0]
    assert ds.lengths == [900] and spec.shape[1] == phone.shape[0] == 900 and wav.shape[1] == 900 * 160


def test_spectrogram_cache_is_written_atomically_and_reused(
    exp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _rows(exp)
    ds = RVCDataset(rows[:1], CFG)
    cache = spec_cache_path(rows[0].wav)
    assert cache.name == rows[0].wav.stem + ".spec.pt" and not cache.exists()

    replaced: list[tuple[str, str]] = []
    real_replace = os.replace
    monkeypatch.setattr(data_mod.os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b)))
    spec = ds[0][0]
    assert len(replaced) == 1
    tmp, dest = map(Path, replaced[0])
    assert dest == cache and tmp.parent == cache.parent and tmp != cache
    assert sorted(p.name for p in cache.parent.iterdir() if ".spec.pt" in p.name) == [cache.name]
    full = torch.load(cache, weights_only=True)  # the whole file's spectrogram; the item is aligned
    assert full.shape == (CFG.n_fft // 2 + 1, sf.info(rows[0].wav).frames // CFG.hop_length)
    torch.testing.assert_close(full[:, : spec.shape[1]], spec)

    # Reused: the second read must not compute a spectrogram at all.
    def no_stft(*args, **kwargs):
        raise AssertionError("spectrogram recomputed although the cache was valid")

    with monkeypatch.context() as m:
        m.setattr(data_mod, "spectrogram_torch", no_stft)
        torch.testing.assert_close(ds[0][0], spec)

    # A truncated cache and one of the wrong shape are both rebuilt, with a warning.
    for bad in (b"not a torch file", None):
        if bad is None:
            torch.save(torch.zeros(10, 10), cache)
        else:
            cache.write_bytes(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="rvc_optim.train.data"):
            torch.testing.assert_close(ds[0][0], spec)
        assert "recomputing" in caplog.text and str(cache) in caplog.text
        torch.testing.assert_close(torch.load(cache, weights_only=True), full)


def test_failed_cache_write_leaves_no_partial_file(exp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows(exp)
    ds = RVCDataset(rows[:1], CFG)

    def broken_save(obj, path, *args, **kwargs):
        path.write(b"half") if hasattr(path, "write") else Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(data_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ds[0]
    assert not [p for p in rows[0].wav.parent.iterdir() if ".spec.pt" in p.name]


# --------------------------------------------------------------------------------------------------
# bucket sampler
# --------------------------------------------------------------------------------------------------

LENGTHS = [120, 150, 180, 210, 250, 260, 290, 330, 370, 410, 460, 99, 950, 140, 175, 230, 240, 520, 530, 880]


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


def test_sampler_is_deterministic_in_seed_and_epoch() -> None:
    def run(seed: int, epoch: int) -> list[list[int]]:
        torch.manual_seed(seed * 7 + epoch)  # global RNG must not matter
        s = BucketBatchSampler(LENGTHS, batch_size=2, seed=seed, epoch=epoch)
        return list(s)

    assert run(1, 0) == run(1, 0)
    assert run(1, 0) != run(1, 1)
    assert run(1, 0) != run(2, 0)
    s = BucketBatchSampler(LENGTHS, batch_size=2, seed=1)
    s.set_epoch(1)
    assert list(s) == run(1, 1)


def test_sampler_buckets_drop_and_pad() -> None:
    s = BucketBatchSampler(LENGTHS, batch_size=2, num_replicas=3)
    assert sorted(s.dropped) == [11, 12]  # 99 <= 100 and 950 > 900 frames
    for bucket, padded, (lo, hi) in zip(s.buckets, s.num_samples_per_bucket, s.boundaries):
        assert padded % 6 == 0 and len(bucket) <= padded < len(bucket) + 6
        assert all(lo < LENGTHS[i] <= hi for i in bucket)
    assert len(s) == s.batches_per_epoch == sum(s.num_samples_per_bucket) // 6
    batches = list(s)
    assert len(batches) == s.batches_per_epoch and all(len(b) == 2 for b in batches)
    bucket_of = {i: k for k, b in enumerate(s.buckets) for i in b}
    assert all(len({bucket_of[i] for i in b}) == 1 for b in batches)  # a batch never mixes buckets
    # Applio's boundaries keep the 99-frame item.
    assert 11 not in BucketBatchSampler(LENGTHS, 2, boundaries=APPLIO_BOUNDARIES).dropped


def test_sampler_ranks_partition_the_padded_epoch() -> None:
    world, batch = 3, 2
    per_rank = [
        list(BucketBatchSampler(LENGTHS, batch, num_replicas=world, rank=r, seed=5, epoch=2)) for r in range(world)
    ]
    assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
    ref = BucketBatchSampler(LENGTHS, batch, num_replicas=world, seed=5, epoch=2)
    kept = sorted(i for b in ref.buckets for i in b)
    union = Counter(i for r in per_rank for i in _flat(r))
    assert sorted(union) == kept  # covering
    assert sum(union.values()) == sum(ref.num_samples_per_bucket)  # padding only by repetition
    # Step k draws from the same bucket on every rank.
    bucket_of = {i: k for k, b in enumerate(ref.buckets) for i in b}
    for step in zip(*per_rank):
        assert len({bucket_of[b[0]] for b in step}) == 1
    # Without padding (every bucket a multiple of world*batch) the ranks are disjoint.
    lengths = [150] * 12 + [250] * 6
    parts = [set(_flat(list(BucketBatchSampler(lengths, batch, num_replicas=world, rank=r)))) for r in range(3)]
    assert set().union(*parts) == set(range(18)) and sum(map(len, parts)) == 18


def test_sampler_resumes_mid_epoch_exactly() -> None:
    full = list(BucketBatchSampler(LENGTHS, 2, seed=3, epoch=4))
    s = BucketBatchSampler(LENGTHS, 2, seed=3, epoch=4)
    it = iter(s)
    seen = [next(it) for _ in range(3)]
    state = s.state_dict()
    assert state["position"] == 3 and seen == full[:3]

    resumed = BucketBatchSampler(LENGTHS, 2, seed=0, epoch=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # a loop calling set_epoch at the top of the resumed epoch keeps the position
    assert len(resumed) == len(full) - 3
    assert list(resumed) == full[3:]
    assert list(BucketBatchSampler(LENGTHS, 2, seed=3, epoch=4, start_batch=3)) == full[3:]
    resumed.set_epoch(5)  # the next epoch starts from its first batch
    assert list(resumed) == list(BucketBatchSampler(LENGTHS, 2, seed=3, epoch=5))

    with pytest.raises(ValueError, match="batches per epoch"):
        BucketBatchSampler(LENGTHS, 4, seed=3).load_state_dict(state)
    with pytest.raises(ValueError, match="start_batch"):
        BucketBatchSampler(LENGTHS, 2, start_batch=len(full) + 1)


# --------------------------------------------------------------------------------------------------
# collate and dataloader
# --------------------------------------------------------------------------------------------------


def test_collate_sorts_by_spec_length_and_zero_pads(exp: Path) -> None:
    ds = RVCDataset(_rows(exp), CFG, cache_spectrograms=False)
    items = [ds[i] for i in range(3)]
    phone, phone_len, pitch, pitchf, spec, spec_len, wave, wave_len, sid = collate(items)
    lens = [it[0].shape[1] for it in items]
    order = sorted(range(3), key=lambda k: -lens[k])
    assert spec_len.tolist() == phone_len.tolist() == sorted(lens, reverse=True)
    assert wave_len.tolist() == [lens[k] * CFG.hop_length for k in order]
    t = max(lens)
    assert phone.shape == (3, t, 768) and pitch.shape == pitchf.shape == (3, t)
    assert spec.shape == (3, CFG.n_fft // 2 + 1, t) and wave.shape == (3, 1, t * CFG.hop_length)
    assert pitch.dtype == sid.dtype == torch.long and sid.shape == (3,)
    for i, k in enumerate(order):
        n = lens[k]
        torch.testing.assert_close(spec[i, :, :n], items[k][0])
        torch.testing.assert_close(phone[i, :n], items[k][2])
        assert torch.equal(pitch[i, :n], items[k][3])
        assert spec[i, :, n:].abs().sum() == 0 and phone[i, n:].abs().sum() == 0
        assert pitch[i, n:].abs().sum() == 0 and wave[i, :, n * CFG.hop_length :].abs().sum() == 0


def _all_batches(loader) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in b) for b in loader]


def _same(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return len(a) == len(b) and all(all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


def test_dataloader_with_workers_is_reproducible_and_resumable(exp: Path) -> None:
    rows = _rows(exp)
    args = dict(rows=rows, cfg=CFG, batch_size=2, seed=11, epoch=1)
    serial = _all_batches(make_dataloader(**args, num_workers=0))
    run1 = _all_batches(make_dataloader(**args, num_workers=2))
    run2 = _all_batches(make_dataloader(**args, num_workers=2))
    assert len(run1) == N_ITEMS // 2
    assert _same(run1, run2) and _same(run1, serial)
    resumed = _all_batches(make_dataloader(**args, num_workers=0, start_batch=1))
    assert _same(resumed, serial[1:])
    # Two ranks together see every item once (6 items, batch 1 per rank: no padding needed).
    ranks = [make_dataloader(rows, CFG, 1, 11, 1, 0, rank=r, world_size=2) for r in range(2)]
    seen = [tuple(b[0][0, :3, 0].tolist()) for loader in ranks for b in loader]
    assert len(seen) == N_ITEMS == len(set(seen))


# --------------------------------------------------------------------------------------------------
# demo data
# --------------------------------------------------------------------------------------------------


def test_coarse_pitch_matches_rvc_formula() -> None:
    f0 = np.array([0.0, 30.0, 50.0, 100.0, 220.0, 440.0, 1100.0, 3000.0])
    mel = 1127 * np.log(1 + f0 / 700)
    lo, hi = 1127 * np.log(1 + 50 / 700), 1127 * np.log(1 + 1100 / 700)
    expected = np.where(mel > 0, (mel - lo) * 254 / (hi - lo) + 1, mel)
    expected = np.rint(np.clip(expected, 1, 255)).astype(np.int64)
    assert coarse_pitch(f0).tolist() == expected.tolist()
    assert coarse_pitch(f0)[[0, 1, 2, 6, 7]].tolist() == [1, 1, 1, 255, 255]


def test_demo_data_is_deterministic_and_round_trips(demo_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "logs" / "exp"
    make_demo_experiment(again, CFG, n_items=N_ITEMS, seconds=SECONDS, seed=0)
    other = tmp_path / "logs" / "other"
    make_demo_experiment(other, CFG, n_items=N_ITEMS, seconds=SECONDS, seed=1)
    # Wavs are compared by samples: libsndfile's PEAK chunk in float WAVs holds a timestamp.
    for sub in ("0_gt_wavs", "1_16k_wavs"):
        for f in sorted((again / sub).iterdir()):
            a, sr_a = sf.read(f, dtype="float32")
            b, sr_b = sf.read(demo_root / sub / f.name, dtype="float32")
            assert sr_a == sr_b and np.array_equal(a, b), f"{sub}/{f.name} differs"
    for sub in ("2a_f0", "2b-f0nsf", "3_feature768"):
        for f in sorted((again / sub).iterdir()):
            assert f.read_bytes() == (demo_root / sub / f.name).read_bytes(), f"{sub}/{f.name} differs"
    a = sf.read(again / "0_gt_wavs" / "0_0.wav")[0]
    b = sf.read(other / "0_gt_wavs" / "0_0.wav")[0]
    assert a.shape != b.shape or not np.allclose(a, b)
    assert (again / "filelist.txt").read_text() == (demo_root / "filelist.txt").read_text().replace(
        str(demo_root.resolve()), str(again.resolve())
    )
    assert ModelConfig.from_rvc_json(again / "config.json") == CFG

    rows = _rows(again)
    ds = RVCDataset(rows, CFG, cache_spectrograms=False)
    for i, row in enumerate(rows):
        spec, wav, phone, pitch, pitchf, _ = ds[i]
        assert torch.isfinite(spec).all() and 0.3 < wav.abs().max() <= 0.5 + 1e-6
        assert pitch.min() >= 1 and pitch.max() <= 255
        assert torch.equal(pitch, torch.from_numpy(coarse_pitch(pitchf.numpy())))
        voiced = pitchf > 0
        assert 0.3 < voiced.float().mean() < 1.0  # both voiced and unvoiced stretches
        assert pitchf[voiced].min() > 50 and pitchf[voiced].max() < 500
        sr16 = sf.info(again / "1_16k_wavs" / row.wav.name)
        assert sr16.samplerate == 16000
