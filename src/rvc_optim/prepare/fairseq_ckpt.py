"""Read a fairseq checkpoint (RVC's ``hubert_base.pt``) without fairseq and without running its pickle.

First ``torch.load(weights_only=True)``, which reads plain checkpoints (fairseq's ``save_state``
stores ``cfg`` as plain dicts). Some checkpoints also pickle objects of fairseq or omegaconf classes
(a ``Dictionary`` in ``task_state``, an ``argparse.Namespace`` in ``args`` from older fairseq, an
omegaconf ``DictConfig``); weights_only refuses those. The fallback lists the classes the file names
(:func:`torch.serialization.get_unsafe_globals_in_checkpoint`), allowlists an inert stand-in for
each under that name, and loads with weights_only again: a stand-in only records the arguments and
state it is given, so no code from the file runs. Stand-ins are then turned into plain dicts.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_fairseq_checkpoint"]


class _StandIn:
    """Takes the place of a class a checkpoint names; keeps constructor arguments and pickled state."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        inst = super().__new__(cls)
        inst.args, inst.state = args, None
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _plain(obj: Any) -> Any:
    """Stand-ins -> their state as plain data (omegaconf nodes -> their values), recursively."""
    if isinstance(obj, _StandIn):
        state = obj.state if obj.state is not None else (obj.args[0] if len(obj.args) == 1 else list(obj.args))
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | type(None)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (dict state, slot state)
        if isinstance(state, dict) and ("_content" in state or "_val" in state):
            state = state.get("_content", state.get("_val"))  # omegaconf containers and value nodes
        return _plain(state)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _load_with_stand_ins(path: Path, names: list[str]) -> Any:
    stand_ins = []
    for name in names:
        module, _, qualname = name.rpartition(".")
        stand_ins.append((type(qualname, (_StandIn,), {"__module__": module}), name))
    with torch.serialization.safe_globals(stand_ins):
        return _plain(torch.load(path, map_location="cpu", weights_only=True))


def _read(path: Path) -> tuple[Any, str]:
    """The unpickled checkpoint and how it was read (``weights_only`` or ``stand-ins for ...``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError as err:
        refused = err
    except Exception as err:  # not a zip or legacy torch file, truncated, unreadable
        raise ValueError(f"{path} is not a readable torch checkpoint ({str(err).splitlines()[0]})") from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        names = []
    if not names:  # refused for another reason than foreign classes: a damaged file
        raise ValueError(f"{path} is not a readable torch checkpoint ({str(refused).splitlines()[0]})")
    try:
        return _load_with_stand_ins(path, names), f"stand-ins for {', '.join(names)}"
    except Exception as err:
        raise ValueError(f"{path}: cannot read this checkpoint safely ({str(err).splitlines()[0]})") from None


def load_fairseq_checkpoint(path: str | Path) -> tuple[dict, str]:
    """``({"model": state_dict, "model_cfg": dict, "task_cfg": dict}, how)`` from a fairseq checkpoint.

    The configuration comes from ``cfg["model"]``/``cfg["task"]`` or, in older files, the flat
    ``args`` namespace (both parts read from it). ValueError (one line) for anything that is not
    a fairseq checkpoint with a ``model`` state_dict of tensors.
    """
    path = Path(path)
    raw, how = _read(path)
    if isinstance(raw, _StandIn):
        raw = _plain(raw)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise ValueError(f"{path} is not a fairseq checkpoint (no 'model' state_dict)")
    state = raw["model"]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: 'model' entry {bad[0]!r} is not a tensor")
    cfg, args = raw.get("cfg"), raw.get("args")
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        model_cfg, task_cfg = cfg["model"], cfg.get("task") or {}
    elif isinstance(args, dict):
        model_cfg = task_cfg = args
    else:
        raise ValueError(f"{path}: no configuration found (neither cfg['model'] nor args)")
    return {"model": state, "model_cfg": model_cfg, "task_cfg": task_cfg}, how
