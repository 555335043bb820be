"""The exported small model: RVC's layout, and it loads back the way RVC's inference loads it."""

from __future__ import annotations

import pytest
import torch

from rvc_optim.train.config import get_config
from rvc_optim.train.export import export_small_model, load_exported
from rvc_optim.train.model import build_generator




def _inputs(cfg, frames: int = 40):
    g = torch.Generator().manual_seed(0)
    phone = torch.randn(1, frames, cfg.feature_dim, generator=g)
    pitchf = 120.0 + 40.0 * torch.rand(1, frames, generator=g)
    pitch = torch.randint(1, 255, (1, frames), generator=g)
    return phone, torch.tensor([frames]), pitch, pitchf, torch.tensor([0])


@pytest.mark.parametrize("name", ["tiny", "40k"])
def test_export_layout(name, tmp_path):
    cfg = get_config(name)
    g = build_generator(cfg)
    path = export_small_model(g, cfg, tmp_path / "voice.pth", epoch=12)
    cpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(cpt) == {"weight", "config", "info", "sr", "f0", "version"}
    assert cpt["info"] == "12epoch" and cpt["f0"] == 1 and cpt["version"] == "v2"
    assert cpt["sr"] == f"{cfg.sample_rate // 1000}k"
    assert cpt["config"] == cfg.export_list() and cpt["config"][1] == 32
    assert not any("enc_q" in k for k in cpt["weight"])
    assert all(v.dtype == torch.float16 for v in cpt["weight"].values())
    assert any(k.endswith(".weight_g") for k in cpt["weight"]), "legacy weight-norm names expected"
    assert not any("parametrizations" in k for k in cpt["weight"])
    expected = {k for k in g.state_dict() if not k.startswith("enc_q")}
    assert len(cpt["weight"]) == len(expected)
    if name == "40k":
        assert cpt["sr"] == "40k"
    assert [p.name for p in tmp_path.iterdir()] == ["voice.pth"], "temp files left behind"


def test_exported_model_loads_back_and_infers_like_the_original(tmp_path):
    cfg = get_config("tiny")
    torch.manual_seed(0)
    g = build_generator(cfg).eval()
    path = export_small_model(g, cfg, tmp_path / "voice.pth", epoch=1)
    loaded = load_exported(path)
    assert not hasattr(loaded, "enc_q")
    # The export is fp16: compare with the original rounded to fp16 the same way, computing in fp32.
    with torch.no_grad():
        for p in g.parameters():
            p.copy_(p.half().float())
    args = _inputs(cfg)
    torch.manual_seed(5)
    ref = g.infer(*args)[0]
    torch.manual_seed(5)
    out = loaded.infer(*args)[0]
    assert out.shape == ref.shape == (1, 1, 40 * cfg.hop_length)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
