"""A native PyTorch emotion2vec / emotion2vec+ audio encoder (fairseq ``data2vec_multi``, audio only).

emotion2vec (Ma et al., ACL 2024 Findings) is a data2vec 2.0 model pre-trained for emotion. Its audio
encoder, as released in fairseq ``.pt`` and FunASR ``model.pt`` checkpoints:

1. a strided 1-D conv feature encoder (7 layers, 320 samples per frame; a LayerNorm after every conv
   in ``layer_norm`` mode, a GroupNorm after the first one in ``default`` mode), then LayerNorm +
   Linear to ``embed_dim``;
2. a stack of ``conv_pos_depth`` grouped positional convolutions (kernel ``max(3, width // depth)``,
   each followed by a parameter-free LayerNorm and GELU), added to the frames;
3. ``num_extra_tokens`` learned tokens prepended to the sequence (stripped from every output here);
4. ``prenet_depth`` + ``depth`` transformer blocks (post-LN by default) whose attention logits get an
   ALiBi bias (``-slope_h * |i - j|``, zero for the extra tokens) times a learned, clamped-at-0,
   per-head scale.

:class:`Emotion2vecEncoder` exposes the hidden state of every block and, unlike the reference
implementation, is batch-invariant: padded frames are zeroed before each positional convolution
(the reference lets them leak into the last valid frames) and masked as attention keys, and the
GroupNorm of a ``default``-mode conv encoder takes each utterance's statistics over its own frames,
so a padded batch gives each utterance its features alone. :func:`map_reference_state_dict` renames the weights of
a fairseq / FunASR checkpoint into this module's names.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ser_plugins.errors import UserError
from upstreams.hf import is_tracing, masked_group_norm
from upstreams.safe_checkpoint import int_literal

log = logging.getLogger("ser_plugins")

#: the conv feature encoder of every released emotion2vec checkpoint: (channels, kernel, stride)
DEFAULT_CONV_SPEC = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
#: the namespace of the audio encoder's weights in fairseq / FunASR checkpoints
AUDIO_PREFIX = "modality_encoders.AUDIO."


class Emotion2vecCheckpointError(UserError, ValueError):
    """The checkpoint or its config is not a supported emotion2vec / data2vec_multi audio model."""


def parse_conv_spec(spec: Any) -> List[Tuple[int, int, int]]:
    """``"[(512, 10, 5)] + [(512, 3, 2)] * 4"`` (or a list) -> ``[(dim, kernel, stride), ...]``, without eval."""
    if isinstance(spec, (list, tuple)):
        layers = [tuple(int(v) for v in layer) for layer in spec]
    else:
        try:
            layers = int_literal(spec)
        except ValueError as exc:
            what = "cannot parse" if str(exc) == "unparsable" else "unsupported"
            raise Emotion2vecCheckpointError(
                f"{what} feature_encoder_spec {'expression: ' if what == 'unsupported' else ''}{spec!r}") from None
    if not isinstance(layers, list) or not layers or not all(
        isinstance(t, tuple) and len(t) == 3 and all(isinstance(i, int) and i > 0 for i in t) for t in layers
    ):
        raise Emotion2vecCheckpointError(f"feature_encoder_spec must be a list of (dim, kernel, stride): {spec!r}")
    return [tuple(t) for t in layers]  # type: ignore[misc]


def _number(value: Any, kind: Callable[[Any], Any], name: str) -> Any:
    """``int`` / ``float`` of a config value (PyYAML reads ``1e-05`` as a string)."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise Emotion2vecCheckpointError(f"config value {name}={value!r} is not a number") from None


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _is_unresolved(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.startswith("${"))


