"""Hugging Face ``transformers`` audio encoders as upstreams: wav2vec 2.0, HuBERT, WavLM, data2vec.

``HFUpstream(model=...)`` loads any checkpoint that ``transformers.AutoModel`` builds as a
raw-waveform encoder (a CNN feature encoder followed by a transformer) from a hub id or a local
folder, and exposes every hidden state: the CNN-projection output (the transformer's input) and
the output of each transformer layer. It applies the checkpoint's own input normalisation and
attention-mask convention, read from its ``preprocessor_config.json``.

:class:`TransformersEncoderUpstream` holds everything that does not depend on where the model came
from (forward, frame lengths, fine-tuning modes, layer groups); ``upstreams.fairseq_checkpoint``
reuses it for converted fairseq checkpoints; ``upstreams.hf_hub`` finds the checkpoint (local folder,
hub cache, offline rules). See ``docs/self_supervised.md``.

Padded batches are exact for every architecture (``batch_invariant``): a padded utterance gets the
hidden states it gets alone, within float rounding. A CNN with a time-wide GroupNorm (wav2vec 2.0 /
HuBERT Base, WavLM Base+) runs once per distinct length (:func:`conv_per_length`; on CPU, and for
any GroupNorm CNN of another layout) or, on an accelerator, on the padded batch with that GroupNorm's
statistics over each utterance's own frames (:func:`masked_group_norm`); the transformer always gets
a mask over the valid frames when something is padded, also for checkpoints that take no attention
mask alone.
"""
from __future__ import annotations

import contextlib
import pickle
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ser_plugins.errors import CorruptFileError, is_refusal, refused_pickle, unpickler_detail
from ser_plugins.plugins.contracts import FINETUNE_MODES, Upstream, UpstreamOutput
from upstreams.encoder_layers import (
    FinetuneState,
    apply_finetune_mode,
    check_finetune_mode,
    layer_groups,
    resolve_layer_indices,
)
from upstreams.hf_hub import (  # re-exported (__all__): where the hf upstream's checkpoints come from
    ModelSource,
    WeightsNotFoundError,
    _one_line,
    folder_fingerprint,
    locate_model,
    offline_mode,
    read_feature_extractor_config,
    weights_not_found,
)

__all__ = ["HFUpstream", "TransformersEncoderUpstream", "WeightsNotFoundError", "ModelSource", "locate_model",
           "normalize_waveforms", "receptive_field", "require_transformers"]

DTypeLike = Union[str, torch.dtype, None]


def require_transformers() -> Any:
    """Import ``transformers`` or explain how to install it."""
    try:
        import transformers
    except ImportError as exc:
        raise ImportError(
            "this upstream needs the 'transformers' package: pip install 'ser-plugins[hf]' "
            f"(or pip install 'transformers>=4.40'); import failed with: {exc}"
        ) from None
    return transformers


def resolve_dtype(dtype: DTypeLike) -> Optional[torch.dtype]:
    """``"bfloat16"`` / ``torch.bfloat16`` / None -> a floating ``torch.dtype`` or None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        resolved = getattr(torch, str(dtype).replace("torch.", ""), None)
    if resolved is not None and (not isinstance(resolved, torch.dtype) or not resolved.is_floating_point):
        raise ValueError(f"dtype must be a floating torch dtype such as 'float32' or 'bfloat16', got {dtype!r}")
    return resolved


def normalize_waveforms(wavs: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Zero-mean, unit-variance per utterance over its valid samples only; padding becomes 0.

    Matches ``Wav2Vec2FeatureExtractor(do_normalize=True)`` on each unpadded utterance
    (population variance, ``eps`` inside the square root).
    """
    x = wavs.float()
    valid = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
    count = lengths.clamp(min=1).to(x.dtype).unsqueeze(1)
    maskf = valid.to(x.dtype)
    mean = (x * maskf).sum(1, keepdim=True) / count
    var = (((x - mean) * maskf) ** 2).sum(1, keepdim=True) / count
    return (x - mean) / torch.sqrt(var + eps) * maskf


