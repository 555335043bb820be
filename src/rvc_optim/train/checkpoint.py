"""Training checkpoints ``G_<step>.pth`` / ``D_<step>.pth``, readable by RVC's and Applio's tools.

Each file is a dict with RVC's keys::

    model          state dict with legacy weight-norm names (X.weight_g / X.weight_v); for optimizers
                   with train/eval modes (schedule-free), the evaluation weights, which RVC's tools use
    iteration      the epoch (1-based), as RVC stores it
    optimizer      the optimizer's state_dict(); for AdamW in RVC's layout (one group, RVC's parameter
                   order), which RVC's trainer loads to continue our runs
    learning_rate  the initial learning rate (RVC stores hps.train.learning_rate, not the current one)

and ours::

    optimizer_groups  the optimizer's own state_dict() (the registry's groups) where ``optimizer`` holds
                      RVC's layout
    model_train       training-mode weights (only for optimizers with train/eval modes), so resuming
                      never converts between the two points
    optimizer_name    registry name; resuming with another optimizer is refused unless asked for
    scaler            GradScaler state (fp16) or None        scheduler   LR scheduler state or None
    step              optimizer steps taken (global)         data        epoch, finished batches, seed
    rng               torch / CUDA / numpy / python RNG states, one entry per rank (G file only)
    skipped_in_a_row  consecutive skipped steps so far       config      the model config (dict)
    driver_steps      steps the protocol driver has taken (its curvature-refresh schedule)
    train_config      the training settings (dict)

Everything is plain tensors, numbers, strings, lists and dicts, so ``torch.load(...,
weights_only=True)`` reads it. Files are written atomically: a temp file in the same folder, fsync,
``os.replace``, fsync of the folder; a crash mid-write leaves the previous file intact and no
partial file under the final name (RVC writes in place).
"""

from __future__ import annotations

import os
import random
import re
import zipfile
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from rvc_optim.train.weight_norm_keys import load_rvc_state_dict, to_legacy_state_dict

__all__ = [
    "atomic_save",
    "checkpoint_pairs",
    "latest_checkpoint",
    "resolve_resume",
    "prune_checkpoints",
    "load_checkpoint",
    "load_pretrained",
    "check_pretrained",
    "read_train_config",
    "remove_orphaned_temp_files",
    "rvc_optimizer_state",
    "capture_rng",
    "restore_rng",
]

_NAME = re.compile(r"^([GD])_(\d+)\.pth$")
# The temp files atomic_save and the loop's JSON writer leave behind when killed mid-write.
_TEMP = re.compile(r"^\.(?:[GD]_\d+\.pth|config\.json|train_log\.csv)\..*tmp$")


def atomic_save(obj: Any, path: str | os.PathLike[str], durable: bool = True) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: temp file in the same folder + fsync + ``os.replace``.

    The file gets the user's normal mode (``0666`` less the umask), not the temp file's ``0600``.
    On any failure (including KeyboardInterrupt) the temp file is removed and an existing ``path``
    is untouched. ``durable=False`` skips the fsyncs (caches that can be rebuilt).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not possible on every platform (Windows), which is fine.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_pairs(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path, Path]]:
    """``(step, G path, D path)`` for every step that has both files, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found: dict[int, dict[str, Path]] = {}
    for p in run_dir.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.setdefault(int(m.group(2)), {})[m.group(1)] = p
    return [(step, f["G"], f["D"]) for step, f in sorted(found.items()) if "G" in f and "D" in f]


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> tuple[Path, Path] | None:
    """The newest complete ``(G, D)`` pair in ``run_dir`` (by the step in the name), or None."""
    pairs = checkpoint_pairs(run_dir)
    return (pairs[-1][1], pairs[-1][2]) if pairs else None


def resolve_resume(spec: str, run_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``--resume`` value -> ``(G path, D path)``.

    ``"latest"``: the newest pair in ``run_dir``. A path to ``G_<n>.pth`` or ``D_<n>.pth``: that
    pair (the other file must be beside it). A folder: its newest pair.
    """
    if spec == "latest":
        found = latest_checkpoint(run_dir)
        if found is None:
            raise FileNotFoundError(f"--resume latest: no G_<step>.pth / D_<step>.pth pair in {run_dir}")
        return found
    p = Path(spec)
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise FileNotFoundError(f"--resume {spec}: no G_<step>.pth / D_<step>.pth pair in that folder")
        return found
    m = _NAME.match(p.name)
    if not m:
        raise ValueError(f"--resume {spec}: expected 'latest', a run folder, or a G_<step>.pth / D_<step>.pth file")
    g, d = p.with_name(f"G_{m.group(2)}.pth"), p.with_name(f"D_{m.group(2)}.pth")
    for q in (g, d):
        if not q.is_file():
            raise FileNotFoundError(f"--resume {spec}: {q} does not exist (G and D are resumed together)")
    return g, d


