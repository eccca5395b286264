"""Original fairseq wav2vec 2.0 / HuBERT ``.pt`` checkpoints, without the fairseq package.

The checkpoint is read with :func:`upstreams.safe_checkpoint.load_checkpoint` (no code from the
file runs), its model config (``cfg["model"]``, or the legacy ``args`` Namespace; for fine-tuned
CTC checkpoints the pretraining config in ``w2v_args``) becomes an equivalent
``transformers`` ``Wav2Vec2Config`` / ``HubertConfig``, and its weights are renamed into that
model. The result is an ordinary :class:`~upstreams.hf.TransformersEncoderUpstream`: same hidden
states, frame lengths and fine-tuning modes as the ``hf`` upstream.

Supported: ``wav2vec2`` and ``hubert`` models with ``layer_type=transformer`` (both
``extractor_mode`` values, ``layer_norm_first`` False and True), their ``*_ctc`` fine-tuned
wrappers, and the legacy ``args`` format. Not supported: conformer layers, data2vec, quantized
inputs, multi-layer positional convolutions.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from upstreams.hf import DTypeLike, TransformersEncoderUpstream, require_transformers
from upstreams.safe_checkpoint import int_literal, load_checkpoint, to_plain

from ser_plugins.errors import UserError

DEFAULT_CONV_LAYERS = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"
FINETUNED_PREFIX = "w2v_encoder.w2v_model."
_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_accurate": "gelu_new", "tanh": "tanh", "linear": "linear"}
# fairseq weights with no counterpart in the encoder (pretraining heads, CTC/seq2seq heads)
IGNORED_PREFIXES: Tuple[str, ...] = (
    "quantizer.",
    "project_q.",
    "final_proj.",
    "label_embs_concat",
    "target_glu.",
    "project_inp.",
    "input_quantizer.",
    "w2v_encoder.proj.",
    "decoder.",
)
_RENAMES: Tuple[Tuple[str, str], ...] = (
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"mask_emb", r"masked_spec_embed"),
    (r"encoder\.pos_conv\.0\.bias", r"encoder.pos_conv_embed.conv.bias"),
    (r"encoder\.pos_conv\.0\.weight_g", r"<pos_g>"),
    (r"encoder\.pos_conv\.0\.weight_v", r"<pos_v>"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(k_proj|v_proj|q_proj|out_proj)\.(weight|bias)", r"encoder.layers.\1.attention.\2.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
)


class FairseqConversionError(UserError, ValueError):
    """The checkpoint is not a supported fairseq wav2vec 2.0 / HuBERT checkpoint."""


@dataclass
class FairseqCheckpoint:
    """The parts of a fairseq checkpoint the conversion needs, as plain Python."""

    kind: str  # "wav2vec2" or "hubert"
    model_cfg: Dict[str, Any]
    task_cfg: Dict[str, Any]
    state: Dict[str, torch.Tensor] = field(repr=False)
    finetuned: bool = False


def parse_conv_layers(spec: str) -> List[Tuple[int, int, int]]:
    """``"[(512, 10, 5)] + [(512, 3, 2)] * 4"`` -> a list of (dim, kernel, stride), without eval.

    Only list/tuple literals of integers, ``+`` and ``*`` are accepted.
    """

    try:
        layers = int_literal(spec)
    except ValueError as exc:
        what = "cannot parse" if str(exc) == "unparsable" else "unsupported"
        raise FairseqConversionError(f"{what} conv_feature_layers {'expression: ' if what == 'unsupported' else ''}"
                                     f"{spec!r}") from None
    if not isinstance(layers, list) or not all(
        isinstance(t, tuple) and len(t) == 3 and all(isinstance(i, int) for i in t) for t in layers
    ):
        raise FairseqConversionError(f"conv_feature_layers must be a list of (dim, kernel, stride): {spec!r}")
    return [tuple(t) for t in layers]  # type: ignore[misc]


def _as_dict(obj: Any) -> Dict[str, Any]:
    plain = to_plain(obj)
    return plain if isinstance(plain, dict) else {}


def _split_cfg(cfg: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(model, task) configs from a ``{"model":..., "task":...}`` dict or a flat legacy one."""
    if isinstance(cfg.get("model"), dict):
        return cfg["model"], cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
    return cfg, cfg  # legacy argparse Namespace: one flat namespace


