"""Two-process DDP training on a CPU (gloo) against one process that computes what DDP computes.

The reference runs, every step, rank 0's and rank 1's micro-batches in turn, each under that rank's
RNG state (the trainer seeds rank r's random draws from ``(seed, r, 0)``), and averages the two
gradients before each optimizer step. Items have equal lengths, because RVC's KL loss is normalised
per batch (averaging two batches' losses equals the loss of their union only when they weigh the
same). The only possible numerical difference is the order of the averaging (DDP: each rank's
gradient divided by the world size, then summed by all-reduce; here: g0/2 + g1/2 accumulated in
.grad). With two processes both are exact halvings followed by one addition, and the parameters were
measured bit-identical after 2 AdamW steps; the test allows a largest difference of 1e-6 (lr 1e-4
times a relative rounding difference of 1e-2 would still pass) so that another reduction order,
e.g. NCCL's or more ranks, does not make it flaky.

Marked ``slow``: two fresh Python processes (import torch, build, 2 steps) take 30-45 s on the
shared 2-core test machine.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from rvc_optim.train.config import get_config
from rvc_optim.train.data import make_dataloader, mix_seed, read_filelist
from rvc_optim.train.loop import _seed_everything, discriminator_pass, generator_forward, generator_losses, train
from rvc_optim.train.losses import discriminator_loss
from rvc_optim.train.checkpoint import load_checkpoint
from rvc_optim.train.model import build_discriminator, build_generator
from rvc_optim.train.optim_setup import build_optimizer
from rvc_optim.train.weight_norm_keys import to_legacy_state_dict

from tests.train.test_loop import make_tc

STEPS = 2
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, tc, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    train(tc)


def _reference(tc) -> tuple[dict, dict]:
    """One process, both ranks' micro-batches, gradients averaged: what DDP computes."""
    cfg = get_config(tc.model_config)
    rows = read_filelist(os.path.join(tc.data, "filelist.txt"))
    _seed_everything(tc.seed)
    g, d = build_generator(cfg), build_discriminator(cfg)
    opt_g, drv_g = build_optimizer(tc.optimizer, g, STEPS)
    opt_d, drv_d = build_optimizer(tc.optimizer, d, STEPS)
    g_params = list(g.parameters())
    loaders = [
        iter(make_dataloader(rows, cfg, tc.batch_size, tc.seed, 1, 0, rank=r, world_size=WORLD)) for r in range(WORLD)
    ]
    rng = []
    for r in range(WORLD):
        _seed_everything(mix_seed(tc.seed, r, 0))
        rng.append(torch.get_rng_state())

    def amp():
        return torch.autocast("cpu", enabled=False)

    for _ in range(STEPS):
        outs = []
        for r in range(WORLD):
            torch.set_rng_state(rng[r])
            outs.append(generator_forward(g, next(loaders[r]), cfg, amp))
            rng[r] = torch.get_rng_state()
        opt_d.zero_grad(set_to_none=True)
        for out in outs:
            y_d_r, y_d_g, _, _ = discriminator_pass(d, out.wave, out.y_hat.detach(), amp)
            (discriminator_loss(y_d_r, y_d_g)[0] / WORLD).backward()
        drv_d.step()
        opt_g.zero_grad(set_to_none=True)
        for out in outs:
            (generator_losses(d, out, cfg, amp)["loss_g"] / WORLD).backward(inputs=g_params)
        drv_g.step()
    return to_legacy_state_dict(g.state_dict()), to_legacy_state_dict(d.state_dict())


@pytest.mark.slow
def test_two_process_ddp_matches_averaged_micro_batches(experiment, tmp_path):
    tc = make_tc(experiment, tmp_path / "ddp", steps=STEPS, log_every=0)
    mp.spawn(_worker, args=(tc, _free_port()), nprocs=WORLD, join=True)
    ref_g, ref_d = _reference(tc)
    for prefix, ref in (("G", ref_g), ("D", ref_d)):
        got = load_checkpoint(tmp_path / "ddp" / f"{prefix}_{STEPS}.pth")["model"]
        assert set(got) == set(ref)
        worst = max((got[k] - ref[k]).abs().max().item() for k in ref)
        assert worst <= 1e-6, f"{prefix}: largest parameter difference {worst:.3g}"
        # and training did move them (the comparison is not trivially true)
        _seed_everything(tc.seed)
        init = to_legacy_state_dict((build_generator if prefix == "G" else build_discriminator)(get_config("tiny")).state_dict())
        assert max((got[k] - init[k]).abs().max().item() for k in ref) > 1e-5
    # only rank 0 wrote files: one checkpoint pair, one export, one log
    names = sorted(p.name for p in (tmp_path / "ddp").iterdir())
    assert names == ["D_2.pth", "G_2.pth", "config.json", "ddp.pth", "train_log.csv"]
    assert len(load_checkpoint(tmp_path / "ddp" / "G_2.pth")["rng"]) == WORLD
