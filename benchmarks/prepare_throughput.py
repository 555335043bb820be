#!/usr/bin/env python
"""Seconds of audio `rvc-optim prepare` prepares per wall-clock second, per f0 method.

Synthetic recordings (voice-like harmonic glides with formants, pauses between phrases, 40 kHz
mono WAVs; :func:`rvc_optim.train.demo_data.speech_with_pauses`) are prepared from scratch once per
f0 method into a fresh folder: reading, resampling, high-pass, slicing, f0, features, filelist. The
embedder is a randomly initialised HuBERT of RVC's shape (``save_random_embedder``; the same cost as
real weights) unless ``--embedder`` names one; ``rmvpe`` runs only with ``--f0-weights rmvpe.pt``.
Throughput = seconds of the recordings used / wall-clock seconds of the whole run. Example::

    python benchmarks/prepare_throughput.py --minutes 2 --jobs 2 --output benchmarks/results/prepare_throughput
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "numpy", "soundfile", "soxr", "scipy", "pyworld", "praat-parselmouth", "torchcrepe",
            "torchfcpe", "transformers", "faiss-cpu")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def header(args: argparse.Namespace) -> dict:
    from rvc_optim.benchmark import cpu_model

    return {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores ({platform.system()} {platform.machine()})",
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "versions": {p: _version(p) for p in PACKAGES},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python"] + sys.argv),
        "audio": f"{args.minutes:g} min of synthetic speech in {args.files} files, {args.sample_rate} training rate",
        "jobs": args.jobs or os.cpu_count(), "device": args.device, "batch_size": args.batch_size,
    }


def write_recordings(folder: Path, minutes: float, files: int) -> None:
    import soundfile as sf

    from rvc_optim.train.demo_data import speech_with_pauses

    folder.mkdir(parents=True)
    per_file = minutes * 60 / files
    for i in range(files):
        audio = speech_with_pauses(per_file, 40000, seed=i, gaps=max(1, int(per_file / 3)))
        sf.write(folder / f"take_{i:03d}.wav", audio, 40000, subtype="PCM_16")


def run_method(method: str, src: Path, work: Path, embedder: Path, args: argparse.Namespace) -> dict:
    from rvc_optim.prepare.pipeline import prepare

    if method == "rmvpe" and not args.f0_weights:
        return {"method": method, "status": "skipped (needs --f0-weights rmvpe.pt)"}
    start = time.perf_counter()
    try:
        result = prepare(src, work / method / "logs" / "bench", embedder=embedder, sample_rate=args.sample_rate,
                         f0=method, f0_weights=args.f0_weights, device=args.device, jobs=args.jobs,
                         batch_size=args.batch_size, progress=False)
    except (ValueError, ImportError, OSError) as err:
        return {"method": method, "status": f"failed: {err}"}
    wall = time.perf_counter() - start
    return {"method": method, "status": "ok", "audio_s": round(result.input_seconds, 2), "wall_s": round(wall, 2),
            "audio_s_per_s": round(result.input_seconds / wall, 2)}


def markdown(head: dict, rows: list[dict]) -> str:
    lines = ["# prepare throughput", ""]
    lines += [f"- {k}: {v if not isinstance(v, dict) else ', '.join(f'{a} {b}' for a, b in v.items())}"
              for k, v in head.items()]
    lines += ["", "| f0 method | audio s | wall s | audio s per wall s |", "|---|---|---|---|"]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['method']} | {r['audio_s']:.1f} | {r['wall_s']:.1f} | {r['audio_s_per_s']:.2f} |")
        else:
            lines.append(f"| {r['method']} | {r['status']} | | |")
    return "\n".join(lines) + "\n"


def main() -> int:
    from rvc_optim.prepare.f0 import F0_METHODS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(F0_METHODS), choices=F0_METHODS)
    p.add_argument("--minutes", type=float, default=2.0, help="minutes of synthetic audio (default 2)")
    p.add_argument("--files", type=int, default=8, help="number of recordings (default 8)")
    p.add_argument("--sample-rate", default="40k", choices=("32k", "40k", "48k"))
    p.add_argument("--embedder", type=Path, help="HuBERT checkpoint (default: a random-weights one of RVC's shape)")
    p.add_argument("--f0-weights", help="rmvpe.pt, for the rmvpe row")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, help="worker processes (default: the CPU count)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--output", default="benchmarks/results/prepare_throughput", help="writes OUTPUT.md and OUTPUT.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="prepare_bench_") as tmp:
        work = Path(tmp)
        write_recordings(work / "rec", args.minutes, args.files)
        embedder = args.embedder
        if embedder is None:
            from rvc_optim.prepare.features import save_random_embedder

            embedder = save_random_embedder(work / "hubert", fmt="transformers", small=False)
        head = header(args)
        rows = []
        for method in args.methods:
            rows.append(run_method(method, work / "rec", work, embedder, args))
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"header": head, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(head, rows))
    print(markdown(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
