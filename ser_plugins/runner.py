"""The generic fold runner: corpus -> folds -> (frozen features once) -> train/test each fold -> report."""
from __future__ import annotations

import csv
import io
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ser_plugins import registry
from ser_plugins.batches import FeatureSource, WaveSource
from ser_plugins.checkpoint import save_weights
from ser_plugins.data import DataError, decode_corpus
from ser_plugins.frozen import compute_frozen_features
from ser_plugins.folds import check_folds, make_folds
from ser_plugins.io import atomic_write_json, atomic_write_text, read_json
from ser_plugins.locking import RunLock
from ser_plugins.metrics import mean_std
from ser_plugins.model import SERModel, build_head, build_upstream, head_sees_only_means
from ser_plugins.plots import plot_confusion, plot_curves, plot_layer_weights
from ser_plugins.recipe import dump_recipe, plugin_kwargs
from ser_plugins.seeding import set_seed
from ser_plugins.trainer import FoldTrainer, evaluate

log = logging.getLogger("ser_plugins")


class RunError(RuntimeError):
    """A run that cannot start or go on; the message says why and what to do."""


def pick_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run_dir_for(recipe: Dict[str, Any], out: Optional[str]) -> Path:
    """The run directory: ``--out``, else ``output.dir``, else ``runs/<name>``."""
    return Path(out or recipe["output"]["dir"] or Path("runs") / recipe["name"])


def select_folds(folds: list, selection: Optional[Sequence[str]]) -> list:
    """Folds picked by 1-based index or by name (``--folds 1,3`` or ``--folds Session2``)."""
    if not selection:
        return folds
    picked = []
    for item in selection:
        item = str(item).strip()
        match = [f for f in folds if f.name == item]
        if not match and item.isdigit() and 1 <= int(item) <= len(folds):
            match = [folds[int(item) - 1]]
        if not match:
            raise RunError(f"--folds: no fold {item!r}; folds are 1..{len(folds)}: {', '.join(f.name for f in folds)}")
        picked.extend(m for m in match if m not in picked)
    return picked


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_probe"
        probe.write_bytes(b"\0" * 65536)
        probe.unlink()
    except OSError as exc:
        raise RunError(f"cannot write to the run directory {run_dir}: {exc.strerror or exc}") from None


