"""emotion2vec / emotion2vec+ as an upstream: released checkpoints on a native PyTorch encoder.

``Emotion2vecUpstream(model=...)`` loads, without FunASR or fairseq:

* a **FunASR / ModelScope / Hugging Face folder**: ``model.pt`` (a state dict) + ``config.yaml``
  (its ``model_conf``), as in ``iic/emotion2vec_plus_base`` and its mirror
  ``emotion2vec/emotion2vec_plus_base``;
* a **fairseq checkpoint** ``.pt`` (``{"cfg": {"model": ..., "task": ...}, "model": state}``), e.g. the
  original ``emotion2vec_base.pt``, a file or a folder holding one;
* a **hub id**: a Hugging Face repository with those files (``emotion2vec/emotion2vec_plus_large``);
  ModelScope ids ``iic/emotion2vec_*`` are read from their Hugging Face mirrors ``emotion2vec/...``.
  Offline rules and errors are those of the ``hf`` upstream (``HF_HUB_OFFLINE``, ``local_files_only``,
  :class:`~upstreams.hf_hub.WeightsNotFoundError`).

Every ``.pt`` is read with :func:`upstreams.safe_checkpoint.load_checkpoint` (``weights_only``
unpickling with an allow-list; nothing from the file runs). The encoder is
:class:`upstreams.emotion2vec_model.Emotion2vecEncoder`; see ``docs/self_supervised.md``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ser_plugins.plugins.contracts import FINETUNE_MODES, Upstream, UpstreamOutput
from upstreams.emotion2vec_model import (
    Emotion2vecCheckpointError,
    Emotion2vecConfig,
    Emotion2vecEncoder,
    map_reference_state_dict,
)
from upstreams.encoder_layers import (
    FinetuneState,
    apply_finetune_mode,
    check_finetune_mode,
    layer_groups,
    resolve_layer_indices,
)
from upstreams.hf import DTypeLike, resolve_dtype
from upstreams.hf_hub import WeightsNotFoundError, _hub_cache_dir, _one_line, offline_mode
from upstreams.safe_checkpoint import STUB_PREFIXES, load_checkpoint, to_plain

__all__ = ["Emotion2vecUpstream", "Emotion2vecSource", "locate_emotion2vec", "load_emotion2vec",
           "Emotion2vecCheckpointError", "HF_MIRRORS"]

#: the classes a fairseq / FunASR emotion2vec checkpoint may name besides STUB_PREFIXES' (config enums,
#: dataclasses); they become inert stand-ins, nothing of them is imported
EMOTION2VEC_STUB_PREFIXES: Tuple[str, ...] = STUB_PREFIXES + ("examples.data2vec.", "emotion2vec.", "funasr.")
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.pt"
#: ModelScope ids (iic/..., formerly damo/...) and their Hugging Face mirrors (the same files)
HF_MIRRORS: Dict[str, str] = {
    f"{org}/{name}": f"emotion2vec/{name}"
    for org in ("iic", "damo")
    for name in ("emotion2vec_base", "emotion2vec_base_finetuned", "emotion2vec_plus_seed", "emotion2vec_plus_base",
                 "emotion2vec_plus_large")
}


# --- finding the files ----------------------------------------------------------------------------
@dataclass
class Emotion2vecSource:
    """Where a checkpoint lives: its ``.pt`` file, its ``config.yaml`` (None for a fairseq file) and origin."""

    kind: str  # "local" or "hub"
    location: str  # absolute path, or hub id
    checkpoint: str
    config: Optional[str] = None
    revision: Optional[str] = None
    commit: Optional[str] = None


def _hub_id(model: str) -> str:
    return HF_MIRRORS.get(model, model)


def _looks_like_hub_id(model: str) -> bool:
    parts = model.split("/")
    return len(parts) == 2 and all(parts) and not model.startswith((".", "~", "/"))


def not_found(model: str, reason: str, revision: Optional[str] = None, cache_dir: Optional[str] = None,
              local_files_only: bool = False) -> WeightsNotFoundError:
    """A :class:`WeightsNotFoundError` saying what was looked for and the ways to provide it."""
    at = f" (revision {revision})" if revision else ""
    lines = [f"could not load the emotion2vec model {model!r}{at}: {reason}", "To provide it:"]
    if _looks_like_hub_id(model) and not os.path.exists(os.path.expanduser(model)):
        hub = _hub_id(model)
        folder = hub.rsplit("/", 1)[-1]
        lines += [
            f"  * pass a local copy instead: model=/path/to/{folder} (a folder with {WEIGHTS_FILE} and {CONFIG_FILE}, "
            "or a fairseq .pt checkpoint); in a recipe: upstream: {name: ..., model: /path/to/" + folder + "}",
            f"  * on a machine with internet, run `huggingface-cli download {hub} --local-dir {folder}` (newer "
            f"huggingface_hub: `hf download {hub} --local-dir {folder}`; from ModelScope: `modelscope download "
            f"--model iic/{folder} --local_dir {folder}`) and copy that folder here",
        ]
        if offline_mode() or local_files_only:
            lines.append("  * or let it download: unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE and do not pass "
                         "local_files_only=True (offline mode is on now)")
        else:
            lines.append("  * or check this machine's access to the Hugging Face Hub (network, proxy, HF_ENDPOINT, "
                         "HF_TOKEN); on machines without internet set HF_HUB_OFFLINE=1 to fail fast")
        lines.append(f"Looked in the Hugging Face cache at {_hub_cache_dir(cache_dir)}.")
    else:
        lines += [
            f"  * check the path {os.path.abspath(os.path.expanduser(model))}: it must be a folder with {WEIGHTS_FILE} "
            f"and {CONFIG_FILE} (FunASR / ModelScope / Hugging Face layout) or a fairseq emotion2vec .pt checkpoint",
            "  * or pass a hub id such as emotion2vec/emotion2vec_plus_base",
        ]
    return WeightsNotFoundError("\n".join(lines))


def _local_files(model: str, path: str) -> Tuple[str, Optional[str]]:
    """(checkpoint, config or None) of a local file or folder."""
    if os.path.isfile(path):
        config = os.path.join(os.path.dirname(path), CONFIG_FILE)
        return os.path.abspath(path), config if os.path.isfile(config) else None
    config = os.path.join(path, CONFIG_FILE)
    config = config if os.path.isfile(config) else None
    if os.path.isfile(os.path.join(path, WEIGHTS_FILE)):
        return os.path.abspath(os.path.join(path, WEIGHTS_FILE)), config
    checkpoints = sorted(n for n in os.listdir(path) if n.endswith((".pt", ".pth", ".ckpt")))
    if len(checkpoints) == 1:
        return os.path.abspath(os.path.join(path, checkpoints[0])), config
    found = ", ".join(sorted(os.listdir(path))[:20]) or "nothing"
    what = "several checkpoints: pass the .pt file itself" if checkpoints else f"no {WEIGHTS_FILE} or .pt checkpoint"
    raise not_found(model, f"the folder has {what} (found: {found})")


def locate_emotion2vec(model: str, revision: Optional[str] = None, cache_dir: Optional[str] = None,
                       local_files_only: bool = False) -> Emotion2vecSource:
    """Find ``model`` (a local file or folder, or a hub id) or raise :class:`WeightsNotFoundError`."""
    path = os.path.expanduser(str(model))
    if os.path.exists(path):
        checkpoint, config = _local_files(str(model), path)
        return Emotion2vecSource("local", os.path.abspath(path), checkpoint, config, revision)
    if not _looks_like_hub_id(str(model)):
        raise not_found(str(model), "no such local file or folder", revision, cache_dir)
    hub = _hub_id(str(model))
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        raise not_found(str(model), "huggingface_hub is not installed (pip install huggingface_hub)",
                        revision, cache_dir) from None
    kwargs = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    try:
        config: Optional[str] = hf_hub_download(hub, CONFIG_FILE, **kwargs)
    except Exception as exc:  # offline miss, unknown repo/revision, network failure
        raise not_found(str(model), _one_line(exc), revision, cache_dir, local_files_only) from None
    checkpoint = None
    errors = []
    for name in (WEIGHTS_FILE, f"{hub.rsplit('/', 1)[-1]}.pt"):  # FunASR's model.pt, else the fairseq file
        try:
            checkpoint = hf_hub_download(hub, name, **kwargs)
            break
        except Exception as exc:  # noqa: BLE001 - try the next name, report both
            errors.append(f"{name}: {_one_line(exc)}")
    if checkpoint is None:
        raise not_found(str(model), "; ".join(errors), revision, cache_dir, local_files_only)
    parts = os.path.normpath(os.path.dirname(checkpoint)).split(os.sep)
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None
    return Emotion2vecSource("hub", hub, checkpoint, config, revision, commit)


# --- reading the checkpoint -----------------------------------------------------------------------
def _read_yaml(path: str) -> Dict[str, Any]:
    import yaml

    with open(path, "r", encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    return data if isinstance(data, dict) else {}


def _state_dict(raw: Any) -> Dict[str, torch.Tensor]:
    """The weights of a FunASR ``model.pt`` (a state dict, maybe under ``state_dict``/``model``) or a fairseq file."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
    if not isinstance(raw, Mapping):
        raise Emotion2vecCheckpointError("the checkpoint holds no state dict")
    return {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def load_emotion2vec(source: Emotion2vecSource) -> Tuple[Emotion2vecEncoder, Dict[str, Any]]:
    """Build the encoder of ``source`` with its weights; returns it and a description of the checkpoint.

    The architecture comes from the fairseq checkpoint's own ``cfg`` or, for a FunASR ``model.pt``,
    from ``config.yaml``'s ``model_conf``.
    """
    raw = load_checkpoint(source.checkpoint, stub_prefixes=EMOTION2VEC_STUB_PREFIXES)
    cfg = to_plain(raw.get("cfg")) if isinstance(raw, Mapping) else None
    if isinstance(cfg, Mapping) and isinstance(cfg.get("model"), Mapping):
        task = cfg.get("task") if isinstance(cfg.get("task"), Mapping) else None
        config = Emotion2vecConfig.from_model_conf(cfg["model"], task)
        fmt = "fairseq"
    elif source.config is not None:
        conf = _read_yaml(source.config)
        model_conf = conf.get("model_conf")
        if not isinstance(model_conf, Mapping):
            raise Emotion2vecCheckpointError(
                f"{source.config}: no model_conf section (not a FunASR emotion2vec config)")
        if conf.get("model") not in (None, "Emotion2vec"):
            raise Emotion2vecCheckpointError(f"{source.config}: model {conf.get('model')!r} is not Emotion2vec")
        config = Emotion2vecConfig.from_model_conf(model_conf)
        fmt = "funasr"
    else:
        raise Emotion2vecCheckpointError(
            f"{source.checkpoint}: a state dict without its architecture: put the {CONFIG_FILE} it came with "
            "beside it (FunASR / ModelScope layout), or pass the fairseq checkpoint, which carries its cfg")
    encoder = Emotion2vecEncoder(config)
    encoder.load_state_dict(map_reference_state_dict(_state_dict(raw), encoder))
    return encoder.eval(), {"format": fmt}


def file_fingerprint(*paths: Optional[str]) -> str:
    """sha256 over the files' paths, sizes and mtimes (cheap; re-saving a file changes it)."""
    digest = hashlib.sha256()
    for path in paths:
        if path:
            stat = os.stat(path)
            digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


# --- the upstream ---------------------------------------------------------------------------------
def normalize_waveforms(wavs: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each utterance standardised over its valid samples (FunASR's ``F.layer_norm(source, source.shape)``);
    padding 0."""
    x = wavs.float()
    valid = (torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)).to(x.dtype)
    count = lengths.clamp(min=1).to(x.dtype).unsqueeze(1)
    mean = (x * valid).sum(1, keepdim=True) / count
    var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / count
    return (x - mean) / torch.sqrt(var + eps) * valid


class Emotion2vecUpstream(FinetuneState, Upstream):
    """emotion2vec / emotion2vec+ (a data2vec 2.0 audio encoder) as an upstream.

    ``model``: a local folder (``model.pt`` + ``config.yaml``), a fairseq ``.pt`` file, or a hub id
    (``emotion2vec/emotion2vec_plus_base``; ``iic/...`` ModelScope ids use their HF mirrors).
    ``revision``, ``local_files_only`` (default: on when ``HF_HUB_OFFLINE`` is set) and ``cache_dir`` as
    for ``hf``. ``normalize`` overrides the checkpoint's input convention (each utterance standardised;
    on for every released model). ``layers``: hidden states to expose (0 = the first block's input,
    i = block i; the prenet's blocks come first, 4 + 8 in the released models; negative indices count
    from the top); blocks above the highest are dropped. ``dtype`` runs the encoder in that dtype.

    Fine-tuning modes: ``frozen``, ``finetune`` (all but the conv feature encoder), ``full``, ``top_n``.
    Batch-invariant: a padded batch gives each utterance its features alone, with either conv encoder.
    """

    def __init__(
        self,
        model: str,
        revision: Optional[str] = None,
        local_files_only: Optional[bool] = None,
        cache_dir: Optional[str] = None,
        normalize: Optional[bool] = None,
        layers: Optional[Sequence[int]] = None,
        dtype: DTypeLike = None,
    ) -> None:
        super().__init__()
        offline = offline_mode() if local_files_only is None else bool(local_files_only)
        self.source = locate_emotion2vec(str(model), revision, cache_dir, offline)
        encoder, info = load_emotion2vec(self.source)
        self.format = info["format"]
        self._fingerprint = (file_fingerprint(self.source.checkpoint, self.source.config)
                             if self.source.kind == "local" else None)
        self.encoder = encoder
        cfg = encoder.cfg
        self.normalize = cfg.normalize if normalize is None else bool(normalize)
        self._dtype = resolve_dtype(dtype)
        self.sample_rate = 16000
        self.hop_length = encoder.hop_length
        self.min_samples = encoder.receptive_field
        total = len(encoder.blocks)
        self._layer_indices = resolve_layer_indices(layers, total)
        self._num_blocks = max(1, max(self._layer_indices))
        if self._num_blocks < total:  # drop the unused top blocks (and a pre-LN model's final norm)
            encoder.blocks = nn.ModuleList(list(encoder.blocks)[: self._num_blocks])
            encoder.final_norm = None
        self.hidden_sizes = [cfg.embed_dim] * len(self._layer_indices)
        # padded batches are exact: frames masked, a GroupNorm over time (extractor_mode=default) per utterance
        self.batch_invariant = True
        if self._dtype is not None:
            self.encoder.to(self._dtype)
        self._finetune_mode = "frozen"
        self._top_n: Optional[int] = None
        self.config = {
            "model": str(model),
            "revision": revision,
            "normalize": normalize,
            "layers": list(layers) if isinstance(layers, (list, tuple)) else layers,
            "dtype": str(dtype) if dtype is not None else None,
        }
        self.set_finetune("frozen")

    # --- frames ------------------------------------------------------------------------------
    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames for ``wav_lengths`` samples (the conv formula; at least one frame)."""
        return self.encoder.frame_lengths(wav_lengths.long().clamp(min=self.min_samples)).clamp(min=1)

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> UpstreamOutput:
        """Hidden states ``[B, T, D]`` of the selected layers (extra tokens stripped) and frame counts ``[B]``."""
        if wavs.dim() != 2:
            raise ValueError(f"expected waveforms [batch, samples], got shape {tuple(wavs.shape)}")
        x = wavs.float()
        lengths = wav_lengths.to(device=x.device, dtype=torch.long).clamp(min=0, max=x.shape[1])
        if x.shape[1] < self.min_samples:  # shorter than one frame: zero-pad to the receptive field
            x = nn.functional.pad(x, (0, self.min_samples - x.shape[1]))
        if self.normalize:
            x = normalize_waveforms(x, lengths)
        else:
            x = x * (torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)).to(x.dtype)
        effective = lengths.clamp(min=self.min_samples)
        x = x.to(next(self.encoder.parameters()).dtype)
        trainable = any(p.requires_grad for p in self.encoder.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            states, frames = self.encoder(x, effective, num_blocks=self._num_blocks)
        selected = [states[i] for i in self._layer_indices]
        if self._dtype is not None and self._dtype != torch.float32:
            selected = [s.float() for s in selected]
        return UpstreamOutput(hidden_states=selected, lengths=frames)

    # --- fine-tuning -------------------------------------------------------------------------
    def supported_finetune_modes(self) -> Tuple[str, ...]:
        """``frozen``, ``finetune`` (conv feature encoder frozen), ``full`` and ``top_n``."""
        return FINETUNE_MODES

    @property
    def feature_encoder(self) -> nn.Module:
        """The conv feature encoder (frozen in mode ``finetune``)."""
        return self.encoder.feature_encoder

    def set_finetune(self, mode: str, top_n: Optional[int] = None) -> None:
        """Set ``requires_grad`` for ``mode``; ``top_n`` blocks train in mode ``top_n``."""
        check_finetune_mode(self, mode, top_n, len(self.encoder.blocks))
        apply_finetune_mode(mode, top_n, self.encoder.parameters(), self.encoder.feature_encoder.parameters(),
                            self._split_parameters())
        scale = self.encoder.alibi_scale
        if scale is not None and not self.encoder.cfg.learned_alibi_scale:
            scale.requires_grad_(False)
        self.record_finetune(mode, top_n)

    def frozen_module(self) -> nn.Module:
        """The encoder kept in eval mode while frozen."""
        return self.encoder

    def _split_parameters(self) -> Tuple[List[nn.Parameter], List[List[nn.Parameter]], List[nn.Parameter]]:
        """(before the first block, one list per block, after the last block)."""
        blocks = self.encoder.blocks
        per_block: List[List[nn.Parameter]] = [list(b.parameters()) for b in blocks]
        in_blocks = {id(p) for group in per_block for p in group}
        top = list(self.encoder.final_norm.parameters()) if self.encoder.final_norm is not None else []
        in_top = {id(p) for p in top}
        bottom = [p for p in self.encoder.parameters() if id(p) not in in_blocks and id(p) not in in_top]
        return bottom, per_block, top

    def layer_parameter_groups(self) -> List[List[nn.Parameter]]:
        """``1 + blocks`` groups, bottom first: conv encoder, projection, positional conv, extra tokens,
        ALiBi scales and the prenet norm; then one per block (prenet first); a pre-LN model's final norm
        joins the top block. Frozen parameters are left out."""
        return layer_groups(self._split_parameters())

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each block in the backward pass (non-reentrant checkpointing, training mode only)."""
        self.encoder.gradient_checkpointing = True

    # --- identity ----------------------------------------------------------------------------
    def weights_identity(self) -> Dict[str, Any]:
        """Hub id + requested revision + resolved commit, or the local files + a fingerprint."""
        fmt = f"emotion2vec-{self.format}"
        if self.source.kind == "hub":
            return {"hub_id": self.source.location, "revision": self.source.revision, "commit": self.source.commit,
                    "format": fmt}
        return {"path": self.source.checkpoint, "config": self.source.config, "fingerprint": self._fingerprint,
                "format": fmt}

    def identity(self) -> Dict[str, Any]:
        """Class, constructor config, weights, preprocessing, layers and dtype."""
        ident = super().identity()
        ident.update({
            "weights": self.weights_identity(),
            "architecture": "emotion2vec",
            "normalize": self.normalize,
            "layers": list(self._layer_indices),
            "dtype": str(self._dtype) if self._dtype is not None else None,
        })
        return ident
