"""Muon against the authors' ``SingleDeviceMuonWithAuxAdam`` (pip ``muon-optimizer`` 0.1.0, the same
math as KellerJordan/Muon HEAD on 2-D matrices), HEAD's rule for 4-D kernels written out, and
``torch.optim.Muon``.

Both sides train their own float64 copy of a net of 2-D matrices (one tall, two of the same shape, so
the batched iteration is exercised) for 200 steps, in two Muon groups and two AdamW groups that differ
in every hyper-parameter; parameters are compared after every step, state at the end.

Tolerances, measured (largest difference of any parameter over the 200 steps, relative to that
tensor's largest element; each element must be within rtol of the reference or rtol times that
largest element, since an element crossing zero has no meaningful relative difference):

* bfloat16 Newton-Schulz, the authors' own mode: ours repeats their bfloat16 operations one by one,
  and their AdamW's, so the runs are bit-identical (0.0) for float64 and float32 parameters;
* the authors' function run in float64 (its ``G.bfloat16()`` replaced by ``G.double()``, nothing
  else changed): rtol 1e-9 holds; measured 9.3e-13 (outside bfloat16 ours runs the same polynomial
  on the Gram matrix, see ``_gram_newton_schulz``, and batches same-shaped matrices);
* in float32 (``G.float()``): measured 5.2e-4. The Gram form carries the product Q of the five
  polynomials, whose largest eigenvalue reaches 3.44^5 = 460 on the weakest directions, so one call
  can round up to a few hundred float32 ulps there (measured 5e-5 on a square Gaussian 16x16 matrix,
  7e-7 on wide ones); 200 steps of training feed that back. rtol 2e-3: still twice as tight as the
  authors' own bfloat16 rounding of a single update (2^-8).

The 3-D (Conv1d) rule is where ours deliberately differs from the authors': tested explicitly, with the
two results written out. 4-D kernels follow HEAD's rule (0.1.0 crashes on them) written into the test.
"""

from __future__ import annotations

import inspect

import muon as authors
import pytest
import torch
from torch import nn

from rvc_optim.optim.muon import Muon, default_role, newton_schulz, orthogonalize
from tests.optim.parity import assert_close, compare_state

STEPS = 200
MUON_GROUPS = ({"lr": 0.02, "momentum": 0.95, "weight_decay": 0.0}, {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1})
ADAMW_GROUPS = (
    {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-10, "weight_decay": 0.0},
    {"lr": 1e-3, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.01},
)
_AUTHORS_NS_SOURCE = inspect.getsource(authors.zeropower_via_newtonschulz5)
STATE_KEYS = {"momentum_buffer": "momentum_buffer", "exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "step": "step"}


class MatrixNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.tall = nn.Linear(16, 24)
        self.wide = nn.Linear(24, 16)
        self.same1 = nn.Linear(16, 16)
        self.same2 = nn.Linear(16, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (self.inp, self.tall, self.wide, self.same1, self.same2):
            x = torch.tanh(layer(x))
        return self.out(x)


def _model(dtype: torch.dtype) -> MatrixNet:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return MatrixNet().to(dtype)


def _groups(model: MatrixNet) -> list[dict]:
    """The authors' format: two Muon groups of weights, two AdamW groups of biases."""
    m = model
    weights = ([m.inp.weight, m.same1.weight, m.same2.weight], [m.tall.weight, m.wide.weight, m.out.weight])
    biases = ([m.inp.bias, m.tall.bias, m.wide.bias], [m.same1.bias, m.same2.bias, m.out.bias])
    return [{"params": w, "use_muon": True, **o} for w, o in zip(weights, MUON_GROUPS)] + [
        {"params": b, "use_muon": False, **o} for b, o in zip(biases, ADAMW_GROUPS)
    ]


def _authors_ns_in(cast: str):
    """The authors' Newton-Schulz function, its ``G.bfloat16()`` replaced by ``G.<cast>()``."""
    assert "X = G.bfloat16()" in _AUTHORS_NS_SOURCE
    namespace = {"torch": torch}
    exec(_AUTHORS_NS_SOURCE.replace("X = G.bfloat16()", f"X = G.{cast}()"), namespace)
    return namespace["zeropower_via_newtonschulz5"]


def _batches(dtype: torch.dtype, steps: int = STEPS):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 6, generator=gen, dtype=dtype), torch.randn(16, 3, generator=gen, dtype=dtype))
            for _ in range(steps)]


