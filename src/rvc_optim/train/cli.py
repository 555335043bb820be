"""``rvc-optim train``: the command-line face of :func:`rvc_optim.train.loop.train`.

Flags map one to one onto :class:`~rvc_optim.train.loop.TrainConfig` fields. Bad input (an unknown
optimizer, a missing data folder, a bad ``--optim-arg``, a checkpoint trained with another optimizer)
ends with one ``rvc-optim train: error: ...`` line and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from rvc_optim.records import NotImplementedYet
from rvc_optim.registry import optimizer_info
from rvc_optim.train.optim_setup import (
    RVC_LR_DECAY,
    OptimArgError,
    check_betas,
    check_optim_args,
    parse_betas,
    parse_optim_args,
)

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
                   help="run folder for checkpoints, logs and the exported model (default runs/demo or runs/<data name>; "
                        "with --resume FOLDER or --resume FOLDER/G_<step>.pth: that folder, so a resumed run "
                        "continues where it lives)")
    g.add_argument("--config", choices=("tiny", "32k", "40k", "48k"),
                   help="model config, overriding the experiment's config.json")
    g.add_argument("--export-name", metavar="NAME", help="name of the exported small model NAME.pth (default: the run folder's name)")

    g = parser.add_argument_group("optimizers (any name `rvc-optim list --available` shows)")
    g.add_argument("--optimizer", help="generator optimizer (default AdamW, as RVC)")
    g.add_argument("--optimizer-d", metavar="NAME", help="discriminator optimizer (default: same as --optimizer)")
    g.add_argument("--optim-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="extra constructor argument of the generator optimizer, read as a Python literal "
                        "(int, float, bool, tuple, None, else a string); repeatable. Applies to the discriminator "
                        "too when both use the same optimizer and no --optim-arg-d is given")
    g.add_argument("--optim-arg-d", action="append", default=None, metavar="KEY=VALUE",
                   help="extra constructor argument of the discriminator optimizer; repeatable")
    g.add_argument("--lr", type=float,
                   help="learning rate of both optimizers (default: each optimizer's recommended value, e.g. AdamW 1e-4 "
                        "as RVC; for lr-free optimizers it is a multiplier, keep it near 1)")
    g.add_argument("--betas", metavar="B1,B2", help="betas of both optimizers (default: recommended)")
    g.add_argument("--eps", type=float, help="eps of both optimizers (default: recommended)")
    g.add_argument("--lr-decay", type=float,
                   help="gamma of RVC's per-epoch ExponentialLR (default 0.999875), applied only to optimizers whose "
                        "protocol wants an LR scheduler")

    g = parser.add_argument_group("run length and batches")
    g.add_argument("--steps", type=int, help="optimizer steps in total (wins over --epochs)")
    g.add_argument("--epochs", type=int, help="epochs in total (default 20 with --data)")
    g.add_argument("--batch-size", type=int, help="batch size per process (RVC's default 4)")
    g.add_argument("--seed", type=int, help="seed of the model init, data order and random draws (default 1234, as RVC)")
    g.add_argument("--num-workers", type=int, help="DataLoader worker processes (default 0: load in the training process)")

    g = parser.add_argument_group("logging, evaluation, checkpoints")
    g.add_argument("--log-every", type=int, help="log averaged losses every N steps (0: never; default 50, --demo 10)")
    g.add_argument("--eval-every", type=int,
                   help="every N steps, synthesise a validation item and log its mel image and mel L1 "
                        "(0: never; default 500, --demo 50)")
    g.add_argument("--save-every", type=int,
                   help="write G_<step>.pth / D_<step>.pth every N steps (0: only at the end; default 1000, --demo 50)")
    g.add_argument("--keep-last", type=int, help="keep the newest K checkpoint pairs (default 2; 0: keep all)")
    g.add_argument("--resume", metavar="CKPT",
                   help="continue a run from a run folder, a G_/D_<step>.pth file in it, or 'latest' (the newest pair "
                        "in --out); exact, mid-epoch included. Without --out the run continues in that folder. The run's "
                        "length and settings come from the checkpoint: leave the flags out; a flag that would make it "
                        "a different run (optimizer, lr, data, batch size, ...) is refused unless --override")
    g.add_argument("--override", action="store_true",
                   help="with --resume: accept changed settings (each change is printed) instead of refusing them")
    g.add_argument("--reset-optimizer", action="store_true",
                   help="with --resume: keep weights and position but start the optimizers (and LR schedules) afresh; "
                        "needed to resume with a different optimizer")
    g.add_argument("--pretrained-g", metavar="PTH", help="RVC-format pretrained generator (e.g. f0G40k.pth; 'model' entry, strict)")
    g.add_argument("--pretrained-d", metavar="PTH", help="RVC-format pretrained discriminator (e.g. f0D40k.pth)")
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files (the CSV log stays)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-index", action="store_true",
                   help="do not build RVC's retrieval index (added_IVF<n>_Flat_nprobe_1_<name>_v2.index) from the "
                        "data's features beside the exported model at the end (never built for --demo)")

    g = parser.add_argument_group("numerics and device")
    g.add_argument("--precision", choices=("fp32", "fp16", "bf16"),
                   help="default fp32. fp16: autocast + one GradScaler for both optimizers (CUDA; slow or unsupported on CPUs); "
                        "bf16: autocast without a scaler (use this for mixed precision on a CPU)")
    g.add_argument("--grad-clip", type=float, help="clip each model's total gradient norm to this value (default: no clipping)")
    g.add_argument("--max-skipped", type=int,
                   help="stop after this many consecutive steps with a non-finite loss or gradient (default 20)")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available); under torchrun cuda:LOCAL_RANK")


#: Defaults of the flags whose argparse default is None (so that a resumed run can tell a flag the
#: user gave from one left out).
DEFAULTS = {"optimizer": "AdamW", "optim_args": {}, "lr_decay": RVC_LR_DECAY, "batch_size": 4, "seed": 1234,
            "num_workers": 0, "keep_last": 2, "precision": "fp32", "max_skipped": 20}
#: Settings that make a run what it is: a resumed run refuses a change of any of them (unless
#: --override), naming the flag. Every other setting (intervals, workers, device, ...) may change freely.
DEFINING = {"data": "--data", "model_config": "--config", "optimizer": "--optimizer", "optimizer_d": "--optimizer-d",
            "optim_args": "--optim-arg", "optim_args_d": "--optim-arg-d", "lr": "--lr", "betas": "--betas",
            "eps": "--eps", "lr_decay": "--lr-decay", "batch_size": "--batch-size", "seed": "--seed",
            "precision": "--precision", "grad_clip": "--grad-clip", "steps": "--steps", "epochs": "--epochs"}
#: Of those, the ones --reset-optimizer may change (the optimizers start afresh anyway).
OPTIMIZER_SETTINGS = ("optimizer", "optimizer_d", "optim_args", "optim_args_d", "lr", "betas", "eps", "lr_decay")
#: TrainConfig fields that are about this invocation, never taken from a checkpoint.
_NOT_RESUMED = ("run_dir", "resume", "reset_optimizer", "pretrained_g", "pretrained_d", "progress", "tensorboard")


def _train_fields() -> set[str]:
    from rvc_optim.train.loop import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields the user set with a flag (None: left out)."""
    return {
        "data": str(Path(args.data).resolve()) if args.data else None,
        "model_config": args.config,
        "optimizer": args.optimizer, "optimizer_d": args.optimizer_d,
        "optim_args": parse_optim_args(args.optim_arg) if args.optim_arg is not None else None,
        "optim_args_d": parse_optim_args(args.optim_arg_d) if args.optim_arg_d is not None else None,
        "lr": args.lr, "betas": parse_betas(args.betas) if args.betas is not None else None, "eps": args.eps,
        "lr_decay": args.lr_decay, "steps": args.steps, "epochs": args.epochs, "batch_size": args.batch_size,
        "seed": args.seed, "num_workers": args.num_workers, "log_every": args.log_every,
        "eval_every": args.eval_every, "save_every": args.save_every, "keep_last": args.keep_last,
        "precision": args.precision, "grad_clip": args.grad_clip, "max_skipped": args.max_skipped,
        "device": args.device, "export_name": args.export_name,
    }


