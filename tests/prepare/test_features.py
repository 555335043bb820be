"""Content features: a random HuBERT saved as a transformers folder and as fairseq's hubert_base.pt
loads to the same layer-12 features, at RVC's frame count; bad checkpoints are one-line errors."""

from __future__ import annotations

import argparse
import sys
import types

import numpy as np
import pytest
import torch

from rvc_optim.prepare.features import feature_frames, load_embedder, save_random_embedder
from tests.prepare.synth import glide


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedders")
    return {fmt: save_random_embedder(root / ("hubert.pt" if fmt == "fairseq" else "hubert"), fmt=fmt)
            for fmt in ("transformers", "fairseq")}


@pytest.fixture(scope="module")
def reference(saved):
    return load_embedder(saved["transformers"])


def test_both_formats_give_the_same_layer12_features_at_rvcs_frame_count(saved, reference):
    fairseq = load_embedder(saved["fairseq"])
    assert "read with weights_only" in fairseq.origin
    audio = glide()
    clips = [audio[:400], audio[:719], audio[:720], audio[:16123], audio[100:16223]]
    ours, theirs = reference.batch(clips), fairseq.batch(clips)
    for a, b, clip in zip(ours, theirs, clips):
        assert a.dtype == np.float32 and a.shape == (feature_frames(len(clip)), 768)
        assert a.shape[0] == (len(clip) - 400) // 320 + 1
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(reference(clips[3]), ours[3], atol=1e-5)  # batched == one at a time


def test_layer12_is_the_last_hidden_state_before_any_projection(reference):
    wav = torch.from_numpy(glide()[:8000])[None]
    with torch.no_grad():
        last = reference.model(wav).last_hidden_state[0].numpy()
    np.testing.assert_allclose(reference(wav[0].numpy()), last, atol=1e-6)


def _resave(src, dst, edit):
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_older_fairseq_args_namespace_loads_through_stand_ins(saved, reference, tmp_path):
    def to_args(ckpt):
        cfg = ckpt.pop("cfg")
        ckpt["args"] = argparse.Namespace(**cfg["model"], normalize=False)

    path = _resave(saved["fairseq"], tmp_path / "old.pt", to_args)
    emb = load_embedder(path)
    assert "stand-ins for argparse.Namespace" in emb.origin
    audio = glide()[:4000]
    np.testing.assert_allclose(emb(audio), reference(audio), atol=1e-5)


class _Foreign:
    """A class pickled under another package's name; unpickling it would record its state in ``ran``."""

    ran: list = []

    def __init__(self, **state):
        self.__dict__.update(state)

    def __setstate__(self, state):
        _Foreign.ran.append(state)


def _save_with_foreign_classes(src, dst, monkeypatch, names, build):
    """Resave ``src`` with ``build(classes)`` merged in, the classes importable under ``names`` only while saving."""
    classes = {}
    for name in names:
        module, _, qualname = name.rpartition(".")
        classes[qualname] = type(qualname, (_Foreign,), {"__module__": module})
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            package = ".".join(parts[:i])
            monkeypatch.setitem(sys.modules, package, sys.modules.get(package) or types.ModuleType(package))
        setattr(sys.modules[module], qualname, classes[qualname])
    path = _resave(src, dst, lambda ckpt: ckpt.update(build(classes)))
    monkeypatch.undo()
    return path


def test_fairseq_classes_in_the_pickle_never_run(saved, reference, tmp_path, monkeypatch):
    """fairseq's Dictionary (hubert_base.pt's task_state) and an omegaconf cfg load without their packages."""
    def build(c):
        node = lambda value: c["AnyNode"](_val=value, _metadata=None, _parent=None)  # noqa: E731
        conf = lambda d: c["DictConfig"](_content={k: node(v) for k, v in d.items()}, _metadata=None)  # noqa: E731
        cfg = torch.load(saved["fairseq"], weights_only=True)["cfg"]
        return {"cfg": c["DictConfig"](_content={"model": conf(cfg["model"]), "task": conf(cfg["task"])}),
                "task_state": {"dictionaries": [c["Dictionary"](symbols=["<s>", "<pad>"])]}}

    names = ["fairseq.data.dictionary.Dictionary", "omegaconf.dictconfig.DictConfig", "omegaconf.nodes.AnyNode"]
    path = _save_with_foreign_classes(saved["fairseq"], tmp_path / "foreign.pt", monkeypatch, names, build)
    emb = load_embedder(path)
    assert all(name in emb.origin for name in names) and not _Foreign.ran
    audio = glide()[:4000]
    np.testing.assert_allclose(emb(audio), reference(audio), atol=1e-5)


def _drop(key):
    return lambda ckpt: ckpt["model"].pop(key)


def _misshape(key):
    return lambda ckpt: ckpt["model"].__setitem__(key, torch.zeros(3))


def _extra(ckpt):
    ckpt["model"]["decoder.weight"] = torch.zeros(1)


@pytest.mark.parametrize("edit, message", [
    (_drop("encoder.layers.11.fc2.bias"),
     r"1 HuBERT tensors are missing .* encoder.layers.11.feed_forward.output_dense.bias"),
    (_misshape("encoder.layers.0.fc1.weight"), r"encoder.layers.0.fc1.weight has shape \(3,\), .* expects \(64, 768\)"),
    (_extra, r"key 'decoder.weight' is not part of a fairseq HuBERT"),
    (lambda c: c.pop("cfg"), r"no configuration found"),
])
def test_bad_fairseq_checkpoints_are_one_line_errors(saved, tmp_path, edit, message):
    path = _resave(saved["fairseq"], tmp_path / "bad.pt", edit)
    with pytest.raises(ValueError, match=message) as err:
        load_embedder(path)
    assert "\n" not in str(err.value)


def test_other_bad_embedders_are_one_line_errors(saved, tmp_path):
    with pytest.raises(ValueError, match="does not exist: give a transformers HuBERT/ContentVec folder"):
        load_embedder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no readable config.json"):
        load_embedder(tmp_path / "empty")
    (tmp_path / "w2v").mkdir()
    (tmp_path / "w2v" / "config.json").write_text('{"model_type": "wav2vec2"}')
    with pytest.raises(ValueError, match="model_type 'wav2vec2', expected 'hubert'"):
        load_embedder(tmp_path / "w2v")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    with pytest.raises(ValueError, match="is not a readable torch checkpoint"):
        load_embedder(tmp_path / "junk.pt")


def test_too_short_or_non_finite_audio(reference):
    with pytest.raises(ValueError, match="at least 400 samples"):
        reference(np.zeros(399, np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        reference(np.full(800, np.inf, np.float32))


def test_a_model_without_layer_12_is_refused(tmp_path):
    path = save_random_embedder(tmp_path / "six", layers=6)
    with pytest.raises(ValueError, match="has 6 layers of width 768; RVC v2 needs layer 12"):
        load_embedder(path)