def _environment() -> Dict[str, Any]:
    import ser_plugins

    return {"ser_plugins": ser_plugins.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


@dataclass
class Prepared:
    """Everything shared by the folds of a run: corpus, audio, features, folds."""

    labels: List[str]
    utterances: Dict[str, Any]
    targets: Dict[str, int]
    folds: list
    source: Any
    upstream: torch.nn.Module
    kept_layers: List[int]
    skipped: Dict[str, str]
    corpus_problems: List[str]
    warnings: List[str] = field(default_factory=list)
    speaker_stats: Optional[Dict[str, Any]] = None


class Runner:
    """Runs a resolved recipe over the folds of its corpus and writes the run directory."""

    def __init__(self, recipe: Dict[str, Any], run_dir: Path, folds: Optional[Sequence[str]] = None,
                 resume: bool = False, progress: bool = True) -> None:
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.fold_selection = folds
        self.resume = resume
        self.progress = progress
        self.device = pick_device(recipe["training"]["device"])
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RunError(f"training.device is {self.device!r} but torch sees no CUDA device; use 'auto' or 'cpu'")
        self.notes: Dict[str, Any] = {}

    # --- preparation ----------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        saved = self.run_dir / "recipe.yaml"
        if saved.exists():
            if not self.resume:
                raise RunError(f"{self.run_dir} already holds a run; pass --resume to continue it or --out for a new one")
            import yaml

            old = yaml.safe_load(saved.read_text())
            mine = yaml.safe_load(dump_recipe(self.recipe))
            old.get("output", {}).pop("dir", None)
            mine.get("output", {}).pop("dir", None)
            if old != mine:
                raise RunError(f"--resume: the recipe differs from the one saved in {saved}; use a new --out")

    def prepare(self) -> Prepared:
        """Load the corpus, decode audio once (validation pass), build folds, extract frozen features."""
        r = self.recipe
        if r["data"]["num_threads"]:
            torch.set_num_threads(r["data"]["num_threads"])
        try:
            corpus = registry.create("corpus", r["corpus"]["name"], **plugin_kwargs(r["corpus"]))
        except (ValueError, TypeError) as exc:
            raise RunError(f"corpus {r['corpus']['name']!r}: {exc}") from None
        utterances = corpus.load()
        problems = [str(p) for p in corpus.problems]
        fatal = [str(p) for p in corpus.problems if p.fatal]
        for p in problems:
            log.warning("corpus: %s", p)
        if fatal:
            raise RunError("corpus problems stop the run:\n  " + "\n  ".join(fatal))
        if r["data"]["strict"] and problems:
            raise RunError("corpus problems (data.strict is on):\n  " + "\n  ".join(problems))
        labels = list(corpus.labels)
        unknown = sorted({u.label for u in utterances} - set(labels))
        if unknown:
            raise RunError(f"corpus {r['corpus']['name']!r} returned labels {unknown} outside its label set {labels}")
        set_seed(r["seed"])
        upstream = build_upstream(r)
        head, kept = build_head(r, upstream, len(labels))  # validates the composition before any work
        frozen = r["finetune"]["mode"] == "frozen" and r["data"]["precompute"]
        self.notes = {}
        if frozen:
            means_only = head_sees_only_means(head) and not r["training"]["max_duration"]
            pre = compute_frozen_features(upstream, utterances, kept, r, self.device, means_only, self.progress)
            usable_ids, skipped, self.notes = set(pre.features), pre.skipped, pre.notes
        else:
            audio = decode_corpus(utterances, upstream.sample_rate, upstream.min_samples, r["data"]["strict"], self.progress)
            usable_ids, skipped = set(audio.waves), audio.skipped
        usable = [u for u in utterances if u.id in usable_ids]
        if not usable:
            raise DataError(f"no usable audio: all {len(utterances)} utterances were skipped ({_count(skipped)})")
        lost = sorted({u.session or u.speaker for u in utterances} - {u.session or u.speaker for u in usable})
        lost_warnings = [f"session {g!r} has no usable utterance left (all skipped): its fold is not run" for g in lost]
        protocol = r["protocol"]["name"] or corpus.default_protocol
        folds = make_folds(usable, protocol, r["protocol"]["dev"], r["protocol"]["dev_fraction"], r["seed"],
                           r["protocol"]["num_folds"])
        targets = {u.id: labels.index(u.label) for u in usable}
        warnings = lost_warnings + check_folds(folds, {u.id: u.label for u in usable}, labels)
        for w in warnings:
            log.warning("%s", w)
        if frozen:
            source: Any = FeatureSource(pre.features, targets, upstream.sample_rate / upstream.hop_length,
                                        pre.frame_counts if pre.means_only else None)
            speaker_stats = pre.speaker_stats
        else:
            source = WaveSource(audio.waves, targets, upstream.sample_rate)
            speaker_stats = None
        return Prepared(labels, {u.id: u for u in usable}, targets, folds, source, upstream, kept,
                        skipped, problems, warnings, speaker_stats)

    # --- the run ---------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        """Train and test every selected fold, then write the summary; returns it."""
        _check_writable(self.run_dir)
        with RunLock(self.run_dir):
            self._check_run_dir()
            for orphan in self.run_dir.rglob(".*.tmp"):  # left by a writer killed mid-write; we hold the lock
                orphan.unlink(missing_ok=True)
            started = time.time()
            prep = self.prepare()  # every corpus, audio and model problem surfaces before anything is written
            atomic_write_text(self.run_dir / "recipe.yaml", dump_recipe(self.recipe))
            if prep.speaker_stats:
                save_weights(self.run_dir / "speaker_stats.safetensors", typical_speaker_stats(prep.speaker_stats))
            if self.recipe["finetune"]["mode"] != "frozen":
                initial_upstream = {k: v.clone() for k, v in prep.upstream.state_dict().items()}
            folds = select_folds(prep.folds, self.fold_selection)
            atomic_write_json(self.run_dir / "run.json", {
                "environment": _environment(), "device": self.device, "upstream": prep.upstream.identity(),
                "labels": prep.labels, "folds": [{"name": f.name, "train": len(f.train), "dev": len(f.dev),
                                                   "test": len(f.test)} for f in prep.folds],
                "skipped": _count(prep.skipped), "corpus_problems": len(prep.corpus_problems),
                **self.notes,
            })
            results = {}
            for fold in tqdm(folds, desc="folds", unit="fold", disable=not self.progress):
                fold_dir = self.run_dir / "folds" / fold.name
                done = fold_dir / "metrics.json"
                if done.exists():
                    log.info("fold %s already finished; skipping", fold.name)
                    results[fold.name] = read_json(done)
                    continue
                if self.recipe["finetune"]["mode"] != "frozen":
                    prep.upstream.load_state_dict(initial_upstream)
                results[fold.name] = self._run_fold(prep, fold, prep.folds.index(fold))
            summary = self._summarise(prep, results, time.time() - started)
        return summary

    def _run_fold(self, prep: Prepared, fold, index: int) -> Dict[str, Any]:
        r = self.recipe
        fold_dir = self.run_dir / "folds" / fold.name
        fold_dir.mkdir(parents=True, exist_ok=True)
        seed = r["seed"] + index
        set_seed(seed)
        head, kept = build_head(r, prep.upstream, len(prep.labels))
        model = SERModel(prep.upstream, head, kept, prep.labels, r["finetune"]["mode"])
        writer = _tensorboard(self.run_dir / "tensorboard" / fold.name) if r["output"]["tensorboard"] else None
        on_epoch = (lambda rec: [writer.add_scalar(k, v, rec["epoch"]) for k, v in rec.items() if k != "epoch"]) if writer else None
        t0 = time.time()
        trainer = FoldTrainer(model, prep.source, r, prep.labels, fold_dir, self.device, on_epoch, self.progress)
        fit = trainer.fit(fold.train, fold.dev, seed)
        if writer:
            writer.close()
        eval_bs = r["training"]["eval_batch_size"] or r["training"]["batch_size"]
        test = evaluate(model, prep.source, fold.test, prep.labels, eval_bs, self.device, r["training"]["precision"])
        self._write_predictions(fold_dir / "predictions.csv", test, prep)
        plot_confusion(test["confusion"], prep.labels, fold_dir / "confusion.png",
                       f"{fold.name}: WA {test['wa']:.3f} UA {test['ua']:.3f}")
        if fit["history"]:
            plot_curves(fit["history"], fold_dir / "curves.png", f"fold {fold.name}")
        metrics = {k: test[k] for k in ("wa", "ua", "macro_f1", "n", "per_class_recall", "confusion", "labels")}
        metrics.update(fold=fold.name, seed=seed, train=len(fold.train), dev=len(fold.dev), test=len(fold.test),
                       best_epoch=fit["best_epoch"], best_dev_ua=fit["best_dev_ua"], nan_steps=fit["nan_steps"],
                       seconds=round(time.time() - t0, 2), history=fit["history"],
                       train_padding_fraction=round(prep.source.padding_fraction(fold.train, r["training"]["batch_size"], seed), 4))
        layer_use = model.head.layer_use
        if hasattr(layer_use, "normalized_weights"):
            metrics["layer_weights"] = {"layers": prep.kept_layers,
                                        "weights": layer_use.normalized_weights().detach().cpu().tolist()}
        (fold_dir / "last_state.pt").unlink(missing_ok=True)
        atomic_write_json(fold_dir / "metrics.json", metrics)  # written last: marks the fold done
        log.info("fold %s: WA %.4f UA %.4f F1 %.4f", fold.name, test["wa"], test["ua"], test["macro_f1"])
        return metrics

    def _write_predictions(self, path: Path, test: Dict[str, Any], prep: Prepared) -> None:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "speaker", "label", "prediction"] + [f"p_{lab}" for lab in prep.labels])
        for uid, tgt, pred, probs in zip(test["ids"], test["targets"], test["predictions"], test["probabilities"]):
            w.writerow([uid, prep.utterances[uid].speaker, prep.labels[tgt], prep.labels[pred]]
                       + [f"{p:.5f}" for p in probs])
        atomic_write_text(path, buf.getvalue())

    def _summarise(self, prep: Prepared, results: Dict[str, Dict[str, Any]], seconds: float) -> Dict[str, Any]:
        per_fold = [results[n] for n in results]
        pooled = np.sum([np.array(m["confusion"]) for m in per_fold], axis=0)
        from ser_plugins.metrics import metrics_from_confusion

        summary = {
            "name": self.recipe["name"],
            "upstream": self.recipe["upstream"]["name"],
            "finetune": self.recipe["finetune"]["mode"],
            "layer": self.recipe["features"]["layer"],
            "aggregator": self.recipe["aggregator"]["name"],
            "classifier": self.recipe["classifier"]["name"],
            "labels": prep.labels,
            "folds": {n: {k: results[n][k] for k in ("wa", "ua", "macro_f1", "n")} for n in results},
            "mean_std": mean_std(per_fold),
            "pooled": {**metrics_from_confusion(pooled), "confusion": pooled.tolist()},
            "complete": len(results) == len(prep.folds),
            "skipped_utterances": _count(prep.skipped),
            "corpus_problems": len(prep.corpus_problems),
            "fold_warnings": prep.warnings,
            "seconds": round(seconds, 1),
        }
        weights = {n: results[n]["layer_weights"]["weights"] for n in results if "layer_weights" in results[n]}
        if weights:
            plot_layer_weights(weights, self.run_dir / "layer_weights.png", f"{summary['upstream']}: learned layer weights")
        plot_confusion(pooled, prep.labels, self.run_dir / "confusion_pooled.png", "pooled test folds")
        atomic_write_json(self.run_dir / "summary.json", summary)
        atomic_write_text(self.run_dir / "results.md", results_markdown(summary))
        return summary


