"""The RVC v2 model: RVC's names and shapes, strict loading of RVC-style state dicts, and the
forward passes of the tiny config (shapes, finiteness, gradients, flow invertibility)."""

from __future__ import annotations

import io
import json
from importlib import resources

import pytest
import torch

from rvc_optim.train.config import ModelConfig, get_config
from rvc_optim.train.model import build_discriminator, build_generator, commons
from rvc_optim.train.model.attentions import MultiHeadAttention, _absolute_to_relative, _relative_to_absolute
from rvc_optim.train.model.models import SineGen, SynthesizerTrnMs768NSFsid
from rvc_optim.train.weight_norm_keys import from_legacy_state_dict, load_rvc_state_dict, to_legacy_state_dict

SHAPES = json.loads(resources.files("rvc_optim").joinpath("data/rvc_v2_shapes.json").read_text())["models"]


def _legacy_shapes(module: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in to_legacy_state_dict(module.state_dict()).items()]


def _assert_same_parameters(ours: list[tuple[str, list[int]]], ref: list[list]) -> None:
    ref_pairs = [(name, list(shape)) for name, shape in ref]
    ours_d, ref_d = dict(ours), dict(ref_pairs)
    missing = sorted(set(ref_d) - set(ours_d))
    extra = sorted(set(ours_d) - set(ref_d))
    wrong = sorted((k, ours_d[k], ref_d[k]) for k in set(ours_d) & set(ref_d) if ours_d[k] != ref_d[k])
    assert not missing and not extra and not wrong, (
        f"missing {missing[:5]} ({len(missing)}), unexpected {extra[:5]} ({len(extra)}), "
        f"wrong shapes (name, ours, RVC) {wrong[:5]} ({len(wrong)})"
    )
    assert [k for k, _ in ours] == [k for k, _ in ref_pairs], "same names, but not in RVC's order"


# ---------------------------------------------------------------------- RVC's names and shapes
@pytest.mark.parametrize("name", ["32k", "40k", "48k"])
def test_generator_matches_rvc_names_and_shapes(name: str) -> None:
    ref = SHAPES[f"generator_v2_{name}"]
    cfg = get_config(name)
    assert cfg.generator_args() == ref["config"], "generator_args differ from RVC's constructor arguments"
    _assert_same_parameters(_legacy_shapes(build_generator(cfg)), ref["parameters"])


def test_generator_40k_counts() -> None:
    g = build_generator(get_config("40k"))
    assert len(g.state_dict()) == 560
    assert sum(p.numel() for p in g.parameters()) == 36_458_818


def test_discriminator_matches_rvc_names_shapes_and_counts() -> None:
    d = build_discriminator(get_config("40k"))
    _assert_same_parameters(_legacy_shapes(d), SHAPES["discriminator_v2"]["parameters"])
    assert len(d.state_dict()) == 165
    assert sum(p.numel() for p in d.parameters()) == 71_410_594


def test_generator_accepts_rvc_exported_config_list() -> None:
    cfg = get_config("tiny")
    g = SynthesizerTrnMs768NSFsid(*cfg.export_list(), is_half=False)
    assert g.segment_size == 32 and g.sample_rate == 16000
    with pytest.raises(TypeError, match="unexpected keyword"):
        SynthesizerTrnMs768NSFsid(*cfg.export_list(), bogus=1)


