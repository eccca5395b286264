"""Trainable frame-level heads on the demo corpus: accuracy beside a converged linear reference, and cost.

Accuracy: log-mel filter banks (80, frozen), leave-one-session-out (5 folds, dev = one held-out
training speaker), each head trained by the real runner (``ser_plugins.training.runner.run_recipe``),
with speaker normalisation (``--normalize speaker,none`` adds the heads without it: about twice
the time). Reference on the same features and the same folds, with and without speaker
normalisation: scikit-learn ``LogisticRegression(max_iter=5000)`` on each utterance's mean fbank
vector (standardised with the training fold's statistics), fitted on the fold's training
utterances (the heads' training set; the heads also use the dev speaker for early stopping).

Cost: milliseconds per utterance of one training step (forward + backward + Adam, batch 16) and
of inference (batch 16), on 263-frame utterances (the demo corpus's median length, 2.6 s), for
each head at its defaults on 80 filter banks, at the IEMOCAP grid's sizes on its 256-dim
projection, and for recipes/ecapa_fbank.yaml's network; median of ``--repeats`` timed runs after
one warm-up (the aggregator and a linear layer only: no upstream).

    python bench_frame_heads.py                      # everything (about 10 minutes on 2 cores)
    python bench_frame_heads.py --skip-accuracy      # cost only
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from common import WORK, demo_corpus, machine

import ser_plugins
from ser_plugins.results.metrics import classification_metrics, mean_std
from ser_plugins.recipe import load_recipe
from ser_plugins.training.runner import Runner, run_recipe

#: head name -> (aggregator section, classifier section); the defaults of each plugin unless stated
#: the heads run by default (``--heads`` picks others from HEADS)
DEFAULT_HEADS = ("ecapa_tdnn + cosine (AAM m 0.2 s 30)", "cnn_self_attention + mlp [80]", "bilstm_attention + linear",
                 "stats + mlp [128] (demo recipe's head)")
HEADS: Dict[str, Tuple[Dict[str, Any], Dict[str, Any]]] = {
    "ecapa_tdnn + cosine (AAM m 0.2 s 30)": (
        {"name": "ecapa_tdnn"},
        {"name": "cosine", "scale": 30.0, "learn_scale": False, "margin": 0.2, "margin_type": "angular"}),
    "ecapa_tdnn + linear": ({"name": "ecapa_tdnn"}, {"name": "linear"}),
    "ecapa_tdnn (utterance_norm batch) + cosine (AAM m 0.2 s 30)": (
        {"name": "ecapa_tdnn", "utterance_norm": "batch"},
        {"name": "cosine", "scale": 30.0, "learn_scale": False, "margin": 0.2, "margin_type": "angular"}),
    "cnn_self_attention + mlp [80]": ({"name": "cnn_self_attention"},
                                      {"name": "mlp", "hidden_sizes": [80], "dropout": 0.0}),
    "bilstm_attention + linear": ({"name": "bilstm_attention"}, {"name": "linear"}),
    "stats + mlp [128] (demo recipe's head)": ({"name": "stats"},
                                               {"name": "mlp", "hidden_sizes": [128], "dropout": 0.3}),
}
ROOT = Path(__file__).resolve().parents[1]


def cost_rows() -> List[Tuple[str, str, Dict[str, Any], int]]:
    """``(setting, aggregator, options, input dim)`` of every configuration whose cost is measured:
    the defaults on 80 filter banks, the IEMOCAP grid's heads on its 256-dim projection
    (recipes/iemocap/make_grid.py), and recipes/ecapa_fbank.yaml's network."""
    import importlib.util

    from ser_plugins.recipe import load_yaml

    def plugin_kwargs(section):
        return {k: v for k, v in section.items() if k != "name"} if isinstance(section, dict) else {}

    spec = importlib.util.spec_from_file_location("make_grid", ROOT / "recipes" / "iemocap" / "make_grid.py")
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)  # type: ignore[union-attr]
    rows = [("defaults, fbank 80", name, {}, 80)
            for name in ("stats", "attentive_stats", "ecapa_tdnn", "cnn_self_attention", "bilstm_attention")]
    for section in (grid.AGGREGATORS, grid.FRAME_AGGREGATORS):
        rows += [("IEMOCAP grid, projection 256", cfg["name"], plugin_kwargs(cfg), 256)
                 for cfg in section.values() if cfg["name"] != "mean"]
    ecapa = load_yaml(ROOT / "recipes" / "ecapa_fbank.yaml")["aggregator"]
    rows.append(("recipes/ecapa_fbank.yaml, fbank 80", ecapa["name"], plugin_kwargs(ecapa), 80))
    return rows


