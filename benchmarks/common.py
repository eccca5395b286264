"""Shared set-up for the benchmarks: a full-size random HuBERT-base folder and a generated corpus."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

WORK = Path(os.environ.get("SER_BENCH_DIR", "/tmp/ser_bench"))


def hubert_base_folder() -> Path:
    """A randomly initialised HuBERT-base (95 M parameters) saved like a hub checkpoint."""
    folder = WORK / "hubert-base-random"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    model = HubertModel(HubertConfig())  # the defaults are HuBERT-base's architecture
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000, "feature_size": 1,
        "padding_value": 0.0, "do_normalize": True, "return_attention_mask": False}))
    return folder


def demo_corpus(utterances_per_speaker: int) -> Path:
    """The synthetic IEMOCAP-layout corpus at a chosen size (generated once)."""
    from ser_plugins import registry

    root = WORK / f"demo_{utterances_per_speaker}"
    if not (root / "Session1").exists():
        registry.load("corpus", "demo").generate(root, seed=0, utterances_per_speaker=utterances_per_speaker)
    return root


def machine() -> str:
    """One line describing this machine."""
    import torch

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    return f"{platform.machine()} {cpu or 'cpu'}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
