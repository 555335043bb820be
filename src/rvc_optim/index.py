"""RVC's retrieval index: a faiss IVF index over an experiment's content features.

RVC's ``train_index`` (``infer-web.py``), and so this module:

* every ``<name>.npy`` of the feature folder (``3_feature768``, Applio ``extracted``), in sorted
  order, stacked to ``[N, 768]`` float32 and shuffled (our shuffle is seeded);
* above 200 000 rows, reduced to 10 000 k-means centres (RVC: scikit-learn's ``MiniBatchKMeans``;
  here faiss's own k-means, so scikit-learn is not needed);
* ``n = min(int(16 * sqrt(N)), N // 39)`` inverted lists (at least 1), ``IVF<n>,Flat``, ``nprobe`` 1;
  trained on all rows, then rows added 8192 at a time;
* written as ``added_IVF<n>_Flat_nprobe_1_<name>_v2.index``, the name RVC's and Applio's inference
  front ends look for (RVC also writes the ``trained_`` index and ``total_fea.npy``; inference does
  not read them, so we do not).

The mute slice's features (``mute.npy``) are not indexed: RVC keeps them outside the experiment.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["KMEANS_ABOVE", "KMEANS_CENTERS", "ADD_BATCH", "n_lists", "index_file_name", "load_features",
           "build_index", "write_index"]

KMEANS_ABOVE = 200_000
KMEANS_CENTERS = 10_000
ADD_BATCH = 8192


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("faiss is missing: pip install 'rvc-optim[prepare]'") from None
    return faiss


def n_lists(n_rows: int) -> int:
    """RVC's number of inverted lists for ``n_rows`` features: ``min(16 sqrt(N), N // 39)``, at least 1."""
    return max(1, min(int(16 * np.sqrt(n_rows)), n_rows // 39))


def index_file_name(n: int, name: str) -> str:
    return f"added_IVF{n}_Flat_nprobe_1_{name}_v2.index"


def load_features(experiment: str | os.PathLike[str]) -> np.ndarray:
    """The ``[N, 768]`` float32 features of an RVC or Applio experiment folder (mute excluded)."""
    from rvc_optim.train.data import find_experiment
    from rvc_optim.train.demo_data import LAYOUT_DIRS

    exp = find_experiment(experiment)
    folder = Path(experiment) / LAYOUT_DIRS[exp.layout]["feat"]
    files = sorted(p for p in folder.glob("*.npy") if not p.name.startswith("mute"))
    if not files:
        raise ValueError(f"{folder} holds no features (.npy): run rvc-optim prepare first")
    arrays = []
    for p in files:
        a = np.load(p)
        if a.ndim != 2 or a.shape[1] != 768:
            raise ValueError(f"{p}: features must be [frames, 768], got {list(a.shape)}")
        arrays.append(a.astype(np.float32))
    return np.concatenate(arrays, axis=0)


def build_index(features: np.ndarray, seed: int = 0):
    """RVC's trained and filled ``IVF<n>,Flat`` index over ``features`` (shuffled, k-means-reduced
    above :data:`KMEANS_ABOVE` rows); returns ``(index, n)``."""
    faiss = _faiss()
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(features[rng.permutation(len(features))], dtype=np.float32)
    if len(x) > KMEANS_ABOVE:
        kmeans = faiss.Kmeans(x.shape[1], KMEANS_CENTERS, niter=20, seed=seed, verbose=False)
        kmeans.train(x)
        x = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    n = n_lists(len(x))
    index = faiss.index_factory(x.shape[1], f"IVF{n},Flat")
    faiss.extract_index_ivf(index).nprobe = 1
    index.train(x)
    for start in range(0, len(x), ADD_BATCH):
        index.add(x[start : start + ADD_BATCH])
    return index, n


def write_index(experiment: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                name: str | None = None, seed: int = 0) -> Path:
    """Build the index of ``experiment``'s features and write it into ``out_dir`` (default: the
    experiment folder) as ``added_IVF<n>_Flat_nprobe_1_<name>_v2.index`` (``name`` defaults to the
    experiment folder's name), atomically; older indexes of that name there are removed."""
    faiss = _faiss()
    from rvc_optim.prepare.files import atomic_write

    experiment = Path(experiment)
    name = name or experiment.resolve().name
    out = Path(out_dir) if out_dir is not None else experiment
    index, n = build_index(load_features(experiment), seed=seed)
    path = out / index_file_name(n, name)
    atomic_write(path, lambda f: f.write(faiss.serialize_index(index).tobytes()))
    for old in out.glob(f"added_IVF*_Flat_nprobe_1_{name}_v2.index"):
        if old != path:
            old.unlink(missing_ok=True)
    return path
