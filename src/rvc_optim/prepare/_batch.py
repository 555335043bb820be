"""Batched model inference without padding: clips are grouped so that a batch holds equal-length inputs."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["run_grouped"]


def _same_length_groups(clips: Sequence, key: Callable[[Any], int]) -> list[list[int]]:
    """Indices of ``clips`` grouped by ``key(clip)``: a batch of equal keys gives each clip its own result."""
    groups: defaultdict[int, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        groups[key(clip)].append(i)
    return list(groups.values())


def run_grouped(clips: Sequence, key: Callable, run: Callable[[list], list], max_batch: int) -> list:
    """``run`` on batches of at most ``max_batch`` clips sharing ``key``; results in the clips' order."""
    out: list = [None] * len(clips)
    for group in _same_length_groups(clips, key):
        for start in range(0, len(group), max_batch):
            idx = group[start:start + max_batch]
            for i, result in zip(idx, run([clips[i] for i in idx])):
                out[i] = result
    return out
