"""Parameter-efficient fine-tuning of the layered encoders: LoRA through ``peft``, bottleneck adapters.

``finetune.mode: lora`` injects LoRA layers (Hu et al. 2022) into the encoder's linear layers named
by ``finetune.lora_targets`` with ``peft.inject_adapter_in_model`` (the ``peft`` library: LoRA's
``lora_A``/``lora_B`` weights, scaling ``alpha / rank``, dropout on the LoRA branch); every other
weight stays frozen. The default targets are the attention projections of each architecture
(``DEFAULT_TARGETS``), except WavLM's, which its attention reads as raw weights (no wrapper can
reach them): there the feed-forward projections are the default; ``finetune.peft_preset: peft_ser`` is the setting of usc-sail/peft-ser
(LoRA rank 16 on the two feed-forward projections of every transformer layer, alpha 1 as loralib's
default, no LoRA dropout).

``finetune.mode: adapter`` adds a parallel bottleneck adapter (down-projection, ReLU, dropout,
up-projection initialised to zero, scaled by 0.1: peft-ser's ``adapter`` setting, after He et al.
2022) beside the output projection of every transformer layer's feed-forward block. ``peft`` has no
bottleneck adapters, so this mode is implemented here; like LoRA it starts as the identity (the
pre-trained model's outputs are unchanged before training) and trains only its own weights.

``merge_peft(module)`` folds trained LoRA weights into their base layers and removes the adapters'
wrappers where that is exact, for export; ``peft_summary`` counts trainable and total parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

PEFT_MODES: Tuple[str, ...] = ("lora", "adapter")

#: the attention projections LoRA targets by default, per encoder family (module name suffixes)
DEFAULT_TARGETS: Dict[str, Tuple[str, ...]] = {
    "hf": ("q_proj", "k_proj", "v_proj", "out_proj"),  # wav2vec 2.0, HuBERT, WavLM, data2vec-audio
    "whisper": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "emotion2vec": ("qkv", "out_proj"),  # the data2vec 2.0 block's fused qkv and output projections
}
#: the feed-forward projections of each family (peft-ser's LoRA targets; the adapters' place)
FEED_FORWARD: Dict[str, Tuple[str, str]] = {
    "hf": ("intermediate_dense", "output_dense"),
    "whisper": ("fc1", "fc2"),
    "emotion2vec": ("fc1", "fc2"),
}
PRESETS: Dict[str, Dict[str, Any]] = {
    # usc-sail/peft-ser (Feng & Narayanan 2023): loralib LoRA of rank 16 on the feed-forward layers
    "peft_ser": {"rank": 16, "alpha": 1.0, "dropout": 0.0, "targets": "feed_forward", "adapter_dim": 64},
}


@dataclass
class PeftSettings:
    """The ``finetune.lora_*`` / ``adapter_dim`` keys of a recipe (``None``: the family's default)."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: Optional[Sequence[str]] = None
    adapter_dim: int = 64
    adapter_scale: float = 0.1
    adapter_dropout: float = 0.1
    preset: Optional[str] = None
    given: Dict[str, Any] = field(default_factory=dict)  # keys the recipe set (a preset fills the others)

    def resolved(self) -> "PeftSettings":
        """These settings with the preset's values for every key the recipe left unset."""
        if self.preset is None:
            return self
        if self.preset not in PRESETS:
            raise ValueError(f"unknown finetune.peft_preset {self.preset!r}; presets: {', '.join(PRESETS)}")
        values = {**PRESETS[self.preset], **self.given}
        return PeftSettings(
            rank=int(values.get("rank", self.rank)),
            alpha=float(values.get("alpha", self.alpha)),
            dropout=float(values.get("dropout", self.dropout)),
            targets=values.get("targets", self.targets),
            adapter_dim=int(values.get("adapter_dim", self.adapter_dim)),
            adapter_scale=self.adapter_scale,
            adapter_dropout=self.adapter_dropout,
        )


def require_peft() -> Any:
    """The ``peft`` package, or a clear error naming the extra that installs it."""
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - the message is the point
        raise ImportError(
            "finetune.mode: lora needs the peft package: pip install 'ser-plugins[peft]' (or pip install peft)"
        ) from exc
    return peft


def target_modules(module: nn.Module, family: str, targets: Any) -> List[str]:
    """Full names of the ``nn.Linear`` modules of ``module`` that LoRA wraps.

    ``targets``: None (the family's attention projections), ``"feed_forward"`` (its feed-forward
    projections), or a list of name suffixes. An empty match is an error naming what exists.
    """
    direct = _direct_attention(module)
    if targets is None and direct:
        targets = "feed_forward"  # WavLM: its attention projections cannot be wrapped (see _direct_attention)
    if direct and targets != "feed_forward":
        asked = [targets] if isinstance(targets, str) else list(targets)
        blocked = [t for t in asked if t in ATTENTION_PROJECTIONS]
        if blocked:
            raise ValueError(
                f"finetune.lora_targets {blocked}: {direct}'s attention passes the projections' weights to "
                "torch's multi_head_attention_forward itself, so a LoRA wrapper of them would never run; "
                "use lora_targets: feed_forward (the default for this model) or other linear layers"
            )
    if targets is None:
        suffixes: Sequence[str] = DEFAULT_TARGETS.get(family, DEFAULT_TARGETS["hf"])
    elif targets == "feed_forward":
        suffixes = FEED_FORWARD.get(family, FEED_FORWARD["hf"])
    elif isinstance(targets, str):
        suffixes = [targets]
    else:
        suffixes = [str(t) for t in targets]
    names = [
        name for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and any(name == s or name.endswith("." + s) for s in suffixes)
    ]
    if not names:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"finetune.lora_targets {list(suffixes)} match no linear layer; its linear layers: {linear}")
    return names


ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _direct_attention(module: nn.Module) -> str:
    """The class name of an attention that reads its projection weights directly (WavLM), or ``""``.

    transformers' ``WavLMAttention`` calls ``F.multi_head_attention_forward`` with ``q_proj.weight``,
    ``k_proj.weight`` ... instead of calling the ``nn.Linear`` modules, so wrapping them changes nothing.
    """
    for m in module.modules():
        if type(m).__name__ == "WavLMAttention":
            return type(m).__name__
    return ""


