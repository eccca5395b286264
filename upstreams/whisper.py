"""Whisper encoders as upstreams: the encoder of any Hugging Face Whisper checkpoint (tiny ... large-v3).

``WhisperUpstream(model=...)`` reads a Whisper checkpoint (hub id or local folder, as ``hf`` does:
``upstreams.hf_hub``) and builds only its encoder (``transformers``' ``WhisperEncoder``; the
decoder's weights are never read). Its input is the log-mel spectrogram computed here in torch,
as Whisper's feature extractor computes it (``log_mel_spectrogram``: batched, on the input's
device, exportable), and it exposes every hidden state: the convolution front + positions (the
first layer's input) and the output of each transformer layer, the top one after the encoder's
final layer norm (``WhisperEncoder``'s ``hidden_states``).

Two input modes (``input_mode``):

* ``padded`` (default): each utterance is zero-padded **alone** to the 30-s window Whisper was
  trained on (``chunk_length`` of its feature extractor, ``2 * max_source_positions`` mel frames),
  exactly ``WhisperFeatureExtractor`` + ``WhisperEncoder``; the frames of the utterance are kept.
* ``cut``: the log-mel and the encoder run on the utterance's own length; the position embeddings
  are sliced to it. Cheaper for short utterances, but not the input Whisper was trained on, so its
  features differ (docs/self_supervised.md gives the figure). In a padded batch the padded frames
  are kept out: zeroed before each convolution (as its zero padding) and masked out of the
  attention, so an utterance's features never depend on its batch.

Longer inputs are cut into consecutive 30-s windows, each one treated as above, and their frames
concatenated. Frame rate: 100 mel frames/s (hop 160 samples), a stride-2 convolution -> 50 encoder
frames/s: ``hop_length`` 320 samples. See ``docs/self_supervised.md``.
"""
from __future__ import annotations

import inspect
import json
import os
import pickle
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ser_plugins.plugins.contracts import FINETUNE_MODES, Upstream, UpstreamOutput
from ser_plugins.errors import CorruptFileError, is_refusal, refused_pickle, unpickler_detail
from upstreams.hf import DTypeLike, require_transformers, resolve_dtype
from upstreams.hf_hub import (
    ModelSource,
    WeightsNotFoundError,
    _one_line,
    folder_fingerprint,
    locate_model,
    offline_mode,
    read_feature_extractor_config,
    weights_not_found,
)
from upstreams.encoder_layers import (
    FinetuneState,
    apply_finetune_mode,
    check_finetune_mode,
    layer_groups,
    resolve_layer_indices,
)

__all__ = ["WhisperUpstream", "log_mel_spectrogram", "mel_filters", "INPUT_MODES", "WeightsNotFoundError"]

INPUT_MODES: Tuple[str, ...] = ("padded", "cut")
#: encoder weights are looked up under these prefixes (WhisperForConditionalGeneration, WhisperModel /
#: WhisperForAudioClassification, a bare WhisperEncoder), in this order
ENCODER_PREFIXES: Tuple[str, ...] = ("model.encoder.", "encoder.", "")
#: weight files, in the order transformers prefers them
WEIGHT_FILES: Tuple[str, ...] = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                                 "pytorch_model.bin.index.json")
LOG_FLOOR = 1e-10  # WhisperFeatureExtractor's clamp before log10
DYNAMIC_RANGE = 8.0  # log10 units (80 dB) kept below each window's peak


# --- the log-mel spectrogram --------------------------------------------------------------------
def mel_filters(n_mels: int, n_fft: int = 400, sample_rate: int = 16000, f_max: float = 8000.0) -> torch.Tensor:
    """Whisper's mel filter bank ``[n_mels, n_fft // 2 + 1]``: Slaney scale and area norm, 0 Hz to 8 kHz.

    Computed with librosa (``librosa.filters.mel``), as OpenAI built Whisper's ``mel_filters.npz``;
    transformers' ``WhisperFeatureExtractor`` builds the same matrix (to ~1e-9).
    """
    import librosa

    bank = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=f_max, htk=False,
                               norm="slaney", dtype="float64")
    return torch.from_numpy(bank).float()


