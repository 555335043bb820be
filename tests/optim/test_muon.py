"""Muon beyond parity: the orthogonalised update, the routing (on the real RVC v2 40k models built by
the engine), its overrides, and how a param group's settings reach the two halves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rvc_optim import create_optimizer
from rvc_optim.optim.muon import ADAMW, MUON, NS_COEFFICIENTS, Muon, newton_schulz, orthogonalize
from rvc_optim.train.config import get_config
from rvc_optim.train.model import build_discriminator, build_generator
from tests.contract_models import ContractNet


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 96)], ids=["wide", "tall", "square"])
def test_orthogonalised_update_has_singular_values_near_one(shape, dtype):
    """A random matrix with singular values spread over two decades (condition number 100) comes out with
    all of them in [0.6, 1.3], the quintic's band (measured 0.677 to 1.203 over these cases), after
    undoing the tall shape's scale. Five steps amplify a tiny singular value about 3.4^5 = 460 times,
    so directions much weaker than that relative to the Frobenius norm stay below the band: the
    authors' iteration is an approximate orthogonalisation by design."""
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=gen))
    v, _ = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=gen))
    spread = torch.logspace(0, -2, min(shape))
    matrix = u @ torch.diag(spread) @ v.T
    (update,) = orthogonalize([matrix], dtype=dtype)
    scale = max(1.0, shape[0] / shape[1]) ** 0.5
    singular = torch.linalg.svdvals(update.double() / scale)
    assert singular.min() > 0.6 and singular.max() < 1.3, (singular.min().item(), singular.max().item())


