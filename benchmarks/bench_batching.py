"""Target 2: length-bucketed vs random batches, through the extraction path the pipeline takes.

The pipeline batches only batch-invariant upstreams (``upstream.batch_invariant``: padding does not
change an utterance's features); HuBERT-base and wav2vec 2.0 Base are not, and are extracted one
utterance at a time, so bucketing never applies to them. This benchmark therefore uses a
batch-invariant encoder: a randomly initialised wav2vec 2.0 with wav2vec2-large's layer-norm CNN,
pre-LN transformer and attention mask, at base size (12 layers, 768 wide).

Both sides run ``ser_plugins.data.features.extract_features`` (what ``compute_frozen_features``
calls on a cache miss: padded forward, boundary check, float16 copy-out of every hidden state) with
the pipeline's batch limits (``batch_size`` 16 utterances and ``data.extract_batch_seconds`` of padded
audio); only the batch plan differs: the pipeline's length-sorted ``bucket_batches``, or random
batches (shuffled, a new seed each repeat, cut at the same limits). The two sides alternate in
each repeat; each figure is the median of the repeats with min and max; a wrapper on the upstream's
forward counts utterances and batches.

    python benchmarks/bench_batching.py            # 100 utterances (250 s of audio), about 5 minutes idle
    python benchmarks/bench_batching.py --quick    # a tiny model: checks the script, figures mean nothing
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import random
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
from common import ForwardCounter, demo_corpus, layernorm_wav2vec2_folder, load_average, machine, median, spread

import ser_plugins.data.extract as features_module
from ser_plugins import create_corpus, create_upstream
from ser_plugins.data.audio import load_audio
from ser_plugins.data.batching import bucket_batches
from ser_plugins.data.features import extract_features
from ser_plugins.recipe import DataConfig
from upstreams.hf import TransformersEncoderUpstream


def random_plan(seed: int) -> Callable[..., List[List[int]]]:
    """A drop-in for ``bucket_batches``: shuffled order, cut at the same item and padded-sample limits."""

    def plan(lengths: Sequence[int], batch_size: int, max_batch_length: Optional[int] = None, *args, **kwargs):
        idx = list(range(len(lengths)))
        random.Random(seed).shuffle(idx)
        batches: List[List[int]] = []
        current: List[int] = []
        longest = 0
        for i in idx:
            new = max(longest, lengths[i])
            too_big = max_batch_length is not None and new * (len(current) + 1) > max_batch_length
            if current and (len(current) >= batch_size or too_big):
                batches.append(current)
                current, new = [], lengths[i]
            current.append(i)
            longest = new
        return batches + ([current] if current else [])

    return plan


@contextlib.contextmanager
def batch_plan(plan: Callable[..., List[List[int]]]) -> Iterator[None]:
    """Make ``extract_features`` use ``plan`` instead of ``bucket_batches`` inside the block."""
    original = features_module.bucket_batches
    features_module.bucket_batches = plan
    try:
        yield
    finally:
        features_module.bucket_batches = original


def one_pass(upstream, waves, budget: int, batch_size: int, plan, counter: ForwardCounter) -> Dict:
    """One extraction of every utterance under ``plan``: seconds, padding, counts and the features."""
    stats: Dict[str, float] = {}
    layers = list(range(upstream.num_layers))
    with batch_plan(plan), counter.counting():
        start = time.perf_counter()
        feats = extract_features(upstream, waves, layers, max_batch_samples=budget, batch_size=batch_size,
                                 dtype=torch.float16, progress=False, stats=stats)
        seconds = time.perf_counter() - start
    counts = counter.take()
    return {"seconds": seconds, "throughput": stats["audio_seconds"] / seconds, "padding": stats["padding_fraction"],
            "forwards": counts["utterances"], "batches": counts["calls"], "features": feats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances-per-speaker", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-seconds", type=float, default=DataConfig().extract_batch_seconds,
                   help="padded seconds per batch (default: data.extract_batch_seconds's default)")
    p.add_argument("--batch-size", type=int, default=inspect.signature(extract_features).parameters["batch_size"].default,
                   help="utterances per batch (default: extract_features's, which the pipeline uses)")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 utterances per speaker: checks the script runs")
    args = p.parse_args()
    if args.quick:
        args.utterances_per_speaker = 2
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    folder = layernorm_wav2vec2_folder(tiny=args.quick)
    upstream = create_upstream("hf", model=str(folder)).eval()
    if not upstream.batch_invariant:
        raise SystemExit(f"{folder.name} is not batch-invariant: the pipeline would not batch it")
    corpus = create_corpus("iemocap", root=str(demo_corpus(args.utterances_per_speaker)))
    waves = {u.id: load_audio(u.path) for u in corpus.load()}
    audio = sum(len(w) for w in waves.values()) / 16000
    budget = int(args.budget_seconds * upstream.sample_rate)
    counter = ForwardCounter(TransformersEncoderUpstream)
    print(machine(), "|", load_average())
    print(f"upstream {folder.name} (batch_invariant {upstream.batch_invariant}); {len(waves)} utterances, "
          f"{audio:.0f} s of audio; batches of at most {args.batch_size} utterances and {args.budget_seconds:g} s padded")
    one_pass(upstream, dict(list(waves.items())[:4]), budget, args.batch_size, bucket_batches, counter)  # warm-up
    bucketed: List[Dict] = []
    randomised: List[Dict] = []
    for i in range(args.repeats):
        sides = [("bucketed", bucket_batches, bucketed), ("random", random_plan(seed=i), randomised)]
        for name, plan, into in sides if i % 2 == 0 else sides[::-1]:
            r = one_pass(upstream, waves, budget, args.batch_size, plan, counter)
            into.append(r)
            print(f"  repeat {i + 1} {name:8s}: {r['seconds']:.2f} s, {r['throughput']:.2f} s audio/s, padding "
                  f"{100 * r['padding']:.1f} %, {r['batches']} batches, {r['forwards']} utterance forwards")
    diff = max(float((a.float() - b.float()).abs().max()) for uid in waves
               for a, b in zip(bucketed[0]["features"][uid], randomised[0]["features"][uid]))
    for name, runs in (("bucketed", bucketed), ("random", randomised)):
        print(f"{name:8s}: throughput {spread([r['throughput'] for r in runs])} s audio/s; "
              f"time {spread([r['seconds'] for r in runs])} s; padding {spread([100 * r['padding'] for r in runs], '{:.1f}')} %; "
              f"batches {spread([r['batches'] for r in runs], '{:.0f}')}; utterance forwards per pass "
              f"{', '.join(str(r['forwards']) for r in runs)} ({len(waves)} utterances)")
    pad = median([r["padding"] for r in bucketed])
    ratio = median([r["throughput"] for r in bucketed]) / median([r["throughput"] for r in randomised])
    print(f"2. bucketed padding {100 * pad:.1f} % of samples (target <= 10 %: {'met' if pad <= 0.10 else 'MISSED'}); "
          f"throughput bucketed / random = {ratio:.2f} x, medians (target > 1: {'met' if ratio > 1 else 'MISSED'})")
    print(f"largest difference between the two batchings' stored features: {diff:.2e} (float16; batch invariance)")


if __name__ == "__main__":
    main()