class ParallelAdapter(nn.Module):
    """``base(x) + scale * up(dropout(relu(down(x))))``: a bottleneck adapter beside a linear layer.

    ``up`` starts at zero, so the wrapped layer's output is unchanged until the adapter trains.
    """

    def __init__(self, base: nn.Linear, dim: int, scale: float = 0.1, dropout: float = 0.1) -> None:
        super().__init__()
        self.base_layer = base
        self.down = nn.Linear(base.in_features, int(dim))
        self.up = nn.Linear(int(dim), base.out_features)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = float(scale)
        self.dropout = nn.Dropout(float(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output plus the adapter's."""
        return self.base_layer(x) + self.scale * self.up(self.dropout(torch.relu(self.down(x))))


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def apply_peft(module: nn.Module, mode: str, family: str, settings: PeftSettings) -> Dict[str, int]:
    """Inject LoRA (``mode`` lora) or adapters (``adapter``) into ``module``; only they train. Returns the counts."""
    s = settings.resolved()
    for p in module.parameters():
        p.requires_grad_(False)
    if mode == "lora":
        peft = require_peft()
        names = target_modules(module, family, s.targets)
        config = peft.LoraConfig(r=int(s.rank), lora_alpha=float(s.alpha), lora_dropout=float(s.dropout),
                                 target_modules=names, bias="none")
        peft.inject_adapter_in_model(config, module)
    elif mode == "adapter":
        out_proj = FEED_FORWARD.get(family, FEED_FORWARD["hf"])[1]
        names = target_modules(module, family, [out_proj])
        for name in names:
            base = module.get_submodule(name)
            assert isinstance(base, nn.Linear)
            adapter = ParallelAdapter(base, s.adapter_dim, s.adapter_scale, s.adapter_dropout)
            adapter.to(base.weight.device, base.weight.dtype)
            _replace(module, name, adapter)
            for p in adapter.base_layer.parameters():
                p.requires_grad_(False)
    else:
        raise ValueError(f"finetune mode {mode!r} is not one of {', '.join(PEFT_MODES)}")
    return peft_summary(module)


def peft_summary(module: nn.Module) -> Dict[str, int]:
    """``{"trainable": n, "total": n}`` parameters of ``module``."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"trainable": int(trainable), "total": int(total)}


@torch.no_grad()
def merge_peft(module: nn.Module) -> int:
    """Fold LoRA into its base layers (exact: ``W + B A * scaling``) and unwrap them; returns how many.

    Adapters are a separate branch with a non-linearity: they cannot be folded, and stay.
    """
    merged = 0
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return 0
    for name, m in list(module.named_modules()):
        if isinstance(m, LoraLayer) and hasattr(m, "get_base_layer"):
            m.merge()
            _replace(module, name, m.get_base_layer())
            merged += 1
    return merged
