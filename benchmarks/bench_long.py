"""Target 4: peak memory of extracting one 60 s utterance with HuBERT-base (frozen, CPU).

Each repeat runs the extraction in a fresh child process (a peak is per process) through
``extract_features``, the pipeline's path (HuBERT-base is not batch-invariant: one utterance at a
time; every hidden state copied out to float16), and prints the resident-memory peak above the
process's level after loading the model, the time and the size of the stored features. Figures are
the median of the repeats with min and max; the child counts the model's forward passes.

    python benchmarks/bench_long.py            # 3 repeats, about 2 minutes idle
    python benchmarks/bench_long.py --quick    # a tiny model, 10 s: checks the script, figures mean nothing
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time, numpy as np, torch
sys.path.insert(0, sys.argv[3])
sys.path.insert(0, sys.argv[4])
from common import ForwardCounter
from transformers import HubertModel
from ser_plugins import create_upstream
from ser_plugins.data.features import extract_features
up = create_upstream("hf", model=sys.argv[1]).eval()
seconds = float(sys.argv[2])
wave = (0.1 * np.random.default_rng(0).standard_normal(int(16000 * seconds))).astype("float32")
counter = ForwardCounter(HubertModel)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
with counter.counting():
    feats = extract_features(up, {"long": wave}, list(range(up.num_layers)), progress=False)
elapsed = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stored = sum(f.numel() * f.element_size() for f in feats["long"])
print(json.dumps({"rss_after_load_mb": before / 1024, "peak_rss_mb": after / 1024, "stored_mb": stored / 2**20,
                  "seconds": elapsed, "frames": int(feats["long"][0].shape[0]), "layers": len(feats["long"]),
                  "dtype": str(feats["long"][0].dtype), "forwards": counter.take()["utterances"]}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny model, 10 s: checks the script runs")
    args = p.parse_args()
    if args.quick:
        args.seconds = 10.0
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    from common import hubert_base_folder, load_average, machine, spread

    folder = hubert_base_folder(tiny=args.quick)
    here = Path(__file__).resolve().parent
    print(machine(), "|", load_average())
    runs = []
    for i in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(args.seconds), str(here.parent), str(here)],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        r["above_mb"] = r["peak_rss_mb"] - r["rss_after_load_mb"]
        runs.append(r)
        print(f"  repeat {i + 1}: {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, {r['above_mb']:.0f} MB above "
              f"the loaded model, {r['forwards']} model forward(s)")
    r = runs[0]
    print(f"{folder.name}, one {args.seconds:g} s utterance ({r['frames']} frames x {r['layers']} layers stored as "
          f"{r['dtype']} = {r['stored_mb']:.1f} MB), {args.repeats} fresh processes:")
    print(f"4. peak RSS above the loaded model {spread([x['above_mb'] for x in runs], '{:.0f}')} MB; "
          f"peak RSS {spread([x['peak_rss_mb'] for x in runs], '{:.0f}')} MB; "
          f"extraction {spread([x['seconds'] for x in runs], '{:.1f}')} s; "
          f"model forwards per process {', '.join(str(x['forwards']) for x in runs)}")


if __name__ == "__main__":
    main()