def read_fairseq_checkpoint(path: str) -> FairseqCheckpoint:
    """Load ``path`` safely and pull out its model config, task config and encoder weights."""
    raw = load_checkpoint(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise FairseqConversionError(f"{path}: not a fairseq checkpoint (no 'model' state dict)")
    cfg = _as_dict(raw.get("cfg")) or _as_dict(raw.get("args"))
    if not cfg:
        raise FairseqConversionError(f"{path}: the checkpoint has neither 'cfg' nor legacy 'args'")
    model_cfg, task_cfg = _split_cfg(cfg)
    state = {k: v for k, v in raw["model"].items() if isinstance(v, torch.Tensor)}
    finetuned = any(k.startswith(FINETUNED_PREFIX) for k in state)
    if finetuned:
        inner = _as_dict(model_cfg.get("w2v_args"))
        if not inner:
            raise FairseqConversionError(
                f"{path}: a fine-tuned checkpoint without its pretraining config (w2v_args); "
                "convert the pretrained checkpoint it was fine-tuned from instead"
            )
        outer_task = task_cfg
        model_cfg, task_cfg = _split_cfg(inner)
        if "normalize" in outer_task:
            task_cfg = {**task_cfg, "normalize": outer_task["normalize"]}
        state = {k[len(FINETUNED_PREFIX):]: v for k, v in state.items() if k.startswith(FINETUNED_PREFIX)}
    name = str(model_cfg.get("_name") or model_cfg.get("arch") or "")
    if name.startswith("hubert") or "label_embs_concat" in state:
        kind = "hubert"
    elif name.startswith("wav2vec2") or name in ("", "wav2vec_ctc"):
        kind = "wav2vec2"
    else:
        raise FairseqConversionError(
            f"{path}: model {name!r} is not supported; supported: wav2vec2, hubert (and their _ctc fine-tunings)"
        )
    return FairseqCheckpoint(kind, model_cfg, task_cfg, state, finetuned)


def hf_config_from_fairseq(kind: str, cfg: Dict[str, Any]) -> Any:
    """The ``transformers`` config equivalent to a fairseq wav2vec2 / hubert model config."""
    transformers = require_transformers()
    cfg = {k: v for k, v in cfg.items() if v is not None}  # unset (None) fields take fairseq's defaults
    if str(cfg.get("layer_type", "transformer")) != "transformer":
        raise FairseqConversionError(f"layer_type {cfg.get('layer_type')!r} (conformer) is not supported")
    if int(cfg.get("pos_conv_depth", 1) or 1) > 1:
        raise FairseqConversionError("multi-layer positional convolutions (pos_conv_depth > 1) are not supported")
    if cfg.get("quantize_input"):
        raise FairseqConversionError("quantize_input checkpoints are not supported")
    activation = str(cfg.get("activation_fn", "gelu"))
    if activation not in _ACTIVATIONS:
        raise FairseqConversionError(f"activation_fn {activation!r} is not supported")
    conv = parse_conv_layers(cfg.get("conv_feature_layers") or DEFAULT_CONV_LAYERS)
    mode = str(cfg.get("extractor_mode", "default"))
    kwargs = dict(
        conv_dim=[c[0] for c in conv],
        conv_kernel=[c[1] for c in conv],
        conv_stride=[c[2] for c in conv],
        num_feat_extract_layers=len(conv),
        feat_extract_norm="layer" if mode == "layer_norm" else "group",
        feat_extract_activation="gelu",
        conv_bias=bool(cfg.get("conv_bias", False)),
        hidden_size=int(cfg.get("encoder_embed_dim", 768)),
        num_hidden_layers=int(cfg.get("encoder_layers", 12)),
        num_attention_heads=int(cfg.get("encoder_attention_heads", 12)),
        intermediate_size=int(cfg.get("encoder_ffn_embed_dim", 3072)),
        hidden_act=_ACTIVATIONS[activation],
        do_stable_layer_norm=bool(cfg.get("layer_norm_first", False)),
        num_conv_pos_embeddings=int(cfg.get("conv_pos", 128)),
        num_conv_pos_embedding_groups=int(cfg.get("conv_pos_groups", 16)),
        hidden_dropout=float(cfg.get("dropout", 0.1)),
        attention_dropout=float(cfg.get("attention_dropout", 0.1)),
        activation_dropout=float(cfg.get("activation_dropout", 0.0)),
        feat_proj_dropout=float(cfg.get("dropout_input", 0.0)),
        layerdrop=0.0,
        layer_norm_eps=1e-5,
        mask_time_prob=0.05,  # transformers' fine-tuning default, not fairseq's pretraining 0.65/0.8
    )
    if kind == "hubert":
        return transformers.HubertConfig(feat_proj_layer_norm=True, **kwargs)
    return transformers.Wav2Vec2Config(**kwargs)


def rename_key(key: str) -> Optional[str]:
    """The transformers name of a fairseq encoder weight, or None when it has none."""
    for pattern, replacement in _RENAMES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def map_state_dict(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Rename fairseq weights into ``model``'s names; error on anything unknown or missing."""
    targets = model.state_dict()
    pos_names = {
        "<pos_g>": next((n for n in ("encoder.pos_conv_embed.conv.parametrizations.weight.original0",
                                     "encoder.pos_conv_embed.conv.weight_g") if n in targets), "?"),
        "<pos_v>": next((n for n in ("encoder.pos_conv_embed.conv.parametrizations.weight.original1",
                                     "encoder.pos_conv_embed.conv.weight_v") if n in targets), "?"),
    }
    mapped: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    for key, tensor in state.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        name = rename_key(key)
        name = pos_names.get(name, name) if name else None
        if name is None or name not in targets:
            unknown.append(key)
            continue
        if tuple(targets[name].shape) != tuple(tensor.shape):
            raise FairseqConversionError(
                f"shape mismatch for {key} -> {name}: {tuple(tensor.shape)} vs {tuple(targets[name].shape)}"
            )
        mapped[name] = tensor
    if unknown:
        raise FairseqConversionError(f"fairseq weights with no transformers counterpart: {', '.join(sorted(unknown)[:12])}")
    proj = "feature_projection.projection"
    if f"{proj}.weight" not in mapped and f"{proj}.weight" in targets:  # no post_extract_proj: identity
        dim = targets[f"{proj}.weight"].shape[0]
        if targets[f"{proj}.weight"].shape[1] != dim:
            raise FairseqConversionError("post_extract_proj missing although conv and encoder dims differ")
        mapped[f"{proj}.weight"] = torch.eye(dim)
        mapped[f"{proj}.bias"] = torch.zeros(dim)
    optional = {"masked_spec_embed"}
    missing = [n for n in targets if n not in mapped and n not in optional]
    if missing:
        raise FairseqConversionError(f"the checkpoint lacks weights for: {', '.join(missing[:12])}")
    return mapped


@dataclass
class Conversion:
    """A converted model and the preprocessing its checkpoint was trained with."""

    model: nn.Module
    normalize: bool
    use_attention_mask: bool
    kind: str
    finetuned: bool


def convert_fairseq_checkpoint(path: str, output_dir: Optional[str] = None) -> Conversion:
    """Build the ``transformers`` model equivalent to fairseq checkpoint ``path``.

    With ``output_dir`` the model is also saved there (``save_pretrained`` plus a
    ``preprocessor_config.json``), ready for ``HFUpstream(model=output_dir)``.
    """
    transformers = require_transformers()
    ckpt = read_fairseq_checkpoint(path)
    config = hf_config_from_fairseq(ckpt.kind, ckpt.model_cfg)
    cls = transformers.HubertModel if ckpt.kind == "hubert" else transformers.Wav2Vec2Model
    model = cls(config)
    mapped = map_state_dict(ckpt.state, model)
    model.load_state_dict(mapped, strict=False)
    model.eval()
    normalize = bool(ckpt.task_cfg.get("normalize", False))
    use_mask = config.feat_extract_norm == "layer"
    if output_dir is not None:
        model.save_pretrained(output_dir)
        with open(os.path.join(output_dir, "preprocessor_config.json"), "w", encoding="utf-8") as handle:
            json.dump(
                {"feature_extractor_type": "Wav2Vec2FeatureExtractor", "feature_size": 1, "sampling_rate": 16000,
                 "padding_value": 0.0, "padding_side": "right", "do_normalize": normalize,
                 "return_attention_mask": use_mask},
                handle, indent=2,
            )
    return Conversion(model, normalize, use_mask, ckpt.kind, ckpt.finetuned)


def file_fingerprint(path: str) -> Dict[str, Any]:
    """Path, size, mtime and a sha256 of those (cheap; re-saving the file changes it)."""
    stat = os.stat(path)
    digest = hashlib.sha256(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "fingerprint": digest}


class FairseqUpstream(TransformersEncoderUpstream):
    """A fairseq wav2vec 2.0 / HuBERT ``.pt`` checkpoint as an upstream (no fairseq needed).

    ``normalize`` defaults to the checkpoint's task ``normalize``; ``use_attention_mask`` to True
    for layer-norm CNNs (``extractor_mode=layer_norm``, the Large models) and False otherwise.
    ``layers`` and ``dtype`` as for ``hf``.
    """

    def __init__(
        self,
        checkpoint: str,
        normalize: Optional[bool] = None,
        use_attention_mask: Optional[bool] = None,
        layers: Optional[Sequence[int]] = None,
        dtype: DTypeLike = None,
    ) -> None:
        path = os.path.expanduser(str(checkpoint))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"fairseq checkpoint {path!r} does not exist")
        conversion = convert_fairseq_checkpoint(path)
        fingerprint = file_fingerprint(path)
        super().__init__(
            conversion.model,
            normalize=conversion.normalize if normalize is None else normalize,
            use_attention_mask=conversion.use_attention_mask if use_attention_mask is None else use_attention_mask,
            layers=layers,
            dtype=dtype,
        )
        self.kind = conversion.kind
        self._fingerprint = fingerprint
        self.config = {
            "checkpoint": str(checkpoint),
            "normalize": normalize,
            "use_attention_mask": use_attention_mask,
            "layers": list(layers) if isinstance(layers, (list, tuple)) else layers,
            "dtype": str(dtype) if dtype is not None else None,
        }

    def weights_identity(self) -> Dict[str, Any]:
        """The checkpoint file's path, size, mtime and their hash."""
        return dict(self._fingerprint, format=f"fairseq-{self.kind}")