@dataclass
class Emotion2vecConfig:
    """The architecture of an emotion2vec audio encoder (fairseq ``Data2VecMultiConfig`` names in comments)."""

    embed_dim: int = 768
    depth: int = 8  # main blocks
    prenet_depth: int = 4  # modalities.audio.prenet_depth: blocks of the audio "context encoder"
    num_heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    norm_affine: bool = True
    layer_norm_first: bool = False  # False: post-LN blocks (every released model)
    conv_layers: List[Tuple[int, int, int]] = field(default_factory=lambda: parse_conv_spec(DEFAULT_CONV_SPEC))
    extractor_mode: str = "layer_norm"  # or "default" (GroupNorm on the first conv layer)
    conv_pos_width: int = 95
    conv_pos_depth: int = 5
    conv_pos_groups: int = 16
    conv_pos_pre_ln: bool = False
    num_extra_tokens: int = 10
    use_alibi: bool = True  # use_alibi_encoder
    alibi_scale_per_layer: bool = False  # learned_alibi_scale_per_layer
    alibi_scale_per_head: bool = True  # learned_alibi_scale_per_head
    learned_alibi_scale: bool = True
    num_alibi_heads: int = 12
    # dropouts (used only while fine-tuning; 0 in eval mode)
    encoder_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    post_mlp_drop: float = 0.1
    dropout_input: float = 0.0
    prenet_dropout: float = 0.1
    #: the input convention: each utterance standardised (task.normalize / model_conf.normalize)
    normalize: bool = True

    @property
    def num_blocks(self) -> int:
        """Transformer blocks in all: the prenet's and the main ones."""
        return self.prenet_depth + self.depth

    @property
    def pos_kernel(self) -> int:
        """Kernel size of each positional convolution."""
        return max(3, self.conv_pos_width // self.conv_pos_depth)

    @classmethod
    def from_model_conf(cls, model: Mapping[str, Any], task: Optional[Mapping[str, Any]] = None) -> "Emotion2vecConfig":
        """From a fairseq ``cfg["model"]`` (+ ``cfg["task"]``) or a FunASR ``config.yaml``'s ``model_conf``.

        Both use the same keys, the audio encoder's under ``modalities.audio``. Missing keys take
        fairseq's ``data2vec_multi`` defaults; options this encoder does not implement raise
        :class:`Emotion2vecCheckpointError`.
        """
        model = dict(model)
        audio = model.get("modalities") or {}
        audio = dict(audio.get("audio") or audio.get("AUDIO") or {}) if isinstance(audio, Mapping) else {}
        if not audio:
            raise Emotion2vecCheckpointError("the model config has no modalities.audio section (not an emotion2vec / "
                                             "data2vec_multi audio model)")
        name = str(model.get("_name") or "")
        if name and name not in ("data2vec_multi", "emotion2vec", "Emotion2vec"):
            raise Emotion2vecCheckpointError(f"model {name!r} is not an emotion2vec / data2vec_multi model")
        if _flag(audio.get("learned_alibi", False)):
            raise Emotion2vecCheckpointError(
                "learned ALiBi biases (modalities.audio.learned_alibi=true) are not supported")
        mode = str(audio.get("extractor_mode", model.get("extractor_mode", "layer_norm")))
        if mode not in ("layer_norm", "default"):
            raise Emotion2vecCheckpointError(f"extractor_mode {mode!r} is not supported (layer_norm or default)")
        num_heads = _number(model.get("num_heads", 12), int, "num_heads")
        depth = _number(model.get("depth", 8), int, "depth")
        alibi_heads = audio.get("num_alibi_heads")
        alibi_heads = num_heads if _is_unresolved(alibi_heads) else _number(alibi_heads, int, "num_alibi_heads")
        model_depth = audio.get("model_depth")
        if not _is_unresolved(model_depth) and _number(model_depth, int, "model_depth") != depth:
            raise Emotion2vecCheckpointError(f"modalities.audio.model_depth={model_depth} differs from depth={depth}")
        if alibi_heads > num_heads:
            raise Emotion2vecCheckpointError(f"num_alibi_heads={alibi_heads} exceeds num_heads={num_heads}")
        task = dict(task or {})
        normalize = model.get("normalize", task.get("normalize", True))
        return cls(
            embed_dim=_number(model.get("embed_dim", 768), int, "embed_dim"),
            depth=depth,
            prenet_depth=_number(audio.get("prenet_depth", 4), int, "prenet_depth"),
            num_heads=num_heads,
            mlp_ratio=_number(model.get("mlp_ratio", 4.0), float, "mlp_ratio"),
            norm_eps=_number(model.get("norm_eps", 1e-6), float, "norm_eps"),
            norm_affine=_flag(model.get("norm_affine", True)),
            layer_norm_first=_flag(model.get("layer_norm_first", False)),
            conv_layers=parse_conv_spec(audio.get("feature_encoder_spec") or DEFAULT_CONV_SPEC),
            extractor_mode=mode,
            conv_pos_width=_number(audio.get("conv_pos_width", 95), int, "conv_pos_width"),
            conv_pos_depth=_number(audio.get("conv_pos_depth", 5), int, "conv_pos_depth"),
            conv_pos_groups=_number(audio.get("conv_pos_groups", 16), int, "conv_pos_groups"),
            conv_pos_pre_ln=_flag(audio.get("conv_pos_pre_ln", False)),
            num_extra_tokens=_number(audio.get("num_extra_tokens", 0), int, "num_extra_tokens"),
            use_alibi=_flag(audio.get("use_alibi_encoder", False)),
            alibi_scale_per_layer=_flag(audio.get("learned_alibi_scale_per_layer", False)),
            alibi_scale_per_head=_flag(audio.get("learned_alibi_scale_per_head", False)),
            learned_alibi_scale=_flag(audio.get("learned_alibi_scale", False)),
            num_alibi_heads=alibi_heads,
            encoder_dropout=_number(model.get("encoder_dropout", 0.1), float, "encoder_dropout"),
            attention_dropout=_number(model.get("attention_dropout", 0.1), float, "attention_dropout"),
            activation_dropout=_number(model.get("activation_dropout", 0.0), float, "activation_dropout"),
            post_mlp_drop=_number(model.get("post_mlp_drop", 0.1), float, "post_mlp_drop"),
            dropout_input=_number(model.get("dropout_input", 0.0), float, "dropout_input"),
            prenet_dropout=_number(audio.get("prenet_dropout", 0.0), float, "prenet_dropout"),
            normalize=_flag(normalize) if normalize is not None else True,
        )


# --- building blocks ------------------------------------------------------------------------------
class ConvLayer(nn.Module):
    """One strided conv of the feature encoder, then its norm (if any) and GELU; ``[B, C, T]`` in and out."""

    def __init__(self, n_in: int, n_out: int, kernel: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv = nn.Conv1d(n_in, n_out, kernel, stride=stride, bias=False)
        self.norm_kind = norm
        if norm == "layer":
            self.norm: Optional[nn.Module] = nn.LayerNorm(n_out)
        elif norm == "group":
            self.norm = nn.GroupNorm(n_out, n_out)
        else:
            self.norm = None

    def forward(self, x: torch.Tensor, frames: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``frames`` (``[B]``, this layer's valid output frames per row): the GroupNorm's statistics
        cover only those, as for each row alone (a padded batch); None: every frame."""
        x = self.conv(x)
        if self.norm_kind == "layer":  # over channels, per frame, in float32 (fairseq's Fp32LayerNorm)
            x = F.layer_norm(x.transpose(1, 2).float(), self.norm.normalized_shape, self.norm.weight.float(),
                             self.norm.bias.float(), self.norm.eps).type_as(x).transpose(1, 2)
        elif self.norm_kind == "group" and frames is not None:  # each row's own frames, in float32
            x = masked_group_norm(self.norm, x, frames)
        elif self.norm_kind == "group":  # over time, per channel, in float32 (Fp32GroupNorm)
            x = F.group_norm(x.float(), self.norm.num_groups, self.norm.weight.float(), self.norm.bias.float(),
                             self.norm.eps).type_as(x)
        return F.gelu(x)


class ConvFeatureEncoder(nn.Module):
    """Waveforms ``[B, S]`` -> frames ``[B, C, T]``."""

    def __init__(self, conv_layers: Sequence[Tuple[int, int, int]], mode: str) -> None:
        super().__init__()
        layers = []
        n_in = 1
        for i, (dim, kernel, stride) in enumerate(conv_layers):
            norm = "layer" if mode == "layer_norm" else ("group" if i == 0 else "none")
            layers.append(ConvLayer(n_in, dim, kernel, stride, norm))
            n_in = dim
        self.layers = nn.ModuleList(layers)

    @property
    def time_wide(self) -> bool:
        """True when a layer normalises over time (``default`` mode's GroupNorm): padding would reach it."""
        return any(layer.norm_kind == "group" for layer in self.layers)

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``lengths`` (``[B]`` samples, at least the receptive field): a padded batch, each row's valid
        frames as the row alone gives them (a GroupNorm over time sees only the row's own frames)."""
        x = wavs.unsqueeze(1)
        frames = lengths
        for layer in self.layers:
            if frames is not None:
                frames = torch.div(frames - layer.conv.kernel_size[0], layer.conv.stride[0], rounding_mode="floor") + 1
            x = layer(x, frames)
        return x


class FeatureProjection(nn.Module):
    """LayerNorm then Linear from the conv channels to ``embed_dim``; ``[B, T, C]`` -> ``[B, T, D]``."""

    def __init__(self, conv_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(conv_dim)
        self.linear = nn.Linear(conv_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.layer_norm(x))


class PositionalConv(nn.Module):
    """Stacked grouped convolutions whose output is added to the frames (data2vec 2.0's relative positions).

    ``valid`` (``[B, T]``, True on real frames) zeroes the padded frames before every convolution, so
    they act exactly as the zero padding at the end of an utterance run alone.
    """

    def __init__(self, dim: int, kernel: int, groups: int, depth: int, pre_norm: bool) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(dim) if pre_norm else None
        self.kernel = kernel
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
                                   for _ in range(depth))

    def forward(self, x: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        frames = x.shape[1]
        keep = valid.unsqueeze(-1).to(x.dtype) if valid is not None else None
        for conv in self.convs:
            if keep is not None:
                x = x * keep
            y = conv(x.transpose(1, 2))
            if self.kernel % 2 == 0:  # an even kernel gives one frame more: drop the last
                y = y[..., :frames]
            y = F.layer_norm(y.transpose(1, 2), (y.shape[1],))  # no affine parameters
            x = F.gelu(y)
        return x


def alibi_slopes(heads: int) -> List[float]:
    """ALiBi's per-head slopes (Press et al.): a geometric sequence, interleaved for non-powers of 2."""
    def power_of_2(n: int) -> List[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_2(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_2(closest) + alibi_slopes(2 * closest)[0::2][: heads - closest]


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection and an additive float mask (bias + padding)."""

    def __init__(self, dim: int, heads: int, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, H, N, Dh]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype),
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.out_proj(out.transpose(1, 2).reshape(batch, length, dim)))


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear, with dropout after the activation and after the output."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """A data2vec 2.0 transformer block ("AltBlock"), post-LN or pre-LN."""

    def __init__(self, cfg: Emotion2vecConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.layer_norm_first = cfg.layer_norm_first
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.attention = Attention(dim, cfg.num_heads, cfg.attention_dropout, cfg.encoder_dropout)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
        self.ffn = FeedForward(dim, int(dim * cfg.mlp_ratio), cfg.activation_dropout)
        self.post_mlp_dropout = nn.Dropout(cfg.post_mlp_drop)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``mask``: additive attention mask ``[B or 1, heads, N, N]`` (ALiBi bias, -inf on padded keys) or None."""
        if self.layer_norm_first:
            x = x + self.attention(self.norm1(x), mask)
            r = self.ffn(self.norm2(x))
            return r + self.post_mlp_dropout(r)  # sic: data2vec 2.0's pre-LN block adds the FFN output to itself
        x = self.norm1(x + self.attention(x, mask))
        return self.norm2(x + self.post_mlp_dropout(self.ffn(x)))


# --- the encoder ----------------------------------------------------------------------------------
class Emotion2vecEncoder(nn.Module):
    """The emotion2vec audio encoder: waveforms ``[B, S]`` -> the hidden state of every block.

    ``forward(wavs, lengths)`` returns ``1 + prenet_depth + depth`` tensors ``[B, T, D]`` (the first
    block's input, then each block's output; the final LayerNorm applied to the last one for pre-LN
    models), the extra tokens stripped, and the valid frame counts ``[B]``. ``blocks`` holds the
    prenet blocks followed by the main ones.
    """

    def __init__(self, cfg: Emotion2vecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.feature_encoder = ConvFeatureEncoder(cfg.conv_layers, cfg.extractor_mode)
        self.feature_projection = FeatureProjection(cfg.conv_layers[-1][0], dim)
        self.pos_conv = PositionalConv(dim, cfg.pos_kernel, cfg.conv_pos_groups, cfg.conv_pos_depth,
                                       cfg.conv_pos_pre_ln)
        self.extra_tokens = nn.Parameter(torch.zeros(1, cfg.num_extra_tokens, dim)) if cfg.num_extra_tokens else None
        if cfg.use_alibi:
            scales = (cfg.num_blocks if cfg.alibi_scale_per_layer else 1, 1,
                      cfg.num_alibi_heads if cfg.alibi_scale_per_head else 1, 1, 1)
            self.alibi_scale: Optional[nn.Parameter] = nn.Parameter(torch.ones(scales))
            self.register_buffer("alibi_slopes", torch.tensor(alibi_slopes(cfg.num_alibi_heads)), persistent=False)
        else:
            self.alibi_scale = None
        self.prenet_norm = (nn.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
                            if not cfg.layer_norm_first else None)
        self.prenet_dropout = nn.Dropout(cfg.prenet_dropout)
        self.input_dropout = nn.Dropout(cfg.dropout_input)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_blocks))
        self.final_norm = (nn.LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine)
                           if cfg.layer_norm_first else None)
        self.gradient_checkpointing = False

    # --- frames ----------------------------------------------------------------------------------
    @property
    def hop_length(self) -> int:
        """Input samples per output frame (the product of the conv strides)."""
        return int(math.prod(s for _, _, s in self.cfg.conv_layers))

    @property
    def receptive_field(self) -> int:
        """Input samples one frame sees: the shortest input giving one frame."""
        field_ = 1
        for _, kernel, stride in reversed(self.cfg.conv_layers):
            field_ = (field_ - 1) * stride + kernel
        return field_

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames for ``lengths`` samples: the conv formula ``(n - kernel) // stride + 1`` per layer."""
        frames = lengths.long()
        for _, kernel, stride in self.cfg.conv_layers:
            frames = torch.div(frames - kernel, stride, rounding_mode="floor") + 1
        return frames

    # --- forward ---------------------------------------------------------------------------------
    def _alibi_base(self, frames: int, device: torch.device) -> Optional[torch.Tensor]:
        """The unscaled ALiBi bias ``[1, heads, E + T, E + T]``: ``-slope_h * |i - j|``, zero on the extra tokens'
        rows and columns and for heads beyond ``num_alibi_heads``."""
        if self.alibi_scale is None:
            return None
        pos = torch.arange(frames, device=device)
        distance = (pos.unsqueeze(0) - pos.unsqueeze(1)).abs().neg().float()
        bias = self.alibi_slopes.float().to(device)[:, None, None] * distance.unsqueeze(0)  # [Ha, T, T]
        extra = self.cfg.num_extra_tokens
        missing = self.cfg.num_heads - self.cfg.num_alibi_heads
        if extra or missing:
            bias = F.pad(bias, (extra, 0, extra, 0, 0, missing))
        return bias.unsqueeze(0)

    def _mask(self, base: Optional[torch.Tensor], block: int,
              padding: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Block ``block``'s additive attention mask: the ALiBi bias times its scale (clamped at 0) plus ``padding``."""
        if base is None:
            return padding
        scale = self.alibi_scale.clamp_min(0).float()
        scale = scale[block] if scale.shape[0] > 1 else scale[0]  # [1, Ha or 1, 1, 1]
        missing = base.shape[1] - scale.shape[1]
        if scale.shape[1] > 1 and missing:
            scale = F.pad(scale, (0, 0, 0, 0, 0, missing))
        mask = base * scale
        return mask if padding is None else mask + padding

    def forward(self, wavs: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                num_blocks: Optional[int] = None) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Hidden states (``[B, T, D]`` each) of the first ``num_blocks`` blocks (default all) and frame counts."""
        padded = (lengths is not None and self.feature_encoder.time_wide and not is_tracing()
                  and bool((lengths < wavs.shape[1]).any()))
        x = self.feature_encoder(wavs, lengths.to(wavs.device) if padded else None).transpose(1, 2)
        x = self.feature_projection(x)
        batch, frames = x.shape[0], x.shape[1]
        if lengths is None:
            frame_counts = torch.full((batch,), frames, dtype=torch.long, device=x.device)
            valid = None
        else:
            frame_counts = self.frame_lengths(lengths.to(x.device)).clamp(min=1, max=frames)
            valid = torch.arange(frames, device=x.device).unsqueeze(0) < frame_counts.unsqueeze(1)
        x = x + self.pos_conv(x, valid)
        extra = self.cfg.num_extra_tokens
        if self.extra_tokens is not None:
            x = torch.cat([self.extra_tokens.expand(batch, -1, -1).to(x.dtype), x], dim=1)
        padding = None
        if valid is not None:  # -inf on padded keys; the extra tokens are always valid
            keys = F.pad(valid, (extra, 0), value=True)
            padding = torch.zeros(keys.shape, dtype=torch.float32, device=x.device).masked_fill(~keys, float("-inf"))
            padding = padding[:, None, None, :]
        if self.prenet_norm is not None:
            x = self.prenet_norm(x)
        x = self.prenet_dropout(x)
        states = [x[:, extra:]]
        count = len(self.blocks) if num_blocks is None else int(num_blocks)
        base = self._alibi_base(frames, x.device)
        shared = self.alibi_scale is None or self.alibi_scale.shape[0] == 1  # one mask for every block
        mask = self._mask(base, 0, padding) if shared else None
        for i, block in enumerate(list(self.blocks)[:count]):
            if i == self.cfg.prenet_depth:
                x = self.input_dropout(x)
            if not shared:
                mask = self._mask(base, i, padding)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
            states.append(x[:, extra:])
        if self.final_norm is not None and count == len(self.blocks):
            states[-1] = self.final_norm(states[-1])
        return states, frame_counts


# --- reference checkpoint names -> this module's ---------------------------------------------------
_BLOCK_PARTS: Tuple[Tuple[str, str], ...] = (
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("attn.qkv.", "attention.qkv."),
    ("attn.proj.", "attention.out_proj."),
    ("mlp.fc1.", "ffn.fc1."),
    ("mlp.fc2.", "ffn.fc2."),
)
#: weights of the pre-training / classification heads, never part of the encoder
IGNORED_PREFIXES: Tuple[str, ...] = (
    AUDIO_PREFIX + "decoder.",  # data2vec 2.0's target decoder
    "proj.",  # emotion2vec+'s 9-class emotion head
    "_ema", "ema.", "shared_decoder.", "recon_proj.", "cls_proj.",
)


def _block_part(rest: str) -> Optional[str]:
    for old, new in _BLOCK_PARTS:
        if rest.startswith(old) and rest[len(old):] in ("weight", "bias"):
            return new + rest[len(old):]
    return None


def rename_reference_key(key: str, cfg: Emotion2vecConfig) -> Optional[str]:
    """This module's name for a fairseq / FunASR emotion2vec weight, or None when it has none."""
    m = re.fullmatch(r"modality_encoders\.AUDIO\.local_encoder\.conv_layers\.(\d+)\.(0|2|2\.1)\.(weight|bias)", key)
    if m:
        part = "conv" if m.group(2) == "0" else "norm"
        return f"feature_encoder.layers.{m.group(1)}.{part}.{m.group(3)}"
    m = re.fullmatch(r"modality_encoders\.AUDIO\.project_features\.(1|2)\.(weight|bias)", key)
    if m:
        return f"feature_projection.{'layer_norm' if m.group(1) == '1' else 'linear'}.{m.group(2)}"
    pos = AUDIO_PREFIX + "relative_positional_encoder."
    if key.startswith(pos):
        rest = key[len(pos):]
        if cfg.conv_pos_pre_ln:
            m = re.fullmatch(r"0\.(weight|bias)", rest)
            if m:
                return f"pos_conv.pre_norm.{m.group(1)}"
            rest = rest[2:] if rest.startswith("1.") else "?"
        m = re.fullmatch(r"(\d+)\.0\.(weight|bias)", rest)
        if m and int(m.group(1)) >= 1:
            return f"pos_conv.convs.{int(m.group(1)) - 1}.{m.group(2)}"
        return None
    if key in (AUDIO_PREFIX + "extra_tokens", AUDIO_PREFIX + "alibi_scale"):
        return key[len(AUDIO_PREFIX):]
    m = re.fullmatch(r"modality_encoders\.AUDIO\.context_encoder\.norm\.(weight|bias)", key)
    if m:
        return f"prenet_norm.{m.group(1)}"
    m = re.fullmatch(r"modality_encoders\.AUDIO\.context_encoder\.blocks\.(\d+)\.(.+)", key)
    if m:
        part = _block_part(m.group(2))
        return f"blocks.{int(m.group(1))}.{part}" if part else None
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m:
        part = _block_part(m.group(2))
        return f"blocks.{cfg.prenet_depth + int(m.group(1))}.{part}" if part else None
    m = re.fullmatch(r"norm\.(weight|bias)", key)
    if m:
        return f"final_norm.{m.group(1)}"
    return None


def map_reference_state_dict(state: Mapping[str, torch.Tensor], encoder: Emotion2vecEncoder) -> Dict[str, torch.Tensor]:
    """Rename a fairseq / FunASR emotion2vec state dict into ``encoder``'s names.

    Pre-training and classification heads (``IGNORED_PREFIXES``) and anything outside the encoder's
    namespaces are dropped; an unknown encoder weight, a shape mismatch or a missing weight is an error.
    """
    cfg = encoder.cfg
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    targets = encoder.state_dict()
    mapped: Dict[str, torch.Tensor] = {}
    unknown: List[str] = []
    dropped: List[str] = []
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or key.startswith(IGNORED_PREFIXES):
            continue
        if not key.startswith((AUDIO_PREFIX, "blocks.", "norm.")):
            dropped.append(key)
            continue
        name = rename_reference_key(key, cfg)
        if name is None or name not in targets:
            unknown.append(key)
            continue
        if name == "alibi_scale" and tensor.dim() == 4:  # older fairseq checkpoints (upgrade_state_dict_named)
            tensor = tensor.unsqueeze(0)
        if tuple(targets[name].shape) != tuple(tensor.shape):
            raise Emotion2vecCheckpointError(
                f"shape mismatch for {key} -> {name}: checkpoint {tuple(tensor.shape)}, config "
                f"{tuple(targets[name].shape)} (does the config belong to this checkpoint?)")
        mapped[name] = tensor
    if dropped:
        log.debug("emotion2vec: ignoring %d weights outside the audio encoder (%s ...)", len(dropped), dropped[0])
    if unknown:
        raise Emotion2vecCheckpointError(
            f"emotion2vec weights with no counterpart in the encoder: {', '.join(sorted(unknown)[:12])}")
    missing = [n for n in targets if n not in mapped]
    if missing:
        raise Emotion2vecCheckpointError(f"the checkpoint lacks weights for: {', '.join(missing[:12])}")
    return mapped
