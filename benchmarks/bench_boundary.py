"""Cost of the run-time plugin boundary checks (ser_plugins/boundary.py) next to what they guard.

Prints, as medians of ``--repeats`` runs:
  1. one ``check_upstream_output`` call vs one fbank forward on the same batch (fbank is the
     cheapest built-in upstream, so this is the worst case for the ratio), and one
     ``check_aggregator_output`` vs one stats-pooling forward;
  2. frozen feature extraction (``extract_features``) of the same utterances with the check and
     with it replaced by a no-op (runs alternated), with the min..max spread of each: on a busy
     machine the spread is far larger than the check's cost, so part 1 is the precise figure.
Target: one check costs at most 2 % of the fbank forward it guards.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import machine

import ser_plugins.data.extract as data
from ser_plugins import create_aggregator, create_upstream
from ser_plugins.plugins.boundary import check_aggregator_output, check_upstream_output
from ser_plugins.data.batching import pad_waves


def median_time(fn, repeats: int, inner: int = 1) -> float:
    """Median over ``repeats`` of the mean time of ``inner`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--utterances", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=11)
    args = p.parse_args()
    torch.manual_seed(0)
    up = create_upstream("fbank", n_mels=80).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(int(args.seconds * 8000), int(args.seconds * 16000), size=args.utterances)
    waves = {f"u{i}": (0.1 * rng.standard_normal(n)).astype("float32") for i, n in enumerate(lengths)}
    wavs, wav_lengths = pad_waves(list(waves.values())[: args.batch_size])

    with torch.inference_mode():
        out = up(wavs, wav_lengths)
        t_forward = median_time(lambda: up(wavs, wav_lengths), args.repeats, 5)
        t_check = median_time(lambda: check_upstream_output(up, out, wav_lengths), args.repeats, 200)
        pool = create_aggregator("stats", input_dim=80).eval()
        feats = out.hidden_states[0]
        pooled = pool(feats, out.lengths)
        t_pool = median_time(lambda: pool(feats, out.lengths), args.repeats, 50)
        t_pool_check = median_time(lambda: check_aggregator_output(pool, pooled, feats), args.repeats, 200)

    def extract_once(checked: bool) -> float:
        data.check_upstream_output = check_upstream_output if checked else (lambda *a, **k: None)
        try:
            start = time.perf_counter()
            data.extract_features(up, waves, [0], batch_size=args.batch_size, progress=False)
            return time.perf_counter() - start
        finally:
            data.check_upstream_output = check_upstream_output

    extract_once(True)  # warm-up
    runs = {True: [], False: []}
    for r in range(args.repeats):  # alternated (and the order swapped), so that drift in load hits both alike
        for checked in ((True, False) if r % 2 == 0 else (False, True)):
            runs[checked].append(extract_once(checked))
    t_with, t_without = statistics.median(runs[True]), statistics.median(runs[False])
    print(f"machine: {machine()}")
    print(f"batch: {args.batch_size} utterances of {args.seconds / 2:g}-{args.seconds:g} s, fbank 80 mels "
          f"({int(out.lengths.max())} frames); medians of {args.repeats} runs")
    ratio = t_check / t_forward
    print(f"1. check_upstream_output   {1e6 * t_check:9.1f} us  vs fbank forward  {1e6 * t_forward:9.1f} us "
          f"-> {100 * ratio:.2f} % of the forward (target <= 2 %: {'met' if ratio <= 0.02 else 'MISSED'})")
    print(f"   check_aggregator_output {1e6 * t_pool_check:9.1f} us  vs stats forward  {1e6 * t_pool:9.1f} us "
          f"-> {100 * t_pool_check / t_pool:.2f} % of the forward")
    spread = {k: f"{min(v):.3f}..{max(v):.3f}" for k, v in runs.items()}
    print(f"2. extract_features of {args.utterances} utterances: {t_with:.3f} s with the check ({spread[True]}), "
          f"{t_without:.3f} s without ({spread[False]}) -> {100 * (t_with / t_without - 1):+.1f} %")


if __name__ == "__main__":
    main()
