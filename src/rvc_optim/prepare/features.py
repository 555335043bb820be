"""Content features for RVC v2: HuBERT/ContentVec layer-12 output, 768-d, 50 frames/s, from 16 kHz audio.

RVC's ``extract_feature_print`` runs fairseq's HuBERT on each 16 kHz slice with ``output_layer=12``
and no ``final_proj`` (v2; v1 used layer 9 + final_proj -> 256-d). Its convolutional front end
(kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2: a 400-sample receptive field, hop 320) gives
``(n - 400) // 320 + 1`` frames for ``n`` samples. The training loader repeats each frame twice
(50 -> 100 frames/s) and truncates the f0 (``n // 160 + 1`` frames, always more) to that length.

:func:`load_embedder` reads either checkpoint people have, into transformers' ``HubertModel``:

* a transformers folder (``config.json`` + weights), as Applio ships ContentVec; a
  ``preprocessor_config.json`` with ``do_normalize`` turns on waveform normalisation;
* RVC's fairseq ``hubert_base.pt`` (a torch pickle: ``model`` state_dict under fairseq's names, the
  configuration in ``cfg`` (``model``/``task``) or, from older fairseq, ``args``), mapped without
  fairseq: every key is consumed (``final_proj`` and ``label_embs_concat`` are pretraining heads and
  dropped), every shape checked; ``task.normalize`` decides normalisation, as in RVC.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rvc_optim.prepare._batch import run_grouped
from rvc_optim.prepare._optional import require
from rvc_optim.prepare.fairseq_ckpt import load_fairseq_checkpoint

__all__ = ["Embedder", "feature_frames", "load_embedder", "save_random_embedder"]

OUTPUT_LAYER = 12
FEATURE_DIM = 768
_RECEPTIVE_FIELD = 400
_HOP = 320


def feature_frames(n_samples: int) -> int:
    """HuBERT's frame count for ``n_samples`` of 16 kHz audio: ``(n - 400) // 320 + 1`` (0 below 400)."""
    return max(0, (n_samples - _RECEPTIVE_FIELD) // _HOP + 1)


@dataclass
class Embedder:
    """A HuBERT-like model: ``emb(audio16k)`` -> ``[frames, 768]`` float32 of layer ``layer``."""

    model: Any  # transformers.HubertModel, in eval mode
    device: str = "cpu"
    normalize: bool = False
    layer: int = OUTPUT_LAYER
    max_batch: int = 8
    origin: str = ""  # what was loaded and how, for the log

    def __call__(self, audio16k: np.ndarray) -> np.ndarray:
        return self.batch([audio16k])[0]

    def batch(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """Features of each clip; clips of equal length share a forward pass (no padding, so exact)."""
        clips = [self._checked(a) for a in audios]
        return run_grouped(clips, len, self._run, self.max_batch)

    def _checked(self, audio16k: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio16k, dtype=np.float32)
        if audio.ndim != 1 or len(audio) < _RECEPTIVE_FIELD:
            raise ValueError(f"content features need 1-D 16 kHz audio of at least {_RECEPTIVE_FIELD} samples "
                             f"(25 ms), got shape {audio.shape}")
        if not np.isfinite(audio).all():
            raise ValueError("content features need finite audio: this clip contains NaN or inf samples")
        return audio

    def _run(self, clips: list[np.ndarray]) -> list[np.ndarray]:
        wav = torch.from_numpy(np.stack(clips)).to(self.device)
        with torch.no_grad():
            if self.normalize:
                wav = torch.nn.functional.layer_norm(wav, wav.shape[-1:])
            out = self.model(wav, output_hidden_states=True)
        return list(out.hidden_states[self.layer].float().cpu().numpy())


def _transformers():
    transformers = require("transformers", "content features (HuBERT)")
    transformers.logging.set_verbosity_error()  # e.g. ContentVec's final_proj keys, unused here, are expected
    transformers.logging.disable_progress_bar()
    return transformers


def load_embedder(path: str | Path, *, device: str = "cpu", max_batch: int = 8) -> Embedder:
    """The embedder in ``path``: a transformers HuBERT folder or a fairseq ``.pt`` (RVC's hubert_base.pt).

    Raises ValueError with one line for anything else (a missing path, another model type, a
    checkpoint whose keys or shapes do not form a HuBERT, a model with fewer than 12 layers).
    """
    path = Path(path)
    if path.is_dir():
        model, normalize = _load_folder(path)
        origin = f"transformers folder {path}"
    elif path.is_file():
        model, normalize, how = _load_fairseq(path)
        origin = f"fairseq checkpoint {path} (read with {how})"
    else:
        raise ValueError(f"embedder {path} does not exist: give a transformers HuBERT/ContentVec folder "
                         "(config.json + weights) or RVC's fairseq hubert_base.pt")
    if model.config.num_hidden_layers < OUTPUT_LAYER or model.config.hidden_size != FEATURE_DIM:
        raise ValueError(f"embedder {path} has {model.config.num_hidden_layers} layers of width "
                         f"{model.config.hidden_size}; RVC v2 needs layer {OUTPUT_LAYER} at {FEATURE_DIM}-d")
    return Embedder(model.to(device).eval(), device=device, normalize=normalize, max_batch=max_batch, origin=origin)


def _load_folder(path: Path):
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"embedder folder {path} has no readable config.json ({err})") from None
    if config.get("model_type") != "hubert":
        raise ValueError(f"embedder folder {path}: config.json says model_type {config.get('model_type')!r}, "
                         "expected 'hubert' (HuBERT or ContentVec)")
    transformers = _transformers()
    try:
        # float32 whatever the file holds (fp16 ContentVec copies exist); the folder only, never the Hub
        model = transformers.HubertModel.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"embedder folder {path}: cannot load its weights ({str(err).splitlines()[0]})") from None
    prep = path / "preprocessor_config.json"
    normalize = bool(json.loads(prep.read_text()).get("do_normalize", False)) if prep.is_file() else False
    return model, normalize


