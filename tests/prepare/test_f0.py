"""f0 estimators: accuracy on a known glide, unvoiced = 0, RVC's frame grid, batching, RMVPE loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rvc_optim.prepare._optional import MissingDependency, require
from rvc_optim.prepare.f0 import CENTS_FIRST_BIN, F0_METHODS, coarse_f0, f0_frames, make_f0_estimator
from rvc_optim.prepare.rmvpe import E2E, decode_salience, log_mel
from tests.prepare.synth import cents_error, frame_truth, glide

# crepe (full) is slow on a CPU (~0.5 s per frame here): it gets the first quarter second of voice only.
_CLIP_SECONDS = {"crepe": 0.5}


@pytest.fixture(scope="module")
def estimators():
    cache: dict = {}

    def get(method):
        if method not in cache:
            cache[method] = make_f0_estimator(method)
        return cache[method]

    return get


@pytest.mark.parametrize("method", [m for m in F0_METHODS if m != "rmvpe"])
def test_glide_is_tracked_within_30_cents_and_silence_is_zero(method, estimators):
    audio = glide()[: int(_CLIP_SECONDS.get(method, 10) * 16000)]
    f0 = estimators(method)(audio)
    assert f0.dtype == np.float32 and f0.shape == (len(audio) // 160 + 1,)
    truth, voiced, unvoiced = frame_truth(len(f0))
    # frame i is compared with the true f0 at 10 ms * i: this also checks the frame grid's origin
    assert np.median(cents_error(f0[voiced], truth[voiced])) < 30
    assert (f0[voiced] > 0).mean() > 0.95
    assert np.all(f0[unvoiced] == 0)


@pytest.mark.parametrize("n", [400, 1599, 1600, 1601, 8000, 59200])
@pytest.mark.parametrize("method", ["pm", "dio"])
def test_frame_count_is_rvcs(method, n, estimators):
    audio = glide(4.0)[:n]
    assert len(estimators(method)(audio)) == n // 160 + 1 == f0_frames(n)


def test_f0_frames_cover_the_features_as_rvcs_loader_aligns_them():
    """RVC's loader repeats each 50 fps feature frame twice and cuts f0 to that length: f0 must be longer.

    HuBERT gives ``(n - 400) // 320 + 1`` frames (test_features checks the embedder does).
    """
    for n in range(400, 40000, 7):
        spare = f0_frames(n) - 2 * ((n - 400) // 320 + 1)
        assert 1 <= spare <= 3, n


@pytest.mark.parametrize("method", ["crepe-tiny", "fcpe", "harvest"])
def test_batch_equals_one_at_a_time(method, estimators):
    est = estimators(method)
    audio = glide()
    clips = [audio[:8000], audio[4000:12000], audio[:11111]]
    for batched, clip in zip(est.batch(clips), clips):
        np.testing.assert_allclose(batched, est(clip), rtol=1e-4, atol=1e-3)


def test_unknown_method_and_bad_audio_are_one_line_errors(estimators):
    with pytest.raises(ValueError, match="unknown f0 method 'yin': choose one of pm, harvest"):
        make_f0_estimator("yin")
    with pytest.raises(ValueError, match="1-D 16 kHz mono"):
        estimators("pm")(np.zeros((2, 1600), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        estimators("dio")(np.full(1600, np.nan, np.float32))


def test_coarse_f0_is_rvcs_quantisation():
    f0 = np.array([0.0, 30.0, 50.0, 100.0, 440.0, 1100.0, 2000.0])
    coarse = coarse_f0(f0)
    assert coarse.dtype.kind == "i" and coarse[0] == 1 and coarse[1] == 1 and coarse[2] == 1
    assert coarse[-2] == 255 and coarse[-1] == 255
    mel = lambda f: 1127 * np.log(1 + f / 700)  # noqa: E731
    expected = np.rint((mel(440.0) - mel(50.0)) * 254 / (mel(1100.0) - mel(50.0)) + 1)
    assert coarse[4] == expected
    assert np.all(np.diff(coarse_f0(np.linspace(50, 1100, 500))) >= 0)


def test_missing_package_names_the_extra():
    with pytest.raises(MissingDependency, match=r"^f0 method 'x' needs the package 'not_a_package_xyz'.*"
                                                r"pip install 'rvc-optim\[prepare\]'$"):
        require("not_a_package_xyz", "f0 method 'x'")


# --- RMVPE ---------------------------------------------------------------------------------------

# A few of RVC's rmvpe.pt keys with their shapes (E2E(4, 1, (2, 2))).
_RVC_KEYS = {
    "unet.encoder.bn.weight": (1,),
    "unet.encoder.layers.0.conv.0.conv.0.weight": (16, 1, 3, 3),
    "unet.encoder.layers.0.conv.0.shortcut.weight": (16, 1, 1, 1),
    "unet.encoder.layers.4.conv.3.conv.4.running_var": (256,),
    "unet.intermediate.layers.0.conv.0.shortcut.weight": (512, 256, 1, 1),
    "unet.intermediate.layers.3.conv.3.conv.3.weight": (512, 512, 3, 3),
    "unet.decoder.layers.0.conv1.0.weight": (512, 256, 3, 3),
    "unet.decoder.layers.4.conv2.0.shortcut.weight": (16, 32, 1, 1),
    "cnn.weight": (3, 16, 3, 3),
    "fc.0.gru.weight_ih_l0_reverse": (768, 384),
    "fc.1.weight": (360, 512),
}


@pytest.fixture(scope="module")
def rmvpe_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rmvpe") / "rmvpe.pt"
    torch.save(E2E().state_dict(), path)
    return path


def test_rmvpe_network_has_rvcs_key_layout():
    state = E2E().state_dict()
    for key, shape in _RVC_KEYS.items():
        assert tuple(state[key].shape) == shape, key


def test_rmvpe_loads_a_state_dict_and_gives_rvcs_frames(rmvpe_file):
    est = make_f0_estimator("rmvpe", weights=rmvpe_file)
    audio = glide()
    clips = [audio[:8000], audio[:7900], audio[:300]]
    out = est.batch(clips)
    for f0, clip in zip(out, clips):
        assert f0.dtype == np.float32 and f0.shape == (len(clip) // 160 + 1,)
        assert np.all(np.isfinite(f0)) and np.all((f0 == 0) | ((f0 >= 50) & (f0 <= 1100)))
    np.testing.assert_allclose(out[0], est(clips[0]), atol=1e-3)  # same padded length: batched exactly


def test_rmvpe_weights_errors(tmp_path):
    with pytest.raises(ValueError, match=r"needs RVC's rmvpe.pt \(no weights file was given\).*assets/rmvpe/rmvpe.pt"):
        make_f0_estimator("rmvpe")
    with pytest.raises(ValueError, match="does not exist"):
        make_f0_estimator("rmvpe", weights=tmp_path / "rmvpe.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable RMVPE weights file"):
        make_f0_estimator("rmvpe", weights=junk)
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), other)
    with pytest.raises(ValueError, match="is not RVC's RMVPE weights: .* missing, 2 unexpected"):
        make_f0_estimator("rmvpe", weights=other)


def test_decode_salience_local_average_and_threshold():
    bins = np.arange(360)
    salience = np.stack([
        np.exp(-0.5 * ((bins - 100) / 1.0) ** 2),  # centred on bin 100
        0.8 * np.exp(-0.5 * ((bins - 200.5) / 1.0) ** 2),  # halfway between bins 200 and 201
        np.full(360, 0.02),  # below the 0.03 threshold
    ])
    f0 = decode_salience(salience)
    hz = lambda b: 10 * 2 ** ((CENTS_FIRST_BIN + 20 * b) / 1200)  # noqa: E731
    # the 9-bin window around the peak clips the off-centre bump's far tail: ~1e-6 relative
    np.testing.assert_allclose(f0[:2], [hz(100), hz(200.5)], rtol=1e-5)
    assert f0[2] == 0


def test_log_mel_frames():
    assert log_mel(glide()[:16000]).shape == (128, 101)
