"""Target 2: length-bucketed vs random batches under the same padded-sample budget.

Prints the padding fraction of both and the extraction throughput (seconds of audio per second)
of HuBERT-base through the upstream plugin on both batchings.
"""
from __future__ import annotations

import argparse
import random
import time

import torch
from common import demo_corpus, hubert_base_folder, machine

from ser_plugins import create_corpus, create_upstream
from ser_plugins.data.audio import load_audio
from ser_plugins.data.batching import bucket_batches, pad_waves, padding_fraction


def random_batches(lengths, budget, seed=0):
    """Shuffled order, cut whenever the padded size would exceed the budget (no sorting)."""
    idx = list(range(len(lengths)))
    random.Random(seed).shuffle(idx)
    batches, cur, longest = [], [], 0
    for i in idx:
        new = max(longest, lengths[i])
        if cur and new * (len(cur) + 1) > budget:
            batches.append(cur)
            cur, new = [], lengths[i]
        cur.append(i)
        longest = new
    return batches + ([cur] if cur else [])


@torch.inference_mode()
def throughput(upstream, waves, batches):
    start = time.perf_counter()
    for b in batches:
        wavs, lens = pad_waves([waves[i] for i in b])
        upstream(wavs, lens)
    return sum(len(w) for w in waves) / 16000 / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--utterances-per-speaker", type=int, default=6)
    p.add_argument("--budget-seconds", type=float, default=16.0)
    args = p.parse_args()
    corpus = create_corpus("iemocap", root=str(demo_corpus(args.utterances_per_speaker)))
    waves = [load_audio(u.path) for u in corpus.load()]
    lengths = [len(w) for w in waves]
    budget = int(args.budget_seconds * 16000)
    bucketed = bucket_batches(lengths, batch_size=10**6, max_batch_length=budget, shuffle=True, seed=0, bucket_factor=10**6)
    rand = random_batches(lengths, budget)
    upstream = create_upstream("hf", model=str(hubert_base_folder())).eval()
    print(machine())
    print(f"{len(waves)} utterances, {sum(lengths) / 16000:.0f} s of audio, budget {args.budget_seconds:.0f} s padded audio per batch")
    print(f"padding: bucketed {100 * padding_fraction(lengths, bucketed):.1f} % ({len(bucketed)} batches), "
          f"random {100 * padding_fraction(lengths, rand):.1f} % ({len(rand)} batches)  (target bucketed <= 10 %)")
    throughput(upstream, waves, bucketed[:1])  # warm-up
    tb, tr = throughput(upstream, waves, bucketed), throughput(upstream, waves, rand)
    print(f"extraction throughput: bucketed {tb:.2f} s audio/s, random {tr:.2f} s audio/s, ratio {tb / tr:.2f}x")


if __name__ == "__main__":
    main()
