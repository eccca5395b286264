"""Named self-supervised upstreams: data only, each a hub id for its builder (``hf``, ``emotion2vec``, ``whisper``).

For ``hf``, every checkpoint's input normalisation and attention-mask convention come from its own saved
``preprocessor_config.json`` (read by ``HFUpstream``), so no preset repeats them. Override the
weights with a local copy by passing ``model=/path/to/folder`` (user kwargs win over preset
kwargs). Facts per checkpoint are tabulated in ``docs/self_supervised.md``.
"""
from __future__ import annotations

from ser_plugins.plugins.registry import Preset


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


# --- Whisper encoders (the ``whisper`` builder, upstreams/whisper.py; input_mode padded by default) ---
def _whisper(hub_id: str, description: str) -> Preset:
    return Preset(builder="whisper", kwargs={"model": hub_id}, weights=hub_id, description=description)


WHISPER_TINY = _whisper(
    "openai/whisper-tiny",
    "Whisper tiny encoder (8M of 39M), 680k h multilingual weak supervision; 4 x 384, 80 mel bins, 50 frames/s",
)
WHISPER_BASE = _whisper(
    "openai/whisper-base",
    "Whisper base encoder (21M of 74M), 680k h; 6 x 512, 80 mel bins, 50 frames/s",
)
WHISPER_SMALL = _whisper(
    "openai/whisper-small",
    "Whisper small encoder (88M of 244M), 680k h; 12 x 768, 80 mel bins, 50 frames/s",
)
WHISPER_MEDIUM = _whisper(
    "openai/whisper-medium",
    "Whisper medium encoder (307M of 769M), 680k h; 24 x 1024, 80 mel bins, 50 frames/s",
)
WHISPER_LARGE_V3 = _whisper(
    "openai/whisper-large-v3",
    "Whisper large-v3 encoder (637M of 1.55B), 1M h weak + 4M h pseudo-labelled; 32 x 1280, 128 mel bins, 50 frames/s",
)
WHISPER_LARGE_V3_TURBO = _whisper(
    "openai/whisper-large-v3-turbo",
    "Whisper large-v3-turbo encoder (637M of 809M; large-v3 with 4 decoder layers, trained further); 32 x 1280, 128 mel bins",
)


# --- emotion2vec (upstreams/emotion2vec.py): the architecture and input convention come from each
# checkpoint's own config.yaml / fairseq cfg; ModelScope ids iic/<name> are the same files.
def _emotion2vec(hub_id: str, description: str) -> Preset:
    return Preset(builder="emotion2vec", kwargs={"model": hub_id}, weights=hub_id, description=description)


EMOTION2VEC_BASE = _emotion2vec(
    "emotion2vec/emotion2vec_base",
    "emotion2vec (~90M), data2vec 2.0 pre-trained on 262 h of emotion speech; 4 prenet + 8 blocks x 768, post-LN, "
    "layer-norm CNN, ALiBi, 10 extra tokens; normalised input",
)
EMOTION2VEC_PLUS_SEED = _emotion2vec(
    "emotion2vec/emotion2vec_plus_seed",
    "emotion2vec+ seed (~90M): emotion2vec fine-tuned on 201 h of academic SER data (EmoBox); normalised input",
)
EMOTION2VEC_PLUS_BASE = _emotion2vec(
    "emotion2vec/emotion2vec_plus_base",
    "emotion2vec+ base (~90M): fine-tuned on 4,788 h of filtered pseudo-labelled emotion data; normalised input",
)
EMOTION2VEC_PLUS_LARGE = _emotion2vec(
    "emotion2vec/emotion2vec_plus_large",
    "emotion2vec+ large (~300M): fine-tuned on 42,526 h of filtered pseudo-labelled emotion data; normalised input",
)
