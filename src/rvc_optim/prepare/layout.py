"""Names and folders of a prepared experiment, RVC's or Applio's, and the manifest that makes prepare
resumable.

RVC names slice ``j`` of input file ``i`` ``<i>_<j>``; Applio ``<sid>_<i>_<j>``. A slice has five
files: the training-rate wav, the 16 kHz wav (``<name>.wav`` both), coarse f0 and f0 in Hz
(``<name>.wav.npy``), features (``<name>.npy``). The mute slice that RVC keeps in ``logs/mute`` is
written into the experiment's own folders as ``mute`` (so the experiment is self-contained).

``prepare_manifest.json`` records, for every input file used, its sha256, the settings it was
prepared with, its slices and the size and sha256 of each output file: a rerun skips an input only
when all of that still matches, and redoes it otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rvc_optim.prepare.files import file_record, write_json
from rvc_optim.train.demo_data import LAYOUT_DIRS

__all__ = ["Folders", "Manifest", "MANIFEST", "MUTE"]

MANIFEST = "prepare_manifest.json"
MUTE = "mute"
_KINDS = ("wav", "wav16k", "coarse", "hz", "feat")


@dataclass(frozen=True)
class Folders:
    """The experiment folder ``root`` in ``layout`` (``"rvc"`` or ``"applio"``) for ``speaker_id``."""

    root: Path
    layout: str
    speaker_id: int = 0

    @property
    def dirs(self) -> dict[str, Path]:
        return {kind: self.root / name for kind, name in LAYOUT_DIRS[self.layout].items()}

    def slice_name(self, file_index: int, slice_index: int) -> str:
        prefix = f"{self.speaker_id}_" if self.layout == "applio" else ""
        return f"{prefix}{file_index}_{slice_index}"

    def paths(self, name: str) -> dict[str, Path]:
        """The five files of slice ``name``, by kind (wav, wav16k, coarse, hz, feat)."""
        d = self.dirs
        return {"wav": d["wav"] / f"{name}.wav", "wav16k": d["wav16k"] / f"{name}.wav",
                "coarse": d["coarse"] / f"{name}.wav.npy", "hz": d["hz"] / f"{name}.wav.npy",
                "feat": d["feat"] / f"{name}.npy"}

    def filelist_files(self, name: str) -> list[Path]:
        """The four files a filelist row names, in RVC's column order."""
        p = self.paths(name)
        return [p["wav"], p["feat"], p["coarse"], p["hz"]]

    def slice_index(self, filename: str) -> int | None:
        """The input index ``i`` of a slice file (``<i>_<j>.<ext>``, Applio ``<sid>_<i>_<j>.<ext>``), else None."""
        stem = filename.split(".")[0]
        prefix = f"{self.speaker_id}_" if self.layout == "applio" else ""
        parts = stem[len(prefix):].split("_") if stem.startswith(prefix) else []
        return int(parts[0]) if len(parts) == 2 and all(p.isdigit() for p in parts) else None

    def remove_slices(self, keep=lambda index: False) -> int:
        """Delete the files of every slice whose input index ``keep`` rejects (by default all), e.g.
        before an input is redone (the new slicing may give fewer slices) or those of inputs no
        manifest entry owns (left by an interrupted run). Returns how many files went."""
        removed = 0
        for folder in self.dirs.values():
            for p in folder.iterdir() if folder.is_dir() else ():
                index = self.slice_index(p.name)
                if index is not None and not keep(index):
                    p.unlink(missing_ok=True)
                    removed += 1
        return removed

    def records(self, names: list[str]) -> dict[str, list]:
        """``{relative path: [size, sha256]}`` of every file of the slices ``names``."""
        out = {}
        for name in names:
            for path in self.paths(name).values():
                out[path.relative_to(self.root).as_posix()] = file_record(path)
        return out

    def intact(self, records: dict[str, list]) -> bool:
        """Whether every recorded file is still there with the recorded size and content."""
        for rel, (size, _) in records.items():
            p = self.root / rel
            if not p.is_file() or p.stat().st_size != size:
                return False
        return all(file_record(self.root / rel)[1] == sha for rel, (_, sha) in records.items())


@dataclass
class Manifest:
    """What a previous run prepared: ``settings`` of the folder and ``inputs`` by file name."""

    path: Path
    settings: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    mute: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> "Manifest | None":
        path = root / MANIFEST
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, raw["settings"], raw["inputs"], raw.get("mute", {}))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path} is not a manifest rvc-optim prepare wrote (corrupt?): delete the folder "
                             "or choose a new --out") from None

    def save(self) -> None:
        write_json(self.path, {"settings": self.settings, "inputs": self.inputs, "mute": self.mute})

    def next_index(self) -> int:
        return max((e["index"] for e in self.inputs.values()), default=-1) + 1
