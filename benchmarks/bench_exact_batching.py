"""Exact batching (issue 28): HuBERT-base extracted in padded batches vs one utterance at a time.

HuBERT-base's CNN normalises over time (a GroupNorm in its first layer) and the checkpoint takes no
attention mask, so padding used to change its features and the pipeline ran it one utterance at a
time. The exact path (``upstreams/hf.py``) runs that CNN so that padding never reaches it (once per
distinct length on CPU; on an accelerator the padded batch with the GroupNorm's statistics over each
utterance's own frames) and masks the padded frames in the transformer: a padded batch gives every
utterance its features alone, so the pipeline now batches it. This script measures what that buys, through the
extraction path the pipeline takes (``ser_plugins.data.extract.extract_features``: padded forward,
boundary check, copy-out of every hidden state), on the threads torch has:

* ``one at a time``: ``batch_size`` 1, what the pipeline did before;
* ``batched (exact)``: the pipeline's length-bucketed batches (``batch_size`` 16 and
  ``data.extract_batch_seconds`` of padded audio), the CNN once per length (the CPU default);
* ``batched, masked GroupNorm``: the same batches, the CNN on the padded batch with the masked
  GroupNorm (``cpu_cnn_per_length = False``: the accelerator path, here on CPU).

The model is ``HubertModel(HubertConfig())`` (HuBERT-base's architecture, 94.4 M parameters),
randomly initialised (seed 0); the utterances are noise with the demo corpus's length spread (durations
uniform in 1.05-3.95 s, seed 0). The paths take turns in each repeat; each figure is the median of the
repeats (min and max beside it); a wrapper on the upstream's forward counts utterances and batches;
the largest difference between the paths is over every hidden state's valid frames, in float32.

    python benchmarks/bench_exact_batching.py            # 48 utterances, 3 repeats: about 5 minutes on 2 cores
    python benchmarks/bench_exact_batching.py --quick    # a tiny model: checks the script, figures mean nothing
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import numpy as np
import torch
from common import TINY, ForwardCounter, load_average, machine, median, spread

from ser_plugins.data.extract import extract_features
from ser_plugins.recipe import DataConfig
from upstreams.hf import TransformersEncoderUpstream

SAMPLE_RATE = 16000


def hubert_base(tiny: bool) -> TransformersEncoderUpstream:
    """Random HuBERT-base (``tiny``: 2 layers, 64 wide) as the hf upstream builds a hubert-base checkpoint:
    normalised input, no attention mask."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    model = HubertModel(HubertConfig(**(TINY if tiny else {}), layerdrop=0.0))
    return TransformersEncoderUpstream(model, normalize=True, use_attention_mask=False).eval()


def utterances(count: int, low: float = 1.05, high: float = 3.95, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(low, high, size=count)
    return {f"utt{i:03d}": (0.1 * rng.standard_normal(int(s * SAMPLE_RATE))).astype(np.float32)
            for i, s in enumerate(seconds)}


def one_pass(upstream, waves, batch_size: int, budget: int, counter: ForwardCounter) -> Dict:
    stats: Dict[str, float] = {}
    with counter.counting():
        start = time.perf_counter()
        feats = extract_features(upstream, waves, list(range(upstream.num_layers)), max_batch_samples=budget,
                                 batch_size=batch_size, dtype=torch.float32, progress=False, stats=stats)
        seconds = time.perf_counter() - start
    counts = counter.take()
    return {"seconds": seconds, "utterances": counts["utterances"], "batches": counts["calls"],
            "plan_batches": int(stats["batches"]), "audio": stats["audio_seconds"],
            "padding": stats["padding_fraction"], "features": feats}


def max_difference(a: Dict[str, List[torch.Tensor]], b: Dict[str, List[torch.Tensor]]) -> float:
    return max(float((x - y).abs().max()) for key in a for x, y in zip(a[key], b[key]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=16, help="utterances per batch (the pipeline's default)")
    p.add_argument("--budget-seconds", type=float, default=DataConfig().extract_batch_seconds,
                   help="padded seconds per batch (default: data.extract_batch_seconds's default)")
    p.add_argument("--quick", action="store_true", help="tiny model, 8 utterances, 1 repeat: checks the script runs")
    args = p.parse_args()
    if args.quick:
        args.utterances, args.repeats = 8, 1
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    upstream = hubert_base(args.quick)
    waves = utterances(args.utterances)
    budget = int(args.budget_seconds * SAMPLE_RATE)
    counter = ForwardCounter(TransformersEncoderUpstream)
    params = sum(p.numel() for p in upstream.parameters()) / 1e6
    print(machine(), "|", load_average())
    print(f"HuBERT-base{' (tiny)' if args.quick else ''}: random weights, {params:.1f} M parameters, "
          f"{upstream.num_layers} hidden states, batch_invariant {upstream.batch_invariant}, "
          f"CNN batching {upstream.cnn_batching}; {len(waves)} utterances of 1.05-3.95 s (uniform), "
          f"{sum(len(w) for w in waves.values()) / SAMPLE_RATE:.1f} s of audio; batches of at most "
          f"{args.batch_size} utterances and {args.budget_seconds:g} s padded")
    paths = [("one at a time", 1, True), ("batched (exact)", args.batch_size, True),
             ("batched, masked GroupNorm", args.batch_size, False)]
    with torch.inference_mode():
        one_pass(upstream, dict(list(waves.items())[:4]), args.batch_size, budget, counter)  # warm-up
        runs: Dict[str, List[Dict]] = {name: [] for name, _, _ in paths}
        for i in range(args.repeats):
            for name, batch_size, per_length in paths if i % 2 == 0 else paths[::-1]:
                upstream.cpu_cnn_per_length = per_length
                r = one_pass(upstream, waves, batch_size, budget, counter)
                print(f"  repeat {i + 1} {name:24s}: {r['seconds']:.2f} s, {r['batches']} batches, "
                      f"{r['utterances']} utterance forwards")
                if runs[name]:
                    r.pop("features")  # the first run's features are kept for the comparison
                runs[name].append(r)
    reference = median([r["seconds"] for r in runs["one at a time"]])
    print()
    print("| path | utterances | batches | audio (s) | padding | time (s) | utterances/s | audio s/s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, _, _ in paths:
        rs = runs[name]
        first = rs[0]
        seconds = median([r["seconds"] for r in rs])
        print(f"| {name} | {first['utterances']} | {first['batches']} | {first['audio']:.1f} | "
              f"{100 * first['padding']:.1f} % | {spread([r['seconds'] for r in rs])} | "
              f"{first['utterances'] / seconds:.2f} | {first['audio'] / seconds:.2f} | {reference / seconds:.2f} x |")
    alone = runs["one at a time"][0]["features"]
    print()
    print(f"max |batched (exact) - one at a time| over every hidden state's valid frames: "
          f"{max_difference(runs['batched (exact)'][0]['features'], alone):.2e}")
    print(f"max |batched, masked GroupNorm - one at a time|: "
          f"{max_difference(runs['batched, masked GroupNorm'][0]['features'], alone):.2e}")


if __name__ == "__main__":
    main()