def typical_speaker_stats(stats: Dict[str, Dict[str, List[torch.Tensor]]]) -> Dict[str, torch.Tensor]:
    """Per layer, the mean over speakers of their feature means and standard deviations.

    ``ser predict`` uses them to standardise a new speaker who has too few files for statistics
    of their own.
    """
    speakers = list(stats.values())
    out = {}
    for k in range(len(speakers[0]["mean"])):
        out[f"mean.{k}"] = torch.stack([s["mean"][k] for s in speakers]).mean(0)
        out[f"std.{k}"] = torch.stack([s["std"][k] for s in speakers]).mean(0)
    return out


def _count(skipped: Dict[str, str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for reason in skipped.values():
        out[reason] = out.get(reason, 0) + 1
    return out


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is an optional extra
        return None
    return SummaryWriter(str(path))


def results_markdown(summary: Dict[str, Any]) -> str:
    """The run's results as a markdown table: one row per fold, then mean ± std."""
    lines = [f"# {summary['name']}", "",
             f"upstream `{summary['upstream']}` ({summary['finetune']}, layer {summary['layer']}), "
             f"aggregator `{summary['aggregator']}`, classifier `{summary['classifier']}`", "",
             "| fold | WA | UA | macro-F1 | n |", "|---|---|---|---|---|"]
    for name, m in summary["folds"].items():
        lines.append(f"| {name} | {m['wa']:.4f} | {m['ua']:.4f} | {m['macro_f1']:.4f} | {m['n']} |")
    ms = summary["mean_std"]
    lines.append(f"| **mean ± std** | {ms['wa']['mean']:.4f} ± {ms['wa']['std']:.4f} | "
                 f"{ms['ua']['mean']:.4f} ± {ms['ua']['std']:.4f} | "
                 f"{ms['macro_f1']['mean']:.4f} ± {ms['macro_f1']['std']:.4f} | |")
    if summary["skipped_utterances"]:
        lines += ["", "Skipped utterances by reason: " + ", ".join(f"{k}: {v}" for k, v in summary["skipped_utterances"].items())]
    if not summary["complete"]:
        lines += ["", "Not all folds were run: this table covers the selected folds only."]
    return "\n".join(lines) + "\n"


def run_recipe(recipe: Dict[str, Any], out: Optional[str] = None, folds: Optional[Sequence[str]] = None,
               resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Run a resolved recipe; returns the summary (also written to the run directory)."""
    return Runner(recipe, run_dir_for(recipe, out), folds, resume, progress).run()
