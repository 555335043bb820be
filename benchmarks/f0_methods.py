#!/usr/bin/env python
"""Accuracy and speed of each f0 method, and speed of the content-feature embedder, on the test audio.

The audio is the f0 tests' synthetic glide (``tests/prepare/synth.py``: harmonic tones gliding
140 -> 280 Hz and 220 -> 180 Hz between silences, 2.3 s at 16 kHz). Per method: the median error in
cents on clearly voiced frames, voicing errors (clearly voiced frames reported unvoiced, clearly
unvoiced frames reported voiced; frames within 30 ms of an on/offset are not counted), and seconds
of audio per wall-clock second for a batch of ``--clips`` clips after one warm-up call. ``rmvpe``
runs randomly initialised weights (no rmvpe.pt here): its speed is real, its accuracy is not
measured. The embedder is a randomly initialised full-size HuBERT base (12 x 768, ffn 3072). Run
from the repository root::

    PYTHONPATH=src:. python benchmarks/f0_methods.py --threads 1 --output benchmarks/results/f0_methods.md
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rvc_optim.prepare.f0 import F0_METHODS, make_f0_estimator
from rvc_optim.prepare.features import load_embedder, save_random_embedder
from rvc_optim.prepare.rmvpe import E2E
from tests.prepare.synth import SR, cents_error, frame_truth, glide


def _speed(run, clips: list[np.ndarray]) -> float:
    run(clips[:1])
    start = time.perf_counter()
    run(clips)
    return sum(len(c) for c in clips) / SR / (time.perf_counter() - start)


def _f0_row(method: str, weights: Path, clips: list[np.ndarray]) -> str:
    est = make_f0_estimator(method, weights=weights if method == "rmvpe" else None)
    speed = _speed(est.batch, clips)
    if method == "rmvpe":
        return f"| {method} | n/a (random weights) | n/a | {speed:.2f} |"
    f0 = est(clips[0])
    truth, voiced, unvoiced = frame_truth(len(f0))
    median = np.median(cents_error(f0[voiced], truth[voiced]))
    misses, false_alarms = int((f0[voiced] == 0).sum()), int((f0[unvoiced] > 0).sum())
    return (f"| {method} | {median:.1f} | {misses}/{int(voiced.sum())} voiced as unvoiced, "
            f"{false_alarms}/{int(unvoiced.sum())} unvoiced as voiced | {speed:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(F0_METHODS), choices=F0_METHODS)
    parser.add_argument("--clips", type=int, default=4, help="clips per timed batch (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--output", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips = [glide(seed=i) for i in range(args.clips)]
    lines = ["| method | median error (cents) | voicing errors | audio s / wall s |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "rmvpe.pt"
        torch.save(E2E().state_dict(), weights)
        for method in args.methods:
            lines.append(_f0_row(method, weights, clips))
            print(lines[-1], flush=True)
        embedder = load_embedder(save_random_embedder(Path(tmp) / "hubert", small=False))
        lines.append(f"| embedder (HuBERT base, layer 12) | - | - | {_speed(embedder.batch, clips):.2f} |")
        print(lines[-1], flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        note = (f"CPU ({os.cpu_count()} cores, load average {os.getloadavg()[1]:.1f} at the end), "
                f"{args.threads} torch thread(s), {args.clips} clips of {len(clips[0]) / SR:.1f} s per timed batch, "
                f"torch {torch.__version__}.\n\n")
        args.output.write_text(note + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
