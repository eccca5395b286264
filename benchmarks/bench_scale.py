"""Scale in corpus size: peak RSS and training throughput, in RAM vs streamed from disk, at 1x / 4x / 16x.

For the demo corpus generated at 40, 160 and 640 utterances per speaker (1x, 4x, 16x; into
``$SER_BENCH_DIR/scale``, default /tmp/ser_bench/scale), two configurations run in RAM (the default
budget) and streamed (``data.max_ram_gb`` tiny, so everything is served from disk):

* frozen: fbank (80 mels) + stats pooling + MLP; features extracted in the run (streamed: written to a
  temporary cache as they are produced, then read back batch by batch with a prefetch thread);
* fine-tuned: the tiny random HuBERT of the tests (2 layers, 32 wide), whole model trained; audio
  decoded into RAM, or decoded by ``--workers`` DataLoader worker processes on every batch.

Each (size, config, mode) runs ``--runs`` times (in RAM and streamed taking turns), each in a fresh
subprocess that prepares the run (validation pass, extraction) and trains on fold 1 through the
real trainer (epochs repeated until the steps are done; fine-tuning crops to 1 s): 20 / 2 untimed
warm-up steps, then ``--frozen-steps`` / ``--finetune-steps`` timed ones. Printed per run: the
child's peak RSS (``ru_maxrss``; the worker processes' peak apart) and its training throughput
(utterances per second over the timed steps, data loading included); then medians with min/max,
and the ratios the targets are about.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WORK, machine  # noqa: E402

SIZES = {"1x": 40, "4x": 160, "16x": 640}
TINY = 1e-6  # GiB: streams everything


def tiny_hubert() -> Path:
    """The tests' tiny random HuBERT (hubert_base architecture, 2 layers of 32), saved once."""
    folder = WORK / "scale" / "tiny-hubert"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    config = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    HubertModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000, "feature_size": 1,
        "padding_value": 0.0, "do_normalize": False, "return_attention_mask": False}))
    return folder


def corpus(per_speaker: int) -> Path:
    """The demo corpus at ``per_speaker`` utterances per speaker (generated once, outside benchmarks/)."""
    from ser_plugins.plugins import registry

    root = WORK / "scale" / f"demo_{per_speaker}"
    if not (root / "Session1").exists():
        registry.load("corpus", "demo").generate(root, seed=0, utterances_per_speaker=per_speaker)
    return root


def recipe(config: str, root: Path, streamed: bool, steps: int, workers: int) -> dict:
    """The recipe of one configuration."""
    r = {"name": f"scale-{config}", "seed": 0, "corpus": {"name": "iemocap", "root": str(root)},
         "protocol": {"name": "session", "dev": "speaker"},
         "data": {"num_threads": 1, "num_workers": workers, **({"max_ram_gb": TINY} if streamed else {})},
         "output": {"tensorboard": False, "save_checkpoints": False}}
    if config == "frozen":
        r.update(upstream={"name": "fbank", "n_mels": 80}, aggregator="stats",
                 classifier={"name": "mlp", "hidden_sizes": [128]},
                 training={"max_steps": steps, "batch_size": 32, "device": "cpu"})
    else:
        r.update(upstream={"name": "hf", "model": str(tiny_hubert())}, aggregator="mean", classifier="linear",
                 finetune={"mode": "finetune", "upstream_lr": 1e-4},
                 training={"max_steps": steps, "batch_size": 8, "max_duration": 1.0, "device": "cpu"})
    return r


def child(spec: dict) -> dict:
    """One measured run (in a fresh process): prepare, then ``max_steps`` training steps on fold 1."""
    import torch

    from ser_plugins.data.prepare import prepare
    from ser_plugins.model import SERModel, build_head
    from ser_plugins.recipe import load_recipe
    from ser_plugins.runtime.seeding import set_seed
    from ser_plugins.training.trainer import FoldTrainer, build_optimizer, build_scheduler

    spec = dict(spec)
    timing = {"warmup_steps": spec.pop("warmup_steps"), "timed_steps": spec.pop("timed_steps")}
    r = load_recipe(spec)
    spec = timing
    t0 = time.perf_counter()
    prep = prepare(r, "cpu", progress=False)
    prepare_s = time.perf_counter() - t0
    fold = prep.folds[0]
    set_seed(0)
    head, kept = build_head(r.features, r.aggregator, r.classifier, prep.upstream, len(prep.labels))
    model = SERModel(prep.upstream, head, kept, r.finetune.frozen_warmup_steps)
    with tempfile.TemporaryDirectory() as d:
        trainer = FoldTrainer(model, prep.source, r.training, r.finetune, prep.labels, Path(d), "cpu", False,
                              progress=False)
        model.to("cpu")
        optimizer = build_optimizer(model, r.training, r.finetune)
        scheduler = build_scheduler(optimizer, r.training.scheduler, 0, spec["warmup_steps"] + spec["timed_steps"])
        progress = {"step": 0}
        loss_fn = trainer._loss_fn(fold.train)
        epoch = 0

        def train_until(steps: int) -> int:
            """Epochs of the real trainer until ``steps`` optimiser steps in all; returns the utterances seen."""
            nonlocal epoch
            r.training.max_steps = steps
            seen = 0
            while progress["step"] < steps:
                before = progress["step"]
                trainer._train_epoch(fold.train, optimizer, scheduler, loss_fn, progress, epoch)
                sizes = [len(b) for b in prep.source.plan(fold.train, trainer._plan(epoch))]
                seen += sum(sizes[:progress["step"] - before])  # grad_accum is 1: one batch per step
                epoch += 1
            return seen

        train_until(spec["warmup_steps"])  # one-time costs (allocator, kernels, first reads) left out
        t1 = time.perf_counter()
        utterances = train_until(spec["warmup_steps"] + spec["timed_steps"])
        train_s = time.perf_counter() - t1
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"rss_mb": round(own, 1), "workers_rss_mb": round(workers, 1), "utt_per_s": round(utterances / train_s, 2),
            "steps": progress["step"], "train_utterances": len(fold.train), "prepare_s": round(prepare_s, 2),
            "streamed": bool(prep.notes.get("streamed")) or type(prep.source).__name__.startswith("Streamed"),
            "torch": torch.__version__}