def base_recipe(root: Path, normalize: str, epochs: int) -> Dict[str, Any]:
    """The shared recipe: fbank 80, frozen, leave-one-session-out, speaker dev; the demo's training."""
    return {
        "name": "frame-heads", "seed": 0,
        "corpus": {"name": "iemocap", "root": str(root)},
        "protocol": {"name": "session", "dev": "speaker"},
        "upstream": {"name": "fbank", "n_mels": 80},
        "features": {"layer": "last", "normalize": None if normalize == "none" else normalize},
        "aggregator": "stats", "classifier": "linear",
        "training": {"max_steps": None, "epochs": epochs, "batch_size": 32, "lr": 1e-3, "select": "dev_ua",
                     "patience": 10},
        "output": {"tensorboard": False, "save_checkpoints": False},
    }


def linear_reference(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """LogisticRegression on mean-pooled features of the runner's own folds; mean ± std over folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    prep = Runner(load_recipe(recipe), WORK / "runs" / "unused", progress=False).prepare()
    feats = prep.source.features
    pooled = {uid: feats[uid][0].float().mean(0).numpy() for uid in feats}
    per_fold, names = [], []
    for fold in prep.folds:
        names.append(fold.name)
        x_train = np.stack([pooled[u] for u in fold.train])
        y_train = [prep.targets[u] for u in fold.train]
        scaler = StandardScaler().fit(x_train)
        clf = LogisticRegression(max_iter=5000).fit(scaler.transform(x_train), y_train)
        pred = clf.predict(scaler.transform(np.stack([pooled[u] for u in fold.test])))
        per_fold.append(classification_metrics([prep.targets[u] for u in fold.test], pred.tolist(), prep.labels))
    return {"mean_std": mean_std(per_fold), "folds": {n: m["ua"] for n, m in zip(names, per_fold)}}


def run_head(recipe: Dict[str, Any], aggregator: Dict[str, Any], classifier: Dict[str, Any], out: Path) -> Dict:
    """One head through the runner; returns its summary and the training time of its folds."""
    shutil.rmtree(out, ignore_errors=True)
    summary = run_recipe(load_recipe({**recipe, "aggregator": aggregator, "classifier": classifier}), str(out),
                         progress=False)
    summary = summary.to_dict()
    folds = [json.loads((out / "folds" / f / "metrics.json").read_text()) for f in summary["folds"]]
    summary["train_seconds"] = sum(f["seconds"] for f in folds)
    summary["best_epochs"] = [f["best_epoch"] for f in folds]
    return summary


def cost(name: str, options: Dict[str, Any], input_dim: int, repeats: int, frames: int = 263,
         batch: int = 16) -> Dict[str, float]:
    """Median ms per utterance of a training step and of inference; parameter count."""
    torch.manual_seed(0)
    agg = ser_plugins.create_aggregator(name, input_dim=input_dim, **options)
    head = torch.nn.Linear(agg.output_dim, 4)
    params = [p for p in list(agg.parameters()) + list(head.parameters())]
    opt = torch.optim.Adam(params)
    x, lengths = torch.randn(batch, frames, input_dim), torch.full((batch,), frames)
    y = torch.arange(batch) % 4

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(head(agg(x, lengths)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.no_grad():
            head(agg(x, lengths))

    out = {"params": float(sum(p.numel() for p in agg.parameters()))}
    for label, fn, mode in (("train_ms", step, True), ("infer_ms", infer, False)):
        agg.train(mode)
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[label] = 1000 * statistics.median(times) / batch
    return out


def lstm_packing_cost(repeats: int, batch: int = 32) -> Dict[str, float]:
    """Forward + backward ms per utterance, mixed lengths (105-393 frames, 80 dims, 128 units per direction):
    a packed bidirectional ``nn.LSTM`` vs ``bilstm_attention``'s per-direction unpacked LSTMs (same result)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    lengths = torch.randint(105, 394, (batch,))
    x = torch.randn(batch, int(lengths.max()), 80)
    packed_lstm = torch.nn.LSTM(80, 128, batch_first=True, bidirectional=True)
    ours = ser_plugins.create_aggregator("bilstm_attention", input_dim=80, dropout=0.0)

    def packed() -> torch.Tensor:
        out, _ = packed_lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        return pad_packed_sequence(out, batch_first=True)[0]

    def unpacked() -> torch.Tensor:
        return ours.frame_outputs(x, lengths)[0]

    out = {}
    for label, fn in (("packed", packed), ("per-direction unpacked", unpacked)):
        fn().sum().backward()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn().sum().backward()
            times.append(time.perf_counter() - t0)
        out[label] = 1000 * statistics.median(times) / batch
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--utterances-per-speaker", type=int, default=40)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--normalize", default="speaker", help="for the heads, comma-separated: speaker, none")
    p.add_argument("--heads", default=",".join(DEFAULT_HEADS), help="comma-separated keys of HEADS")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cost figure (median)")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-cost", action="store_true")
    args = p.parse_args()
    print(machine(), "| load average (1 min) at start:", f"{os.getloadavg()[0]:.2f}")
    started = time.perf_counter()
    if not args.skip_cost:
        print(f"\ncost per utterance: 263 frames (2.6 s at 100 frames/s), batch 16, median of {args.repeats}")
        print("| setting | aggregator | options | parameters | train step, ms/utt | inference, ms/utt |")
        print("|---|---|---|---|---|---|")
        for setting, name, options, dim in cost_rows():
            c = cost(name, options, dim, args.repeats)
            shown = ", ".join(f"{k} {v}" for k, v in options.items()) or "defaults"
            print(f"| {setting} | {name} | {shown} | {int(c['params']):,} | {c['train_ms']:.2f} | "
                  f"{c['infer_ms']:.2f} |", flush=True)
        lstm = lstm_packing_cost(args.repeats)
        print("\nbidirectional LSTM forward + backward, ms/utt (32 utterances of 105-393 frames): "
              + ", ".join(f"{k} {v:.1f}" for k, v in lstm.items()), flush=True)
    if args.skip_accuracy:
        return
    root = demo_corpus(args.utterances_per_speaker)
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    unknown = [h for h in heads if h not in HEADS]
    if unknown:
        raise SystemExit(f"unknown heads {unknown}; choose from: {', '.join(HEADS)}")
    rows: List[str] = []
    references = {}
    for normalize in ("speaker", "none"):
        t0 = time.perf_counter()
        references[normalize] = ref = linear_reference(base_recipe(root, normalize, args.epochs))["mean_std"]
        rows.append(f"| {normalize} | LogisticRegression on mean fbank (reference) | {ref['ua']['mean']:.4f} ± "
                    f"{ref['ua']['std']:.4f} | {ref['wa']['mean']:.4f} | {time.perf_counter() - t0:.0f} | — | — |")
        print(rows[-1], flush=True)
    for normalize in [n.strip() for n in args.normalize.split(",")]:
        recipe = base_recipe(root, normalize, args.epochs)
        ref = references[normalize]
        for head in heads:
            aggregator, classifier = HEADS[head]
            tag = f"{sorted(HEADS).index(head)}-{aggregator['name']}-{classifier['name']}"
            s = run_head(recipe, aggregator, classifier, WORK / "runs" / "frame_heads" / normalize / tag)
            ms = s["mean_std"]
            gap = ms["ua"]["mean"] - ref["ua"]["mean"]
            rows.append(f"| {normalize} | {head} | {ms['ua']['mean']:.4f} ± {ms['ua']['std']:.4f} | "
                        f"{ms['wa']['mean']:.4f} | {s['train_seconds']:.0f} | {gap:+.4f} | {s['best_epochs']} |")
            print(rows[-1], flush=True)
    print(f"\naccuracy: demo corpus ({args.utterances_per_speaker} utterances per speaker), fbank 80, "
          f"leave-one-session-out, {args.epochs} epochs max, patience 10, batch 32, lr 1e-3")
    print("| speaker norm | head | UA mean ± std | WA mean | s (5 folds) | UA - reference | best epochs |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average (1 min) at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
