"""Target 3: extraction through the upstream plugin vs the bare transformers forward, HuBERT-base.

HuBERT-base is not batch-invariant (group-norm CNN, no attention mask), so the pipeline extracts it
one utterance at a time. The plugin side runs that path: ``extract_features`` (what
``compute_frozen_features`` calls on a cache miss) over every utterance, which forwards each one
alone through ``HFUpstream`` (valid-sample normalisation, the model, frame lengths), checks the
output and copies every hidden state out to float16 (the stored layers). The bare side is what a
user would write with transformers alone: per utterance, normalise (zero mean, unit variance),
``HubertModel(x, output_hidden_states=True)`` and keep the 13 hidden states as they come.

The two sides alternate in each repeat; each figure is the median of the repeats with min and max;
a wrapper on ``HubertModel.forward`` counts the utterances each side passes through the model.

    python benchmarks/bench_overhead.py            # 24 utterances x 5 repeats, about 3 minutes idle
    python benchmarks/bench_overhead.py --quick    # a tiny model: checks the script, figures mean nothing
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import numpy as np
import torch
from common import ForwardCounter, demo_corpus, hubert_base_folder, load_average, machine, median, spread

from ser_plugins import create_corpus, create_upstream
from ser_plugins.data.audio import load_audio
from ser_plugins.data.features import extract_features


@torch.inference_mode()
def bare_pass(model: torch.nn.Module, waves: Dict[str, np.ndarray]) -> Dict[str, tuple]:
    """Every utterance alone through the bare model: normalise, forward, keep all hidden states."""
    out = {}
    for uid, wave in waves.items():
        x = torch.from_numpy(wave).unsqueeze(0)
        x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        out[uid] = model(x, output_hidden_states=True).hidden_states
    return out


def plugin_pass(upstream: torch.nn.Module, waves: Dict[str, np.ndarray]) -> Dict[str, List[torch.Tensor]]:
    """The pipeline's extraction: every hidden state kept, stored as float16."""
    return extract_features(upstream, waves, list(range(upstream.num_layers)), dtype=torch.float16, progress=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=24)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny model, 10 utterances: checks the script runs")
    args = p.parse_args()
    if args.quick:
        args.utterances = 10
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    from transformers import HubertModel

    folder = hubert_base_folder(tiny=args.quick)
    corpus = create_corpus("iemocap", root=str(demo_corpus(4)))
    waves = {u.id: load_audio(u.path) for u in corpus.load()[: args.utterances]}
    audio = sum(len(w) for w in waves.values()) / 16000
    plugin = create_upstream("hf", model=str(folder)).eval()
    bare = HubertModel.from_pretrained(folder).eval()
    counter = ForwardCounter(HubertModel)
    print(machine(), "|", load_average())
    print(f"{folder.name}: batch_invariant {plugin.batch_invariant} (so one utterance at a time); "
          f"{len(waves)} utterances, {audio:.1f} s of audio, {plugin.num_layers} hidden states kept")
    warm = dict(list(waves.items())[:2])
    plugin_pass(plugin, warm)
    bare_pass(bare, warm)
    times: Dict[str, List[float]] = {"plugin": [], "bare": []}
    forwards: Dict[str, List[int]] = {"plugin": [], "bare": []}
    results = {}
    for i in range(args.repeats):
        sides = [("plugin", lambda: plugin_pass(plugin, waves)), ("bare", lambda: bare_pass(bare, waves))]
        for name, run in sides if i % 2 == 0 else sides[::-1]:
            counter.take()
            with counter.counting():
                start = time.perf_counter()
                results[name] = run()
                times[name].append(time.perf_counter() - start)
            forwards[name].append(counter.take()["utterances"])
        print(f"  repeat {i + 1}: plugin {times['plugin'][-1]:.2f} s, bare {times['bare'][-1]:.2f} s, "
              f"ratio {times['plugin'][-1] / times['bare'][-1]:.3f}")
    diff = max(float((a.float() - b[0]).abs().max()) for uid in waves
               for a, b in zip(results["plugin"][uid], results["bare"][uid]))
    for name in ("plugin", "bare"):
        print(f"{name:6s}: {spread(times[name])} s; model forwards per pass {', '.join(map(str, forwards[name]))} "
              f"({len(waves)} utterances)")
    ratios = [a / b for a, b in zip(times["plugin"], times["bare"])]
    ratio = median(times["plugin"]) / median(times["bare"])
    print(f"3. plugin / bare = {ratio:.3f} (medians); per repeat {spread(ratios, '{:.3f}')}  "
          f"(target <= 1.2: {'met' if ratio <= 1.2 else 'MISSED'})")
    print(f"largest difference between the plugin's stored float16 layers and the bare hidden states: {diff:.2e}")


if __name__ == "__main__":
    main()
