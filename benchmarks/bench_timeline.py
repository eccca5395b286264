"""Peak memory of ``ser predict --window`` over long synthetic recordings: bounded, not growing with length.

A synthetic recording (speech-like harmonic bursts and pauses, 16 kHz mono 16-bit WAV, written
block by block) of each length is analysed in a fresh child process with 3 s windows every 1 s
and the energy VAD, by a small exported model (log-mel fbank + stats + MLP, trained one epoch on
the demo corpus) through the ONNX engine and through the PyTorch engine. Printed per run: the
child's resident memory after loading the model, its peak during the analysis (``ru_maxrss``),
the wall time, and, for scale, the size of the whole recording decoded as float32.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
engine, model, wav, out = sys.argv[2:6]
def rss_mb(field="VmRSS"):  # VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
if engine == "onnx":
    from ser_plugins.deploy.onnx_engine import OnnxPredictor
    scorer = OnnxPredictor(model, threads=1)
else:
    import torch
    torch.set_num_threads(1)
    from ser_plugins.deploy.inference_graph import TorchScorer
    scorer = TorchScorer(model)
from ser_plugins.deploy.timeline import analyse_recording
loaded = rss_mb()
t = time.perf_counter()
res = analyse_recording(wav, scorer, 3.0, 1.0, out, vad_db=-40, progress=False)
elapsed = time.perf_counter() - t
peak = rss_mb("VmHWM")
print(json.dumps({"loaded_mb": loaded, "peak_mb": peak, "seconds": elapsed, "windows": res.windows,
                  "scored": res.scored, "skipped": res.skipped, "audio_s": res.seconds,
                  "torch_imported": "torch" in sys.modules}))
"""


def write_recording(path: Path, minutes: float, rate: int = 16000, seed: int = 0) -> None:
    """Speech-like bursts (0.5-4 s) and pauses (0.2-2 s), written in blocks: never all in memory."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * rate)
    written = 0
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=1, subtype="PCM_16") as handle:
        while written < total:
            n = min(int(rng.uniform(0.5, 4.0) * rate), total - written)
            t = np.arange(n) / rate
            f0 = rng.uniform(90, 260) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
            phase = 2 * np.pi * np.cumsum(f0) / rate
            voice = sum(np.sin(k * phase) / k for k in range(1, 8))
            env = np.sin(np.pi * np.arange(n) / n) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * t) ** 2)
            handle.write((rng.uniform(0.05, 0.3) * env * voice + 0.003 * rng.standard_normal(n)).astype(np.float32))
            written += n
            pause = min(int(rng.uniform(0.2, 2.0) * rate), total - written)
            handle.write((0.002 * rng.standard_normal(pause)).astype(np.float32))
            written += pause


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    p.add_argument("--engines", nargs="+", default=["onnx", "torch"], choices=["onnx", "torch"])
    args = p.parse_args()
    from bench_onnx import train_and_export
    from common import WORK, demo_corpus, machine

    root = str(Path(__file__).resolve().parents[1])
    work = WORK / "timeline"
    work.mkdir(parents=True, exist_ok=True)
    run_dir, export_dir = train_and_export("fbank", {"upstream": {"name": "fbank", "n_mels": 80}}, demo_corpus(4),
                                           WORK / "onnx")
    print(machine(), "| child processes use 1 thread")
    print("| recording | engine | windows (scored) | RSS after loading | peak RSS | peak - loaded | whole file as float32 | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for minutes in args.minutes:
        wav = work / f"synthetic_{minutes:g}min.wav"
        if not wav.exists():
            t = time.perf_counter()
            write_recording(wav, minutes)
            print(f"(wrote {wav.name} in {time.perf_counter() - t:.0f} s)")
        for engine in args.engines:
            model = export_dir if engine == "onnx" else run_dir
            out = subprocess.run([sys.executable, "-c", CHILD, root, engine, str(model), str(wav), str(work / engine)],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            assert r["torch_imported"] == (engine == "torch")
            whole = r["audio_s"] * 16000 * 4 / 2**20
            print(f"| {minutes:g} min | {engine} | {r['windows']} ({r['scored']}) | {r['loaded_mb']:.0f} MB | "
                  f"{r['peak_mb']:.0f} MB | {r['peak_mb'] - r['loaded_mb']:.0f} MB | {whole:.0f} MB | {r['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
