"""``rvc-optim train``: the command-line face of :func:`rvc_optim.train.loop.train`.

Flags map one to one onto :class:`~rvc_optim.train.loop.TrainConfig` fields. Bad input (an unknown
optimizer, a missing data folder, a bad ``--optim-arg``, a checkpoint trained with another optimizer)
ends with one ``rvc-optim train: error: ...`` line and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from rvc_optim.records import NotImplementedYet
from rvc_optim.registry import optimizer_info
from rvc_optim.train.optim_setup import OptimArgError, check_optim_args, parse_optim_args, parse_value

__all__ = ["DESCRIPTION", "DEMO_STEPS", "add_arguments", "config_from_args", "run"]

DESCRIPTION = (
    "Train an RVC v2 voice model (generator with pitch + multi-period discriminator) with any available "
    "optimizer of the registry. Data: an RVC or Applio experiment folder (--data logs/<name>) after "
    "preprocessing and feature extraction, or --demo for a small synthetic data set and the tiny config. "
    "Writes G_<step>.pth / D_<step>.pth checkpoints in RVC's format, TensorBoard logs, train_log.csv and, at "
    "the end, <name>.pth, the small model RVC's inference front ends load. Multi-GPU / multi-process: "
    "torchrun --nproc_per_node N -m rvc_optim.cli train ... (batch size is per process)."
)

#: Default run length of ``--demo``: long enough for the mel loss to fall visibly, short enough for a
#: 2-core CPU to finish in a few minutes.
DEMO_STEPS = 150
DEMO_ITEMS = 8
#: (log, eval, save) intervals in steps: for real runs, and for the short demo.
INTERVALS = (50, 500, 1000)
DEMO_INTERVALS = (10, 50, 50)


def _floats(text: str) -> tuple[float, ...]:
    value = parse_value(text if "," in text or "(" in text else f"({text},)")
    if not isinstance(value, tuple) or not all(isinstance(v, (int, float)) for v in value):
        raise argparse.ArgumentTypeError(f"expected numbers like 0.8,0.99, got {text!r}")
    return tuple(float(v) for v in value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data and run folder")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="FOLDER",
                     help="RVC (logs/<name> with 0_gt_wavs, 3_feature768, 2a_f0, 2b-f0nsf) or Applio experiment "
                          "folder holding filelist.txt; its config.json decides the model config")
    src.add_argument("--demo", action="store_true",
                     help=f"synthesise a small demo data set ({DEMO_ITEMS} voice-like clips) into OUT/demo_data and "
                          f"train the tiny config for {DEMO_STEPS} steps (unless --steps/--epochs): a smoke run "
                          "that a CPU finishes in minutes")
    g.add_argument("--out", metavar="FOLDER",
                   help="run folder for checkpoints, logs and the exported model (default runs/demo or runs/<data name>)")
    g.add_argument("--config", choices=("tiny", "32k", "40k", "48k"),
                   help="model config, overriding the experiment's config.json")
    g.add_argument("--export-name", metavar="NAME", help="name of the exported small model NAME.pth (default: the run folder's name)")

    g = parser.add_argument_group("optimizers (any name `rvc-optim list --available` shows)")
    g.add_argument("--optimizer", default="AdamW", help="generator optimizer (default AdamW, as RVC)")
    g.add_argument("--optimizer-d", metavar="NAME", help="discriminator optimizer (default: same as --optimizer)")
    g.add_argument("--optim-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra constructor argument of the generator optimizer, read as a Python literal "
                        "(int, float, bool, tuple, None, else a string); repeatable. Applies to the discriminator "
                        "too when both use the same optimizer and no --optim-arg-d is given")
    g.add_argument("--optim-arg-d", action="append", default=None, metavar="KEY=VALUE",
                   help="extra constructor argument of the discriminator optimizer; repeatable")
    g.add_argument("--lr", type=float,
                   help="learning rate of both optimizers (default: each optimizer's recommended value, e.g. AdamW 1e-4 "
                        "as RVC; for lr-free optimizers it is a multiplier, keep it near 1)")
    g.add_argument("--betas", type=_floats, metavar="B1,B2", help="betas of both optimizers (default: recommended)")
    g.add_argument("--eps", type=float, help="eps of both optimizers (default: recommended)")
    g.add_argument("--lr-decay", type=float, default=0.999875,
                   help="gamma of RVC's per-epoch ExponentialLR (default 0.999875), applied only to optimizers whose "
                        "protocol wants an LR scheduler")

    g = parser.add_argument_group("run length and batches")
    g.add_argument("--steps", type=int, help="optimizer steps in total (wins over --epochs)")
    g.add_argument("--epochs", type=int, help="epochs in total (default 20 with --data)")
    g.add_argument("--batch-size", type=int, default=4, help="batch size per process (RVC's default 4)")
    g.add_argument("--seed", type=int, default=1234, help="seed of the model init, data order and random draws (default 1234, as RVC)")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0: load in the training process)")

    g = parser.add_argument_group("logging, evaluation, checkpoints")
    g.add_argument("--log-every", type=int, help="log averaged losses every N steps (0: never; default 50, --demo 10)")
    g.add_argument("--eval-every", type=int,
                   help="every N steps, synthesise a validation item and log its mel image and mel L1 "
                        "(0: never; default 500, --demo 50)")
    g.add_argument("--save-every", type=int,
                   help="write G_<step>.pth / D_<step>.pth every N steps (0: only at the end; default 1000, --demo 50)")
    g.add_argument("--keep-last", type=int, default=2, help="keep the newest K checkpoint pairs (default 2; 0: keep all)")
    g.add_argument("--resume", metavar="CKPT",
                   help="continue from 'latest' (newest pair in the run folder), a run folder, or a G_/D_<step>.pth file; "
                        "exact, mid-epoch included; the optimizer settings come from the checkpoint")
    g.add_argument("--reset-optimizer", action="store_true",
                   help="with --resume: keep weights and position but start the optimizers (and LR schedules) afresh; "
                        "needed to resume with a different optimizer")
    g.add_argument("--pretrained-g", metavar="PTH", help="RVC-format pretrained generator (e.g. f0G40k.pth; 'model' entry, strict)")
    g.add_argument("--pretrained-d", metavar="PTH", help="RVC-format pretrained discriminator (e.g. f0D40k.pth)")
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files (the CSV log stays)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    g = parser.add_argument_group("numerics and device")
    g.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="default fp32. fp16: autocast + one GradScaler for both optimizers (CUDA; slow or unsupported on CPUs); "
                        "bf16: autocast without a scaler (use this for mixed precision on a CPU)")
    g.add_argument("--grad-clip", type=float, help="clip each model's total gradient norm to this value (default: no clipping)")
    g.add_argument("--max-skipped", type=int, default=20,
                   help="stop after this many consecutive steps with a non-finite loss or gradient (default 20)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available); under torchrun cuda:LOCAL_RANK")


def config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` for parsed flags (makes the demo data set when ``--demo``)."""
    from rvc_optim.train.loop import TrainConfig

    if not args.demo and not args.data:
        raise ValueError("pass --data <experiment folder> (RVC or Applio layout) or --demo")
    # Names and extra arguments are checked before any data is made or read.
    record_g = optimizer_info(args.optimizer)
    record_d = optimizer_info(args.optimizer_d or args.optimizer)
    for record in (record_g, record_d):
        record.cls  # raises NotImplementedYet (a clear message) for a registered but unwritten one
    optim_args = parse_optim_args(args.optim_arg)
    optim_args_d = parse_optim_args(args.optim_arg_d) if args.optim_arg_d is not None else None
    check_optim_args(record_g, optim_args)
    if optim_args_d is not None:
        check_optim_args(record_d, optim_args_d, "--optim-arg-d")
    elif record_d.name == record_g.name:
        check_optim_args(record_d, optim_args)
    out = Path(args.out) if args.out else Path("runs") / ("demo" if args.demo else Path(args.data).resolve().name)
    model_config = args.config
    steps, epochs = args.steps, args.epochs
    defaults = DEMO_INTERVALS if args.demo else INTERVALS
    log_every, eval_every, save_every = (
        default if given is None else given
        for given, default in zip((args.log_every, args.eval_every, args.save_every), defaults)
    )
    if args.demo:
        data = _demo_data(out / "demo_data", args.config or "tiny", args.seed)
        model_config = args.config or "tiny"
        if steps is None and epochs is None:
            steps = DEMO_STEPS
    else:
        data = args.data
        if not Path(data).is_dir():
            raise FileNotFoundError(f"--data {data}: no such folder")
    return TrainConfig(
        data=str(data), run_dir=str(out), model_config=model_config,
        optimizer=args.optimizer, optimizer_d=args.optimizer_d, optim_args=optim_args, optim_args_d=optim_args_d,
        lr=args.lr, betas=args.betas, eps=args.eps, lr_decay=args.lr_decay,
        steps=steps, epochs=epochs, batch_size=args.batch_size, seed=args.seed, num_workers=args.num_workers,
        log_every=log_every, eval_every=eval_every, save_every=save_every, keep_last=args.keep_last,
        resume=args.resume, reset_optimizer=args.reset_optimizer,
        pretrained_g=args.pretrained_g, pretrained_d=args.pretrained_d,
        precision=args.precision, grad_clip=args.grad_clip, max_skipped=args.max_skipped, device=args.device,
        export_name=args.export_name,
        progress=not args.no_progress, tensorboard=not args.no_tensorboard,
    )


