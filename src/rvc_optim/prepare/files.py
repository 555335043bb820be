"""Atomic writes and content digests for the prepared experiment folder.

Every file is written to a temp file in its folder (``.<name>.<random>.tmp``) and moved into place
with ``os.replace``, so a killed run leaves either the old file, the new one, or a temp file that the
next run deletes (:func:`remove_temp_files`), never half a file under a real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_write", "write_wav", "write_npy", "write_text", "write_json", "digest", "file_record", "remove_temp_files"]


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, then move it to ``path`` (mode 0666 less the umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_wav(path: Path, audio: np.ndarray, sr: int) -> Path:
    """A mono float32 WAV (what RVC writes for its slices)."""
    import soundfile as sf

    return atomic_write(path, lambda f: sf.write(f, np.asarray(audio, np.float32), sr, format="WAV", subtype="FLOAT"))


def write_npy(path: Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda f: np.save(f, array))


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def digest(path: Path) -> str:
    """sha256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> list:
    """``[size, sha256]`` of a file, as the manifest keeps it."""
    return [path.stat().st_size, digest(path)]


def remove_temp_files(folders: list[Path]) -> int:
    """Delete temp files an interrupted run left in ``folders``; returns how many."""
    removed = 0
    for folder in folders:
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                removed += 1
    return removed
