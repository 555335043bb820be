"""``rvc-optim prepare``: a folder of recordings in, an RVC (or Applio) experiment folder out.

The steps and numbers are RVC's (``preprocess.py``, ``extract_f0_print.py``,
``extract_feature_print.py``; see :mod:`rvc_optim.prepare.audio` for the audio side):

1. every input file is read, resampled to the training rate, high-passed, sliced at silences and
   cut into 3.7 s chunks, normalised; chunks are written as float32 WAVs at the training rate and at
   16 kHz (one process per core);
2. f0 of every 16 kHz chunk at 100 frames/s (hop 160), in Hz and coarse (1..255): pm, harvest and
   dio in the worker processes, crepe, fcpe and rmvpe batched on ``device``;
3. content features, HuBERT/ContentVec layer 12 (768-d) at 50 frames/s, batched on ``device``;
4. ``filelist.txt`` (every slice plus two mute rows, shuffled) and ``config.json``.

Beyond RVC: chunks shorter than one training segment are dropped (RVC's trainer would slice them from
a negative index), every file is written atomically, and a rerun skips the inputs a manifest shows
as done with intact outputs (:mod:`rvc_optim.prepare.layout`). RVC's filelist holds absolute paths
(our trainer requires that for the RVC layout); the Applio layout's are relative to the folder that
holds ``logs/``, as Applio writes them. The mute slice lives in the experiment's own folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rvc_optim.prepare.audio import RVC_SLICER, AudioError, chunks, highpass, load_audio, normalize, resample, slice_at_silences
from rvc_optim.prepare.files import digest, remove_temp_files, write_npy, write_text, write_wav
from rvc_optim.prepare.layout import MUTE, Folders, Manifest
from rvc_optim.train.config import ModelConfig, get_config
from rvc_optim.train.demo_data import LAYOUT_DIRS, config_files, filelist_row, filelist_text

__all__ = ["SAMPLE_RATES", "CPU_F0_METHODS", "MIN_SECONDS", "MUTE_SECONDS", "PrepareError", "PrepareResult", "prepare"]

SAMPLE_RATES = {"32k": 32000, "40k": 40000, "48k": 48000}
#: f0 methods that run on the CPU, one process per core; the others are batched on the device.
CPU_F0_METHODS = ("pm", "harvest", "dio")
#: prepare refuses to write a filelist for less audio than this (seconds, after slicing).
MIN_SECONDS = 10.0
#: Length of the silent "mute" slice whose two rows RVC adds to every filelist.
MUTE_SECONDS = 3.0
_SR16 = 16000


class PrepareError(ValueError):
    """Prepare cannot go on; the message is one line."""


@dataclass
class PrepareResult:
    """What a run left in ``root``: input files used (``reused`` of them from a previous run) and their
    seconds of audio (``input_seconds``), the files skipped with their reasons, the number of slices
    and their seconds (more than the recordings': chunks overlap by 0.3 s; less: silences cut)."""

    root: Path
    files_used: int = 0
    reused: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    slices: int = 0
    seconds: float = 0.0
    input_seconds: float = 0.0


@dataclass(frozen=True)
class _SliceJob:
    source: Path
    index: int
    folders: Folders
    cfg: ModelConfig


_WORKER_F0 = None  # the CPU f0 estimator of this (worker) process


def _init_worker(estimator) -> None:
    global _WORKER_F0
    _WORKER_F0 = estimator


def _aligned_frames(n: int, n16: int, cfg: ModelConfig) -> int:
    """Frames the trainer gets from a chunk of ``n`` samples: min(2 x HuBERT's frames of the 16 kHz
    copy, spectrogram frames)."""
    return min(2 * ((n16 - 400) // 320 + 1), (n - cfg.n_fft) // cfg.hop_length + 1)


def _slice_file(job: _SliceJob) -> tuple[list[tuple[str, float]] | None, str, float]:
    """Step 1 for one input: ``([(slice name, seconds)], "", seconds of the recording)`` or
    ``(None, reason it is skipped, 0)``."""
    cfg, sr = job.cfg, job.cfg.sample_rate
    try:
        audio = load_audio(job.source, sr)
        if len(audio) < cfg.segment_size:
            return None, f"shorter than one training segment ({len(audio) / sr:.2f} s < {cfg.segment_size / sr:.2f} s)", 0.0
        audio = highpass(audio, sr)
        if np.max(np.abs(audio)) < 10 ** (RVC_SLICER.threshold_db / 20):
            return None, f"silent (nothing above {RVC_SLICER.threshold_db:g} dB)", 0.0
        pieces = (c for piece in slice_at_silences(audio, sr) for c in chunks(piece, sr))
        written = []
        for j, chunk in enumerate(pieces):
            chunk = normalize(chunk)
            a16 = None if chunk is None else resample(chunk, sr, _SR16).astype(np.float32)
            if a16 is None or _aligned_frames(len(chunk), len(a16), cfg) < cfg.segment_frames:
                continue
            name = job.folders.slice_name(job.index, j)
            write_wav(job.folders.paths(name)["wav"], chunk, sr)
            write_wav(job.folders.paths(name)["wav16k"], a16, _SR16)
            written.append((name, len(chunk) / sr))
    except AudioError as err:
        return None, str(err), 0.0
    except Exception as err:  # anything else about one file must not stop the others
        return None, f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", 0.0
    if not written:
        return None, "no usable slice (every piece was clipped, silent or shorter than one training segment)", 0.0
    return written, "", len(audio) / sr


def _read16(path: Path) -> np.ndarray:
    import soundfile as sf

    return sf.read(path, dtype="float32")[0]


def _write_f0(paths: dict[str, Path], f0_hz: np.ndarray) -> None:
    from rvc_optim.prepare.f0 import coarse_f0

    write_npy(paths["hz"], np.asarray(f0_hz, dtype=np.float32))
    write_npy(paths["coarse"], coarse_f0(f0_hz))


def _f0_in_worker(paths: dict[str, Path]) -> None:
    _write_f0(paths, _WORKER_F0(_read16(paths["wav16k"])))


class _Workers:
    """``jobs`` worker processes (or the calling process when ``jobs == 1``) holding a CPU f0 estimator."""

    def __init__(self, jobs: int, cpu_f0) -> None:
        self.pool = None
        if jobs > 1:
            self.pool = ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(cpu_f0,))
        else:
            _init_worker(cpu_f0)

    def map(self, fn, items):
        return self.pool.map(fn, items) if self.pool else map(fn, items)

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(cancel_futures=True)


def _progress(desc: str, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="slice" if desc != "slice" else "file", disable=not enabled,
                dynamic_ncols=True, leave=True)


def _say(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def _batched(names: list[str], folders: Folders, run, write, batch_size: int, bar) -> None:
    """``write(paths, output)`` for every slice, ``run`` (an estimator's ``.batch``) called on the
    16 kHz audio of ``batch_size`` slices at a time."""
    for i in range(0, len(names), batch_size):
        group = [folders.paths(n) for n in names[i : i + batch_size]]
        for paths, out in zip(group, run([_read16(p["wav16k"]) for p in group])):
            write(paths, out)
        bar.update(len(group))


def _identity(path: str | os.PathLike[str] | None) -> str:
    """Which weights file(s) a setting names: path, sizes and mtimes (no need to hash gigabytes)."""
    if path is None:
        return ""
    p = Path(path).resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    return json.dumps([[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.exists()])


def _fingerprint(method: str, f0_weights, embedder, cfg: ModelConfig) -> str:
    """What an input's outputs depend on beyond its own bytes and the folder's settings."""
    parts = [method, _identity(f0_weights), _identity(embedder), json.dumps(cfg.to_rvc_json(), sort_keys=True)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _input_files(audio_dir: Path) -> list[Path]:
    if not audio_dir.is_dir():
        raise PrepareError(f"{audio_dir}: no such folder")
    files = sorted(p for p in audio_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise PrepareError(f"{audio_dir}: no files in it (prepare reads the audio files directly in this folder)")
    return files


def _open_manifest(folders: Folders, settings: dict) -> Manifest:
    """The folder's manifest; a new one for a new or empty folder; refused for a folder someone else
    made or one prepared with another layout, sample rate or speaker id."""
    manifest = Manifest.load(folders.root)
    if manifest is None:
        if folders.root.is_dir() and any(folders.root.iterdir()):
            raise PrepareError(f"--out {folders.root} exists and was not made by rvc-optim prepare (no "
                               "prepare_manifest.json): choose a new or empty folder")
        return Manifest(folders.root / "prepare_manifest.json", dict(settings))
    changed = [f"{k} {manifest.settings.get(k)} -> {v}" for k, v in settings.items() if manifest.settings.get(k) != v]
    if changed:
        raise PrepareError(f"--out {folders.root} was prepared with other settings ({'; '.join(changed)}): "
                           "use a new folder")
    return manifest


class _Models:
    """The f0 estimator and the embedder, made once (and checked) before any work starts."""

    def __init__(self, method: str, f0_weights, embedder, device: str) -> None:
        from rvc_optim.prepare.f0 import make_f0_estimator
        from rvc_optim.prepare.features import load_embedder

        self.method = method
        self.f0 = make_f0_estimator(method, weights=f0_weights, device=device if method not in CPU_F0_METHODS else "cpu")
        self.embedder = load_embedder(embedder, device=device)


@dataclass
class _Context:
    """One prepare run's state, shared by its steps."""

    folders: Folders
    manifest: Manifest
    cfg: ModelConfig
    result: PrepareResult
    fingerprint: str
    hashes: dict[str, str]
    batch_size: int
    models: "_Models | None" = None
    workers: "_Workers | None" = None
    bars: dict = field(default_factory=dict)


def _done(entry: dict | None, sha: str, fp: str, folders: Folders) -> bool:
    return bool(entry) and entry["sha256"] == sha and entry["settings"] == fp and folders.intact(entry["outputs"])


def _assign_indices(todo: list[Path], manifest: Manifest) -> dict[str, int]:
    """Input index of each file to do: its old one if it had one, else the next free one."""
    free = manifest.next_index()
    out = {}
    for p in todo:
        old = manifest.inputs.get(p.name)
        out[p.name], free = (old["index"], free) if old else (free, free + 1)
    return out


def _process_group(group: list[_SliceJob], ctx: _Context) -> None:
    """Steps 1-3 for a group of inputs, then their manifest entries (saved: a later crash keeps them)."""
    folders, manifest, bars, result = ctx.folders, ctx.manifest, ctx.bars, ctx.result
    indices = {job.index for job in group}
    folders.remove_slices(keep=lambda i: i not in indices)
    sliced = []
    for job, (slices, reason, seconds) in zip(group, ctx.workers.map(_slice_file, group)):
        bars["slice"].update(1)
        if slices is None:
            _say(f"skipped {job.source}: {reason}")
            result.skipped.append((str(job.source), reason))
            manifest.inputs.pop(job.source.name, None)
        else:
            sliced.append((job, slices, seconds))
    names = [name for _, slices, _ in sliced for name, _ in slices]
    for key in ("f0", "features"):
        bars[key].total += len(names)
        bars[key].refresh()
    models = ctx.models
    if models.method in CPU_F0_METHODS:
        for _ in ctx.workers.map(_f0_in_worker, [folders.paths(n) for n in names]):
            bars["f0"].update(1)
    else:
        _batched(names, folders, models.f0.batch, _write_f0, ctx.batch_size, bars["f0"])
    _batched(names, folders, models.embedder.batch, lambda p, x: write_npy(p["feat"], np.asarray(x, np.float32)),
             ctx.batch_size, bars["features"])
    for job, slices, seconds in sliced:
        manifest.inputs[job.source.name] = {
            "sha256": ctx.hashes[job.source.name], "settings": ctx.fingerprint, "index": job.index,
            "seconds": round(seconds, 6),
            "slices": [[n, round(sec, 6)] for n, sec in slices], "outputs": folders.records([n for n, _ in slices]),
        }
    manifest.save()


def _run(todo: list[Path], ctx: _Context, jobs: int, progress: bool) -> None:
    """Process the inputs ``todo`` in groups of a few per worker, with three progress bars."""
    indices = _assign_indices(todo, ctx.manifest)
    cpu_f0 = ctx.models.f0 if ctx.models.method in CPU_F0_METHODS else None
    workers = _Workers(jobs, cpu_f0)
    ctx.workers = workers
    ctx.bars = {"slice": _progress("slice", len(todo), progress), "f0": _progress("f0", 0, progress),
                "features": _progress("features", 0, progress)}
    step = max(8, 4 * jobs)
    try:
        for i in range(0, len(todo), step):
            group = [_SliceJob(p, indices[p.name], ctx.folders, ctx.cfg) for p in todo[i : i + step]]
            _process_group(group, ctx)
    finally:
        workers.close()
        for bar in ctx.bars.values():
            bar.close()


def _write_mute(ctx: _Context) -> None:
    """The mute slice: MUTE_SECONDS of silence, f0 0 (coarse 1), the embedder's features of silence."""
    folders, manifest, cfg = ctx.folders, ctx.manifest, ctx.cfg
    paths = folders.paths(MUTE)
    silence16 = np.zeros(int(MUTE_SECONDS * _SR16), dtype=np.float32)
    write_wav(paths["wav"], np.zeros(int(MUTE_SECONDS * cfg.sample_rate), dtype=np.float32), cfg.sample_rate)
    write_wav(paths["wav16k"], silence16, _SR16)
    _write_f0(paths, np.zeros(len(silence16) // 160 + 1, dtype=np.float32))
    write_npy(paths["feat"], np.asarray(ctx.models.embedder(silence16), dtype=np.float32))
    manifest.mute = {"settings": ctx.fingerprint, "outputs": folders.records([MUTE])}
    manifest.save()


def _finish(ctx: _Context, min_seconds: float, embedder) -> None:
    """Totals into the result; ``filelist.txt`` and ``config.json`` unless too little audio is left."""
    folders, result = ctx.folders, ctx.result
    entries = sorted(ctx.manifest.inputs.values(), key=lambda e: e["index"])
    result.files_used = len(entries)
    result.slices = sum(len(e["slices"]) for e in entries)
    result.seconds = sum(sec for e in entries for _, sec in e["slices"])
    result.input_seconds = sum(e["seconds"] for e in entries)
    if result.seconds < min_seconds:
        (folders.root / "filelist.txt").unlink(missing_ok=True)
        raise PrepareError(
            f"only {result.seconds:.1f} s of usable audio from {result.files_used} files ({len(result.skipped)} "
            f"skipped): training needs at least {min_seconds:g} s; add recordings and run prepare again "
            "(finished files are kept)")
    names = [name for e in entries for name, _ in e["slices"]] + [MUTE, MUTE]  # RVC's two mute rows
    rows = [filelist_row(folders.filelist_files(n), folders.root, folders.layout, folders.speaker_id) for n in names]
    random.Random(0).shuffle(rows)
    write_text(folders.root / "filelist.txt", filelist_text(rows, folders.layout))
    for name, text in config_files(ctx.cfg, folders.layout, embedder_model=str(embedder),
                                   total_seconds=result.seconds).items():
        write_text(folders.root / name, text)


def _model_config(sample_rate: str | int, config: ModelConfig | None) -> ModelConfig:
    if config is not None:
        return config
    name = {str(v): k for k, v in SAMPLE_RATES.items()}.get(str(sample_rate), str(sample_rate))
    if name not in SAMPLE_RATES:
        raise PrepareError(f"--sample-rate {sample_rate}: choose one of {', '.join(SAMPLE_RATES)}")
    return get_config(name)


def prepare(
    audio_dir: str | os.PathLike[str], out: str | os.PathLike[str], *, embedder: str | os.PathLike[str],
    sample_rate: str | int = "40k", f0: str = "rmvpe", f0_weights: str | os.PathLike[str] | None = None,
    layout: str = "rvc", speaker_id: int = 0, device: str = "cpu", jobs: int | None = None,
    batch_size: int = 8, min_seconds: float = MIN_SECONDS, config: ModelConfig | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Prepare the recordings in ``audio_dir`` into the experiment folder ``out`` (see the module
    docstring). ``config`` (e.g. the tiny test config) wins over ``sample_rate``. Every skipped input
    is reported on stderr with its reason; :class:`PrepareError` for bad arguments, a folder without
    files, or less than ``min_seconds`` of usable audio."""
    cfg = _model_config(sample_rate, config)
    if layout not in LAYOUT_DIRS:
        raise PrepareError(f"--layout {layout}: choose rvc or applio")
    if speaker_id < 0 or jobs is not None and jobs < 1 or batch_size < 1:
        raise PrepareError("--speaker-id must be >= 0, --jobs and the batch size >= 1")
    files = _input_files(Path(audio_dir))
    folders = Folders(Path(out), layout, speaker_id)
    manifest = _open_manifest(folders, {"layout": layout, "sample_rate": cfg.sample_rate, "speaker_id": speaker_id})
    ctx = _Context(folders, manifest, cfg, PrepareResult(folders.root), _fingerprint(f0, f0_weights, embedder, cfg),
                   {p.name: digest(p) for p in files}, batch_size)
    for name in [n for n in manifest.inputs if n not in ctx.hashes]:
        _say(f"dropped the slices of {name}: no longer in {audio_dir}")
        del manifest.inputs[name]
    owned = {e["index"] for e in manifest.inputs.values()}
    folders.remove_slices(keep=owned.__contains__)
    remove_temp_files([folders.root, *folders.dirs.values()])
    todo = [p for p in files if not _done(manifest.inputs.get(p.name), ctx.hashes[p.name], ctx.fingerprint, folders)]
    ctx.result.reused = len(files) - len(todo)
    mute_ok = bool(manifest.mute) and manifest.mute["settings"] == ctx.fingerprint and folders.intact(manifest.mute["outputs"])
    if todo or not mute_ok:
        for d in folders.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        ctx.models = _Models(f0, f0_weights, embedder, device)
        _run(todo, ctx, jobs or os.cpu_count() or 1, progress)
        if not mute_ok:
            _write_mute(ctx)
    manifest.save()
    _finish(ctx, min_seconds, embedder)
    return ctx.result