def receptive_field(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Input samples one output frame of a stack of 1-D convolutions sees (400 for wav2vec 2.0)."""
    field = 1
    for kernel, stride in zip(reversed(list(kernels)), reversed(list(strides))):
        field = (field - 1) * int(stride) + int(kernel)
    return field


def is_audio_encoder(model: nn.Module) -> bool:
    """True for transformers models that take raw waveforms through a strided CNN."""
    config = getattr(model, "config", None)
    return (
        getattr(model, "main_input_name", None) == "input_values"
        and hasattr(model, "_get_feat_extract_output_lengths")
        and hasattr(config, "conv_stride")
        and hasattr(config, "conv_kernel")
    )


def _find_child(model: nn.Module, names: Sequence[str]) -> Tuple[Optional[str], Optional[nn.Module]]:
    for name in names:
        try:
            return name, model.get_submodule(name)
        except AttributeError:
            continue
    return None, None


def _find_layers(model: nn.Module) -> Tuple[str, nn.ModuleList]:
    name, layers = _find_child(model, ("encoder.layers",))
    if isinstance(layers, nn.ModuleList):
        return name, layers
    wanted = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == wanted:
            return name, module
    raise ValueError(f"cannot find the transformer layers of {type(model).__name__}")


def is_tracing() -> bool:
    """True while ``torch.export`` / ``torch.onnx`` / TorchScript trace the model: rows are then unpadded."""
    return bool(torch.compiler.is_exporting() or torch.jit.is_tracing())


def masked_group_norm(norm: nn.GroupNorm, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``norm`` (one group per channel, over time) of ``x`` ``[B, C, T]``, each row's statistics over its
    first ``frames[b]`` frames only: what the row gets alone, unpadded. Computed in float32.

    The statistics come from each row's own frames (a view, no copy); the normalisation is then one
    fused pass over the batch (``x * scale + shift``), as cheap as the GroupNorm of the padded batch.
    """
    xf = x.float()
    stats = [torch.var_mean(xf[b, :, : max(1, int(n))], dim=-1, correction=0) for b, n in enumerate(frames.tolist())]
    var = torch.stack([v for v, _ in stats])
    mean = torch.stack([m for _, m in stats])
    scale = torch.rsqrt(var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight.float()
    shift = -mean * scale
    if norm.affine:
        shift = shift + norm.bias.float()
    return torch.addcmul(shift.unsqueeze(-1), xf, scale.unsqueeze(-1)).to(x.dtype)


def conv_per_length(cnn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, lengths: torch.Tensor,
                    frames: int) -> torch.Tensor:
    """``cnn`` (samples ``[g, S]`` -> ``[g, C, T]``) on each row's own first ``lengths[b]`` samples, one call
    per distinct length; the rows zero-padded to ``frames`` frames, in the input order."""
    groups: Dict[int, List[int]] = {}
    for row, n in enumerate(lengths.tolist()):
        groups.setdefault(int(n), []).append(row)
    rows: List[torch.Tensor] = [x] * x.shape[0]
    for n, members in groups.items():
        index = torch.tensor(members, device=x.device)
        part = x[:, :n] if len(members) == x.shape[0] else x.index_select(0, index)[:, :n]
        out = cnn(part)
        out = nn.functional.pad(out, (0, frames - out.shape[-1]))
        for j, row in enumerate(members):
            rows[row] = out[j: j + 1]
    return torch.cat(rows)


def cnn_batching(model: nn.Module) -> str:
    """How the CNN feature encoder runs on a padded batch, exactly as on each utterance alone.

    ``"padded"``: no time-wide norm (layer-norm or no-norm CNN): each valid frame sees only its own
    samples, so the padded batch runs as it is. ``"masked_norm"``: transformers' group-norm encoder
    (a per-channel GroupNorm in the first layer, none after): that norm takes each utterance's
    statistics over its own frames. ``"per_length"``: any other CNN with a GroupNorm: one call per
    distinct length, on the unpadded samples.
    """
    cnn = _find_child(model, TransformersEncoderUpstream.CNN_NAMES)[1]
    if cnn is None or not any(isinstance(m, nn.GroupNorm) for m in cnn.modules()):
        return "padded"
    layers = getattr(cnn, "conv_layers", None)
    if type(cnn).__name__.endswith("FeatureEncoder") and isinstance(layers, nn.ModuleList) and len(layers) > 0:
        first = layers[0]
        norm = getattr(first, "layer_norm", None)
        if (
            type(first).__name__.endswith("GroupNormConvLayer")
            and isinstance(getattr(first, "conv", None), nn.Conv1d)
            and isinstance(norm, nn.GroupNorm)
            and norm.num_groups == norm.num_channels
            and callable(getattr(first, "activation", None))
            and not any(isinstance(m, nn.GroupNorm) for layer in layers[1:] for m in layer.modules())
        ):
            return "masked_norm"
    return "per_length"


@contextlib.contextmanager
def _returning(module: nn.Module, output: torch.Tensor) -> Iterator[None]:
    """While open, calling ``module`` returns ``output`` (an instance attribute shadows its ``forward``)."""
    shadowed = module.__dict__.get("forward")  # an instance-level forward already there (a wrapper's)
    module.forward = lambda *args, **kwargs: output  # type: ignore[method-assign]
    try:
        yield
    finally:
        if shadowed is None:
            del module.forward
        else:
            module.forward = shadowed


class TransformersEncoderUpstream(FinetuneState, Upstream):
    """An already-built ``transformers`` audio encoder as an :class:`Upstream`.

    ``normalize``: standardise each utterance over its valid samples before the model.
    ``use_attention_mask``: pass a mask also on unpadded input (checkpoints trained with one; an
    all-valid mask changes nothing). Padded frames of a batch are always masked, so a padded batch
    equals one utterance at a time (``batch_invariant``) for every architecture.
    ``layers``: indices of the hidden states to expose (0 = CNN projection, i = layer i; negative
    indices count from the top); transformer layers above the highest one are dropped.
    ``dtype``: run the model in this dtype (outputs are returned as float32).

    Fine-tuning modes: ``frozen`` (the default), ``finetune`` (all but the CNN feature encoder),
    ``full`` and ``top_n`` (only the top N transformer layers, plus the final layer norm of
    pre-LN models).
    """

    #: parameter-name prefixes that run before the first transformer layer (the bottom LR group)
    BOTTOM_PREFIXES: Tuple[str, ...] = (
        "feature_extractor.",
        "feature_encoder.",
        "feature_projection.",
        "masked_spec_embed",
        "encoder.pos_conv_embed.",
    )
    CNN_NAMES: Tuple[str, ...] = ("feature_extractor", "feature_encoder")

    def __init__(
        self,
        model: nn.Module,
        normalize: bool,
        use_attention_mask: bool,
        layers: Optional[Sequence[int]] = None,
        dtype: DTypeLike = None,
        sample_rate: int = 16000,
    ) -> None:
        super().__init__()
        if not is_audio_encoder(model):
            raise ValueError(
                f"{type(model).__name__} is not a raw-waveform audio encoder (expected a wav2vec 2.0 / "
                "HuBERT / WavLM / data2vec-audio style model with a CNN feature encoder)"
            )
        self.model = model
        self.normalize = bool(normalize)
        self.use_attention_mask = bool(use_attention_mask)
        self.sample_rate = int(sample_rate)
        self._dtype = resolve_dtype(dtype)
        config = model.config
        self.hop_length = int(torch.tensor([int(s) for s in config.conv_stride]).prod().item())
        self.min_samples = receptive_field(config.conv_kernel, config.conv_stride)
        self._layers_name, layer_list = _find_layers(model)
        total = len(layer_list)
        self._layer_indices = resolve_layer_indices(layers, total)
        self._final_norm = True
        keep = max(1, max(self._layer_indices))
        if keep < total:
            self._truncate(keep)
        self.hidden_sizes = [int(config.hidden_size)] * len(self._layer_indices)
        # padded batches are exact: a time-wide CNN norm per utterance (see exact_cnn), padded frames masked
        self.cnn_batching = cnn_batching(model)
        # on CPU a masked-norm CNN runs once per length instead: measured faster (bench_exact_batching.py)
        self.cpu_cnn_per_length = True
        self.batch_invariant = True
        self._finetune_mode = "frozen"
        self._top_n: Optional[int] = None
        self._frame_mask: Optional[torch.Tensor] = None
        _, pos_layers = _find_child(model, ("encoder.pos_conv_embed.layers",))
        if isinstance(pos_layers, nn.ModuleList) and len(pos_layers) > 1:
            for layer in pos_layers:  # stacked positional convs (data2vec): keep padding out
                layer.register_forward_hook(self._zero_padded_frames)
        if self._dtype is not None:
            self.model.to(self._dtype)
        self.set_finetune("frozen")

    # --- construction helpers ----------------------------------------------------------------
    def _truncate(self, keep: int) -> None:
        parent_name, _, attr = self._layers_name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        setattr(parent, attr, nn.ModuleList(list(getattr(parent, attr))[:keep]))
        self.model.config.num_hidden_layers = keep
        if self._is_pre_layer_norm():  # the final norm belongs to the dropped top: skip it
            _, norm = _find_child(self.model, ("encoder.layer_norm",))
            if norm is not None:
                self.model.encoder.layer_norm = nn.Identity()
        self._final_norm = False

    def _is_pre_layer_norm(self) -> bool:
        return bool(getattr(self.model.config, "do_stable_layer_norm", False))

    @property
    def transformer_layers(self) -> nn.ModuleList:
        """The (possibly truncated) list of transformer layers, bottom first."""
        return self.model.get_submodule(self._layers_name)

    @property
    def feature_encoder(self) -> Optional[nn.Module]:
        """The CNN that turns samples into frames."""
        return _find_child(self.model, self.CNN_NAMES)[1]

    def _zero_padded_frames(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> Optional[torch.Tensor]:
        """Forward hook on each stacked positional conv layer (``[B, D, T]`` out): zero padded frames.

        transformers zeroes padded frames once, before the first positional conv; with several
        stacked layers the padding's non-zero outputs would leak into the last valid frames.
        """
        mask = self._frame_mask
        if mask is None or output.dim() != 3 or output.shape[-1] != mask.shape[-1]:
            return None
        return output * mask.unsqueeze(1).to(output.dtype)

    # --- frames ------------------------------------------------------------------------------
    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames for inputs of ``wav_lengths`` samples (the model's conv formula)."""
        lengths = wav_lengths.long().clamp(min=self.min_samples)
        return self.model._get_feat_extract_output_lengths(lengths).long().clamp(min=1)

    def _conv_frames(self, samples: int) -> int:
        """Frames the CNN gives for ``samples`` input samples (integer arithmetic: stays symbolic under export)."""
        for kernel, stride in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            samples = (samples - int(kernel)) // int(stride) + 1
        return samples

    def exact_cnn(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """CNN frames ``[B, C, T]`` of a padded batch ``x`` whose rows hold ``lengths`` samples (at least
        ``min_samples``), each row's valid frames as the row alone gives them; the rest is padding.

        ``cnn_batching`` ``"masked_norm"``: the padded batch in one pass, the first layer's GroupNorm
        over each row's own frames (on CPU, unless ``cpu_cnn_per_length`` is off, once per length: a
        padded batch of 1-4 s utterances ran the CNN about 2.5 x slower there than its rows one by
        one); ``"per_length"``: once per distinct length; ``"padded"``: as it is.
        """
        cnn = self.feature_encoder
        assert cnn is not None
        mode = self.cnn_batching
        if mode == "masked_norm" and x.device.type == "cpu" and self.cpu_cnn_per_length:
            mode = "per_length"
        if mode == "padded":
            return cnn(x)
        if mode == "per_length":
            return conv_per_length(cnn, x, lengths, self._conv_frames(x.shape[1]))
        layers = cnn.conv_layers
        first = layers[0]
        kernel, stride = int(self.model.config.conv_kernel[0]), int(self.model.config.conv_stride[0])
        frames = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        h = first.activation(masked_group_norm(first.layer_norm, first.conv(x[:, None]), frames))
        for layer in layers[1:]:
            h = layer(h)
        return h

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> UpstreamOutput:
        """Hidden states ``[B, T, D]`` of the selected layers and valid frame counts ``[B]``.

        A padded utterance gets the states it gets alone: with padding, the CNN runs as
        :meth:`exact_cnn` says and the transformer gets a mask over the valid frames.
        """
        if wavs.dim() != 2:
            raise ValueError(f"expected waveforms [batch, samples], got shape {tuple(wavs.shape)}")
        x = wavs.float()
        lengths = wav_lengths.to(device=x.device, dtype=torch.long).clamp(min=0, max=x.shape[1])
        if x.shape[1] < self.min_samples:  # shorter than one frame: zero-pad to the receptive field
            x = nn.functional.pad(x, (0, self.min_samples - x.shape[1]))
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        if self.normalize:
            x = normalize_waveforms(x, lengths)
        else:
            x = x * (positions < lengths.unsqueeze(1)).to(x.dtype)
        effective = lengths.clamp(min=self.min_samples)
        # traced rows are unpadded (``ser export``); otherwise look: is any row shorter than the batch?
        padded = not is_tracing() and bool((effective < x.shape[1]).any())
        mask = (positions < effective.unsqueeze(1)).long() if self.use_attention_mask or padded else None
        x = x.to(next(self.model.parameters()).dtype)
        trainable = any(p.requires_grad for p in self.model.parameters())
        if mask is not None:
            frames = self.frame_lengths(effective)
            total = self._conv_frames(x.shape[1])
            self._frame_mask = torch.arange(total, device=x.device).unsqueeze(0) < frames.unsqueeze(1)
        try:
            with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
                if padded and self.cnn_batching != "padded":
                    cnn = self.feature_encoder
                    assert cnn is not None  # cnn_batching found it
                    with _returning(cnn, self.exact_cnn(x, effective)):
                        out = self.model(x, attention_mask=mask, output_hidden_states=True, return_dict=True)
                else:
                    out = self.model(x, attention_mask=mask, output_hidden_states=True, return_dict=True)
        finally:
            self._frame_mask = None
        states = list(out.hidden_states)
        if len(states) != len(self.transformer_layers) + 1:
            raise RuntimeError(
                f"{type(self.model).__name__} returned {len(states)} hidden states for "
                f"{len(self.transformer_layers)} layers; LayerDrop skips layers in training mode, so keep "
                "config_overrides={'layerdrop': 0.0} (the default) when exposing every layer"
            )
        last = getattr(out, "last_hidden_state", None)
        if self._final_norm and last is not None and last.shape == states[-1].shape:
            states[-1] = last  # pre-LN models: the top state is the final layer-normed output
        selected = [states[i] for i in self._layer_indices]
        if self._dtype is not None and self._dtype != torch.float32:
            selected = [s.float() for s in selected]
        frames = self.frame_lengths(effective).clamp(max=selected[0].shape[1])
        return UpstreamOutput(hidden_states=selected, lengths=frames)

    # --- fine-tuning -------------------------------------------------------------------------
    def supported_finetune_modes(self) -> Tuple[str, ...]:
        """``frozen``, ``finetune`` (CNN frozen), ``full`` and ``top_n``."""
        return FINETUNE_MODES

    def set_finetune(self, mode: str, top_n: Optional[int] = None) -> None:
        """Set ``requires_grad`` for ``mode``; ``top_n`` layers train in mode ``top_n``."""
        check_finetune_mode(self, mode, top_n, len(self.transformer_layers))
        cnn = self.feature_encoder
        apply_finetune_mode(mode, top_n, self.model.parameters(), cnn.parameters() if cnn is not None else (),
                            self._split_parameters())
        if cnn is not None and hasattr(cnn, "_requires_grad"):
            cnn._requires_grad = mode == "full"  # transformers' flag for checkpointing the CNN input
        self.record_finetune(mode, top_n)

    def frozen_module(self) -> nn.Module:
        """The encoder kept in eval mode while frozen."""
        return self.model

    def _split_parameters(self) -> Tuple[List[nn.Parameter], List[List[nn.Parameter]], List[nn.Parameter]]:
        prefix = self._layers_name + "."
        layers = self.transformer_layers
        bottom_prefixes = self.BOTTOM_PREFIXES + (() if self._is_pre_layer_norm() else ("encoder.layer_norm.",))
        bottom: List[nn.Parameter] = []
        per_layer: List[List[nn.Parameter]] = [[] for _ in range(len(layers))]
        top: List[nn.Parameter] = []
        for name, p in self.model.named_parameters():
            if name.startswith(prefix):
                per_layer[int(name[len(prefix):].split(".", 1)[0])].append(p)
            elif name.startswith(bottom_prefixes):
                bottom.append(p)
            else:
                top.append(p)
        return bottom, per_layer, top

    def layer_parameter_groups(self) -> List[List[nn.Parameter]]:
        """``1 + num_layers`` groups, bottom first: CNN + projection + positional conv (+ the
        pre-layer norm of post-LN models), then one per transformer layer; the rest (final norm of
        pre-LN models) joins the top layer. Frozen parameters are left out, so a group may be empty.
        """
        return layer_groups(self._split_parameters())

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each transformer layer in the backward pass (non-reentrant checkpointing)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    # --- identity ----------------------------------------------------------------------------
    def weights_identity(self) -> Dict[str, Any]:
        """Where the weights came from; subclasses fill it in."""
        return {}

    def identity(self) -> Dict[str, Any]:
        """Class, constructor config, weights (id + revision, or a fingerprint) and preprocessing."""
        ident = super().identity()
        ident.update(
            {
                "weights": self.weights_identity(),
                "architecture": type(self.model).__name__,
                "normalize": self.normalize,
                "use_attention_mask": self.use_attention_mask,
                "layers": list(self._layer_indices),
                "dtype": str(self._dtype) if self._dtype is not None else None,
            }
        )
        return ident


def cnn_norm(model: nn.Module) -> str:
    """``"layer"`` when the CNN feature encoder normalises every conv layer with LayerNorm (e.g.
    wav2vec 2.0 Large, data2vec), ``"group"`` for a GroupNorm in the first layer (wav2vec 2.0 /
    HuBERT Base), ``"none"`` otherwise."""
    cnn = _find_child(model, TransformersEncoderUpstream.CNN_NAMES)[1]
    kinds = {type(m) for m in cnn.modules()} if cnn is not None else set()
    if nn.LayerNorm in kinds:
        return "layer"
    if nn.GroupNorm in kinds:
        return "group"
    return "none"


def preprocessing_defaults(model: nn.Module, feature_extractor: Dict[str, Any]) -> Tuple[bool, bool]:
    """``(normalize, use_attention_mask)`` from the saved feature-extractor config.

    Without one, follow transformers' conversion convention: checkpoints with a layer-norm CNN
    were trained on normalised input with padding masks, those with a group-norm CNN without either.
    """
    layer_norm_cnn = cnn_norm(model) == "layer"
    normalize = feature_extractor.get("do_normalize", layer_norm_cnn)
    mask = feature_extractor.get("return_attention_mask", layer_norm_cnn)
    return bool(normalize), bool(mask)


class HFUpstream(TransformersEncoderUpstream):
    """Any Hugging Face audio encoder (Wav2Vec2, HuBERT, WavLM, Data2VecAudio, ...) as an upstream.

    ``model``: a hub id (``facebook/wav2vec2-base``) or a local folder. ``revision`` pins a hub
    commit/tag. ``local_files_only`` (default: on when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``
    is set) never touches the network. ``normalize`` / ``use_attention_mask`` override the
    checkpoint's ``do_normalize`` / ``return_attention_mask``. ``config_overrides`` are set on the
    model config before loading (default ``{"layerdrop": 0.0}``; e.g. ``{"mask_time_prob": 0.0}``
    turns off SpecAugment-style masking while fine-tuning). Missing files raise
    :class:`WeightsNotFoundError`.
    """

    def __init__(
        self,
        model: str,
        revision: Optional[str] = None,
        local_files_only: Optional[bool] = None,
        cache_dir: Optional[str] = None,
        normalize: Optional[bool] = None,
        use_attention_mask: Optional[bool] = None,
        layers: Optional[Sequence[int]] = None,
        dtype: DTypeLike = None,
        attn_implementation: Optional[str] = None,
        config_overrides: Optional[Dict[str, Any]] = None,
    ) -> None:
        transformers = require_transformers()
        offline = offline_mode() if local_files_only is None else bool(local_files_only)
        source = locate_model(str(model), revision, cache_dir, offline)
        target = source.folder if source.kind == "local" else source.location
        hub_kwargs: Dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": offline}
        if source.kind == "hub":
            hub_kwargs["revision"] = revision
        overrides = {"layerdrop": 0.0, **(config_overrides or {})}
        try:
            config = transformers.AutoConfig.from_pretrained(target, **hub_kwargs)
        except OSError as exc:  # the config could not be fetched
            raise weights_not_found(str(model), _one_line(exc), revision, cache_dir, offline) from None
        except ValueError as exc:  # a config transformers does not know
            raise ValueError(f"{model!r} is not a model this transformers can build: {_one_line(exc)}") from None
        for key, value in overrides.items():
            setattr(config, key, value)
        load_kwargs = dict(hub_kwargs, config=config)
        if attn_implementation:
            load_kwargs["attn_implementation"] = attn_implementation
        try:
            encoder = transformers.AutoModel.from_pretrained(target, **load_kwargs)
        except pickle.UnpicklingError as exc:  # a pickled weights file the weights-only unpickler refused
            if is_refusal(exc):
                raise refused_pickle(f"the weights of {str(model)!r}", exc) from None
            raise CorruptFileError(f"the weights of {str(model)!r} are not a readable checkpoint "
                                   f"({unpickler_detail(exc)}); nothing was executed") from None
        except OSError as exc:  # weights file missing from the folder / cache / hub
            raise weights_not_found(str(model), _one_line(exc), revision, cache_dir, offline) from None
        except ValueError as exc:  # no AutoModel class for this config
            raise ValueError(f"{model!r} is not a model this transformers can build: {_one_line(exc)}") from None
        extractor = read_feature_extractor_config(source, cache_dir, offline)
        default_norm, default_mask = preprocessing_defaults(encoder, extractor)
        fingerprint = folder_fingerprint(source.folder) if source.kind == "local" else None
        super().__init__(
            encoder,
            normalize=default_norm if normalize is None else normalize,
            use_attention_mask=default_mask if use_attention_mask is None else use_attention_mask,
            layers=layers,
            dtype=dtype,
            sample_rate=int(extractor.get("sampling_rate", 16000)),
        )
        self.source = source
        self._fingerprint = fingerprint
        self.feature_extractor_config = extractor
        self.config = {
            "model": str(model),
            "revision": revision,
            "normalize": normalize,
            "use_attention_mask": use_attention_mask,
            "layers": list(layers) if isinstance(layers, (list, tuple)) else layers,
            "dtype": str(dtype) if dtype is not None else None,
            "attn_implementation": attn_implementation,
            "config_overrides": dict(config_overrides or {}),
        }

    def weights_identity(self) -> Dict[str, Any]:
        """Hub id + requested revision + resolved commit, or local folder + fingerprint."""
        if self.source.kind == "hub":
            return {"hub_id": self.source.location, "revision": self.source.revision, "commit": self.source.commit}
        return {"path": self.source.location, "fingerprint": self._fingerprint}
