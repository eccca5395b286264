"""Target 4: peak memory of extracting one 60 s utterance with HuBERT-base (frozen, CPU).

Runs the extraction in a fresh child process and prints the resident-memory peak above the
process's level after loading the model, and the size of the stored features.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, numpy as np, torch
sys.path.insert(0, sys.argv[3])
from ser_plugins import create_upstream
from ser_plugins.data.features import extract_features
up = create_upstream("hf", model=sys.argv[1]).eval()
seconds = float(sys.argv[2])
wave = (0.1 * np.random.default_rng(0).standard_normal(int(16000 * seconds))).astype("float32")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
feats = extract_features(up, {"long": wave}, list(range(up.num_layers)), progress=False)
elapsed = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stored = sum(f.numel() * f.element_size() for f in feats["long"])
print(json.dumps({"rss_after_load_mb": before / 1024, "peak_rss_mb": after / 1024, "stored_mb": stored / 2**20,
                  "seconds": elapsed, "frames": int(feats["long"][0].shape[0])}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    from pathlib import Path

    from common import hubert_base_folder, machine

    folder = hubert_base_folder()
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(args.seconds), root],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(machine())
    print(f"{args.seconds:.0f} s utterance ({r['frames']} frames, 13 layers kept): extraction {r['seconds']:.1f} s; "
          f"peak RSS {r['peak_rss_mb']:.0f} MB, {r['peak_rss_mb'] - r['rss_after_load_mb']:.0f} MB above the loaded model; "
          f"stored features {r['stored_mb']:.1f} MB (float16)")


if __name__ == "__main__":
    main()