def _run(make_ours, make_ref, dtype, rtol: float, state_atol: float, steps: int = STEPS) -> float:
    """Train both for ``steps`` steps and compare every step (and the state at the end): each element
    within ``rtol`` of the reference, or within ``rtol`` times the tensor's largest element (an element
    that crosses zero has no meaningful relative difference). Returns the largest difference seen,
    relative to the tensor's largest element."""
    ours_model, ref_model = _model(dtype), _model(dtype)
    ours, ref = make_ours(_groups(ours_model)), make_ref(_groups(ref_model))
    worst = 0.0
    for step, (x, y) in enumerate(_batches(dtype, steps), start=1):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            torch.mean((model(x) - y) ** 2).backward()
            opt.step()
        for (name, p), q in zip(ours_model.named_parameters(), ref_model.parameters()):
            scale = q.abs().max().item()
            worst = max(worst, (p - q).abs().max().item() / scale)
            assert_close(p, q, f"step {step}: {name}", rtol, rtol * scale)
    compare_state(ours, ref, ours_model, ref_model, STATE_KEYS, "end", rtol, state_atol)
    return worst


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_bfloat16_newton_schulz_is_bit_identical_to_the_authors(dtype):
    """Their mode, unpatched: ours repeats their bfloat16 operations one by one (and their AdamW's), so
    200 steps agree exactly (measured: 0.0 for float64 and float32 params). On a CPU each bfloat16 matrix
    is iterated alone, as theirs: batched, same1 and same2 drifted apart from step 74 on an AVX-512 EPYC."""
    worst = _run(lambda g: Muon(g, ns_dtype="bfloat16"), authors.SingleDeviceMuonWithAuxAdam, dtype, 0.0, 0.0)
    assert worst == 0.0


@pytest.mark.parametrize(
    "cast, ns_dtype, rtol, state_atol",
    [("double", torch.float64, 1e-9, 1e-12), ("float", torch.float32, 2e-3, 1e-5)],
    ids=["float64", "float32"],
)
def test_parity_with_the_authors_outside_bfloat16(monkeypatch, cast, ns_dtype, rtol, state_atol):
    """Their iteration run in float64 / float32 (``G.bfloat16()`` replaced by ``G.double()`` /
    ``G.float()``); ours runs it on the Gram matrix there, which rounds differently. Measured (largest
    difference relative to the tensor's largest element, 200 steps): 9.3e-13 in float64, 5.2e-4 in
    float32 (see the module docstring)."""
    monkeypatch.setattr(authors, "zeropower_via_newtonschulz5", _authors_ns_in(cast))
    _run(lambda g: Muon(g, ns_dtype=ns_dtype), authors.SingleDeviceMuonWithAuxAdam, torch.float64, rtol, state_atol)


# --- conv kernels: where ours and the authors' differ, and where it matches HEAD -----------------------------


def _newton_schulz_64(matrix: torch.Tensor) -> torch.Tensor:
    """The authors' iteration in float64, on one matrix."""
    return _authors_ns_in("double")(matrix, steps=5)


def test_a_conv1d_kernel_is_one_matrix_not_the_authors_batch_of_slices():
    """[out, in, k] = [8, 6, 3]: ours orthogonalises the [8, 18] matrix (scale 1); the authors run 8
    separate 6x3 matrices scaled by sqrt(6/3). One step from zero momentum (update = the gradient)."""
    gen = torch.Generator().manual_seed(3)
    grad = torch.randn(8, 6, 3, generator=gen, dtype=torch.float64)
    ours_p = nn.Parameter(torch.zeros(8, 6, 3, dtype=torch.float64))
    ref_p = nn.Parameter(torch.zeros(8, 6, 3, dtype=torch.float64))
    ours_p.grad, ref_p.grad = grad.clone(), grad.clone()
    Muon([{"params": [ours_p], "use_muon": True, "lr": 1.0, "momentum": 0.0}], ns_dtype=torch.float64).step()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(authors, "zeropower_via_newtonschulz5", _authors_ns_in("double"))
        authors.SingleDeviceMuonWithAuxAdam([{"params": [ref_p], "use_muon": True, "lr": 1.0, "momentum": 0.0}]).step()
    flat = -_newton_schulz_64(grad.reshape(8, 18)).reshape(8, 6, 3)
    slices = -_newton_schulz_64(grad) * 2.0**0.5
    torch.testing.assert_close(ours_p.detach(), flat, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ref_p.detach(), slices, rtol=1e-12, atol=1e-14)
    assert (ours_p - ref_p).abs().max() > 0.1


