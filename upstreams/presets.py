"""Named self-supervised upstreams: data only, each a hub id for the ``hf`` builder.

Every checkpoint's input normalisation and attention-mask convention come from its own saved
``preprocessor_config.json`` (read by ``HFUpstream``), so no preset repeats them. Override the
weights with a local copy by passing ``model=/path/to/folder`` (user kwargs win over preset
kwargs). Facts per checkpoint are tabulated in ``docs/self_supervised.md``.
"""
from __future__ import annotations

from ser_plugins.registry import Preset


def _hf(hub_id: str, description: str) -> Preset:
    return Preset(builder="hf", kwargs={"model": hub_id}, weights=hub_id, description=description)


WAV2VEC2_BASE = _hf(
    "facebook/wav2vec2-base",
    "wav2vec 2.0 Base (95M), LibriSpeech 960 h; 12 x 768, post-LN, group-norm CNN; no attention mask",
)
WAV2VEC2_LARGE = _hf(
    "facebook/wav2vec2-large-lv60",
    "wav2vec 2.0 Large (317M), Libri-Light 60k h; 24 x 1024, pre-LN (stable), layer-norm CNN; normalised input, attention mask",
)
HUBERT_BASE = _hf(
    "facebook/hubert-base-ls960",
    "HuBERT Base (95M), LibriSpeech 960 h; 12 x 768, post-LN, group-norm CNN; no attention mask",
)
HUBERT_LARGE = _hf(
    "facebook/hubert-large-ll60k",
    "HuBERT Large (317M), Libri-Light 60k h; 24 x 1024, pre-LN (stable), layer-norm CNN; normalised input, attention mask",
)
WAVLM_BASE_PLUS = _hf(
    "microsoft/wavlm-base-plus",
    "WavLM Base+ (95M), 94k h; 12 x 768, post-LN, group-norm CNN, gated relative position bias; raw input, attention mask",
)
WAVLM_LARGE = _hf(
    "microsoft/wavlm-large",
    "WavLM Large (317M), 94k h; 24 x 1024, pre-LN (stable), layer-norm CNN; normalised input, attention mask",
)
DATA2VEC_BASE = _hf(
    "facebook/data2vec-audio-base",
    "data2vec-audio Base (93M), LibriSpeech 960 h; 12 x 768, post-LN, layer-norm CNN; normalised input, attention mask",
)
DATA2VEC_LARGE = _hf(
    "facebook/data2vec-audio-large",
    "data2vec-audio Large (313M), Libri-Light 60k h; 24 x 1024, post-LN, layer-norm CNN; normalised input, attention mask",
)
