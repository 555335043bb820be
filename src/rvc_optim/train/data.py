"""Training data for RVC v2: filelists, the dataset, the length-bucketed sampler, collation.

This is the data side of RVC's ``infer/lib/train/data_utils.py`` (``TextAudioLoaderMultiNSFsid``,
``TextAudioCollateMultiNSFsid``, ``DistributedBucketSampler``) and of Applio's
``rvc/train/data_utils.py``, which is the same code. What a batch holds, its order and its padding are
RVC's, so a model written against RVC's training loop sees the same tensors. Where we differ, we say so
in the docstring of the piece concerned; in short:

* Every bad input fails loudly, naming the filelist, the row and the file: a missing file, a wrong
  sample rate, NaN/inf in audio, features or f0, a feature width other than 768, pitch outside
  0..255, f0 files shorter than the features, and items shorter than one training segment (RVC lets
  ``rand_slice_segments`` produce a negative start index for those). Applio silently maps a
  non-integer speaker id to 0; we reject it.
* Bucketing uses each item's real aligned frame count, not RVC's ``file size // (3 * hop)`` estimate.
* The sampler's shuffle is seeded from ``(seed, epoch)`` (RVC: from ``epoch`` alone), and its position
  within an epoch can be saved and restored, so a resumed run sees exactly the batches it would have
  seen.
* The spectrogram cache ``<name>.spec.pt`` is written atomically and checked for shape when read.

Only f0 models are trained (RVC's ``..._nono`` variant and its 3-column filelist are rejected).
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, NamedTuple, Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from rvc_optim.train.checkpoint import atomic_save
from rvc_optim.train.config import ModelConfig
from rvc_optim.train.mel import spectrogram_torch

__all__ = [
    "MAX_FRAMES",
    "RVC_BOUNDARIES",
    "APPLIO_BOUNDARIES",
    "FilelistRow",
    "Experiment",
    "read_filelist",
    "find_experiment",
    "RVCDataset",
    "BucketBatchSampler",
    "collate",
    "make_dataloader",
    "mix_seed",
]

logger = logging.getLogger(__name__)

#: RVC truncates features and f0 to this many frames (9 s at 100 frames/s) per item.
MAX_FRAMES = 900
#: RVC's bucket boundaries (``infer/modules/train/train.py``), in frames.
RVC_BOUNDARIES: tuple[int, ...] = (100, 200, 300, 400, 500, 600, 700, 800, 900)
#: Applio's bucket boundaries: RVC's with an extra bucket for 50..100 frames.
APPLIO_BOUNDARIES: tuple[int, ...] = (50, 100, 200, 300, 400, 500, 600, 700, 800, 900)

Layout = Literal["rvc", "applio"]

_RVC_DIRS = ("0_gt_wavs", "3_feature768", "2a_f0", "2b-f0nsf")
_APPLIO_DIRS = ("sliced_audios", "extracted", "f0", "f0_voiced")


def mix_seed(*parts: int) -> int:
    """Mix non-negative integers (e.g. ``(seed, epoch)``) into one 63-bit seed.

    ``numpy.random.SeedSequence`` hashes the tuple, so ``(1, 0)`` and ``(0, 1)`` give unrelated
    streams (``seed + epoch`` would not).
    """
    for p in parts:
        if int(p) < 0:
            raise ValueError(f"seed parts must be non-negative integers, got {parts}")
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0]) >> 1


# --------------------------------------------------------------------------------------------------
# Filelists and experiment folders
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilelistRow:
    """One training item: the four files of a slice and its speaker id.

    ``source`` and ``line`` say where the row came from (filelist path, 1-based line number) so that
    every later error can point at it; rows built by hand may leave them unset.
    """

    wav: Path
    feature: Path
    f0_coarse: Path
    f0_hz: Path
    speaker_id: int
    source: Path | None = None
    line: int | None = None

    def where(self) -> str:
        """``"<filelist>, row <n>"`` (or ``"row <n>"``) for error messages."""
        if self.source is None and self.line is None:
            return "filelist row (unknown)"
        if self.source is None:
            return f"row {self.line}"
        return f"{self.source}, row {self.line}"


class Experiment(NamedTuple):
    """What :func:`find_experiment` found in an experiment folder."""

    filelist: Path
    layout: Layout
    config: Path | None


def find_experiment(path: str | os.PathLike[str]) -> Experiment:
    """Recognise an RVC or Applio experiment folder (``logs/<name>``).

    RVC's folder holds ``0_gt_wavs``, ``3_feature768``, ``2a_f0``, ``2b-f0nsf``; Applio's holds
    ``sliced_audios``, ``extracted``, ``f0``, ``f0_voiced``. Both hold ``filelist.txt`` and, normally,
    ``config.json``. A v1 RVC folder (``3_feature256``) is rejected: we train v2 (768-d) models only.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"experiment folder {root} does not exist or is not a folder")
    has_rvc = all((root / d).is_dir() for d in _RVC_DIRS)
    has_applio = all((root / d).is_dir() for d in _APPLIO_DIRS)
    if has_rvc and has_applio:
        raise ValueError(
            f"{root} holds both RVC ({', '.join(_RVC_DIRS)}) and Applio ({', '.join(_APPLIO_DIRS)}) "
            "folders; cannot tell which filelist it is"
        )
    if not (has_rvc or has_applio):
        if (root / "3_feature256").is_dir():
            raise ValueError(
                f"{root} is an RVC v1 experiment (3_feature256, 256-d features); only v2 (768-d) is "
                "supported: re-extract features with the v2 setting"
            )
        present = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ValueError(
            f"{root} is neither an RVC experiment (needs folders {', '.join(_RVC_DIRS)}) nor an "
            f"Applio one (needs {', '.join(_APPLIO_DIRS)}); it has: {present or 'no folders'}"
        )
    filelist = root / "filelist.txt"
    if not filelist.is_file():
        raise FileNotFoundError(
            f"{root} has no filelist.txt: run the training-preparation step that writes it"
        )
    config = root / "config.json"
    return Experiment(filelist, "rvc" if has_rvc else "applio", config if config.is_file() else None)