def run_folder(args: argparse.Namespace) -> Path:
    """``--out``; else the folder being resumed (a resumed run continues where it lives); else
    ``runs/demo`` or ``runs/<data folder name>``."""
    if args.out:
        return Path(args.out)
    if args.resume and args.resume != "latest":
        p = Path(args.resume)
        return p if p.is_dir() or not p.suffix else p.parent
    if not (args.demo or args.data):
        raise ValueError("--resume latest looks in --out: pass --out FOLDER, or the run folder itself: --resume FOLDER")
    return Path("runs") / ("demo" if args.demo else Path(args.data).resolve().name)


def _same(field: str, given: Any, saved: Any) -> bool:
    from rvc_optim.train.loop import _plain

    if field == "data":
        return Path(str(given)).resolve() == Path(str(saved)).resolve()
    return _plain(given) == saved


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={v!r}" for k, v in value.items()) or "(none)"
    return "(default)" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def resumed_settings(given: dict[str, Any], saved: dict[str, Any], args: argparse.Namespace, where: Path) -> dict[str, Any]:
    """The run's settings from its checkpoint (``saved``), with the flags given now applied.

    A flag that changes a :data:`DEFINING` setting is refused (``ResumeError`` naming each one) unless
    ``--override`` (each change is printed), ``--reset-optimizer`` for optimizer settings, or it
    changes only the run length of optimizers that do not need the length up front.
    """
    from rvc_optim.train.loop import ResumeError

    merged = {k: v for k, v in saved.items() if k in _train_fields() and k not in _NOT_RESUMED}
    if given["epochs"] is not None and given["steps"] is None:
        merged["steps"] = None  # --epochs on resume: the length in epochs, not the saved steps
    names = {given["optimizer"] or saved.get("optimizer") or DEFAULTS["optimizer"],
             given["optimizer_d"] or saved.get("optimizer_d") or given["optimizer"] or saved.get("optimizer") or "AdamW"}
    length_free = all(optimizer_info(n).protocol.run_length is None for n in names)
    refused, changes = [], []
    for field, value in given.items():
        if value is None:
            continue
        if field in saved and not _same(field, value, saved[field]):
            change = f"{DEFINING.get(field, field)} {_shown(saved[field])} -> {_shown(value)}"
            free = (field not in DEFINING or (args.reset_optimizer and field in OPTIMIZER_SETTINGS)
                    or (field in ("steps", "epochs") and length_free))
            (changes if free or args.override else refused).append(change)
        merged[field] = value
    if refused:
        hint = " (or --reset-optimizer to start the optimizers afresh)" if any(
            c.split()[0] in {DEFINING[f] for f in OPTIMIZER_SETTINGS} for c in refused) else ""
        raise ResumeError(
            f"--resume {where}: {'; '.join(refused)} would make it a different run: leave "
            f"{'that flag' if len(refused) == 1 else 'those flags'} out to continue it, or pass --override{hint}"
        )
    if changes:
        print(f"resume: changed {'; '.join(changes)}", flush=True)
    return merged


