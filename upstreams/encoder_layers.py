"""What the layered encoders (``hf``, ``emotion2vec``, ``whisper``) share: layer choice and fine-tuning groups.

Each encoder splits its parameters into ``(bottom, one list per layer, top)``; from that split the
fine-tuning modes and the layer-wise learning-rate groups follow the same rules for every encoder.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple, Union

from torch import nn

#: ``(bottom, one list per transformer layer, top)``: an encoder's parameters, bottom first
ParameterSplit = Tuple[List[nn.Parameter], List[List[nn.Parameter]], List[nn.Parameter]]


def resolve_layer_indices(layers: Union[None, int, Sequence[int]], total: int, what: str = "model") -> List[int]:
    """Hidden-state indices (0 = the input of the first layer .. ``total``) from a user's ``layers`` option.

    ``None``: every hidden state; an int or a list of ints, negative ones counted from the top.
    """
    count = total + 1
    if layers is None:
        return list(range(count))
    if isinstance(layers, int):
        layers = [layers]
    resolved = []
    for index in layers:
        if not -count <= int(index) < count:
            raise ValueError(f"layer index {index} out of range: this {what} has hidden states 0..{total}")
        resolved.append(int(index) % count)
    if not resolved:
        raise ValueError("layers must name at least one hidden state")
    return resolved


def check_finetune_mode(upstream: nn.Module, mode: str, top_n: Optional[int], num_layers: int) -> None:
    """Refuse a mode the upstream does not support, or a ``top_n`` outside 1..``num_layers``."""
    supported = upstream.supported_finetune_modes()  # type: ignore[operator]  # the Upstream contract's method
    if mode not in supported:
        raise ValueError(f"{type(upstream).__name__} does not support finetune mode {mode!r}; "
                         f"supported: {', '.join(supported)}")
    if mode == "top_n" and (top_n is None or not 1 <= int(top_n) <= num_layers):
        raise ValueError(f"finetune mode 'top_n' needs top_n between 1 and {num_layers}, got {top_n!r}")


def apply_finetune_mode(mode: str, top_n: Optional[int], everything: Iterable[nn.Parameter],
                        front: Iterable[nn.Parameter], split: ParameterSplit) -> None:
    """Set ``requires_grad`` for ``mode`` (checked already).

    ``full`` trains ``everything``; ``finetune`` all but the convolutional ``front``; ``top_n`` only
    the top ``top_n`` layers of ``split`` and what lies above them; ``frozen`` nothing.
    """
    for p in everything:
        p.requires_grad_(mode in ("full", "finetune"))
    if mode == "finetune":
        for p in front:
            p.requires_grad_(False)
    if mode == "top_n" and top_n is not None:
        _, per_layer, top = split
        for group in per_layer[len(per_layer) - int(top_n):] + [top]:
            for p in group:
                p.requires_grad_(True)


def layer_groups(split: ParameterSplit) -> List[List[nn.Parameter]]:
    """``1 + layers`` trainable groups, bottom first, for layer-wise learning-rate decay.

    The parameters above the last layer (a final norm) join the top layer's group; frozen ones are
    left out, so a group may be empty.
    """
    bottom, per_layer, top = split
    groups = [bottom] + [list(g) for g in per_layer]
    groups[-1] = groups[-1] + top
    return [[p for p in g if p.requires_grad] for g in groups]


def _is_peft_parameter(name: str) -> bool:
    """True for the weights LoRA or an adapter adds (``lora_A``/``lora_B``, an adapter's ``down``/``up``)."""
    parts = name.split(".")
    return "lora_A" in parts or "lora_B" in parts or any(
        parts[i] in ("down", "up") and i > 0 and parts[i - 1] != "base_layer" for i in range(len(parts))
    )


class FinetuneState:
    """Mixin for an encoder upstream: the fine-tuning mode last set, and a frozen encoder kept in eval mode.

    Put it before ``Upstream`` in the bases; ``frozen_module`` returns the module that must never
    train (dropout, masking) while the mode is ``frozen``.
    """

    _finetune_mode: str = "frozen"
    _top_n: Optional[int] = None
    # which layer names LoRA and adapters target (upstreams/peft_tuning.py); None: told by the class name
    peft_family: Optional[str] = None

    def frozen_module(self) -> nn.Module:  # pragma: no cover - defined by each encoder
        """The encoder module held in eval mode while frozen."""
        raise NotImplementedError

    def record_finetune(self, mode: str, top_n: Optional[int]) -> None:
        """Remember ``mode`` (after its ``requires_grad`` were set) and reapply train/eval.

        ``lora`` / ``adapter``: the parameter-efficient layers are injected into ``frozen_module()``
        once (``upstreams/peft_tuning.py``), with the settings in ``self.peft_options``; only they train.
        """
        if mode in ("lora", "adapter"):
            if getattr(self, "_peft_mode", None) not in (None, mode):
                raise ValueError(f"finetune mode {mode!r}: this upstream already has {self._peft_mode} layers")
            if getattr(self, "_peft_mode", None) is None:
                from upstreams.peft_tuning import PeftSettings, apply_peft

                options = dict(getattr(self, "peft_options", None) or {})
                settings = PeftSettings(**options, given={k: v for k, v in options.items() if k != "preset"})
                family = self.peft_family or ("emotion2vec" if "emotion2vec" in type(self).__name__.lower() else "hf")
                self.peft_counts = apply_peft(self.frozen_module(), mode, family, settings)
                self._peft_mode = mode
            else:  # set again: the injected layers train, the rest stays frozen
                for name, p in self.frozen_module().named_parameters():
                    p.requires_grad_(_is_peft_parameter(name))
        self._finetune_mode = mode
        self._top_n = int(top_n) if mode == "top_n" and top_n is not None else None
        self.train(self.training)  # type: ignore[attr-defined]  # nn.Module's

    def merge_adapters(self) -> int:
        """Fold trained LoRA weights into their base layers (exact), for export; returns how many were merged.

        Bottleneck adapters (``adapter``) are a branch of their own and stay.
        """
        if getattr(self, "_peft_mode", None) != "lora":
            return 0
        from upstreams.peft_tuning import merge_peft

        return merge_peft(self.frozen_module())

    @property
    def finetune_mode(self) -> str:
        """The mode last set with ``set_finetune``."""
        return self._finetune_mode

    def train(self, mode: bool = True):  # type: ignore[no-untyped-def]
        """Like ``nn.Module.train``, but a frozen encoder always runs in eval mode (no dropout/masking)."""
        super().train(mode)  # type: ignore[misc]
        if getattr(self, "_finetune_mode", "frozen") == "frozen":
            self.frozen_module().eval()
        return self
