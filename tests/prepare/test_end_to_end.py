"""Issue 18's whole path on synthetic speech-like audio: prepare (real f0 and a random-weights HuBERT)
-> train a few steps of the tiny config -> export -> index; the model and the index load as RVC's
inference loads them and convert a slice."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

import rvc_optim.prepare.features as features
from rvc_optim.cli import main
from rvc_optim.prepare.pipeline import prepare
from rvc_optim.train.config import get_config
from rvc_optim.train.export import load_exported

from .conftest import write_recordings

def test_recordings_to_model_and_index(tmp_path, capsys):
    embedder = features.save_random_embedder(tmp_path / "hubert", fmt="transformers")
    src, data, run = tmp_path / "rec", tmp_path / "logs" / "voice", tmp_path / "runs" / "voice"
    write_recordings(src)
    result = prepare(src, data, embedder=embedder, f0="pm", config=get_config("tiny"), jobs=2, min_seconds=5.0,
                     progress=False)
    assert result.files_used >= 3 and result.skipped

    code = main(["train", "--data", str(data), "--out", str(run), "--config", "tiny", "--steps", "3",
                 "--batch-size", "2", "--log-every", "0", "--eval-every", "0", "--save-every", "0",
                 "--no-tensorboard", "--no-progress", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    indexes = list(run.glob("added_IVF*_Flat_nprobe_1_voice_v2.index"))
    assert len(indexes) == 1 and "index for retrieval" in out

    # RVC's inference: the small model, then the index's vectors blended into the features (k=8, 1/d^2).
    net_g = load_exported(run / "voice.pth")
    index = faiss.read_index(str(indexes[0]))
    big = index.reconstruct_n(0, index.ntotal)
    feats = np.load(sorted((data / "3_feature768").glob("0_*.npy"))[0])
    score, ix = index.search(feats, k=8)
    weight = np.square(1 / score.clip(min=1e-9))
    weight /= weight.sum(axis=1, keepdims=True)
    feats = 0.75 * np.sum(big[ix] * weight[..., None], axis=1) + 0.25 * feats
    phone = torch.from_numpy(np.repeat(feats, 2, axis=0)).float()[None]  # 50 -> 100 frames/s
    frames = phone.shape[1]
    pitchf = torch.full((1, frames), 150.0)
    with torch.no_grad():
        audio = net_g.infer(phone, torch.tensor([frames]), torch.full((1, frames), 100), pitchf, torch.tensor([0]))[0]
    assert audio.shape[-1] == frames * get_config("tiny").hop_length and torch.isfinite(audio).all()