# fairseq HuBERT key -> transformers HubertModel key; "{i}" is a layer index.
_LAYER_KEYS = {
    "self_attn.k_proj": "attention.k_proj", "self_attn.v_proj": "attention.v_proj",
    "self_attn.q_proj": "attention.q_proj", "self_attn.out_proj": "attention.out_proj",
    "self_attn_layer_norm": "layer_norm", "fc1": "feed_forward.intermediate_dense",
    "fc2": "feed_forward.output_dense", "final_layer_norm": "final_layer_norm",
}
_TOP_KEYS = {
    "layer_norm": "feature_projection.layer_norm", "post_extract_proj": "feature_projection.projection",
    "encoder.layer_norm": "encoder.layer_norm", "encoder.pos_conv.0": "encoder.pos_conv_embed.conv",
}
# fairseq's legacy weight norm of the positional conv -> torch's parametrization (both dim 2)
_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
_DROPPED = ("final_proj.", "label_embs_concat")  # pretraining heads, unused by RVC v2


def _to_transformers_key(key: str) -> str | None:
    """The HubertModel key for fairseq's ``key``; None for a pretraining head; KeyError if unknown."""
    if key.startswith(_DROPPED):
        return None
    if key == "mask_emb":
        return "masked_spec_embed"
    stem, _, leaf = key.rpartition(".")
    leaf = _WEIGHT_NORM.get(leaf, leaf)
    if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(0|2|2\.1)", stem):
        part = "conv" if m[2] == "0" else "layer_norm"
        return f"feature_extractor.conv_layers.{m[1]}.{part}.{leaf}"
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", stem):
        if m[2] in _LAYER_KEYS:
            return f"encoder.layers.{m[1]}.{_LAYER_KEYS[m[2]]}.{leaf}"
    if stem in _TOP_KEYS:
        return f"{_TOP_KEYS[stem]}.{leaf}"
    raise KeyError(key)


def _conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """fairseq's ``conv_feature_layers`` string, e.g. ``[(512,10,5)] + [(512,3,2)] * 4``, without eval."""
    layers = []
    for term in spec.split("+"):
        m = re.fullmatch(r"\s*\[\s*\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)\s*\]\s*(?:\*\s*(\d+))?\s*", term)
        if not m:
            raise ValueError(f"cannot read conv_feature_layers {spec!r}")
        layers += [(int(m[1]), int(m[2]), int(m[3]))] * int(m[4] or 1)
    return layers


