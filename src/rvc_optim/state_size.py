"""Bytes of optimizer state per parameter, measured: build the optimizer, step once, count its tensors.

A record's ``state`` text and its memory floor describe full-size buffers; factored statistics
(AdaFactor, CAME), per-dimension accumulators (SM3) and per-tensor scalars depend on the shapes, so the
number ``rvc-optim show`` prints is measured on real RVC shapes instead: :data:`SAMPLE_SHAPES`, one
tensor of each kind the v2 generator has (3-D kernels with k = 5, 7 and 1, a transposed-convolution
upsampler, the phone embedding's linear layer, weight-norm magnitudes, biases), 0.75M parameters, so
a measurement takes a fraction of a second. Every tensor in the optimizer's per-parameter state and in its
param groups counts (step counters included), each storage once.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from rvc_optim.registry import create_optimizer, optimizer_info

__all__ = ["SAMPLE_SHAPES", "measure_state_bytes", "state_bytes"]

# Names and shapes from RVC v2's 40k generator (rvc_optim.benchmark.load_shapes("generator_v2_40k")).
SAMPLE_SHAPES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("enc_q.enc.in_layers.0.weight_v", (384, 192, 5)),
    ("enc_q.enc.in_layers.0.weight_g", (384, 1, 1)),
    ("enc_q.enc.in_layers.0.bias", (384,)),
    ("dec.resblocks.4.convs1.0.weight_v", (128, 128, 7)),
    ("dec.resblocks.4.convs1.0.weight_g", (128, 1, 1)),
    ("dec.resblocks.4.convs1.0.bias", (128,)),
    ("enc_p.encoder.attn_layers.0.conv_q.weight", (192, 192, 1)),
    ("enc_p.encoder.attn_layers.0.conv_q.bias", (192,)),
    ("enc_q.enc.res_skip_layers.0.weight_v", (384, 192, 1)),
    ("dec.ups.2.weight_v", (128, 64, 4)),
    ("enc_p.emb_phone.weight", (192, 768)),
    ("enc_p.emb_phone.bias", (192,)),
)


class _Shapes(torch.nn.Module):
    """A module holding parameters of the given shapes (names keep their last part, so weight-decay
    grouping by name works), with small random weights and gradients."""

    def __init__(self, shapes: Sequence[tuple[str, tuple[int, ...]]], seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        for name, shape in shapes:
            p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
            p.grad = torch.randn(shape, generator=gen) * 1e-3
            self.register_parameter(name.replace(".", "__"), p)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer``'s state and param groups (parameters excluded), each
    storage counted once."""
    params = {p.untyped_storage().data_ptr() for g in optimizer.param_groups for p in g["params"]}
    seen: dict[tuple[int, int], int] = {}
    values = [v for s in optimizer.state.values() for v in s.values()]
    values += [v for g in optimizer.param_groups for k, v in g.items() if k != "params"]
    for v in _tensors_in(values):
        if v.untyped_storage().data_ptr() not in params:
            seen[(v.untyped_storage().data_ptr(), v.storage_offset())] = v.numel() * v.element_size()
    return sum(seen.values())


def _tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in ``value``, looking into lists, tuples and dicts (SOAP keeps its factors in lists)."""
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)


def measure_state_bytes(name: str, shapes: Sequence[tuple[str, tuple[int, ...]]] = SAMPLE_SHAPES,
                        **settings: Any) -> float:
    """Bytes of state per parameter of the optimizer ``name`` at its recommended settings (overridden by
    ``settings``), after one step on parameters of ``shapes`` (float32). Raises NotImplementedYet for a
    record without a class."""
    record = optimizer_info(name)
    record.cls  # noqa: B018 (raises NotImplementedYet)
    module = _Shapes(shapes)
    extra = {"num_iterations": 1000} if record.protocol.run_length else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = create_optimizer(record.name, module, **extra, **settings)
        if record.protocol.train_eval:
            optimizer.train()
        if record.protocol.needs_closure:
            optimizer.step(lambda: torch.zeros(()))
        else:
            optimizer.step()
    return state_bytes(optimizer) / sum(math.prod(s) for _, s in shapes)