def read_filelist(
    path: str | os.PathLike[str],
    layout: Literal["auto", "rvc", "applio"] = "auto",
    root: str | os.PathLike[str] | None = None,
) -> list[FilelistRow]:
    """Parse a ``filelist.txt`` into :class:`FilelistRow` records, checking every file exists.

    Rows are ``wav|feature.npy|f0coarse.wav.npy|f0nsf.wav.npy|speaker_id``.

    * ``"rvc"``: RVC writes absolute paths (``<webui>/logs/<exp>/0_gt_wavs/...``); a relative path is
      an error, since RVC itself would resolve it against whatever the working directory happens to be.
    * ``"applio"``: Applio writes paths relative to its own working directory, the Applio install that
      holds ``logs/`` (``os.path.relpath`` in ``preparing_files.generate_filelist``), e.g.
      ``logs/<model>/sliced_audios/0_0_0.wav``. We resolve them against ``root``, by default the
      experiment folder's grandparent (the folder that contains ``logs/``; the filelist sits in the
      experiment folder). Absolute paths are taken as written.
    * ``"auto"``: absolute paths as written, relative paths as Applio resolves them.

    RVC's no-f0 form ``wav|feature.npy|speaker_id`` is rejected with a message saying so. Blank lines
    are skipped (Applio ends the file without a newline, RVC with one). Errors name the filelist and
    the 1-based row.
    """
    if layout not in ("auto", "rvc", "applio"):
        raise ValueError(f"layout must be 'auto', 'rvc' or 'applio', got {layout!r}")
    filelist = Path(path)
    if not filelist.is_file():
        raise FileNotFoundError(f"filelist {filelist} does not exist")
    base = Path(root) if root is not None else filelist.resolve().parent.parent.parent

    rows: list[FilelistRow] = []
    folder = filelist.resolve().parent
    outside: list[tuple[Path, bool]] = []  # rows pointing outside the folder: (stale) paths of the original experiment
    with open(filelist, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{filelist}, row {n}"
        cols = line.split("|")
        if len(cols) == 3:
            raise ValueError(
                f"{where}: 3 columns (wav|feature|speaker_id) is RVC's filelist for models without "
                "pitch guidance; rvc-optim trains f0 models only: re-run feature extraction with f0 "
                "so rows read wav|feature|f0coarse|f0nsf|speaker_id"
            )
        if len(cols) != 5:
            raise ValueError(
                f"{where}: expected 5 '|'-separated columns "
                f"(wav|feature|f0coarse|f0nsf|speaker_id), got {len(cols)}: {line!r}"
            )
        sid_text = cols[4].strip()
        try:
            sid = int(sid_text)
        except ValueError:
            raise ValueError(
                f"{where}: speaker id must be an integer, got {sid_text!r}"
            ) from None
        if sid < 0:
            raise ValueError(f"{where}: speaker id must be >= 0, got {sid}")
        paths: list[Path] = []
        for label, text in zip(("wav", "feature", "f0 coarse", "f0 Hz"), cols[:4]):
            p = Path(text.strip())
            if not p.is_absolute():
                if layout == "rvc":
                    raise ValueError(
                        f"{where}: {label} path {str(p)!r} is relative, but RVC filelists hold "
                        "absolute paths (pass layout='applio' for Applio's relative paths)"
                    )
                p = base / p
            p = _within(p, folder, outside)
            if not p.is_file():
                raise FileNotFoundError(f"{where}: {label} file {p} does not exist")
            paths.append(p)
        rows.append(FilelistRow(*paths, speaker_id=sid, source=filelist, line=n))
    if not rows:
        raise ValueError(f"filelist {filelist} has no rows (row 1 missing): nothing to train on")
    if outside:
        moved = sum(found for _, found in outside)
        warnings.warn(
            f"{filelist}: {len(outside)} paths point outside {folder} (a copied or moved experiment?), e.g. "
            f"{outside[0][0]}; {moved} of them are read from the same names inside {folder}, "
            f"{len(outside) - moved} where they point",
            UserWarning, stacklevel=2,
        )
    return rows


def _within(path: Path, folder: Path, outside: list[tuple[Path, bool]]) -> Path:
    """``path`` if it lies in the experiment ``folder``; else the file of the same name and subfolder
    in ``folder`` where there is one (RVC users move experiments; RVC's rows are absolute), else
    ``path``. Rows outside the folder are recorded in ``outside`` (for one warning)."""
    if path.is_absolute() and not path.resolve().is_relative_to(folder):
        local = folder / path.parent.name / path.name
        outside.append((path, local.is_file()))
        if local.is_file():
            return local
    return path


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


def spec_cache_path(wav: Path) -> Path:
    """Where the linear spectrogram of ``wav`` is cached: ``<name>.spec.pt`` beside it.

    RVC computes it as ``str(path).replace(".wav", ".spec.pt")``, which also rewrites any ``.wav``
    in folder names; we change the file suffix only (same result for RVC's own layouts).
    """
    return wav.with_suffix(".spec.pt")


def _atomic_torch_save(obj: torch.Tensor, dest: Path) -> None:
    """Write ``obj`` to ``dest`` via a temp file in the same folder and ``os.replace`` (with the
    user's normal file mode, not the temp file's 0600).

    Readers (other DataLoader workers, other ranks) see either no file or a complete one; RVC writes
    in place, so a run killed mid-write leaves a truncated cache behind.
    """
    atomic_save(obj, dest, durable=False)


def _wav_sizes(path: Path) -> tuple[int, int]:
    """(size the RIFF header announces, actual size) of a WAV file; (0, size) for other formats."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) == 12 and head[:4] == b"RIFF" and head[8:] == b"WAVE":
        return int.from_bytes(head[4:8], "little") + 8, size
    return 0, size


class RVCDataset(Dataset):
    """RVC's ``TextAudioLoaderMultiNSFsid``: one training item per filelist row.

    ``__getitem__`` returns ``(spec [F, L], wav [1, L*hop], phone [L, 768], pitch [L] long,
    pitchf [L] float, sid [1] long)`` exactly as RVC does:

    * features ``[T50, 768]`` are repeated twice along time (50 -> 100 frames/s); features, coarse
      pitch and f0 are truncated to ``min(2*T50, 900)`` frames;
    * the wav is read as float32 (soundfile, like Applio: an int16 file is scaled to [-1, 1]; RVC's
      scipy reader would leave it at +-32768); its rate must equal ``cfg.sample_rate``;
    * the linear spectrogram (``spectrogram_torch``, ``center=False``) is cached as ``<name>.spec.pt``
      beside the wav when ``cache_spectrograms``; a cache that fails to load or has the wrong shape
      is recomputed (with a warning) and rewritten, atomically. With ``cache_spectrograms=False``
      caches are neither read nor written (for read-only data folders);
    * lengths are aligned: ``L = min(phone frames, spec frames)``, and spec, wav, phone, pitch and
      pitchf are cut to ``L`` frames (``L*hop`` samples).

    Beyond RVC, cheap checks (sample rate, channel count, feature shape, f0 lengths, minimum length)
    run on every row at construction, from file headers, so a bad data set fails before training
    starts; content checks (NaN/inf, pitch range) run when an item is loaded. Items shorter than
    ``cfg.segment_frames`` are an error: RVC's ``rand_slice_segments`` would slice them from a
    negative start.

    ``lengths[i]`` is item i's aligned frame count ``L``, for :class:`BucketBatchSampler`.
    """

    def __init__(
        self,
        filelist_rows: Sequence[FilelistRow],
        cfg: ModelConfig,
        cache_spectrograms: bool = True,
    ) -> None:
        if len(filelist_rows) == 0:
            raise ValueError("RVCDataset needs at least one filelist row")
        self.rows: list[FilelistRow] = list(filelist_rows)
        self.cfg = cfg
        self.cache_spectrograms = cache_spectrograms
        self.n_freq = cfg.n_fft // 2 + 1
        self.lengths: list[int] = [self._inspect(row) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    # -- construction-time checks (headers only) ----------------------------------------------------

    def _aligned_length(self, n_samples: int, t50: int) -> int:
        return min(min(2 * t50, MAX_FRAMES), n_samples // self.cfg.hop_length)

    def _inspect(self, row: FilelistRow) -> int:
        """Header-only checks of one row; returns its aligned frame count."""
        cfg = self.cfg
        where = row.where()
        declared, size = _wav_sizes(row.wav)
        if declared > size:
            raise ValueError(
                f"{where}: {row.wav} looks truncated: {size:,} bytes where its header announces {declared:,}; "
                "re-run RVC's preprocessing for it or remove the row"
            )
        try:
            info = sf.info(str(row.wav))
        except RuntimeError as e:  # soundfile's LibsndfileError is a RuntimeError
            raise ValueError(f"{where}: cannot read audio file {row.wav}: {e}") from e
        if info.samplerate != cfg.sample_rate:
            raise ValueError(
                f"{where}: {row.wav} has sample rate {info.samplerate} Hz but the config expects "
                f"{cfg.sample_rate} Hz"
            )
        if info.channels != 1:
            raise ValueError(f"{where}: {row.wav} has {info.channels} channels; RVC trains on mono")
        feat_shape = self._npy_shape(row.feature, where)
        if len(feat_shape) != 2 or feat_shape[1] != cfg.feature_dim:
            raise ValueError(
                f"{where}: {row.feature} has shape {feat_shape}, expected [frames, "
                f"{cfg.feature_dim}] (v2 features are {cfg.feature_dim}-d)"
            )
        length = self._aligned_length(info.frames, feat_shape[0])
        for label, p in (("coarse pitch", row.f0_coarse), ("f0", row.f0_hz)):
            shape = self._npy_shape(p, where)
            if len(shape) != 1:
                raise ValueError(f"{where}: {label} file {p} has shape {shape}, expected [frames]")
            if shape[0] < length:
                raise ValueError(
                    f"{where}: {label} file {p} has {shape[0]} frames, fewer than the {length} "
                    f"frames of features/audio it must cover"
                )
        self._check_long_enough(row, length)
        return length

    @staticmethod
    def _npy_shape(path: Path, where: str) -> tuple[int, ...]:
        try:
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        except (OSError, ValueError, EOFError):
            # numpy's own text advises allow_pickle, which is never the answer for a feature file
            raise ValueError(f"{where}: {path} is not a feature array (not a readable .npy file, "
                             f"{path.stat().st_size:,} bytes)") from None

    def _check_long_enough(self, row: FilelistRow, length: int) -> None:
        need = self.cfg.segment_frames
        if length < need:
            raise ValueError(
                f"{row.where()}: {row.wav} gives {length} aligned frames, shorter than one training "
                f"segment ({need} frames = {self.cfg.segment_size} samples); remove it from the "
                "filelist (RVC would slice it from a negative offset)"
            )

    # -- item loading -------------------------------------------------------------------------------

    def __getitem__(
        self, index: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        row = self.rows[index]
        where = row.where()
        phone, pitch, pitchf = self._load_labels(row, where)
        wav = self._load_audio(row, where)
        spec = self._spectrogram(row, wav)

        n = min(phone.shape[0], spec.shape[1])
        spec = spec[:, :n]
        wav = wav[:, : n * self.cfg.hop_length]
        phone, pitch, pitchf = phone[:n], pitch[:n], pitchf[:n]
        if pitch.shape[0] < n or pitchf.shape[0] < n:
            raise ValueError(
                f"{where}: f0 files ({row.f0_coarse}, {row.f0_hz}) have {pitch.shape[0]} and "
                f"{pitchf.shape[0]} frames, fewer than the {n} aligned frames"
            )
        self._check_long_enough(row, n)
        sid = torch.tensor([row.speaker_id], dtype=torch.long)
        return spec, wav, phone, pitch, pitchf, sid

    def _load_labels(
        self, row: FilelistRow, where: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat = np.load(row.feature)
        if feat.ndim != 2 or feat.shape[1] != self.cfg.feature_dim:
            raise ValueError(
                f"{where}: {row.feature} has shape {tuple(feat.shape)}, expected "
                f"[frames, {self.cfg.feature_dim}]"
            )
        if not np.all(np.isfinite(feat)):
            raise ValueError(f"{where}: {row.feature} contains NaN or inf")
        coarse = np.load(row.f0_coarse)
        f0 = np.load(row.f0_hz)
        if not np.all(np.isfinite(f0)):
            raise ValueError(f"{where}: {row.f0_hz} (f0 in Hz) contains NaN or inf")
        if not np.all(np.isfinite(coarse)):
            raise ValueError(f"{where}: {row.f0_coarse} (coarse pitch) contains NaN or inf")
        n = min(2 * feat.shape[0], MAX_FRAMES)
        phone = torch.from_numpy(np.repeat(feat, 2, axis=0)[:n].astype(np.float32, copy=False))
        coarse = coarse[:n]
        if coarse.size and (coarse.min() < 0 or coarse.max() > 255):
            raise ValueError(
                f"{where}: {row.f0_coarse} has coarse pitch in [{coarse.min()}, {coarse.max()}]; "
                "RVC's pitch embedding takes 0..255"
            )
        pitch = torch.from_numpy(np.rint(coarse).astype(np.int64))
        pitchf = torch.from_numpy(f0[:n].astype(np.float32))
        return phone, pitch, pitchf

    def _load_audio(self, row: FilelistRow, where: str) -> torch.Tensor:
        audio, sr = sf.read(str(row.wav), dtype="float32", always_2d=False)
        if sr != self.cfg.sample_rate:
            raise ValueError(
                f"{where}: {row.wav} has sample rate {sr} Hz but the config expects "
                f"{self.cfg.sample_rate} Hz"
            )
        if audio.ndim != 1:
            raise ValueError(f"{where}: {row.wav} has {audio.shape[1]} channels; RVC trains on mono")
        if not np.all(np.isfinite(audio)):
            raise ValueError(f"{where}: {row.wav} contains NaN or inf samples")
        return torch.from_numpy(audio).unsqueeze(0)

    def _spectrogram(self, row: FilelistRow, wav: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        expected = (self.n_freq, wav.shape[1] // cfg.hop_length)
        cache = spec_cache_path(row.wav)
        if self.cache_spectrograms and cache.exists():
            try:
                spec = torch.load(cache, map_location="cpu", weights_only=True)
            except Exception as e:  # a truncated/corrupt file raises many types; all mean "rebuild"
                logger.warning("%s: spectrogram cache %s unreadable (%s); recomputing", row.where(), cache, e)
            else:
                if isinstance(spec, torch.Tensor) and tuple(spec.shape) == expected:
                    return spec.float()
                got = tuple(spec.shape) if isinstance(spec, torch.Tensor) else type(spec).__name__
                logger.warning(
                    "%s: spectrogram cache %s has shape %s, expected %s (config changed?); recomputing",
                    row.where(), cache, got, expected,
                )
        with torch.no_grad():
            spec = spectrogram_torch(wav, cfg.n_fft, cfg.hop_length, cfg.win_length).squeeze(0)
        if tuple(spec.shape) != expected:
            raise RuntimeError(
                f"spectrogram_torch returned shape {tuple(spec.shape)} for {row.wav}, expected {expected}"
            )
        spec = spec.contiguous()
        if self.cache_spectrograms:
            _atomic_torch_save(spec, cache)
        return spec


# --------------------------------------------------------------------------------------------------
# Sampler
# --------------------------------------------------------------------------------------------------


class BucketBatchSampler(Sampler[list[int]]):
    """Length-bucketed batch sampler: RVC's ``DistributedBucketSampler`` made resumable.

    As in RVC, item i goes into bucket k when ``boundaries[k] < lengths[i] <= boundaries[k+1]``;
    items outside ``(boundaries[0], boundaries[-1]]`` are dropped (logged, and listed in
    ``dropped``); empty buckets are removed; each bucket is padded, by repeating its own shuffled
    items, to a multiple of ``num_replicas * batch_size``; rank r takes every ``num_replicas``-th
    item of each padded bucket from position r; each rank's batches are cut from its share of every
    bucket and then shuffled. All ranks use the same generator, so they step through the same
    buckets in the same order.

    Differences from RVC, and why:

    * ``lengths`` should be real frame counts (``RVCDataset.lengths``: aligned frames, capped at 900),
      not RVC's ``file_size // (3 * hop)``, which overestimates float32 files by about 4/3. With the
      default ``RVC_BOUNDARIES`` this drops items of up to 1.00 s where RVC drops up to about 0.75 s;
      pass ``APPLIO_BOUNDARIES`` or your own to keep shorter items (the lower boundary must stay
      below the shortest item you want, and items must still be at least one segment long).
    * The shuffle generator is seeded from ``(seed, epoch)`` (RVC: ``epoch``), so two runs with
      different seeds see different orders, and global RNG state has no influence.
    * Resumable position: ``state_dict()`` / ``load_state_dict()`` and the ``start_batch`` argument
      make the next iteration start at batch ``start_batch`` of the epoch's order, yielding exactly
      the batches an uninterrupted run would still have seen. ``set_epoch(e)`` with a new ``e`` goes
      back to batch 0; with the current epoch it keeps the position (so a resumed loop may call
      ``set_epoch`` at the top of the epoch as RVC's loop does).
    * ``len(sampler)`` is the number of batches the next iteration yields (less than
      ``batches_per_epoch`` when resuming mid-epoch), so ``len(DataLoader)`` is right for progress.

    A DataLoader's workers prefetch, so ``position`` (batches handed to the loader) can be ahead of
    the batches the training loop has finished; a loop that saves mid-epoch should store its own
    count of consumed batches and pass it back as ``start_batch``.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        boundaries: Sequence[int] = RVC_BOUNDARIES,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        bounds = [int(b) for b in boundaries]
        if len(bounds) < 2 or any(b >= c for b, c in zip(bounds, bounds[1:])):
            raise ValueError(f"boundaries must be at least 2 strictly increasing values, got {bounds}")
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
        self.lengths = [int(x) for x in lengths]
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch

        buckets: list[list[int]] = [[] for _ in range(len(bounds) - 1)]
        self.dropped: list[int] = []
        for i, n in enumerate(self.lengths):
            # bisect_left gives k with bounds[k-1] < n <= bounds[k]; the item belongs to bucket k-1.
            k = bisect.bisect_left(bounds, n)
            if 1 <= k < len(bounds):
                buckets[k - 1].append(i)
            else:
                self.dropped.append(i)
        if self.dropped:
            logger.warning(
                "BucketBatchSampler: %d of %d items lie outside the boundaries (%d, %d] frames and "
                "are never sampled",
                len(self.dropped), len(self.lengths), bounds[0], bounds[-1],
            )
        keep = [k for k, b in enumerate(buckets) if b]
        # RVC's loop never removes bucket 0 when empty (and then divides by zero); we drop all empties.
        self.buckets: list[list[int]] = [buckets[k] for k in keep]
        self.boundaries: list[tuple[int, int]] = [(bounds[k], bounds[k + 1]) for k in keep]
        if not self.buckets:
            raise ValueError(
                f"no item has a length in ({bounds[0]}, {bounds[-1]}] frames (lengths range "
                f"{min(self.lengths, default=0)}..{max(self.lengths, default=0)}); adjust boundaries"
            )
        total = num_replicas * batch_size
        self.num_samples_per_bucket = [-(-len(b) // total) * total for b in self.buckets]
        self.batches_per_epoch = sum(self.num_samples_per_bucket) // total
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(
                f"start_batch must be in [0, {self.batches_per_epoch}], got {start_batch}"
            )
        self._start_batch = start_batch
        self.position = start_batch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows (new epoch: from batch 0)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch = epoch
            self._start_batch = 0
            self.position = 0

    def epoch_batches(self) -> list[list[int]]:
        """This rank's complete batch order for the current epoch (independent of the position)."""
        g = torch.Generator()
        g.manual_seed(mix_seed(self.seed, self.epoch))
        batches: list[list[int]] = []
        for bucket, padded in zip(self.buckets, self.num_samples_per_bucket):
            n = len(bucket)
            order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
            rem = padded - n
            order = order + order * (rem // n) + order[: rem % n]
            mine = order[self.rank :: self.num_replicas]
            for j in range(0, len(mine), self.batch_size):
                batches.append([bucket[k] for k in mine[j : j + self.batch_size]])
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[k] for k in perm]
        assert len(batches) == self.batches_per_epoch
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.epoch_batches()
        start = self._start_batch
        self.position = start
        for k in range(start, len(batches)):
            self.position = k + 1
            yield batches[k]

    def __len__(self) -> int:
        return self.batches_per_epoch - self._start_batch

    def state_dict(self) -> dict[str, int]:
        """Seed, epoch and position (batches handed out so far this epoch), plus a size check."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "batches_per_epoch": self.batches_per_epoch,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where ``state`` left off: the next iteration yields batches from ``position``.

        Refuses a state from a sampler that made a different number of batches per epoch (other
        data, batch size or replica count), since its order would not be the one being resumed.
        """
        if int(state["batches_per_epoch"]) != self.batches_per_epoch:
            raise ValueError(
                f"sampler state has {state['batches_per_epoch']} batches per epoch, this sampler "
                f"{self.batches_per_epoch}: data, batch size or replicas changed since it was saved"
            )
        position = int(state["position"])
        if not 0 <= position <= self.batches_per_epoch:
            raise ValueError(f"position must be in [0, {self.batches_per_epoch}], got {position}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._start_batch = position
        self.position = position


# --------------------------------------------------------------------------------------------------
# Collation and the DataLoader
# --------------------------------------------------------------------------------------------------


Batch = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
]


def collate(batch: Sequence[tuple[torch.Tensor, ...]]) -> Batch:
    """RVC's ``TextAudioCollateMultiNSFsid``: sort by spec length (descending) and zero-pad.

    Returns ``(phone [B,T,768], phone_lengths [B], pitch [B,T] long, pitchf [B,T], spec [B,F,S],
    spec_lengths [B], wave [B,1,N], wave_lengths [B], sid [B])``. The sort is stable, so items of
    equal length keep their order (RVC's ``torch.sort`` is not stable: ties may come out in any order).
    """
    if len(batch) == 0:
        raise ValueError("collate got an empty batch")
    spec_len = torch.tensor([item[0].shape[1] for item in batch], dtype=torch.long)
    order = torch.sort(spec_len, descending=True, stable=True).indices.tolist()
    b = len(batch)
    n_freq = batch[0][0].shape[0]
    feat_dim = batch[0][2].shape[1]
    max_spec = max(item[0].shape[1] for item in batch)
    max_wave = max(item[1].shape[1] for item in batch)
    max_phone = max(item[2].shape[0] for item in batch)

    spec = torch.zeros(b, n_freq, max_spec)
    wave = torch.zeros(b, 1, max_wave)
    phone = torch.zeros(b, max_phone, feat_dim)
    pitch = torch.zeros(b, max_phone, dtype=torch.long)
    pitchf = torch.zeros(b, max_phone)
    spec_lengths = torch.zeros(b, dtype=torch.long)
    wave_lengths = torch.zeros(b, dtype=torch.long)
    phone_lengths = torch.zeros(b, dtype=torch.long)
    sid = torch.zeros(b, dtype=torch.long)
    for i, k in enumerate(order):
        s, w, p, pt, pf, sp = batch[k]
        spec[i, :, : s.shape[1]] = s
        spec_lengths[i] = s.shape[1]
        wave[i, :, : w.shape[1]] = w
        wave_lengths[i] = w.shape[1]
        phone[i, : p.shape[0]] = p
        phone_lengths[i] = p.shape[0]
        pitch[i, : pt.shape[0]] = pt
        pitchf[i, : pf.shape[0]] = pf
        sid[i] = int(sp.reshape(-1)[0]) if isinstance(sp, torch.Tensor) else int(sp)
    return phone, phone_lengths, pitch, pitchf, spec, spec_lengths, wave, wave_lengths, sid


def _seed_worker(seed: int, sampler: BucketBatchSampler, worker_id: int) -> None:
    """Seed torch, numpy and ``random`` in a worker from ``(seed, sampler.epoch, worker_id)``.

    Reading the epoch from the sampler when the workers start (every epoch: workers are not
    persistent) makes the seeds independent of how many epochs this DataLoader has run before, so a
    resumed run's workers match an uninterrupted run's.
    """
    s = mix_seed(seed, sampler.epoch, worker_id)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def make_dataloader(
    rows: Sequence[FilelistRow],
    cfg: ModelConfig,
    batch_size: int,
    seed: int,
    epoch: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    *,
    boundaries: Sequence[int] = RVC_BOUNDARIES,
    cache_spectrograms: bool = True,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader over ``rows`` giving RVC batches (see :func:`collate`), deterministic in
    ``(rows, cfg, batch_size, seed, epoch, rank, world_size, start_batch)``.

    ``loader.batch_sampler`` is the :class:`BucketBatchSampler`: call its ``set_epoch`` at the top of
    each epoch, as RVC does. ``batch_size`` is the batch of each rank. RVC hands its sampler
    ``batch_size * n_gpus``, and the sampler uses that as every rank's batch, so RVC's per-GPU batch
    grows with the GPU count (global batch ``batch_size * n_gpus**2``); to reproduce an RVC
    multi-GPU run, pass ``batch_size * world_size`` here.

    Workers are not persistent (RVC's are), so each epoch starts them afresh with seeds from
    ``(seed, epoch, worker_id)``; the loader's ``generator`` is seeded from ``(seed, epoch)`` too.
    The data set has no randomness of its own today; the seeding keeps future augmentation
    reproducible.
    """
    dataset = RVCDataset(rows, cfg, cache_spectrograms=cache_spectrograms)
    sampler = BucketBatchSampler(
        dataset.lengths,
        batch_size,
        boundaries=boundaries,
        num_replicas=world_size,
        rank=rank,
        shuffle=True,
        seed=seed,
        epoch=epoch,
        start_batch=start_batch,
    )
    generator = torch.Generator()
    generator.manual_seed(mix_seed(seed, epoch))
    extra = {}
    if num_workers > 0 and prefetch_factor is not None:
        extra["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        worker_init_fn=functools.partial(_seed_worker, seed, sampler),
        generator=generator,
        persistent_workers=False,
        pin_memory=pin_memory,
        **extra,
    )


def infer_model_config(root: str | os.PathLike[str]) -> tuple[str, str]:
    """The config of an experiment without ``config.json`` (RVC writes it only when its own training
    starts), from its data: the sample rate of the first sliced wav and the width of the first
    feature array. Returns ``(config name, what was inferred from what)``; ValueError if no preset
    matches."""
    from rvc_optim.train.config import config_names, get_config

    root = Path(root)
    exp = find_experiment(root)
    wav_dir, feat_dir = (_RVC_DIRS[0], _RVC_DIRS[1]) if exp.layout == "rvc" else (_APPLIO_DIRS[0], _APPLIO_DIRS[1])
    wav = next(iter(sorted((root / wav_dir).glob("*.wav"))), None)
    feat = next(iter(sorted((root / feat_dir).glob("*.npy"))), None)
    if wav is None or feat is None:
        raise ValueError(f"{root} has no config.json and no {wav_dir}/*.wav or {feat_dir}/*.npy to infer it from: "
                         "pass --config 32k|40k|48k")
    sample_rate = sf.info(str(wav)).samplerate
    dim = RVCDataset._npy_shape(feat, str(feat))[-1]
    for name in config_names():
        cfg = get_config(name)
        if cfg.sample_rate == sample_rate and cfg.feature_dim == dim:
            return name, f"{wav_dir} at {sample_rate} Hz, {dim}-d features in {feat_dir}"
    raise ValueError(f"{root} has no config.json, and its data ({wav_dir} at {sample_rate} Hz, {dim}-d features) "
                     "fits no v2 config: pass --config 32k|40k|48k")