def _hubert_config(model_cfg: dict):
    """transformers' HubertConfig from fairseq's HuBERT model configuration (RVC's hubert_base defaults)."""
    conv = _conv_layers(model_cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"))
    return _transformers().HubertConfig(
        hidden_size=model_cfg.get("encoder_embed_dim", 768),
        num_hidden_layers=model_cfg.get("encoder_layers", 12),
        num_attention_heads=model_cfg.get("encoder_attention_heads", 12),
        intermediate_size=model_cfg.get("encoder_ffn_embed_dim", 3072),
        hidden_act=model_cfg.get("activation_fn", "gelu"),
        conv_dim=[c[0] for c in conv], conv_kernel=[c[1] for c in conv], conv_stride=[c[2] for c in conv],
        conv_bias=bool(model_cfg.get("conv_bias", False)),
        feat_extract_norm="layer" if model_cfg.get("extractor_mode", "default") == "layer_norm" else "group",
        do_stable_layer_norm=bool(model_cfg.get("layer_norm_first", False)),
        num_conv_pos_embeddings=model_cfg.get("conv_pos", 128),
        num_conv_pos_embedding_groups=model_cfg.get("conv_pos_groups", 16),
        feat_proj_layer_norm=True,
    )


def _load_fairseq(path: Path):
    ckpt, how = load_fairseq_checkpoint(path)
    model_cfg, task_cfg = ckpt["model_cfg"], ckpt["task_cfg"]
    config = _hubert_config(model_cfg)
    model = _transformers().HubertModel(config)
    _load_mapped(model, ckpt["model"], path)
    return model, bool(task_cfg.get("normalize", False)), how


def _load_mapped(model, fairseq_state: dict, path: Path) -> None:
    """Copy fairseq's tensors into ``model`` by :func:`_to_transformers_key`: all keys, all shapes, or raise."""
    target = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in fairseq_state.items():
        try:
            name = _to_transformers_key(key)
        except KeyError:
            raise ValueError(f"{path}: key {key!r} is not part of a fairseq HuBERT") from None
        if name is None or (name == "masked_spec_embed" and name not in target):
            continue
        if name not in target or tuple(target[name].shape) != tuple(tensor.shape):
            want = tuple(target[name].shape) if name in target else "no such tensor"
            raise ValueError(f"{path}: {key} has shape {tuple(tensor.shape)}, the configured HuBERT's "
                             f"{name} expects {want}")
        mapped[name] = tensor
    missing = sorted(set(target) - set(mapped))
    if missing:
        raise ValueError(f"{path}: {len(missing)} HuBERT tensors are missing from the checkpoint, e.g. {missing[0]}")
    model.load_state_dict(mapped)


def _to_fairseq_state(model) -> dict[str, torch.Tensor]:
    """``model``'s state_dict under fairseq's names (the inverse of :func:`_to_transformers_key`)."""
    names = {}
    for key in model.state_dict():
        for fairseq_key in _fairseq_candidates(key):
            if _to_transformers_key(fairseq_key) == key:
                names[key] = fairseq_key
                break
        else:
            raise KeyError(key)
    return {names[k]: v.clone() for k, v in model.state_dict().items()}


def _fairseq_candidates(key: str):
    stem, _, leaf = key.rpartition(".")
    leaf = {v.rpartition(".")[2]: k for k, v in _WEIGHT_NORM.items()}.get(leaf, leaf)
    stem = stem.removesuffix(".parametrizations.weight")
    if key == "masked_spec_embed":
        yield "mask_emb"
    if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)", stem):
        for part in ("0",) if m[2] == "conv" else ("2", "2.1"):
            yield f"feature_extractor.conv_layers.{m[1]}.{part}.{leaf}"
    if m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", stem):
        yield from (f"encoder.layers.{m[1]}.{k}.{leaf}" for k, v in _LAYER_KEYS.items() if v == m[2])
    yield from (f"{k}.{leaf}" for k, v in _TOP_KEYS.items() if v == stem)


def save_random_embedder(path: str | Path, *, fmt: Literal["transformers", "fairseq"] = "transformers",
                         hidden_size: int = FEATURE_DIM, layers: int = OUTPUT_LAYER, seed: int = 0,
                         small: bool = True) -> Path:
    """A randomly initialised HuBERT saved as a transformers folder or a fairseq ``.pt`` (for tests).

    ``small`` keeps 12 layers of width 768 (so layer 12 is 768-d) but shrinks what does not show in
    the output: feed-forward 64 wide, a 32-channel convolutional front end, 16-tap positional conv.
    The fairseq file has fairseq's layout: ``cfg`` (``model``, ``task``), ``model``, ``args`` None.
    """
    transformers = _transformers()
    shrink = dict(intermediate_size=64, conv_dim=(32,) * 7, num_conv_pos_embeddings=16) if small else {}
    config = transformers.HubertConfig(hidden_size=hidden_size, num_hidden_layers=layers, **shrink)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.HubertModel(config).eval()
    path = Path(path)
    if fmt == "transformers":
        model.save_pretrained(path)
        return path
    if fmt != "fairseq":
        raise ValueError(f"fmt must be 'transformers' or 'fairseq', got {fmt!r}")
    state = _to_fairseq_state(model)
    state["final_proj.weight"] = torch.zeros(256, hidden_size)
    state["final_proj.bias"] = torch.zeros(256)
    conv = " + ".join(f"[({d},{k},{s})]" for d, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride))
    model_cfg = {"_name": "hubert", "encoder_layers": layers, "encoder_embed_dim": hidden_size,
                 "encoder_ffn_embed_dim": config.intermediate_size, "encoder_attention_heads": 12,
                 "activation_fn": "gelu", "extractor_mode": "default", "conv_feature_layers": conv,
                 "conv_bias": False, "layer_norm_first": False, "conv_pos": config.num_conv_pos_embeddings,
                 "conv_pos_groups": config.num_conv_pos_embedding_groups}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"args": None, "cfg": {"model": model_cfg, "task": {"_name": "hubert_pretraining", "normalize": False}},
                "model": state}, path)
    return path
