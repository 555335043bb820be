"""RVC's retrieval index: list count, file name, and loading as RVC's inference loads it."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from rvc_optim import index as rvc_index
from rvc_optim.index import build_index, index_file_name, load_features, n_lists, write_index
from rvc_optim.train.config import get_config
from rvc_optim.train.demo_data import make_demo_experiment


@pytest.mark.parametrize("n, lists", [(10, 1), (39, 1), (1000, 25), (39 * 300, 300), (100_000, 2564), (2_000_000, 22627)])
def test_n_lists_is_rvcs_rule(n, lists):
    assert n_lists(n) == max(1, min(int(16 * np.sqrt(n)), n // 39)) == lists


@pytest.mark.parametrize("layout", ["rvc", "applio"])
def test_index_of_an_experiment_loads_as_rvc_loads_it(tmp_path, layout):
    root = tmp_path / "logs" / "voice"
    make_demo_experiment(root, get_config("tiny"), n_items=4, seconds=1.5, layout=layout)
    features = load_features(root)
    path = write_index(root)
    n = n_lists(len(features))
    assert path == root / index_file_name(n, "voice") and path.name == f"added_IVF{n}_Flat_nprobe_1_voice_v2.index"
    index = faiss.read_index(str(path))
    assert index.ntotal == len(features) and faiss.extract_index_ivf(index).nlist == n
    assert faiss.extract_index_ivf(index).nprobe == 1
    stored = index.reconstruct_n(0, index.ntotal)  # what RVC's inference does with it
    assert stored.shape == features.shape
    _, ids = index.search(features[:5], 1)
    assert np.allclose(stored[ids[:, 0]], features[:5], atol=1e-6)
    assert not list(root.glob(".*.tmp"))


def test_rebuild_replaces_the_old_index_and_writes_where_asked(tmp_path):
    root = tmp_path / "voice"
    make_demo_experiment(root, get_config("tiny"), n_items=4, seconds=1.5)
    old = tmp_path / "run" / "added_IVF99_Flat_nprobe_1_model_v2.index"
    old.parent.mkdir()
    old.write_bytes(b"old")
    path = write_index(root, tmp_path / "run", name="model")
    assert path.parent == tmp_path / "run" and path.name.endswith("_model_v2.index")
    assert not old.exists() and not list(root.glob("*.index"))


def test_very_large_sets_are_reduced_by_kmeans(monkeypatch):
    monkeypatch.setattr(rvc_index, "KMEANS_ABOVE", 500)
    monkeypatch.setattr(rvc_index, "KMEANS_CENTERS", 100)
    x = np.random.default_rng(0).standard_normal((600, 768)).astype(np.float32)
    index, n = build_index(x)
    assert index.ntotal == 100 and n == n_lists(100) == 2


def test_no_features_is_a_clear_error(tmp_path):
    root = tmp_path / "voice"
    make_demo_experiment(root, get_config("tiny"), n_items=2, seconds=1.5)
    for p in (root / "3_feature768").glob("*.npy"):
        p.unlink()
    with pytest.raises(ValueError, match="holds no features"):
        load_features(root)
