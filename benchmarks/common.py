"""Shared set-up for the benchmarks: randomly initialised encoders saved like hub checkpoints,
generated corpora, repeated timings (median, min, max) and a forward-pass counter."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence

WORK = Path(os.environ.get("SER_BENCH_DIR", "/tmp/ser_bench"))

# small enough for --quick runs (seconds on a laptop core); same architecture family as the full sizes
TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
        "conv_dim": (32,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}


def _save_random(folder: Path, model: Any, normalize: bool, attention_mask: bool) -> Path:
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000, "feature_size": 1,
        "padding_value": 0.0, "do_normalize": normalize, "return_attention_mask": attention_mask}))
    return folder


def hubert_base_folder(tiny: bool = False) -> Path:
    """A randomly initialised HuBERT-base (95 M parameters; ``tiny``: a 2-layer, 64-wide one) saved like a hub checkpoint.

    Group-norm CNN, no attention mask: not batch-invariant, so the pipeline extracts it one utterance at a time.
    """
    folder = WORK / ("hubert-tiny-random" if tiny else "hubert-base-random")
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    model = HubertModel(HubertConfig(**(TINY if tiny else {})))  # the defaults are HuBERT-base's architecture
    return _save_random(folder, model, normalize=True, attention_mask=False)


def layernorm_wav2vec2_folder(tiny: bool = False) -> Path:
    """A randomly initialised wav2vec 2.0 with wav2vec2-large's layer-norm CNN, pre-LN transformer and
    attention mask, at base size (12 layers, 768 wide, 94 M parameters; ``tiny``: 2 layers, 64 wide).

    Batch-invariant (padding does not change an utterance's features), so the pipeline extracts it in
    length-bucketed padded batches.
    """
    folder = WORK / ("wav2vec2-ln-tiny-random" if tiny else "wav2vec2-ln-base-random")
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                            **(TINY if tiny else {}))
    return _save_random(folder, Wav2Vec2Model(config), normalize=True, attention_mask=True)


def demo_corpus(utterances_per_speaker: int) -> Path:
    """The synthetic IEMOCAP-layout corpus at a chosen size (generated once; 10 speakers, 1.05-3.95 s utterances)."""
    from ser_plugins.plugins import registry

    root = WORK / f"demo_{utterances_per_speaker}"
    if not (root / "Session1").exists():
        registry.load("corpus", "demo").generate(root, seed=0, utterances_per_speaker=utterances_per_speaker)
    return root


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """``median (min-max, n runs)`` of repeated measurements."""
    vals = sorted(values)
    med = statistics.median(vals)
    return f"{fmt.format(med)} (min {fmt.format(vals[0])}, max {fmt.format(vals[-1])}, {len(vals)} runs)"


def median(values: Sequence[float]) -> float:
    """The median of repeated measurements."""
    return float(statistics.median(values))


class ForwardCounter:
    """Counts the utterances (batch rows) passed through ``cls.forward`` while :meth:`counting` is active.

    Wraps the class's ``forward`` (every instance, including the model inside an upstream plugin);
    the cost is one ``shape`` read per call.
    """

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.utterances = 0
        self.calls = 0

    @contextlib.contextmanager
    def counting(self) -> Iterator["ForwardCounter"]:
        """Patch ``cls.forward`` for the duration of the block; counts accumulate on this object."""
        original = self.cls.forward
        counter = self

        def forward(module: Any, wavs: Any, *args: Any, **kwargs: Any) -> Any:
            counter.calls += 1
            counter.utterances += int(wavs.shape[0]) if getattr(wavs, "dim", lambda: 1)() > 1 else 1
            return original(module, wavs, *args, **kwargs)

        self.cls.forward = forward
        try:
            yield self
        finally:
            self.cls.forward = original

    def take(self) -> Dict[str, int]:
        """The counts so far, then reset to zero."""
        out = {"utterances": self.utterances, "calls": self.calls}
        self.utterances = self.calls = 0
        return out


def machine() -> str:
    """One line describing this machine."""
    import torch

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (f"{platform.machine()} {cpu or 'cpu'}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads{gpu}")


def load_average() -> str:
    """The 1-minute load average (timings are only comparable on an otherwise idle machine)."""
    return f"1-min load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "load average unknown"