def test_same_shapes_are_batched_and_give_the_one_at_a_time_result():
    gen = torch.Generator().manual_seed(1)
    updates = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(8, 4, 3), (8, 12), (8, 4, 3), (5, 7)]]
    together = orthogonalize(updates, dtype=torch.float64)
    for u, t in zip(updates, together):
        torch.testing.assert_close(t, orthogonalize([u], dtype=torch.float64)[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape, gram", [((3, 16, 48), True), ((2, 32, 32), False)], ids=["wide", "square"])
def test_both_forms_are_the_authors_iteration(shape, gram, monkeypatch):
    """Outside bfloat16 a wide matrix's iteration runs on the Gram matrix, a square one's in the authors'
    form (fewer multiply-adds each): in float64 both are the authors' quintic, written out here step by
    step, to rounding (measured 2e-15)."""
    from rvc_optim.optim import muon

    calls = []
    gram_form = muon._gram_newton_schulz
    monkeypatch.setattr(muon, "_gram_newton_schulz", lambda *args: calls.append(1) or gram_form(*args))
    a, b, c = NS_COEFFICIENTS
    X = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    Y = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(5):
        A = Y @ Y.mT
        Y = a * Y + (b * A + c * A @ A) @ Y
    torch.testing.assert_close(newton_schulz(X), Y, rtol=1e-10, atol=1e-12)
    assert bool(calls) == gram


# --- routing on RVC v2 ------------------------------------------------------------------------------------


def _counts(optimizer: Muon, module: nn.Module) -> dict[str, tuple[int, int]]:
    sizes = dict(module.named_parameters())
    out = {}
    for role in (MUON, ADAMW):
        names = [n for n, r in optimizer.param_roles().items() if r == role]
        out[role] = (len(names), sum(sizes[n].numel() for n in names))
    return out


def test_rvc_v2_40k_generator_routing():
    """Every hidden conv kernel (weight-norm directions included) to Newton-Schulz; to AdamW the
    biases, gains, weight-norm magnitudes, the embeddings (emb_g, emb_pitch, the phone projection
    emb_phone, relative-position emb_rel_k/v), the waveform-input noise_convs, the NSF source's [1, 1]
    linear and the output conv_post."""
    g = build_generator(get_config("40k"))
    optimizer = create_optimizer("Muon", g)
    assert _counts(optimizer, g) == {MUON: (186, 36_088_000), ADAMW: (374, 370_818)}
    roles = optimizer.param_roles()
    for name in ("emb_g.weight", "enc_p.emb_phone.weight", "enc_p.emb_pitch.weight", "dec.conv_post.weight",
                 "dec.noise_convs.1.weight", "dec.m_source.l_linear.weight", "dec.ups.0.parametrizations.weight.original0",
                 "enc_p.encoder.attn_layers.0.emb_rel_k", "enc_p.encoder.norm_layers_1.0.gamma"):
        assert roles[name] == ADAMW, name
    for name in ("enc_q.enc.cond_layer.parametrizations.weight.original1", "dec.ups.0.parametrizations.weight.original1",
                 "enc_p.encoder.attn_layers.0.conv_q.weight", "dec.conv_pre.weight", "flow.flows.0.pre.weight"):
        assert roles[name] == MUON, name
    assert optimizer.routing_summary().startswith("186 tensors / 36,088,000 params to Newton-Schulz")


def test_rvc_v2_discriminator_routing():
    """The first convs (on the one-channel waveform) and every conv_post (one output channel) to AdamW."""
    d = build_discriminator(get_config("40k"))
    optimizer = create_optimizer("Muon", d)
    assert _counts(optimizer, d) == {MUON: (37, 71_331_072), ADAMW: (128, 79_522)}
    roles = optimizer.param_roles()
    assert roles["discriminators.1.convs.0.parametrizations.weight.original1"] == ADAMW
    assert roles["discriminators.1.conv_post.parametrizations.weight.original1"] == ADAMW
    assert roles["discriminators.1.convs.1.parametrizations.weight.original1"] == MUON


# --- overrides and group settings ----------------------------------------------------------------------------


def test_overrides_by_pattern_and_by_group():
    model = ContractNet()
    named = list(model.named_parameters())
    default = Muon(named).param_roles()
    assert default["emb.weight"] == ADAMW and default["up.weight"] == MUON
    roles = Muon(named, muon_patterns=["emb.*"], adamw_patterns=["up.*"]).param_roles()
    assert roles["emb.weight"] == MUON and roles["up.weight"] == ADAMW
    by_group = Muon([{"params": [named[0]], "use_muon": True}, {"params": named[1:]}]).param_roles()
    assert by_group["emb.weight"] == MUON
    with pytest.raises(ValueError, match="not a matrix"):
        Muon(named, muon_patterns=["*bias"])


def test_embedding_found_by_module_type_and_unnamed_tensors_by_shape():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(10, 6)
            self.mix = nn.Linear(6, 6)

    net = Net()
    assert Muon(net).param_roles() == {"table.weight": ADAMW, "mix.weight": MUON, "mix.bias": ADAMW}
    assert Muon(list(net.parameters())).param_roles() == {"#0": MUON, "#1": MUON, "#2": ADAMW}


def test_group_lr_reaches_the_adamw_half_in_proportion():
    """A group that sets lr (and not adamw_lr) scales its AdamW half by the same factor; the authors'
    use_muon=False groups take lr as the AdamW lr."""
    named = list(ContractNet().named_parameters())
    optimizer = Muon([{"params": named, "lr": 0.01}])
    lrs = {g["use_muon"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {True: 0.01, False: pytest.approx(1.5e-4)}
    authors_format = Muon([{"params": named[:1], "use_muon": False, "lr": 1e-3, "betas": (0.8, 0.99)}])
    assert authors_format.param_groups[0]["lr"] == 1e-3 and authors_format.param_groups[0]["betas"] == (0.8, 0.99)
    with pytest.raises(ValueError, match="unknown option"):
        Muon([{"params": named, "betas": (0.9, 0.9)}])


def test_bfloat16_on_a_cpu_iterates_each_matrix_alone():
    """A CPU's batched bfloat16 products can round differently from single ones (on an AVX-512 EPYC,
    6 of 2,000 batches of two [16, 16] products), so there each matrix goes through the iteration on
    its own, as the authors' do: every result equals the 2-D iteration bit for bit."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):  # batched, one of these pairs rounded differently there
        updates = [torch.randn(16, 16, generator=gen) for _ in range(2)] + [torch.randn(8, 20, generator=gen)]
        ours = orthogonalize(updates, dtype=torch.bfloat16)
        for u, o in zip(updates, ours):
            assert torch.equal(o, newton_schulz(u.to(torch.bfloat16)).to(u.dtype))
    # other dtypes keep the batched iteration: the same to rounding
    batched = orthogonalize(updates[:4], dtype=torch.float32)
    for u, o in zip(updates, batched):
        torch.testing.assert_close(o, newton_schulz(u[None])[0], rtol=1e-5, atol=1e-6)