def measure(config: str, size: str, args) -> dict:
    """``args.runs`` fresh subprocesses per mode of one (config, size), in RAM and streamed taking turns
    (the machine's load drifts: each streamed run is next to an in-RAM one)."""
    runs = {False: [], True: []}
    for _ in range(args.runs):
        for streamed in (False, True):
            spec = recipe(config, corpus(SIZES[size]), streamed, args.steps[config], args.workers)
            spec.update(warmup_steps=args.warmup[config], timed_steps=args.steps[config])
            res = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if res.returncode != 0:
                raise SystemExit(f"{config} {size} {'streamed' if streamed else 'in RAM'} failed:\n{res.stderr[-3000:]}")
            out = json.loads(res.stdout.strip().splitlines()[-1])
            assert out["streamed"] == streamed, out
            runs[streamed].append(out)
            print(f"  {config:9s} {size:4s} {'streamed' if streamed else 'in RAM':8s} rss {out['rss_mb']:8.1f} MB "
                  f"(workers {out['workers_rss_mb']:6.1f} MB)  {out['utt_per_s']:8.2f} utt/s  "
                  f"prepare {out['prepare_s']:6.2f} s  steps {out['steps']}  train set {out['train_utterances']}",
                  flush=True)
    return runs


def med(runs: list, key: str) -> tuple:
    values = [r[key] for r in runs]
    return statistics.median(values), min(values), max(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="data.num_workers of every run")
    parser.add_argument("--frozen-steps", type=int, default=300, help="timed steps (after 20 untimed)")
    parser.add_argument("--finetune-steps", type=int, default=10, help="timed steps (after 2 untimed)")
    parser.add_argument("--sizes", default="1x,4x,16x")
    parser.add_argument("--configs", default="frozen,finetune")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    args.steps = {"frozen": args.frozen_steps, "finetune": args.finetune_steps}
    args.warmup = {"frozen": 20, "finetune": 2}
    sizes = args.sizes.split(",")
    print(f"machine: {machine()}")
    print(f"data.num_workers: {args.workers} (DataLoader worker processes of the streamed passes); "
          f"{args.runs} runs each, every run a fresh process; corpora under {WORK / 'scale'}")
    for size in sizes:
        corpus(SIZES[size])
    results = {}
    configs = args.configs.split(",")
    for config in configs:
        for size in sizes:
            runs = measure(config, size, args)
            for streamed in (False, True):
                results[config, size, streamed] = runs[streamed]
    print("\nmedian [min-max] of the runs:")
    for (config, size, streamed), runs in results.items():
        rss, thr = med(runs, "rss_mb"), med(runs, "utt_per_s")
        print(f"  {config:9s} {size:4s} {'streamed' if streamed else 'in RAM':8s} peak RSS {rss[0]:8.1f} MB "
              f"[{rss[1]:.1f}-{rss[2]:.1f}]  throughput {thr[0]:8.2f} utt/s [{thr[1]:.2f}-{thr[2]:.2f}]")
    print("\nratios (medians):")
    first, last = sizes[0], sizes[-1]
    for config in configs:
        for streamed in (False, True):
            a, b = med(results[config, first, streamed], "rss_mb")[0], med(results[config, last, streamed], "rss_mb")[0]
            mode = "streamed" if streamed else "in RAM"
            target = "  (target <= 1.20: " + ("met" if b / a <= 1.2 else "MISSED") + ")" if streamed else ""
            print(f"  {config:9s} peak RSS {last}/{first} {mode:8s}: {b / a:.3f}{target}")
        for size in sizes:
            s, m = med(results[config, size, True], "utt_per_s")[0], med(results[config, size, False], "utt_per_s")[0]
            verdict = "met" if m / s <= 1.5 else "MISSED"
            print(f"  {config:9s} throughput streamed/in RAM at {size:4s}: {s / m:.3f} "
                  f"(target >= {1 / 1.5:.3f}, i.e. within 1.5x: {verdict})")


if __name__ == "__main__":
    main()