def prune_checkpoints(run_dir: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` (G, D) pairs (``keep_last <= 0``: keep all).

    Returns the deleted paths. Only files named exactly ``G_<n>.pth`` / ``D_<n>.pth`` are touched.
    """
    if keep_last <= 0:
        return []
    removed: list[Path] = []
    for _, g, d in checkpoint_pairs(run_dir)[:-keep_last]:
        for p in (g, d):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def remove_orphaned_temp_files(folder: str | os.PathLike[str], pattern: str = "") -> list[Path]:
    """Delete the temp files a write killed mid-way left in ``folder`` (this trainer's names only:
    ``.G_<n>.pth.*.tmp``, ``.D_<n>.pth.*.tmp``, ``.config.json.tmp``, ``.train_log.csv.tmp``; or those matching the glob
    ``pattern`` where given). Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.glob(pattern) if pattern else (p for p in folder.iterdir() if _TEMP.match(p.name))
    removed = []
    for p in found:
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _torch_load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` with one clear line for a file that is not a checkpoint
    (never torch's advice to load it with ``weights_only=False``)."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # mmap needs the zip format: older files are read whole
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file: each means "not a checkpoint"
        if zipfile.is_zipfile(path) and "Unsupported" in str(e):
            raise ValueError(f"{what} {path} holds Python objects besides tensors and plain data; "
                             "it is not an RVC checkpoint") from None
        size = path.stat().st_size
        raise ValueError(f"{what} {path} is not a PyTorch checkpoint ({size:,} bytes that torch cannot read: "
                         "truncated, or another kind of file)") from None


def load_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint") -> dict[str, Any]:
    """Read a checkpoint written by this trainer or by RVC/Applio (tensors and plain data only)."""
    path = Path(path)
    ckpt = _torch_load(path, what)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{what} {path} is not an RVC training checkpoint (no 'model' entry)")
    return ckpt


def read_train_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The training settings saved in a checkpoint (``{}`` for RVC's own, which hold none)."""
    return dict(load_checkpoint(path).get("train_config") or {})


def _shapes(sd: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in to_legacy_state_dict(sd).items() if hasattr(v, "shape")}


def _differing(a: Mapping[str, tuple], b: Mapping[str, tuple]) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _model_shapes(which: str, cfg) -> dict[str, tuple[int, ...]]:
    from rvc_optim.train.model import build_discriminator, build_generator

    with torch.device("meta"):
        model = build_generator(cfg) if which == "generator" else build_discriminator(cfg)
    return _shapes(model.state_dict())


def check_pretrained(path: str | os.PathLike[str], which: str, cfg, cfg_name: str) -> None:
    """``--pretrained-g/-d`` must be an RVC checkpoint of ``which`` ("generator"/"discriminator")
    for ``cfg``. Otherwise ValueError in one line: which model and config the file looks like, how
    many keys differ, at most five of them."""
    flag = "--pretrained-g" if which == "generator" else "--pretrained-d"
    got = _shapes(load_checkpoint(path, flag)["model"])
    diff = _differing(_model_shapes(which, cfg), got)
    if not diff:
        return
    from rvc_optim.train.config import get_config

    guesses = []
    for name in ("tiny", "32k", "40k", "48k"):
        for kind in ("generator", "discriminator"):
            guesses.append((len(_differing(_model_shapes(kind, get_config(name)), got)), kind, name))
    n, kind, name = min(guesses)
    looks = (f"it looks like the {kind} of the {name} config" if n == 0
             else f"it is closest to the {kind} of the {name} config, {n} keys off")
    raise ValueError(
        f"{flag} {path}: {len(diff)} of its keys differ from the {which} of the {cfg_name} config this run "
        f"trains ({looks}), e.g. {', '.join(diff[:5])}"
    )


def load_pretrained(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load RVC-format pretrained weights (e.g. ``f0G40k.pth``): only the ``"model"`` entry, strictly.

    Accepts legacy (``weight_g/weight_v``) or parametrized weight-norm names. Any missing or
    unexpected key or shape mismatch raises ``ValueError`` naming the file, the number of keys that
    differ and at most five of them (RVC's behaviour is a strict load too).
    """
    sd = load_checkpoint(path, "pretrained weights")["model"]
    diff = _differing(_shapes(model.state_dict()), _shapes(sd))
    if diff:
        raise ValueError(f"pretrained weights {path} do not fit this model: {len(diff)} keys differ "
                         f"(config mismatch?), e.g. {', '.join(diff[:5])}")
    load_rvc_state_dict(model, sd, strict=True)


# --------------------------------------------------------------------------------------------------
# RNG states as plain data (so weights_only loading works)
# --------------------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """The global RNG states of torch (CPU and every CUDA device), numpy and ``random``."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------
# The optimizer state in the layout RVC's own trainer loads
# --------------------------------------------------------------------------------------------------


def rvc_optimizer_state(optimizer: torch.optim.Optimizer, module: nn.Module) -> dict[str, Any] | None:
    """``optimizer``'s state as RVC's trainer would have saved it: one param group holding every
    parameter of ``module`` in its registration order (RVC's order: our models register their
    parameters as RVC's classes do), so that RVC's ``torch.optim.AdamW(net.parameters(), ...)``
    ``.load_state_dict`` takes it. None unless ``optimizer`` is an AdamW (RVC builds no other).

    The group's settings are those of the first group with weight decay (RVC's single group decays
    every parameter), ``initial_lr`` included where a scheduler set it (RVC's ExponentialLR resumes
    with ``last_epoch`` and needs it).
    """
    if not isinstance(optimizer, torch.optim.AdamW):
        return None
    ours = optimizer.state_dict()
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    params = list(module.parameters())
    groups = [g for g in ours["param_groups"] if g.get("weight_decay")] or ours["param_groups"]
    group = {k: v for k, v in groups[0].items() if k != "params"}
    group["params"] = list(range(len(params)))
    state = {j: ours["state"][index[id(p)]] for j, p in enumerate(params)
             if id(p) in index and index[id(p)] in ours["state"]}
    return {"state": state, "param_groups": [group]}