def log_mel_spectrogram(audio: torch.Tensor, lengths: torch.Tensor, peak_frames: torch.Tensor, window: torch.Tensor,
                        filters: torch.Tensor, n_fft: int = 400, hop: int = 160) -> torch.Tensor:
    """Whisper's normalised log-mel spectrogram ``[B, n_mels, C // hop]`` of ``audio`` ``[B, C]``.

    As ``WhisperFeatureExtractor``: a centred STFT (reflect padding, periodic Hann window of
    ``n_fft``, hop ``hop``, last frame dropped), power spectrum, mel filters, ``log10(max(x, 1e-10))``,
    floored at 8 below the peak, ``(x + 4) / 4``. Per row, ``lengths`` says where the signal ends
    (the reflect padding at the end starts there: the row's own length, or ``C`` for a zero-padded
    window) and the peak is taken over the first ``peak_frames`` frames (all frames of a padded
    window, as the extractor does; the valid frames of a cut one). Rows are independent of each
    other; what lies beyond a row's ``lengths`` is never read.
    """
    rows, total = audio.shape
    half = n_fft // 2
    last = (lengths.to(device=audio.device, dtype=torch.long).clamp(min=1) - 1).unsqueeze(1)
    index = torch.arange(-half, total + half, device=audio.device).abs().unsqueeze(0).expand(rows, -1)
    index = torch.where(index > last, 2 * last - index, index).clamp(0, total - 1)  # reflect at both ends
    padded = torch.gather(audio, 1, index)
    frames = padded.unfold(1, n_fft, hop)[:, :-1]  # [B, C // hop, n_fft]
    spectrum = torch.fft.rfft(frames * window, dim=-1)
    power = spectrum.real.square() + spectrum.imag.square()
    log_spec = torch.matmul(power, filters.t()).clamp(min=LOG_FLOOR).log10()  # [B, F, n_mels]
    valid = torch.arange(log_spec.shape[1], device=audio.device).unsqueeze(0) < peak_frames.to(audio.device).unsqueeze(1)
    peak = log_spec.masked_fill(~valid.unsqueeze(-1), float("-inf")).amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - DYNAMIC_RANGE)
    return ((log_spec + 4.0) / 4.0).transpose(1, 2)


# --- weights ---------------------------------------------------------------------------------------
def _weight_file(source: ModelSource, revision: Optional[str], cache_dir: Optional[str], offline: bool,
                 model: str) -> str:
    """The checkpoint's weights file (or shard index): in the local folder or fetched from the hub (cache)."""
    folder = source.folder or ""
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    if source.kind == "hub":
        from huggingface_hub import hf_hub_download

        reasons = []
        for name in WEIGHT_FILES:
            try:
                return hf_hub_download(source.location, name, revision=revision, cache_dir=cache_dir,
                                       local_files_only=offline)
            except Exception as exc:  # not in this repo / not cached offline / network
                reasons.append(_one_line(exc))
        raise weights_not_found(model, reasons[0] if reasons else "no weights file", revision, cache_dir, offline)
    raise weights_not_found(model, f"no weights file ({', '.join(WEIGHT_FILES)}) in {folder}", revision, cache_dir)


def _shard(source: ModelSource, index_path: str, name: str, revision: Optional[str], cache_dir: Optional[str],
           offline: bool, model: str) -> str:
    local = os.path.join(os.path.dirname(index_path), name)
    if os.path.isfile(local) or source.kind != "hub":
        return local
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(source.location, name, revision=revision, cache_dir=cache_dir, local_files_only=offline)
    except Exception as exc:
        raise weights_not_found(model, _one_line(exc), revision, cache_dir, offline) from None


