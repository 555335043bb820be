"""``rvc-optim prepare`` and ``rvc-optim index``: argparse and the runs behind them.

Bad input ends with one ``rvc-optim <command>: error: ...`` line and exit status 2, never a traceback;
a missing optional dependency says which extra to install.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["PREPARE_DESCRIPTION", "INDEX_DESCRIPTION", "add_parsers", "add_prepare_arguments",
           "add_index_arguments", "run", "run_prepare", "run_index", "build_index_for_run"]

PREPARE_DESCRIPTION = (
    "Turn a folder of recordings into an RVC v2 experiment folder that `rvc-optim train --data` (and RVC, "
    "and Applio) reads, with RVC's steps and numbers: every file soundfile reads (wav, flac, ogg, mp3; any "
    "rate; stereo averaged) is resampled with soxr to the training rate, high-passed at 48 Hz (5th-order "
    "Butterworth), cut at silences (RVC's slicer: -42 dB, pieces >= 1500 ms, silences >= 400 ms, 15 ms hop, "
    "<= 500 ms of silence kept), cut into 3.7 s chunks overlapping by 0.3 s, normalised per chunk "
    "(x/peak*0.9*0.75 + 0.25*x; chunks with a peak above 2.5 are dropped, as are chunks shorter than one "
    "training segment); then f0 at 100 frames/s (Hz and coarse 1..255) and 768-d content features (layer "
    "12) at 50 frames/s from the 16 kHz copy. Writes 0_gt_wavs, 1_16k_wavs, 2a_f0, 2b-f0nsf, 3_feature768 "
    "(Applio: sliced_audios, sliced_audios_16k, f0, f0_voiced, extracted), filelist.txt with two mute "
    "rows, config.json and prepare_manifest.json. Resumable: a rerun skips the files already done (checked "
    "by content) and redoes the rest. Needs: pip install 'rvc-optim[prepare]'."
)
INDEX_DESCRIPTION = (
    "Build RVC's retrieval index from an experiment's features with faiss: IVF with "
    "min(16*sqrt(N), N/39) lists (N feature rows; above 200000 rows reduced to 10000 k-means centres), "
    "Flat, nprobe 1, written as added_IVF<n>_Flat_nprobe_1_<name>_v2.index, the file RVC's and Applio's "
    "inference load beside the model."
)


def add_parsers(sub) -> None:
    """Register ``prepare`` and ``index`` on the ``rvc-optim`` subparsers ``sub``."""
    add_index_arguments(sub.add_parser(
        "index", help="build RVC's retrieval index from an experiment's features", description=INDEX_DESCRIPTION))
    add_prepare_arguments(sub.add_parser(
        "prepare", help="recordings -> an RVC experiment folder (slice, resample, f0, features)",
        description=PREPARE_DESCRIPTION))


def run(args: argparse.Namespace) -> int:
    return run_prepare(args) if args.command == "prepare" else run_index(args)


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    from rvc_optim.prepare.f0 import F0_METHODS
    from rvc_optim.prepare.pipeline import MIN_SECONDS, SAMPLE_RATES

    p.add_argument("audio_dir", metavar="AUDIO_DIR", help="folder of recordings (the files directly in it)")
    p.add_argument("--out", required=True, metavar="FOLDER", help="experiment folder to write, e.g. logs/NAME (required)")
    p.add_argument("--sample-rate", default="40k", choices=tuple(SAMPLE_RATES),
                   help="training sample rate (default 40k)")
    p.add_argument("--f0", default="rmvpe", choices=F0_METHODS, metavar="METHOD",
                   help=f"f0 method: {', '.join(F0_METHODS)} (default rmvpe, as RVC; it needs --f0-weights)")
    p.add_argument("--f0-weights", metavar="PATH", help="weights file of the f0 method: RVC's rmvpe.pt for rmvpe (default: none)")
    p.add_argument("--embedder", required=True, metavar="PATH",
                   help="HuBERT/ContentVec checkpoint: a transformers folder (config.json + weights) or RVC's "
                        "hubert_base.pt (required; nothing is downloaded)")
    p.add_argument("--layout", default="rvc", choices=("rvc", "applio"), help="folder layout (default rvc)")
    p.add_argument("--speaker-id", type=int, default=0, metavar="N", help="speaker id of every row (default 0)")
    p.add_argument("--device", help="device of the model-based f0 methods and the embedder (default: cuda if available, else cpu)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help=f"worker processes for slicing and the CPU f0 methods (default: the CPU count, here {os.cpu_count()})")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="slices per batch for the model-based f0 methods and the embedder (default 8)")
    p.add_argument("--min-seconds", type=float, default=MIN_SECONDS, metavar="S",
                   help=f"refuse to write the filelist for less usable audio than this (default {MIN_SECONDS:g} s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_index_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", metavar="FOLDER", help="experiment folder (logs/NAME) holding the features")
    p.add_argument("--out", metavar="FOLDER", help="where to write the index (default: the experiment folder)")
    p.add_argument("--name", help="name in the file name (default: the experiment folder's name)")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _fail(command: str, err: BaseException) -> int:
    print(f"rvc-optim {command}: error: {err}", file=sys.stderr)
    return 2


def run_prepare(args: argparse.Namespace) -> int:
    from rvc_optim.prepare.pipeline import prepare

    start = time.perf_counter()
    try:
        result = prepare(
            args.audio_dir, args.out, embedder=args.embedder, sample_rate=args.sample_rate, f0=args.f0,
            f0_weights=args.f0_weights, layout=args.layout, speaker_id=args.speaker_id,
            device=args.device or _default_device(), jobs=args.jobs, batch_size=args.batch_size,
            min_seconds=args.min_seconds, progress=not args.no_progress)
    except (ValueError, ImportError, OSError) as err:
        return _fail("prepare", err)
    except KeyboardInterrupt:
        print("rvc-optim prepare: interrupted; the files finished so far are kept: run the same command to go on",
              file=sys.stderr)
        return 130
    wall = time.perf_counter() - start
    print(f"used {result.files_used} files ({result.reused} already done), skipped {len(result.skipped)}: "
          f"{result.input_seconds:.1f} s of recordings -> {result.slices} slices, {result.seconds:.1f} s of audio "
          f"({wall:.1f} s wall-clock)")
    print(f"experiment: {result.root}  (train it: rvc-optim train --data {result.root})")
    return 0


def run_index(args: argparse.Namespace) -> int:
    from rvc_optim.index import write_index

    try:
        path = write_index(args.experiment, args.out, args.name)
    except (ValueError, ImportError, OSError) as err:
        return _fail("index", err)
    print(f"index: {path}")
    return 0


def build_index_for_run(data: str | None, export: os.PathLike[str]) -> None:
    """After ``rvc-optim train``: the index of the data's features beside the exported model, named
    after it; one line saying why when there is none to build."""
    from pathlib import Path

    from rvc_optim.index import write_index

    export = Path(export)
    try:
        path = write_index(data, export.parent, export.stem)
    except (ValueError, ImportError, OSError) as err:
        print(f"index: not built ({err})")
        return
    print(f"index for retrieval: {path}")
