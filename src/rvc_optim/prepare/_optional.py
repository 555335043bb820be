"""Lazy imports of the optional ``prepare`` extra, failing with one line that names the extra."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import sys
import types

__all__ = ["MissingDependency", "require"]


class MissingDependency(ImportError):
    """An optional package of ``rvc-optim[prepare]`` is not installed (the message says what to run)."""


def require(module: str, purpose: str) -> types.ModuleType:
    """Import ``module`` (for ``purpose``, e.g. "f0 method 'pm'") or raise :class:`MissingDependency`."""
    _shield_broken_torchaudio()
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name == "pkg_resources":
            return _import_without_pkg_resources(module)
        dist = module.split(".")[0]
        raise MissingDependency(
            f"{purpose} needs the package {dist!r}, which is not installed: pip install 'rvc-optim[prepare]'"
        ) from None
    except ImportError:
        dist = module.split(".")[0]
        raise MissingDependency(
            f"{purpose} needs the package {dist!r}, which is not installed: pip install 'rvc-optim[prepare]'"
        ) from None


def _import_without_pkg_resources(module: str) -> types.ModuleType:
    """Import ``module`` whose ``__init__`` asks ``pkg_resources`` only for its own version (pyworld 0.3.5).

    setuptools >= 81 no longer ships ``pkg_resources``; a stand-in answering ``get_distribution(name)
    .version`` from :mod:`importlib.metadata` is registered for the import only, then removed.
    """
    shim = types.ModuleType("pkg_resources")
    shim.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
    sys.modules["pkg_resources"] = shim
    try:
        return importlib.import_module(module)
    finally:
        del sys.modules["pkg_resources"]


def _shield_broken_torchaudio() -> None:
    """Keep an installed but unloadable torchaudio from breaking torchcrepe, torchfcpe and transformers.

    All three import torchaudio at import time, yet none of the code paths used here needs it (audio
    is passed as 16 kHz arrays). A torchaudio built for another torch fails to load its binary with
    an OSError; in that case a placeholder module is registered whose every use raises that error.
    A working torchaudio, or none at all, is left alone.
    """
    if "torchaudio" in sys.modules:
        return
    try:
        importlib.import_module("torchaudio")
    except ImportError:
        return
    except OSError as err:
        sys.modules["torchaudio"] = _placeholder("torchaudio", err)
        sys.modules["torchaudio.transforms"] = sys.modules["torchaudio"].transforms


def _placeholder(name: str, err: OSError) -> types.ModuleType:
    def unusable(*_args, **_kwargs):
        raise OSError(f"torchaudio is installed but cannot load ({err}); reinstall it to match torch")

    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__version__ = "0+unloadable"
    mod.load = unusable
    transforms = types.ModuleType(f"{name}.transforms")
    transforms.__spec__ = importlib.machinery.ModuleSpec(f"{name}.transforms", None)
    transforms.Resample = unusable
    mod.transforms = transforms
    return mod