def _demo_data(folder: Path, config: str, seed: int) -> Path:
    """The demo experiment in ``folder``: made once, reused by later runs (and by --resume)."""
    from rvc_optim.train.config import get_config
    from rvc_optim.train.data import find_experiment
    from rvc_optim.train.demo_data import make_demo_experiment

    if int(os.environ.get("RANK", "0")) != 0:
        # Under torchrun, rank 0 makes the data; config.json is the last file make_demo_experiment writes.
        deadline = time.monotonic() + 600
        while not (folder / "config.json").is_file():
            if time.monotonic() > deadline:
                raise FileNotFoundError(f"rank {os.environ['RANK']}: {folder} was not made by rank 0 within 600 s")
            time.sleep(0.5)
        return folder
    if folder.is_dir() and any(folder.iterdir()):
        find_experiment(folder)  # fails clearly if it is not a complete experiment
        return folder
    print(f"making the demo data set in {folder} ...", flush=True)
    make_demo_experiment(folder, get_config(config), n_items=DEMO_ITEMS, seconds=(1.5, 2.0), seed=seed)
    return folder


def run(args: argparse.Namespace) -> int:
    from rvc_optim.train.loop import ResumeError, TrainingStopped, train

    try:
        tc = config_from_args(args)
        with warnings.catch_warnings():
            # One line per warning, without the source line torch's formatter would add.
            warnings.simplefilter("default")
            result = train(tc)
    except TrainingStopped as err:
        print(f"rvc-optim train: stopped: {err}", file=sys.stderr)
        return 3
    except (OptimArgError, ResumeError, NotImplementedYet, FileNotFoundError, FileExistsError, ValueError, TypeError,
            KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"rvc-optim train: error: {message}", file=sys.stderr)
        return 2
    if result.export is None:  # not rank 0
        return 0
    first, last = result.loss_summary("loss_mel")
    first_g, last_g = result.loss_summary("loss_g")
    print(f"done: {result.step} steps ({result.epochs_done:g} epochs), {result.seconds_per_step:.2f} s/step, "
          f"{result.skipped_steps} skipped")
    if result.history:
        trend = "fell" if last < first else "did not fall"
        print(f"mel loss (x c_mel): first {first:.3f} -> last {last:.3f} ({trend}); "
              f"generator total: {first_g:.3f} -> {last_g:.3f}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"model for inference: {result.export}")
    return 0