def _read_tensors(path: str, wanted: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    """Tensors of one safetensors or torch file (only ``wanted`` keys of a safetensors file)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as handle:
                keys = [k for k in handle.keys() if wanted is None or k in wanted]
                return {k: handle.get_tensor(k) for k in keys}
        except Exception as exc:  # truncated / not a safetensors file
            raise CorruptFileError(f"the weights file {path} is not readable safetensors ({_one_line(exc)})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if is_refusal(exc):
            raise refused_pickle(f"the weights file {path}", exc) from None
        raise CorruptFileError(f"the weights file {path} is not a readable checkpoint ({unpickler_detail(exc)}); "
                               "nothing was executed") from None
    if not isinstance(state, dict):
        raise CorruptFileError(f"the weights file {path} holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and (wanted is None or k in wanted)}


def _encoder_prefix(keys: Sequence[str], path: str) -> str:
    present = set(keys)
    for prefix in ENCODER_PREFIXES:
        if prefix + "conv1.weight" in present:
            return prefix
    raise ValueError(f"{path} holds no Whisper encoder weights (looked for "
                     f"{', '.join(p + 'conv1.weight' for p in ENCODER_PREFIXES)})")


def load_encoder_state(path: str, resolve_shard=None) -> Dict[str, torch.Tensor]:
    """The encoder's tensors (names relative to ``WhisperEncoder``) from a weights file or a shard index."""
    if path.endswith(".index.json"):
        with open(path, "r", encoding="utf-8") as handle:
            weight_map = json.load(handle).get("weight_map", {})
        prefix = _encoder_prefix(list(weight_map), path)
        keys = [k for k in weight_map if k.startswith(prefix)] if prefix else list(weight_map)
        state: Dict[str, torch.Tensor] = {}
        for shard in sorted({weight_map[k] for k in keys}):
            shard_path = resolve_shard(shard) if resolve_shard else os.path.join(os.path.dirname(path), shard)
            state.update(_read_tensors(shard_path, keys))
    else:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt") as handle:
                names = list(handle.keys())
            prefix = _encoder_prefix(names, path)
            state = _read_tensors(path, [k for k in names if k.startswith(prefix)])
        else:
            state = _read_tensors(path)
            prefix = _encoder_prefix(list(state), path)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# --- the upstream ----------------------------------------------------------------------------------
class WhisperUpstream(FinetuneState, Upstream):
    """The encoder of a Hugging Face Whisper checkpoint (``openai/whisper-tiny`` ... ``-large-v3``).

    ``model``: a hub id or a local folder (``config.json``, weights, ``preprocessor_config.json``);
    ``revision``, ``local_files_only``, ``cache_dir``: as for ``hf``. ``input_mode``: ``padded``
    (each utterance padded alone to Whisper's 30-s window, as it was trained; the default) or
    ``cut`` (the utterance's own length, position embeddings sliced). ``layers``: indices of the
    hidden states to expose (0 = convolutions + positions, i = layer i, negative from the top);
    layers above the highest one are dropped. ``dtype``: run the encoder in this dtype (outputs
    float32; the log-mel is always float32). ``attn_implementation``: ``"eager"`` or ``"sdpa"``.

    Fine-tuning modes: ``frozen`` (default), ``finetune`` (all but the two convolutions),
    ``full`` and ``top_n`` (the top N layers plus the final layer norm). The sinusoidal position
    embeddings never train (transformers freezes them too).
    """

    peft_family = "whisper"  # LoRA / adapter layer names (upstreams/peft_tuning.py)

    def __init__(
        self,
        model: str,
        revision: Optional[str] = None,
        local_files_only: Optional[bool] = None,
        cache_dir: Optional[str] = None,
        input_mode: str = "padded",
        layers: Optional[Sequence[int]] = None,
        dtype: DTypeLike = None,
        attn_implementation: Optional[str] = None,
    ) -> None:
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {', '.join(INPUT_MODES)}, got {input_mode!r}")
        if attn_implementation not in (None, "eager", "sdpa"):
            raise ValueError(f"attn_implementation must be 'eager' or 'sdpa' (padding masks), got {attn_implementation!r}")
        transformers = require_transformers()
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        offline = offline_mode() if local_files_only is None else bool(local_files_only)
        source = locate_model(str(model), revision, cache_dir, offline)
        target = source.folder if source.kind == "local" else source.location
        hub_kwargs: Dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": offline}
        if source.kind == "hub":
            hub_kwargs["revision"] = revision
        try:
            config = transformers.AutoConfig.from_pretrained(target, **hub_kwargs)
        except OSError as exc:
            raise weights_not_found(str(model), _one_line(exc), revision, cache_dir, offline) from None
        except ValueError as exc:
            raise ValueError(f"{model!r} is not a model this transformers can build: {_one_line(exc)}") from None
        if getattr(config, "model_type", None) != "whisper":
            raise ValueError(f"{model!r} is not a Whisper checkpoint (its config says model_type "
                             f"{getattr(config, 'model_type', None)!r}); use the 'hf' upstream for wav2vec 2.0-style encoders")
        if attn_implementation:
            config._attn_implementation = attn_implementation
        with torch.device("meta"):  # no memory and no random init for weights that are loaded next
            encoder = WhisperEncoder(config)
        weights = _weight_file(source, revision, cache_dir, offline, str(model))
        state = load_encoder_state(
            weights, lambda shard: _shard(source, weights, shard, revision, cache_dir, offline, str(model)))
        expected = encoder.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"the encoder weights in {weights} do not fit its config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        self._dtype = resolve_dtype(dtype)
        param_dtype = self._dtype or torch.float32
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise ValueError(f"{weights}: {name} has shape {tuple(tensor.shape)}, the config wants "
                                 f"{tuple(expected[name].shape)}")
        encoder.load_state_dict({k: v.to(param_dtype) for k, v in state.items()}, strict=True, assign=True)
        self.encoder = encoder

        extractor = read_feature_extractor_config(source, cache_dir, offline)
        self.n_mels = int(extractor.get("feature_size", config.num_mel_bins))
        if self.n_mels != int(config.num_mel_bins):
            raise ValueError(f"{model!r}: the feature extractor makes {self.n_mels} mel bins, the encoder takes "
                             f"{config.num_mel_bins}")
        self.sample_rate = int(extractor.get("sampling_rate", 16000))
        self.n_fft = int(extractor.get("n_fft", 400))
        self.mel_hop = int(extractor.get("hop_length", 160))
        self.max_positions = int(config.max_source_positions)
        self.chunk_samples = 2 * self.max_positions * self.mel_hop  # the encoder's window: 30 s for Whisper
        chunk_length = extractor.get("chunk_length")
        if chunk_length is not None and int(chunk_length) * self.sample_rate != self.chunk_samples:
            raise ValueError(f"{model!r}: the feature extractor pads to {chunk_length} s but the encoder's "
                             f"{self.max_positions} positions cover {self.chunk_samples / self.sample_rate:g} s")
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True, dtype=torch.float64).float(),
                             persistent=False)
        self.register_buffer("filters", mel_filters(self.n_mels, self.n_fft, self.sample_rate), persistent=False)

        self.input_mode = input_mode
        self.hop_length = 2 * self.mel_hop  # conv2 has stride 2: 320 samples, 50 frames/s
        self.min_samples = self.n_fft  # one whole analysis window (25 ms) -> 2 mel frames -> 1 encoder frame
        self.batch_invariant = True  # padded: each utterance padded alone; cut: padding zeroed and masked
        total = len(encoder.layers)
        self._layer_indices = resolve_layer_indices(layers, total, "encoder")
        keep = max(1, max(self._layer_indices))
        self._final_norm = keep == total
        if keep < total:
            encoder.layers = nn.ModuleList(list(encoder.layers)[:keep])
            encoder.layer_norm = nn.Identity()  # belongs to the dropped top
        self.hidden_sizes = [int(config.d_model)] * len(self._layer_indices)
        self._layer_takes_head_mask = "layer_head_mask" in inspect.signature(encoder.layers[0].forward).parameters
        self.gradient_checkpointing = False
        if self._dtype is not None:
            self.encoder.to(self._dtype)
        self.source = source
        self._fingerprint = folder_fingerprint(source.folder) if source.kind == "local" else None
        self.feature_extractor_config = {k: v for k, v in extractor.items() if k not in ("mel_filters", "window")}
        self.config = {
            "model": str(model),
            "revision": revision,
            "input_mode": input_mode,
            "layers": list(layers) if isinstance(layers, (list, tuple)) else layers,
            "dtype": str(dtype) if dtype is not None else None,
            "attn_implementation": attn_implementation,
        }
        self._finetune_mode = "frozen"
        self._top_n: Optional[int] = None
        self.set_finetune("frozen")

    # --- frames ------------------------------------------------------------------------------
    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Valid encoder frames: per 30-s window of ``r`` samples, ``ceil((r // 160) / 2)`` (full windows: 1500)."""
        lengths = wav_lengths.long().clamp(min=self.min_samples)
        full = lengths // self.chunk_samples
        rest = lengths - full * self.chunk_samples
        return (full * self.max_positions + (rest // self.mel_hop + 1) // 2).clamp(min=1)

    def _total_frames(self, samples: int) -> int:
        full = samples // self.chunk_samples
        rest = samples - full * self.chunk_samples
        return full * self.max_positions + (rest // self.mel_hop + 1) // 2

    def _windows(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, int]:
        """``[B * W, C]`` windows (zero beyond each utterance), their sample counts ``[B * W]`` and ``W``."""
        x = wavs.float()
        lengths = wav_lengths.to(device=x.device, dtype=torch.long).clamp(min=0, max=x.shape[1])
        if x.shape[1] < self.min_samples:
            x = nn.functional.pad(x, (0, self.min_samples - x.shape[1]))
        samples = x.shape[1]
        x = x * (torch.arange(samples, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)).to(x.dtype)
        count = (samples + self.chunk_samples - 1) // self.chunk_samples
        if self.input_mode == "cut" and count == 1:
            width = samples  # the batch's own length: no 30-s padding
        else:
            width = self.chunk_samples
            x = nn.functional.pad(x, (0, count * self.chunk_samples - samples))
        x = x.reshape(x.shape[0] * count, width)
        starts = torch.arange(count, device=x.device) * self.chunk_samples
        window_lengths = (lengths.unsqueeze(1) - starts.unsqueeze(0)).clamp(min=0, max=self.chunk_samples).reshape(-1)
        return x, window_lengths, count

    def input_features(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The encoder's input: log-mel ``[B * W, n_mels, F]`` of every window and its valid mel frames ``[B * W]``.

        ``padded``: ``F`` = 3000 (30 s) and each window as ``WhisperFeatureExtractor`` makes it;
        ``cut``: each window's own frames (``samples // 160``), as the extractor with
        ``padding="longest"`` makes it for that utterance alone.
        """
        x, window_lengths, _ = self._windows(wavs, wav_lengths)
        mel_frames = window_lengths // self.mel_hop
        if self.input_mode == "padded":
            ends = torch.full_like(window_lengths, x.shape[1])
            peak = torch.full_like(window_lengths, x.shape[1] // self.mel_hop)
        else:
            ends, peak = window_lengths, mel_frames
        with torch.autocast(device_type=x.device.type, enabled=False):  # float32 under mixed precision too
            mel = log_mel_spectrogram(x, ends, peak, self.window.float(), self.filters.float(), self.n_fft, self.mel_hop)
        return mel, mel_frames

    # --- the encoder -------------------------------------------------------------------------
    def encode(self, features: torch.Tensor, mel_frames: Optional[torch.Tensor] = None,
               keep: Optional[int] = None) -> List[torch.Tensor]:
        """Every kept hidden state ``[N, T, D]`` of the encoder for log-mel ``features`` ``[N, n_mels, F]``.

        ``mel_frames=None``: the whole input is valid (``WhisperEncoder``'s computation, any ``F``
        up to 3000, the positions sliced to ``ceil(F / 2)``); otherwise frames at or beyond
        ``mel_frames`` are zeroed before each convolution and masked out of the attention.
        ``keep``: return only the first ``keep`` frames of each state (copies: a padded 30-s window's
        other frames are freed as soon as the next layer has read them).
        """
        enc = self.encoder
        dtype = enc.conv1.weight.dtype
        x = features.to(dtype)
        mask = None
        if mel_frames is not None:
            frames = mel_frames.to(x.device).clamp(min=1)
            mask = (torch.arange(x.shape[-1], device=x.device).unsqueeze(0) < frames.unsqueeze(1)).to(dtype).unsqueeze(1)
            x = x * mask
        x = nn.functional.gelu(enc.conv1(x))
        if mask is not None:
            x = x * mask
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        steps = x.shape[1]
        hidden = x + enc.embed_positions.weight[:steps].to(dtype)
        hidden = nn.functional.dropout(hidden, p=float(enc.dropout), training=enc.training)
        attention = None
        if mel_frames is not None:
            valid = torch.arange(steps, device=x.device).unsqueeze(0) < ((frames + 1) // 2).unsqueeze(1)
            blocked = torch.zeros(valid.shape, dtype=dtype, device=x.device).masked_fill(~valid, torch.finfo(dtype).min)
            attention = blocked[:, None, None, :].expand(-1, 1, steps, steps)
        wanted = set(self._layer_indices)

        def kept(index: int, state: torch.Tensor) -> Optional[torch.Tensor]:
            if index not in wanted:
                return None
            return state if keep is None else state[:, :keep].contiguous()  # no copy when nothing is cut

        states = [kept(0, hidden)]
        for index, layer in enumerate(enc.layers, start=1):
            hidden = self._run_layer(layer, hidden, attention)
            states.append(kept(index, hidden))
        if self._final_norm:
            states[-1] = enc.layer_norm(states[-1])
        return [states[i] for i in self._layer_indices]

    def _run_layer(self, layer: nn.Module, hidden: torch.Tensor, attention: Optional[torch.Tensor]) -> torch.Tensor:
        extra = {"layer_head_mask": None} if self._layer_takes_head_mask else {}
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint

            out = checkpoint(layer, hidden, attention, use_reentrant=False, **extra)
        else:
            out = layer(hidden, attention, **extra)
        return out[0] if isinstance(out, tuple) else out  # transformers < 5 returns a tuple

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> UpstreamOutput:
        """Hidden states ``[B, T, D]`` of the selected layers and valid frame counts ``[B]``."""
        if wavs.dim() != 2:
            raise ValueError(f"expected waveforms [batch, samples], got shape {tuple(wavs.shape)}")
        batch = wavs.shape[0]
        features, mel_frames = self.input_features(wavs, wav_lengths)
        count = features.shape[0] // batch
        samples = max(wavs.shape[1], self.min_samples)
        trainable = any(p.requires_grad for p in self.encoder.parameters())
        total = self._total_frames(samples)
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            # one window: its first `total` frames; several: every frame of each (total > max_positions)
            states = self.encode(features, None if self.input_mode == "padded" else mel_frames,
                                 keep=torch.sym_min(total, self.max_positions))
        selected = [s.reshape(batch, count * s.shape[1], s.shape[2])[:, :total] for s in states]
        if selected[0].dtype != torch.float32:
            selected = [s.float() for s in selected]
        lengths = self.frame_lengths(wav_lengths.to(device=wavs.device, dtype=torch.long)).clamp(max=total)
        return UpstreamOutput(hidden_states=selected, lengths=lengths)

    # --- fine-tuning -------------------------------------------------------------------------
    def supported_finetune_modes(self) -> Tuple[str, ...]:
        """``frozen``, ``finetune`` (convolutions frozen), ``full`` and ``top_n``."""
        return FINETUNE_MODES

    @property
    def conv_front(self) -> List[nn.Module]:
        """The two convolutions that turn log-mel frames into encoder frames (frozen in ``finetune``)."""
        return [self.encoder.conv1, self.encoder.conv2]

    def set_finetune(self, mode: str, top_n: Optional[int] = None) -> None:
        """Set ``requires_grad`` for ``mode``; ``top_n`` layers train in mode ``top_n``."""
        check_finetune_mode(self, mode, top_n, len(self.encoder.layers))
        apply_finetune_mode(mode, top_n, self.encoder.parameters(),
                            [p for conv in self.conv_front for p in conv.parameters()], self._split_parameters())
        self.encoder.embed_positions.requires_grad_(False)  # fixed sinusoids
        self.record_finetune(mode, top_n)

    def frozen_module(self) -> nn.Module:
        """The encoder kept in eval mode while frozen."""
        return self.encoder

    def _split_parameters(self) -> Tuple[List[nn.Parameter], List[List[nn.Parameter]], List[nn.Parameter]]:
        bottom: List[nn.Parameter] = []
        per_layer: List[List[nn.Parameter]] = [[] for _ in range(len(self.encoder.layers))]
        top: List[nn.Parameter] = []
        for name, p in self.encoder.named_parameters():
            if name.startswith("layers."):
                per_layer[int(name.split(".", 2)[1])].append(p)
            elif name.startswith(("conv1.", "conv2.", "embed_positions.")):
                bottom.append(p)
            else:
                top.append(p)  # the final layer norm
        return bottom, per_layer, top

    def layer_parameter_groups(self) -> List[List[nn.Parameter]]:
        """``1 + layers`` groups, bottom first: the convolutions, then one per layer; the final layer
        norm joins the top layer. Frozen parameters are left out, so a group may be empty."""
        return layer_groups(self._split_parameters())

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each encoder layer in the backward pass (non-reentrant checkpointing, training mode)."""
        self.gradient_checkpointing = True

    # --- identity ----------------------------------------------------------------------------
    def weights_identity(self) -> Dict[str, Any]:
        """Hub id + requested revision + resolved commit, or local folder + fingerprint."""
        if self.source.kind == "hub":
            return {"hub_id": self.source.location, "revision": self.source.revision, "commit": self.source.commit}
        return {"path": self.source.location, "fingerprint": self._fingerprint}

    def identity(self) -> Dict[str, Any]:
        """Class, constructor config, weights, input mode, log-mel settings, layers and dtype."""
        ident = super().identity()
        ident.update({
            "weights": self.weights_identity(),
            "architecture": "WhisperEncoder",
            "input_mode": self.input_mode,
            "log_mel": {"n_mels": self.n_mels, "n_fft": self.n_fft, "hop": self.mel_hop,
                        "window_samples": self.chunk_samples},
            "layers": list(self._layer_indices),
            "dtype": str(self._dtype) if self._dtype is not None else None,
        })
        return ident
