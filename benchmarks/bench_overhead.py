"""Target 3: extraction through the upstream plugin vs the bare transformers forward, same batches.

Prints both times and their ratio (target <= 1.2: the plugin adds no hidden overhead).
"""
from __future__ import annotations

import argparse
import time

import torch
from common import demo_corpus, hubert_base_folder, machine

from ser_plugins import create_corpus, create_upstream
from ser_plugins.data.audio import load_audio
from ser_plugins.data.batching import bucket_batches, pad_waves


@torch.inference_mode()
def timed(fn, batches, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for wavs, lens in batches:
            fn(wavs, lens)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--utterances", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from transformers import HubertModel

    folder = hubert_base_folder()
    corpus = create_corpus("iemocap", root=str(demo_corpus(6)))
    waves = [load_audio(u.path) for u in corpus.load()[: args.utterances]]
    lengths = [len(w) for w in waves]
    batches = [pad_waves([waves[i] for i in b]) for b in bucket_batches(lengths, 8, 16000 * 16)]
    plugin = create_upstream("hf", model=str(folder)).eval()
    bare = HubertModel.from_pretrained(folder).eval()

    def bare_forward(wavs, lens):  # what a user would write: normalise, forward, all hidden states
        x = (wavs - wavs.mean(-1, keepdim=True)) / (wavs.std(-1, keepdim=True) + 1e-7)
        return bare(x, output_hidden_states=True).hidden_states

    timed(plugin, batches[:1], 1)
    timed(bare_forward, batches[:1], 1)
    t_plugin, t_bare = timed(plugin, batches, args.repeats), timed(bare_forward, batches, args.repeats)
    print(machine())
    print(f"{len(waves)} utterances in {len(batches)} batches: plugin {t_plugin:.2f} s, bare transformers {t_bare:.2f} s, "
          f"ratio {t_plugin / t_bare:.3f}  (target <= 1.2)")


if __name__ == "__main__":
    main()