# ---------------------------------------------------------------------- tiny model helpers
def _tiny_batch(cfg, lengths=(30, 24), seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(lengths)
    lengths_t = torch.tensor(lengths)
    mask = commons.sequence_mask(lengths_t, t)
    phone = torch.randn(b, t, cfg.feature_dim, generator=gen)
    pitch = torch.randint(1, 256, (b, t), generator=gen) * mask
    pitchf = (torch.rand(b, t, generator=gen) * 300 + 80) * mask
    pitchf[:, :3] = 0.0  # some unvoiced frames
    spec = torch.rand(b, cfg.spec_channels, t, generator=gen) * mask.unsqueeze(1)
    sid = torch.tensor([0, cfg.spk_embed_dim - 1][:b])
    return phone, lengths_t, pitch, pitchf, spec, lengths_t, sid


@pytest.fixture(scope="module")
def tiny_cfg():
    return get_config("tiny")


@pytest.fixture(scope="module")
def tiny_generator(tiny_cfg):
    torch.manual_seed(1)
    return build_generator(tiny_cfg)


def _randomise(model: torch.nn.Module, seed: int = 2) -> None:
    """Fresh models have zero flow outputs (post starts at zero); give every tensor some value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p + 0.05 * torch.randn(p.shape, generator=gen))


# ---------------------------------------------------------------------- forward passes
def test_tiny_forward_shapes_finite_and_backward(tiny_cfg, tiny_generator) -> None:
    g = tiny_generator
    batch = _tiny_batch(tiny_cfg)
    o, ids_slice, x_mask, y_mask, (z, z_p, m_p, logs_p, m_q, logs_q) = g(*batch)
    b, t = 2, 30
    seg = tiny_cfg.segment_frames
    assert o.shape == (b, 1, seg * tiny_cfg.hop_length)
    assert ids_slice.shape == (b,) and ids_slice.dtype == torch.long
    lengths = batch[1]
    assert bool(((ids_slice >= 0) & (ids_slice + seg <= lengths)).all()), f"slice {ids_slice} outside {lengths}"
    assert x_mask.shape == y_mask.shape == (b, 1, t)
    for name, tensor in zip(("z", "z_p", "m_p", "logs_p", "m_q", "logs_q"), (z, z_p, m_p, logs_p, m_q, logs_q)):
        assert tensor.shape == (b, tiny_cfg.inter_channels, t), name
        assert torch.isfinite(tensor).all(), name
        assert (tensor[1, :, 24:] == 0).all(), f"{name} not masked past the length"
    assert torch.isfinite(o).all() and o.abs().max() <= 1

    loss = o.square().mean() + (z_p - m_p).square().mean() + logs_q.mean() + logs_p.mean()
    g.zero_grad()
    loss.backward()
    no_grad = [n for n, p in g.named_parameters() if p.grad is None]
    # The flow's `post` starts at zero, so gradients still reach every tensor.
    assert not no_grad, f"no gradient for {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in g.parameters())


def test_tiny_infer(tiny_cfg, tiny_generator) -> None:
    phone, lengths, pitch, pitchf, _, _, sid = _tiny_batch(tiny_cfg)
    o, x_mask, (z, z_p, m_p, logs_p) = tiny_generator.infer(phone, lengths, pitch, pitchf, sid)
    assert o.shape == (2, 1, 30 * tiny_cfg.hop_length)
    assert x_mask.shape == (2, 1, 30)
    assert torch.isfinite(o).all()
    assert z.shape == z_p.shape == m_p.shape == logs_p.shape == (2, tiny_cfg.inter_channels, 30)


def test_flow_reverse_inverts_forward(tiny_cfg) -> None:
    g = build_generator(tiny_cfg)
    _randomise(g.flow)  # a fresh flow is the identity (zero-initialised `post`)
    x = torch.randn(2, tiny_cfg.inter_channels, 20)
    mask = commons.sequence_mask(torch.tensor([20, 13]), 20).unsqueeze(1).float()
    x = x * mask
    cond = torch.randn(2, tiny_cfg.gin_channels, 1)
    with torch.no_grad():
        y = g.flow(x, mask, g=cond)
        back = g.flow(y, mask, g=cond, reverse=True)
    assert (y - x).abs().max() > 1e-3, "flow is the identity; the test would prove nothing"
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)


def test_discriminator_outputs(tiny_cfg) -> None:
    d = build_discriminator(tiny_cfg)  # narrowed (disc_width_divisor), same names as RVC's
    assert [k for k, _ in _legacy_shapes(d)] == [k for k, _ in SHAPES["discriminator_v2"]["parameters"]]
    assert sum(p.numel() for p in d.parameters()) < 1_000_000
    n = 1000  # not a multiple of most periods: exercises the reflect padding
    y, y_hat = torch.randn(2, 1, n), torch.randn(2, 1, n)
    y_d_rs, y_d_gs, fmap_rs, fmap_gs = d(y, y_hat)
    assert len(y_d_rs) == len(y_d_gs) == len(fmap_rs) == len(fmap_gs) == 9
    assert [len(f) for f in fmap_rs] == [7] + [6] * 8
    for score in y_d_rs + y_d_gs:
        assert score.dim() == 2 and score.shape[0] == 2 and torch.isfinite(score).all()
    for period, fmap in zip((2, 3, 5, 7, 11, 17, 23, 37), fmap_rs[1:]):
        assert fmap[0].shape[-1] == period


# ---------------------------------------------------------------------- RVC checkpoints
def test_legacy_state_dict_loads_strictly_and_gives_identical_outputs(tiny_cfg) -> None:
    src = build_generator(tiny_cfg)
    _randomise(src)
    legacy = to_legacy_state_dict(src.state_dict())
    assert any(k.endswith(".weight_g") for k in legacy) and not any("parametrizations" in k for k in legacy)
    # What RVC's pretrained f0G40k.pth holds under "model"; round-trip through torch.save like a file.
    ckpt = {"model": legacy, "iteration": 1, "optimizer": None, "learning_rate": 1e-4}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    buf.seek(0)
    loaded = torch.load(buf, map_location="cpu", weights_only=True)["model"]

    dst_torch = build_generator(tiny_cfg)
    dst_torch.load_state_dict(loaded, strict=True)  # torch's own weight-norm compat hook
    dst_ours = build_generator(tiny_cfg)
    load_rvc_state_dict(dst_ours, loaded, strict=True)
    load_rvc_state_dict(build_generator(tiny_cfg), src.state_dict(), strict=True)  # new naming too

    batch = _tiny_batch(tiny_cfg)
    outs = []
    for model in (src, dst_torch, dst_ours):
        torch.manual_seed(123)
        with torch.no_grad():
            outs.append(model(*batch))
    for other in outs[1:]:
        torch.testing.assert_close(other[0], outs[0][0], rtol=0, atol=0)
        for a, b in zip(other[4], outs[0][4]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_discriminator_legacy_state_dict_loads_strictly() -> None:
    src_sd = build_discriminator().state_dict()
    legacy = to_legacy_state_dict(src_sd)
    assert len(legacy) == 165 and "discriminators.8.conv_post.weight_g" in legacy
    for load in (lambda m, sd: m.load_state_dict(sd, strict=True), load_rvc_state_dict):
        dst = build_discriminator()
        load(dst, legacy)
        for key, value in dst.state_dict().items():
            assert torch.equal(value, src_sd[key]), key


def test_load_rvc_state_dict_strict_rejects_mismatch(tiny_cfg) -> None:
    src = to_legacy_state_dict(build_generator(tiny_cfg).state_dict())
    src.pop("emb_g.weight")
    with pytest.raises(RuntimeError, match="emb_g.weight"):
        load_rvc_state_dict(build_generator(tiny_cfg), src, strict=True)


def test_weight_norm_key_renaming_round_trip() -> None:
    sd = {
        "dec.ups.0.bias": 1,
        "dec.ups.0.parametrizations.weight.original0": 2,
        "dec.ups.0.parametrizations.weight.original1": 3,
        "emb_g.weight": 4,
    }
    legacy = to_legacy_state_dict(sd)
    assert list(legacy) == ["dec.ups.0.bias", "dec.ups.0.weight_g", "dec.ups.0.weight_v", "emb_g.weight"]
    assert dict(from_legacy_state_dict(legacy)) == sd
    with pytest.raises(ValueError, match="both naming styles"):
        from_legacy_state_dict({**legacy, "dec.ups.0.parametrizations.weight.original0": 0})


# ---------------------------------------------------------------------- pieces
def test_relative_position_skew_matches_direct_indexing() -> None:
    length = 6
    x = torch.randn(2, 1, length, 2 * length - 1)
    absolute = _relative_to_absolute(x)
    i, j = torch.meshgrid(torch.arange(length), torch.arange(length), indexing="ij")
    torch.testing.assert_close(absolute, x[:, :, i, j - i + length - 1])
    p = torch.randn(2, 1, length, length)
    rel = _absolute_to_relative(p)
    expected = torch.zeros(2, 1, length, 2 * length - 1)
    expected[:, :, i, j - i + length - 1] = p
    torch.testing.assert_close(rel, expected)


def test_relative_attention_matches_explicit_formula() -> None:
    torch.manual_seed(0)
    heads, ch, w, t = 2, 8, 2, 7
    attn = MultiHeadAttention(ch, ch, heads, window_size=w).eval()
    x = torch.randn(1, ch, t)
    with torch.no_grad():
        out = attn(x, x)
        q = attn.conv_q(x).view(heads, ch // heads, t).transpose(1, 2) / (ch // heads) ** 0.5
        k = attn.conv_k(x).view(heads, ch // heads, t).transpose(1, 2)
        v = attn.conv_v(x).view(heads, ch // heads, t).transpose(1, 2)
        rel = torch.arange(t)[None, :] - torch.arange(t)[:, None]  # j - i
        inside = rel.abs() <= w
        ek = attn.emb_rel_k[0][(rel.clamp(-w, w) + w)] * inside[..., None]  # [T, T, d]
        ev = attn.emb_rel_v[0][(rel.clamp(-w, w) + w)] * inside[..., None]
        scores = q @ k.transpose(1, 2) + torch.einsum("hid,ijd->hij", q, ek)
        p = scores.softmax(-1)
        o = p @ v + torch.einsum("hij,ijd->hid", p, ev)
        expected = attn.conv_o(o.transpose(1, 2).reshape(1, ch, t))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_slice_segments_and_rand_slice() -> None:
    x = torch.arange(2 * 3 * 10, dtype=torch.float32).view(2, 3, 10)
    ids = torch.tensor([0, 6])
    out = commons.slice_segments(x, ids, 4)
    torch.testing.assert_close(out[0], x[0, :, 0:4])
    torch.testing.assert_close(out[1], x[1, :, 6:10])
    torch.testing.assert_close(commons.slice_segments2(x[:, 0], ids, 4), out[:, 0])
    seg, ids = commons.rand_slice_segments(x, torch.tensor([10, 5]), 5)
    assert seg.shape == (2, 3, 5) and 0 <= int(ids[0]) <= 5 and int(ids[1]) == 0


def test_sine_source_is_continuous_and_follows_f0() -> None:
    sr, upp = 16000, 160
    f0 = torch.full((1, 10), 200.0)
    f0[0, 5] = 230.0  # phase must stay continuous across a change of f0
    gen = SineGen(sr, sine_amp=0.1, noise_std=0.0)
    sine, uv, _ = gen(f0, upp)
    assert sine.shape == (1, 10 * upp, 1) and uv.shape == (1, 10 * upp, 1)
    inc = f0.repeat_interleave(upp, 1)[0] / sr
    expected = 0.1 * torch.sin(2 * torch.pi * torch.cumsum(inc.double(), 0)).float()
    torch.testing.assert_close(sine[0, :, 0], expected, atol=1e-4, rtol=0)
    unvoiced, uv2, _ = gen(torch.zeros(1, 3), upp)
    assert (uv2 == 0).all()
    assert unvoiced.std() == pytest.approx(0.1 / 3, rel=0.15)


# ---------------------------------------------------------------------- config
def test_config_values_match_rvc() -> None:
    cfg = get_config("40k")
    assert cfg.export_list() == [
        1025, 32, 192, 192, 768, 2, 6, 3, 0, "1", [3, 7, 11], [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        [10, 10, 2, 2], 512, [16, 16, 4, 4], 109, 256, 40000,
    ]  # fmt: skip
    assert [get_config(n).segment_frames for n in ("32k", "40k", "48k")] == [40, 32, 36]
    assert get_config(48000) is get_config("48k")
    assert cfg.effective_mel_fmax == 20000.0 and cfg.c_mel == 45 and cfg.c_kl == 1.0
    tiny = get_config("tiny")
    assert tiny.upsample_factor == tiny.hop_length and tiny.segment_frames == 24
    with pytest.raises(ValueError, match="unknown config"):
        get_config("44k")
    with pytest.raises(ValueError, match="hop_length"):
        tiny.replace(hop_length=200)


def test_config_rvc_json_round_trip(tmp_path) -> None:
    cfg = get_config("48k")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_rvc_json(), indent=4, sort_keys=True))
    assert ModelConfig.from_rvc_json(path) == cfg
    raw = cfg.to_rvc_json({"batch_size": 8})
    assert raw["train"]["batch_size"] == 8 and raw["train"]["segment_size"] == 17280
    assert raw["data"]["sampling_rate"] == 48000 and raw["data"]["mel_fmax"] is None
    assert "spec_channels" not in raw["model"] and raw["model"]["use_spectral_norm"] is False
    assert "disc_width_divisor" not in raw["model"]  # RVC's configs are written exactly as RVC's
    tiny = get_config("tiny")
    assert ModelConfig.from_rvc_dict(tiny.to_rvc_json()) == tiny  # keeps the narrow discriminator


def test_config_reads_applio_json_and_names_missing_keys(tmp_path) -> None:
    raw = get_config("32k").to_rvc_json()
    raw["data"]["sample_rate"] = raw["data"].pop("sampling_rate")  # Applio's key
    raw["model"]["text_enc_hidden_dim"] = 768
    path = tmp_path / "applio.json"
    path.write_text(json.dumps(raw))
    assert ModelConfig.from_rvc_json(path) == get_config("32k")
    del raw["data"]["hop_length"]
    path.write_text(json.dumps(raw))
    with pytest.raises(KeyError, match=r"applio\.json.*data\.hop_length"):
        ModelConfig.from_rvc_json(path)
