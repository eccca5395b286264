"""Any S3PRL upstream by name (optional extra: ``pip install 'ser-plugins[s3prl]'``).

S3PRL's ``s3prl.nn`` / ``s3prl.hub`` import torchaudio, so this plugin works only where a
torchaudio matching the installed torch imports. The import happens when the upstream is built,
never when plugins are listed; if it fails, :class:`S3prlUnavailableError` says why and how to fix
it. The ``hf`` presets and the ``fairseq`` upstream cover wav2vec 2.0 / HuBERT / WavLM / data2vec
without S3PRL.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch

from ser_plugins.plugins.contracts import Upstream, UpstreamOutput
from ser_plugins.errors import UserError


class S3prlUnavailableError(UserError, ImportError):
    """``s3prl.nn`` cannot be imported (S3PRL missing, or torchaudio missing / mismatched)."""


def load_s3prl_upstream_class() -> Any:
    """``s3prl.nn.S3PRLUpstream``, or :class:`S3prlUnavailableError` with the fix."""
    try:
        from s3prl.nn import S3PRLUpstream
    except Exception as exc:  # ImportError, or torchaudio failing to load its native library
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        torch_version = torch.__version__.split("+")[0]
        series = ".".join(torch_version.split(".")[:2])
        raise S3prlUnavailableError(
            "the 's3prl' upstream needs the s3prl package and a torchaudio that matches your torch "
            f"({torch_version}), but importing s3prl.nn failed with {reason}.\n"
            "To fix it, either:\n"
            f"  * install both: pip install 'ser-plugins[s3prl]' 'torchaudio=={series}.*' (install torchaudio "
            "from the same package index as torch, so CPU/CUDA builds match), or\n"
            "  * use an upstream that needs neither: the 'hf' upstream and its presets (wav2vec2_base, "
            "hubert_base, wavlm_base_plus, data2vec_base, ... -- all transformers-based), or 'fairseq' "
            "for original fairseq .pt checkpoints."
        ) from None
    return S3PRLUpstream


class S3prlUpstream(Upstream):
    """An S3PRL upstream (``S3prlUpstream(model="wavlm_large")``): all hidden states, frame lengths.

    ``model`` is an S3PRL hub name (``wavlm_large``, ``apc``, ...; called ``model`` because the
    registry's own ``name`` argument is the plugin name); ``path_or_url`` a checkpoint;
    ``layer_norm`` applies S3PRL's per-layer layer norm; ``extra_conf`` goes to the hub entry.
    Fine-tuning modes: ``frozen`` and ``full``.
    """

    def __init__(
        self,
        model: str,
        path_or_url: Optional[str] = None,
        refresh: bool = False,
        layer_norm: bool = False,
        extra_conf: Optional[Dict[str, Any]] = None,
    ) -> None:
        upstream_cls = load_s3prl_upstream_class()
        super().__init__()
        self.model = upstream_cls(
            model, path_or_url=path_or_url, refresh=refresh, normalize=layer_norm, extra_conf=extra_conf
        )
        rates = [int(r) for r in self.model.downsample_rates]
        if len(set(rates)) != 1:
            raise ValueError(f"S3PRL upstream {model!r} has layers at different frame rates {rates}; not supported")
        self.hop_length = rates[0]
        self.hidden_sizes = [int(h) for h in self.model.hidden_sizes]
        self.s3prl_name = model
        self._frozen = True
        self.config = {
            "model": model,
            "path_or_url": path_or_url,
            "layer_norm": layer_norm,
            "extra_conf": dict(extra_conf or {}),
        }
        self.set_finetune("frozen")

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        """S3PRL's frame count: ``(samples - 1) // hop + 1``."""
        return (torch.div(wav_lengths.long() - 1, self.hop_length, rounding_mode="floor") + 1).clamp(min=1)

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> UpstreamOutput:
        """All hidden states ``[B, T, D]`` and the first layer's frame lengths."""
        trainable = any(p.requires_grad for p in self.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            states, lengths = self.model(wavs, wav_lengths.to(wavs.device))
        return UpstreamOutput(hidden_states=list(states), lengths=lengths[0].long())

    def set_finetune(self, mode: str, top_n: Optional[int] = None) -> None:
        """``frozen`` or ``full``; a frozen upstream stays in eval mode."""
        super().set_finetune(mode, top_n)
        self._frozen = mode == "frozen"
        self.train(self.training)

    def supported_finetune_modes(self) -> Tuple[str, ...]:
        """``frozen`` and ``full``."""
        return ("frozen", "full")

    def train(self, mode: bool = True) -> "S3prlUpstream":
        """Like ``nn.Module.train``; a frozen upstream always runs in eval mode."""
        super().train(mode)
        if getattr(self, "_frozen", False):
            self.model.eval()
        return self

    def identity(self) -> Dict[str, Any]:
        """Class, config and the S3PRL version."""
        ident = super().identity()
        try:
            from importlib.metadata import version

            ident["s3prl_version"] = version("s3prl")
        except Exception:  # pragma: no cover - metadata missing
            ident["s3prl_version"] = None
        return ident
