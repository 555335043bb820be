#!/usr/bin/env python
"""Seconds per training iteration and peak memory of RVC v2 training, per model config.

Each config runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its own: models,
optimizer state, activations and the autograd graph of one iteration (torch's allocations are not
seen by tracemalloc). An iteration is :func:`rvc_optim.train.loop.train_step`, the function ``rvc-optim
train`` calls per batch (generator forward, the discriminator step, the generator step, both through the
protocol driver, with the loop's two finiteness checks), on a synthetic batch of
``--frames`` frames per item (RVC items are up to 900 frames; the decoder and the discriminator see
one ``segment_size`` slice). The first ``--warmup`` iterations are not timed. Example::

    python benchmarks/train_step.py --configs tiny 40k --batch-size 2 --iters 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(config: str, batch_size: int, frames: int, iters: int, warmup: int, precision: str,
          optimizer: str, threads: int | None, device: str) -> dict:
    import torch

    from rvc_optim.train.config import get_config
    from rvc_optim.train.loop import _AMP_DTYPES, StepParts, train_step
    from rvc_optim.train.model import build_discriminator, build_generator
    from rvc_optim.train.optim_setup import build_optimizer

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = get_config(config)
    dev = torch.device(device)
    net_g, net_d = build_generator(cfg).to(dev), build_discriminator(cfg).to(dev)
    total = warmup + iters
    opt_g, drv_g = build_optimizer(optimizer, net_g, total)
    opt_d, drv_d = build_optimizer(optimizer, net_d, total)
    drv_g.train()
    drv_d.train()
    b, t = batch_size, frames
    batch = [
        torch.randn(b, t, cfg.feature_dim),  # phone
        torch.full((b,), t, dtype=torch.long),  # phone_lengths
        torch.randint(1, 255, (b, t)),  # pitch
        120.0 + 60.0 * torch.rand(b, t),  # pitchf
        torch.rand(b, cfg.spec_channels, t),  # spec
        torch.full((b,), t, dtype=torch.long),  # spec_lengths
        0.1 * torch.randn(b, 1, t * cfg.hop_length),  # wave
        torch.full((b,), t * cfg.hop_length, dtype=torch.long),  # wave_lengths
        torch.zeros(b, dtype=torch.long),  # sid
    ]
    batch = [x.to(dev) for x in batch]
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    parts = StepParts(cfg, net_g, net_d, opt_g, opt_d, drv_g, drv_d, scaler, dev, _AMP_DTYPES[precision])
    g_params, d_params = parts.g_params, parts.d_params
    times = []
    for i in range(total):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = train_step(parts, batch)
        loss = float(result.losses_g["loss_g"])  # one sync, as at a log step
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {
        "config": config,
        "batch_size": batch_size,
        "frames": frames,
        "precision": precision,
        "optimizer": optimizer,
        "threads": torch.get_num_threads(),
        "params_g": sum(p.numel() for p in g_params),
        "params_d": sum(p.numel() for p in d_params),
        "sec_per_iter": sum(times) / len(times),
        "sec_per_iter_min": min(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
        "final_loss_g": loss,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "40k"])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--frames", type=int, default=200, help="frames per item (100 per second)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--optimizer", default="AdamW")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.batch_size, a.frames, a.iters, a.warmup, a.precision, a.optimizer,
                               a.threads, a.device)))
        return 0
    rows = []
    for config in a.configs:
        cmd = [sys.executable, __file__, "--child", config, "--batch-size", str(a.batch_size), "--frames",
               str(a.frames), "--iters", str(a.iters), "--warmup", str(a.warmup), "--precision", a.precision,
               "--optimizer", a.optimizer, "--device", a.device]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{'config':<7}{'batch':>6}{'frames':>7}{'prec':>6}{'threads':>8}{'G params':>12}{'D params':>12}"
          f"{'s/iter':>9}{'min':>8}{'peak RSS MiB':>14}")
    for r in rows:
        print(f"{r['config']:<7}{r['batch_size']:>6}{r['frames']:>7}{r['precision']:>6}{r['threads']:>8}"
              f"{r['params_g']:>12,}{r['params_d']:>12,}{r['sec_per_iter']:>9.2f}{r['sec_per_iter_min']:>8.2f}"
              f"{r['peak_rss_mib']:>14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