def _head_rule_step(p: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, lr: float, mu: float, wd: float) -> None:
    """KellerJordan/Muon HEAD's muon_update for a 4-D kernel (reshape fix c33a468 included): flattened
    to [out, -1], scaled by sqrt(max(1, kh / kw)) (the original gradient's last two dimensions)."""
    buf.lerp_(grad, 1 - mu)
    update = grad.lerp(buf, mu)
    update = _newton_schulz_64(update.view(len(update), -1)) * max(1, grad.size(-2) / grad.size(-1)) ** 0.5
    p.mul_(1 - lr * wd).add_(update.reshape(p.shape), alpha=-lr)


@pytest.mark.parametrize("shape, factor", [((8, 4, 3, 3), 1.0), ((8, 4, 5, 1), 5.0**0.5)], ids=["kh=kw", "kh>kw"])
def test_4d_kernels_against_heads_rule(shape, factor):
    """HEAD flattens a 4-D kernel as we do; its scale reads kh / kw where ours reads out / (in kh kw).
    [8, 4, 3, 3]: both scales are 1, and 200 steps agree at 1e-9. [8, 4, 5, 1] (the shape of RVC's
    period-discriminator kernels): HEAD scales by sqrt(5), ours by 1, so its steps are sqrt(5) times ours."""
    gen = torch.Generator().manual_seed(4)
    ours_p = nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64))
    ref_p, buf = ours_p.detach().clone(), torch.zeros(shape, dtype=torch.float64)
    start = ref_p.clone()
    opt = Muon([{"params": [ours_p], "use_muon": True, "lr": 0.02, "momentum": 0.9, "weight_decay": 0.1}],
               ns_dtype=torch.float64)
    steps = STEPS if factor == 1.0 else 1
    for _ in range(steps):
        grad = torch.randn(shape, generator=gen, dtype=torch.float64)
        ours_p.grad = grad.clone()
        opt.step()
        _head_rule_step(ref_p, grad, buf, 0.02, 0.9, 0.1)
    if factor == 1.0:
        torch.testing.assert_close(ours_p.detach(), ref_p, rtol=1e-9, atol=1e-12)
    else:
        decayed = start * (1 - 0.02 * 0.1)
        torch.testing.assert_close(ref_p - decayed, factor * (ours_p.detach() - decayed), rtol=1e-9, atol=1e-14)


# --- torch.optim.Muon ---------------------------------------------------------------------------------------


def test_agreement_with_torch_muon_on_matrices():
    """torch's Muon can express the Muon half for 2-D tensors only (it raises on anything else, and has
    no AdamW for the rest). Its iteration is bfloat16 too, but it normalises by max(norm, eps) instead
    of norm + 1e-7, fuses the products with addmm, and puts the sqrt(max(1, out/in)) scale into the lr
    instead of multiplying the bfloat16 update: so bfloat16 rounding differs. Gradients come from a
    fixed sequence here (no feedback through the model). Measured after 50 steps: the parameters differ
    by at most 1.0e-3 of their largest element, about 1/300 of how far they moved (bfloat16 keeps 8
    bits); tolerance 3e-3 of the largest element and 1/50 of the distance moved."""
    gen = torch.Generator().manual_seed(5)
    shapes = [(16, 48), (48, 16), (16, 48), (32, 32)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    ours = [nn.Parameter(t.clone()) for t in start]
    theirs = [nn.Parameter(t.clone()) for t in start]
    opt = Muon([{"params": ours, "use_muon": True, "weight_decay": 0.1}], ns_dtype="bfloat16")
    ref = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, eps=1e-7,
                           ns_steps=5, adjust_lr_fn="original")
    for _ in range(50):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q, s in zip(ours, theirs, start):
        diff = (p - q).abs().max()
        assert diff <= 3e-3 * q.abs().max() and diff <= (q - s).abs().max() / 50
