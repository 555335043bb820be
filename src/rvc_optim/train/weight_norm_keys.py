"""Converting state dicts between the two weight-norm namings.

RVC (and the checkpoints it ships, e.g. ``f0G40k.pth``) uses the legacy ``torch.nn.utils.weight_norm``,
whose tensors are ``X.weight_g`` (magnitude, ``[out, 1, ...]``) and ``X.weight_v`` (direction, full
shape). This project's model uses ``torch.nn.utils.parametrizations.weight_norm``, whose tensors are
``X.parametrizations.weight.original0`` (= g) and ``X.parametrizations.weight.original1`` (= v).
The values are the same; only the names differ.

Torch's parametrized weight norm registers a load-state-dict pre-hook that renames legacy keys, so
``model.load_state_dict(legacy_sd, strict=True)`` already works; :func:`load_rvc_state_dict` does
the renaming itself so it does not depend on that hook and reports unmatched keys in one message.
Save with :func:`to_legacy_state_dict` to stay loadable by RVC and Applio front ends.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, TypeVar

import torch
from torch import nn

__all__ = ["to_legacy_state_dict", "from_legacy_state_dict", "load_rvc_state_dict"]

_NEW_G = ".parametrizations.weight.original0"
_NEW_V = ".parametrizations.weight.original1"
_OLD_G = ".weight_g"
_OLD_V = ".weight_v"

V = TypeVar("V")


def _rename(sd: Mapping[str, V], pairs: tuple[tuple[str, str], ...]) -> "OrderedDict[str, V]":
    out: OrderedDict[str, V] = OrderedDict()
    for key, value in sd.items():
        new_key = key
        for old, new in pairs:
            if key.endswith(old):
                new_key = key[: -len(old)] + new
                break
        if new_key in out:
            raise ValueError(f"state dict holds both naming styles for the same tensor: {new_key!r}")
        out[new_key] = value
    metadata = getattr(sd, "_metadata", None)
    if metadata is not None:
        # torch's per-module version info; keyed by module prefix, so still valid after renaming.
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def to_legacy_state_dict(sd: Mapping[str, V]) -> "OrderedDict[str, V]":
    """``X.parametrizations.weight.original0/1`` → ``X.weight_g/weight_v``; other keys unchanged.

    Order is kept (RVC's checkpoints list ``bias, weight_g, weight_v``, which this reproduces).
    """
    return _rename(sd, ((_NEW_G, _OLD_G), (_NEW_V, _OLD_V)))


def from_legacy_state_dict(sd: Mapping[str, V]) -> "OrderedDict[str, V]":
    """``X.weight_g/weight_v`` → ``X.parametrizations.weight.original0/1``; other keys unchanged."""
    return _rename(sd, ((_OLD_G, _NEW_G), (_OLD_V, _NEW_V)))


def load_rvc_state_dict(
    model: nn.Module, sd: Mapping[str, torch.Tensor], strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load ``sd`` in either naming (legacy RVC or parametrized) into ``model``.

    With ``strict=True`` (RVC's behaviour for pretrained files) any missing or unexpected key, or any
    shape mismatch, raises ``RuntimeError``. Returns torch's ``(missing_keys, unexpected_keys)``.
    """
    return model.load_state_dict(from_legacy_state_dict(sd), strict=strict)