def config_from_args(args: argparse.Namespace):
    """The :class:`TrainConfig` for parsed flags.

    Every check (names, values, pretrained files, the data folder, a resumed run's settings) runs
    before the demo data set is made or any folder is created.
    """
    from rvc_optim.train.checkpoint import check_pretrained, read_train_config, resolve_resume
    from rvc_optim.train.config import get_config
    from rvc_optim.train.loop import TrainConfig, model_config_for

    if not (args.demo or args.data or args.resume):
        raise ValueError("pass --data <experiment folder> (RVC or Applio layout), --demo, or --resume <run folder>")
    if args.override and not args.resume:
        raise ValueError("--override only applies with --resume")
    out = run_folder(args)
    given = _given(args)
    if args.demo:
        given["data"] = str((out / "demo_data").resolve())
    if args.resume:
        g_path, _ = resolve_resume(args.resume, out)
        settings = resumed_settings(given, read_train_config(g_path), args, out)
        if not settings.get("data"):
            raise ValueError(f"--resume {args.resume}: the checkpoint does not say which data it trained on: pass --data")
    else:
        settings = dict(given)
    for key, value in DEFAULTS.items():
        if settings.get(key) is None:
            settings[key] = value
    for key, default in zip(("log_every", "eval_every", "save_every"), DEMO_INTERVALS if args.demo else INTERVALS):
        if settings.get(key) is None:
            settings[key] = default
    if args.demo:
        settings["model_config"] = settings.get("model_config") or "tiny"
        if settings.get("steps") is None and settings.get("epochs") is None:
            settings["steps"] = DEMO_STEPS

    # Names and extra arguments are checked before any data is made or read.
    record_g = optimizer_info(settings["optimizer"])
    record_d = optimizer_info(settings.get("optimizer_d") or settings["optimizer"])
    for record in (record_g, record_d):
        record.cls  # raises NotImplementedYet (a clear message) for a registered but unwritten one
    check_optim_args(record_g, settings["optim_args"])
    if settings.get("optim_args_d") is not None:
        check_optim_args(record_d, settings["optim_args_d"], "--optim-arg-d")
    elif record_d.name == record_g.name:
        check_optim_args(record_d, settings["optim_args"])
    if settings.get("betas") is not None:
        for record in {record_g.name: record_g, record_d.name: record_d}.values():
            check_betas(record, tuple(settings["betas"]))

    if args.demo:
        cfg = get_config(settings["model_config"])
    else:
        data = Path(settings["data"])
        if not data.is_dir():
            raise FileNotFoundError(f"--data {data}: no such folder")
        cfg, settings["model_config"] = model_config_for(settings["model_config"], data, announce=True)
    if not args.resume:
        for path, which in ((args.pretrained_g, "generator"), (args.pretrained_d, "discriminator")):
            if path:
                check_pretrained(path, which, cfg, settings["model_config"] or "the experiment's")
    if args.demo:
        _demo_data(Path(settings["data"]), settings["model_config"], settings["seed"])
    fields = {k: v for k, v in settings.items() if k in _train_fields()}
    return TrainConfig(
        **fields, run_dir=str(out), resume=args.resume, reset_optimizer=args.reset_optimizer,
        pretrained_g=args.pretrained_g, pretrained_d=args.pretrained_d,
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


class _Signals:
    """SIGINT / SIGTERM during training: ask the loop to save the current step and stop.

    Before the loop is running (``stop.armed`` False) a signal interrupts at once, as usual. While it
    runs, a signal only sets the request: the loop finishes its iteration, writes the checkpoint
    atomically and raises :class:`~rvc_optim.train.loop.Interrupted`; a second signal while it saves
    is recorded and waits for the write.
    """

    def __init__(self, stop) -> None:
        self.stop = stop
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        if self.stop.signum is None:
            self.stop.signum = signum
        if not self.stop.armed:
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        # After a stop was asked for, the process only reports and exits: a further Ctrl-C then would
        # interrupt the teardown (tqdm's finaliser, say) with a traceback, so it is ignored.
        stopping = self.stop.signum is not None
        for sig, handler in self.previous.items():
            signal.signal(sig, signal.SIG_IGN if stopping else handler)


def run(args: argparse.Namespace) -> int:
    from rvc_optim.train.loop import Interrupted, ResumeError, StopRequest, TrainingStopped, train

    stop = StopRequest()
    try:
        with _Signals(stop):
            tc = config_from_args(args)
            with warnings.catch_warnings():
                # One line per warning, without the source line torch's formatter would add.
                warnings.simplefilter("default")
                result = train(tc, stop=stop)
    except Interrupted as err:
        if err.checkpoint is not None:
            print(f"saved step {err.step}; resume with: rvc-optim train --resume {err.run_dir}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        print("rvc-optim train: interrupted before training started; nothing saved", file=sys.stderr)
        return 128 + (stop.signum or signal.SIGINT)
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
    print(f"done: {result.step} steps ({result.epochs_done:g} epochs), {result.seconds_per_step:.2f} s/step, "
          f"{result.skipped_steps} skipped")
    if result.history:
        print(f"mel loss (x c_mel): {result.trend('loss_mel')}; generator total: {result.trend('loss_g')}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"model for inference: {result.export}")
    if args.demo and not args.no_index:
        print("index: not built (the demo's features are stand-ins, not HuBERT's)")
    elif not args.no_index:
        from rvc_optim.prepare.cli import build_index_for_run

        build_index_for_run(tc.data, result.export)
    return 0
