"""The generic fold runner: corpus -> folds -> (frozen features once) -> train/test each fold -> report."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ser_plugins.data.folds import Fold
from ser_plugins.data.normalize import Normalizer
from ser_plugins.data.prepare import Prepared, count_reasons, plan, prepare
from ser_plugins.data.sources import FeatureSource
from ser_plugins.errors import DiskFullError, RunError
from ser_plugins.model import SERModel, build_head
from ser_plugins.plugins.contracts import Upstream
from ser_plugins.recipe import (
    Recipe,
    TrainingConfig,
    recipe_differences,  # noqa: F401 - moved to recipe.py; still importable here
    resume_differences,
)
from ser_plugins.results.metrics import fold_metric_keys, metrics_by_group, summary_metric_keys
from ser_plugins.results.plots import plot_confusion, plot_curves, plot_layer_weights, plot_targets
from ser_plugins.results.run_dir import REFIT_STATE_FILE, STATE_FILE, FoldDir, RunDir, run_info
from ser_plugins.results.summary import Summary, fold_results, per_corpus_summary
from ser_plugins.runtime.locking import BRIEF_PHASES, RunLock, held_elsewhere
from ser_plugins.runtime.seeding import set_seed
from ser_plugins.training import distributed as ddp_tools
from ser_plugins.training.trainer import FitResult, FoldTrainer, evaluate

log = logging.getLogger("ser_plugins")

SETUP_PHASE, SUMMARY_PHASE = BRIEF_PHASES


def effective_precision(precision: str, device: str) -> str:
    """The precision a run really computes in: mixed precision runs on CUDA only; warned when dropped."""
    if precision != "fp32" and not str(device).startswith("cuda"):
        log.warning(
            "training.precision: %s is ignored on %s (mixed precision runs on CUDA devices only); training in fp32",
            precision,
            device,
        )
        return "fp32"
    return precision


def loss_label(task: Any) -> str:
    """The training loss's name for plots: cross-entropy, the regression loss, or their weighted sum."""
    names = {"ccc": "1 - CCC", "mse": "MSE", "l1": "L1"}
    if task.type == "classification":
        return "loss (cross-entropy)"
    if task.type == "regression":
        return f"loss ({names[task.loss]})"
    return f"loss (CE + {names[task.loss]})"


def pick_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run_dir_for(recipe: Recipe, out: Optional[str]) -> Path:
    """The run directory: ``--out``, else ``output.dir``, else ``runs/<name>``."""
    return Path(out or recipe.output.dir or Path("runs") / recipe.name)


def select_folds(folds: List[Fold], selection: Optional[Sequence[str]]) -> List[Fold]:
    """Folds picked by 1-based index or by name (``--folds 1,3`` or ``--folds Session2``)."""
    if not selection:
        return folds
    picked: List[Fold] = []
    for item in selection:
        item = str(item).strip()
        match = [f for f in folds if f.name == item]
        if not match and item.isdigit() and 1 <= int(item) <= len(folds):
            match = [folds[int(item) - 1]]
        if not match:
            raise RunError(f"--folds: no fold {item!r}; folds are 1..{len(folds)}: {', '.join(f.name for f in folds)}")
        picked.extend(m for m in match if m not in picked)
    return picked


def eval_batch_size(training: TrainingConfig, upstream: Upstream, precomputed: bool) -> int:
    """Evaluation batch size: one utterance at a time when padding would change a running upstream's features.

    Upstreams that are not batch-invariant (no attention mask, time-wide GroupNorm: wav2vec 2.0
    Base, HuBERT Base) are extracted and predicted one utterance at a time; a fine-tuned one is
    scored the same way, so test scores never depend on batch-mates.
    """
    if not precomputed and not upstream.batch_invariant:
        return 1
    return training.eval_batch_size or training.batch_size


def _check_writable(run_dir: Path) -> None:
    """Refuse a run directory that cannot be written, without creating it.

    A 64 KiB probe is written and removed in the directory, or (when it does not exist yet) in
    its nearest existing parent: a full disk, a read-only folder or a file in the way shows now.
    """
    target = run_dir
    while not target.exists() and target.parent != target:
        target = target.parent
    try:
        if not target.is_dir():
            raise NotADirectoryError(20, "Not a directory", str(target))
        fd, probe = tempfile.mkstemp(prefix=".ser-write-probe.", dir=target)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"\0" * 65536)
                fh.flush()
        finally:
            os.unlink(probe)
    except OSError as exc:
        raise RunError(f"cannot write to the run directory {run_dir}: {exc.strerror or exc}") from None


def _create_dir(run_dir: Path) -> List[Path]:
    """Create ``run_dir`` (and missing parents); returns the directories this call created, deepest first.

    Empty when the directory already existed (or another process created it at the same moment).
    """
    missing = []
    d = run_dir.parent
    while not d.exists():
        missing.append(d)
        d = d.parent
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir()
    except FileExistsError:
        return []
    except OSError as exc:
        raise RunError(f"cannot write to the run directory {run_dir}: {exc.strerror or exc}") from None
    return [run_dir] + missing


def _environment() -> Dict[str, Any]:
    import ser_plugins

    return {
        "ser_plugins": ser_plugins.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


class Runner:
    """Runs a resolved recipe over the folds of its corpus and writes the run directory.

    It only orchestrates: preparation (``data.prepare``), one trainer per fold
    (``training.trainer``), and the results (``results``).
    """

    def __init__(
        self,
        recipe: Recipe,
        run_dir: Path,
        folds: Optional[Sequence[str]] = None,
        resume: bool = False,
        progress: bool = True,
        store_frames: bool = False,
    ) -> None:
        self.recipe = recipe
        self.store_frames = store_frames
        self.run_dir = Path(run_dir)
        self.files = RunDir(self.run_dir)  # the run directory's files (results.run_dir)
        self.fold_selection = folds
        self.resume = resume
        self.progress = progress
        self.device = pick_device(recipe.training.device)
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RunError(f"training.device is {self.device!r} but torch sees no CUDA device; use 'auto' or 'cpu'")
        self.ctx = ddp_tools.context(self.device)  # under torchrun: this rank; only rank 0 writes
        self.device = ddp_tools.rank_device(self.device, self.ctx)
        self.progress = progress and self.ctx.main
        self.precision = effective_precision(recipe.training.precision, self.device)
        self._planned_utterances: list = []
        self._initial_upstream: Optional[Dict[str, torch.Tensor]] = None

    def _check_run_dir(self) -> None:
        saved = self.files.recipe
        if saved.exists():
            if not self.resume and not self.fold_selection:  # a fold job (--folds) joins its run's directory
                raise RunError(
                    f"{self.run_dir} already holds a run; pass --resume to continue it or --out for a new one"
                )
            try:
                old = self.files.read_recipe()
            except Exception as exc:  # noqa: BLE001 - any YAML problem: the file is not ours
                raise RunError(f"{saved}: not a readable recipe ({type(exc).__name__}); use a new --out") from None
            changed = resume_differences(old, self.recipe)  # None: the same results (recipe.py)
            if changed is not None:
                where = f" ({', '.join(changed[:5])}{', ...' if len(changed) > 5 else ''})" if changed else ""
                raise RunError(f"--resume: the recipe differs from the one saved in {saved}{where}; use a new --out")

    def prepare(self) -> Prepared:
        """Load the corpus, decode audio once (validation pass), build folds, extract frozen features."""
        return prepare(self.recipe, self.device, self.progress, store_frames=self.store_frames)

    # --- the run ---------------------------------------------------------------------------
    def run(self) -> Summary:
        """Train and test every selected fold, then write the summary; returns it.

        Everything that needs no audio decoding (the recipe against a previous run, the output
        directory, the corpus, the upstream, the folds and ``--folds``) is checked before the run
        directory is created; a failure before the first fold starts removes what this run
        created, so a corrected rerun is not refused.
        """
        if not self.ctx.main:
            return self._follow()
        self._check_run_dir()
        _check_writable(self.run_dir)
        planned = plan(self.recipe)
        self._planned_utterances = planned.utterances
        # --folds against the corpus's folds, before any write; kept as names (an index must not shift
        # to another fold when a session loses all its audio)
        chosen = [f.name for f in select_folds(planned.folds, self.fold_selection)]
        created = _create_dir(self.run_dir)
        # the run-directory lock is held while the run is set up and while the summary is written; each fold
        # trains under its own lock (folds/<name>/.lock), so fold jobs of one run can work at once
        lock = RunLock(self.run_dir, phase=SETUP_PHASE, wait=True)
        started = locked = False
        try:
            with lock:
                locked = True
                self._check_run_dir()  # again, under the lock: another run may have started meanwhile
                for orphan in self.run_dir.glob(".*.tmp"):  # left by a writer killed mid-write (folds: their own lock)
                    orphan.unlink(missing_ok=True)
                t0 = time.time()
                prep = prepare(self.recipe, self.device, self.progress, planned, self.store_frames)
                lost = [n for n in chosen if n not in {f.name for f in prep.folds}]
                if lost and self.fold_selection:  # unselected, a lost session's fold is left out with a warning
                    raise RunError(
                        f"fold {lost[0]!r} has no usable utterances left (all its audio was skipped; "
                        "see the warnings above)"
                    )
                folds = [f for f in prep.folds if f.name in chosen]
                self._write_run_files(prep)
                started = True
            return self._run_folds(prep, folds, t0)
        except DiskFullError as exc:
            where = (
                ""
                if not started
                else (
                    f"; finished folds in {self.run_dir} are intact: free some space and continue with ser run --resume"
                )
            )
            raise RunError(f"{exc}{where}") from exc
        finally:
            if locked and not started:
                if created:
                    self._remove_created(lock, created)
                elif not self.files.is_run:  # a directory of the user's: only our lock files go
                    lock.remove_files()

    def _follow(self) -> Summary:
        """A rank other than 0 under torchrun: the same preparation and training, no file written."""
        planned = plan(self.recipe)
        chosen = [f.name for f in select_folds(planned.folds, self.fold_selection)]
        t0 = time.time()
        prep = prepare(self.recipe, self.device, False, planned, self.store_frames)
        return self._run_folds(prep, [f for f in prep.folds if f.name in chosen], t0)

    def _remove_created(self, lock: RunLock, created: List[Path]) -> None:
        """Undo a run that failed before its first fold: this run created the directory, nothing in it is kept."""
        shutil.rmtree(self.run_dir, ignore_errors=True)
        lock.remove_files()
        for d in created[1:]:  # parents this run created, if they are empty
            try:
                d.rmdir()
            except OSError:
                break

    def _write_run_files(self, prep: Prepared) -> None:
        r = self.recipe
        self.files.write_recipe(r)
        paths = {u.id: u.path for u in self._planned_utterances} if self._planned_utterances else {}
        self.files.write_run_info(
            run_info(
                environment=_environment(),
                device=self.device,
                precision=self.precision,
                upstream=prep.upstream.identity(),
                labels=prep.labels,
                folds=prep.folds,
                skipped=prep.skipped,
                skipped_counts=count_reasons(prep.skipped),
                paths=paths,
                corpus_problems=prep.corpus_problems,
                protocol=prep.protocol,
                dev=r.protocol.dev,
                refit=r.training.refit,
                normalize=r.features.normalize,
                transductive=r.features.transductive,
                notes=prep.notes,
                task=prep.task.to_dict(),
            )
        )

    def _run_folds(self, prep: Prepared, folds: List[Fold], t0: float) -> Summary:
        r = self.recipe
        if r.finetune.mode != "frozen":
            self._initial_upstream = {k: v.clone() for k, v in prep.upstream.state_dict().items()}
        for fold in tqdm(folds, desc="folds", unit="fold", disable=not self.progress):
            fold_dir = self.files.fold(fold.name)
            with contextlib.ExitStack() as held:
                done = fold_dir.finished
                if not done and self.ctx.main:
                    held.enter_context(
                        RunLock(
                            fold_dir.path,
                            hint="another job trains this fold; wait for it (re-running skips finished folds)",
                        )
                    )
                    done = fold_dir.finished  # finished by another job while we waited
                    for orphan in [] if done else fold_dir.path.rglob(".*.tmp"):  # left by a killed job; lock is ours
                        orphan.unlink(missing_ok=True)
                if ddp_tools.broadcast(done, self.ctx):  # under torchrun, rank 0 decides for all
                    log.info("fold %s already finished; skipping", fold.name)
                    continue
                self._reset_upstream(prep)
                threads = torch.get_num_threads()
                try:
                    self._run_fold(prep, fold, prep.folds.index(fold))
                finally:  # the fold's training threads end with it (extraction and callers keep theirs)
                    torch.set_num_threads(threads)
        # the summary covers every finished fold of the run (other jobs' too); the job finishing last writes it whole
        if not self.ctx.main:
            return ddp_tools.broadcast(None, self.ctx)
        with RunLock(self.run_dir, phase=SUMMARY_PHASE, wait=True):
            results = {}
            for fold in prep.folds:
                if self.files.fold_finished(fold.name):
                    results[fold.name] = self.files.read_fold_metrics(fold.name)
            return ddp_tools.broadcast(self._summarise(prep, results, time.time() - t0), self.ctx)

    def _training_threads(self, prep: Prepared, fold: Fold, precomputed: bool) -> int:
        """Intra-op threads for training ``fold``: ``training.threads``, else a choice that fits the machine.

        A head on precomputed features is a few small matrix products per step, where threads cost
        more than they give: 1. A running upstream gets the current thread count shared among the
        fold jobs of this run that train at this moment (``--folds`` jobs, launcher jobs), so
        parallel jobs never start more threads in all than the cores.
        """
        if self.recipe.training.threads:
            return self.recipe.training.threads
        if not str(self.device).startswith("cpu"):
            return torch.get_num_threads()
        if precomputed:
            return 1
        others = sum(held_elsewhere(self.files.fold(f.name).path) for f in prep.folds if f.name != fold.name)
        return max(1, torch.get_num_threads() // (1 + others))

    def _reset_upstream(self, prep: Prepared) -> None:
        """A trainable upstream back to its pretrained weights (each fold, and a refit, starts from them)."""
        if self._initial_upstream is not None:
            prep.upstream.load_state_dict(self._initial_upstream)

    def _fold_source(self, prep: Prepared, fold: Fold, fold_dir: FoldDir):
        """The batch source of one fold: the shared features through this fold's normaliser (if any)."""
        kind = self.recipe.features.normalize
        if kind is None:
            return prep.source
        speakers = prep.speakers
        if kind == "corpus":  # statistics per corpus (a multi-corpus run); one group for a single corpus
            speakers = {uid: u.corpus or "corpus" for uid, u in prep.utterances.items()}
        assert prep.moments is not None  # prepared with the moments when features.normalize is set
        normalizer = Normalizer(kind).fit(prep.moments, speakers, fold.train)
        if self.ctx.main:
            normalizer.save(fold_dir.normalizer)
        assert isinstance(prep.source, FeatureSource)  # normalisation: precomputed features only
        return prep.source.with_transform(
            lambda ids, layers: normalizer.transform_batch(layers, [speakers[u] for u in ids])
        )

    def _run_fold(self, prep: Prepared, fold: Fold, index: int) -> Dict[str, Any]:
        r = self.recipe
        fold_dir = self.files.fold(fold.name).mkdir()
        source = self._fold_source(prep, fold, fold_dir)
        seed = r.seed + index
        writer = _tensorboard(self.files.tensorboard(fold.name)) if r.output.tensorboard and self.ctx.main else None

        def log_epoch(rec: Dict[str, float]) -> None:
            for k, v in rec.items():
                if k != "epoch" and writer is not None:
                    writer.add_scalar(k, v, rec["epoch"])

        on_epoch = log_epoch if writer else None
        t0 = time.time()
        precomputed = isinstance(source, FeatureSource)
        eval_bs = eval_batch_size(r.training, prep.upstream, precomputed=precomputed)
        threads = self._training_threads(prep, fold, precomputed)
        if threads != torch.get_num_threads():
            log.info("fold %s: training with %d intra-op thread(s)", fold.name, threads)
            torch.set_num_threads(threads)
        if self.ctx.active:  # torchrun: every global batch split across the ranks, for training and evaluation
            source = ddp_tools.ShardedSource(source, self.ctx)

        task = prep.task

        def trainer_for(training: TrainingConfig, state_file: str, train_ids: Sequence[str]) -> FoldTrainer:
            set_seed(seed)
            head, kept = build_head(
                r.features, r.aggregator, r.classifier, prep.upstream, task.num_outputs, task, r.task.standardize
            )
            if head.target_scale is not None:  # task.standardize: fitted on the training utterances
                values = task.split_targets(torch.tensor([prep.targets[u] for u in train_ids]))[1]
                assert values is not None  # standardize: the task has targets
                head.target_scale.fit(values)
            model = SERModel(prep.upstream, head, kept, r.finetune.frozen_warmup_steps)
            return FoldTrainer(
                model,
                source,
                training,
                r.finetune,
                prep.labels,
                fold_dir.path,
                self.device,
                r.output.save_checkpoints,
                on_epoch,
                self.progress,
                eval_bs,
                r.output.checkpoint_interval,
                state_file,
                task,
                r.task,
            )

        if r.training.refit and fold_dir.selection.exists():  # resumed during the refit: the dev choice is made
            fit = FitResult.from_dict(fold_dir.read_selection())
        else:
            trainer = trainer_for(r.training, STATE_FILE, fold.train)
            fit = trainer.fit(fold.train, fold.dev, seed)
        refit: Optional[FitResult] = None
        if r.training.refit:
            if self.ctx.main and not fold_dir.selection.exists():
                fold_dir.write_selection(fit.to_dict())
            self._reset_upstream(prep)
            trainer, refit, refit_train = self._refit(trainer_for, fold, fit, seed)
        model = trainer.model
        if writer:
            writer.close()
        test = evaluate(model, source, fold.test, prep.labels, eval_bs, self.device, self.precision, task)
        if not self.ctx.main:
            return {}
        fold_dir.write_predictions(test, prep.speakers, prep.labels, task)
        if task.has_classes:
            plot_confusion(
                test["confusion"],
                prep.labels,
                fold_dir.confusion,
                f"{fold.name}: WA {test['wa']:.3f} UA {test['ua']:.3f}",
            )
        if task.has_targets:
            plot_targets(
                test["true_values"],
                test["values"],
                task.targets,
                fold_dir.scatter,
                f"{fold.name}: CCC {test['ccc']:.3f}",
            )
        if fit.history:
            plot_curves(fit.history, fold_dir.curves, f"fold {fold.name}", loss_label(r.task))
        metrics = {k: test[k] for k in fold_metric_keys(task.has_classes, task.targets) if k in test}
        corpora = [prep.utterances[u].corpus for u in test["ids"]]
        if len(set(corpora)) > 1:  # a multi-corpus run: the test results of each corpus too
            metrics["per_corpus"] = metrics_by_group(test, corpora, task.labels, task.targets)
        metrics.update(
            fold=fold.name,
            seed=seed,
            train=len(fold.train),
            dev=len(fold.dev),
            test=len(fold.test),
            best_epoch=fit.best_epoch,
            best_dev_ua=fit.best_dev_ua if fold.dev and task.has_classes else None,
            **({"best_dev_ccc": fit.best_dev.get("dev_ccc")} if fold.dev and task.has_targets else {}),
            nan_steps=fit.nan_steps + (refit.nan_steps if refit else 0),
            seconds=round(time.time() - t0, 2),
            history=fit.history,
            train_padding_fraction=round(trainer.padding_fraction(fold.train, seed), 4),
        )
        if refit is not None:
            metrics["refit"] = {
                "train": refit_train,
                "steps": refit.steps,
                "total_steps": refit.total_steps,
                "history": refit.history,
            }
        layer_weights = getattr(model.head.layer_use, "normalized_weights", None)  # a weighted layer sum
        if layer_weights is not None:
            metrics["layer_weights"] = {"layers": prep.kept_layers, "weights": layer_weights().detach().cpu().tolist()}
        fold_dir.write_metrics(metrics)  # written last: marks the fold done
        fold_dir.remove_resume_state()  # the trainer's and the refit's resume files of a finished fold
        if task.has_classes:
            log.info("fold %s: WA %.4f UA %.4f F1 %.4f", fold.name, test["wa"], test["ua"], test["macro_f1"])
        if task.has_targets:
            log.info(
                "fold %s: CCC %.4f (%s)",
                fold.name,
                test["ccc"],
                ", ".join(f"{t} {test['ccc_' + t]:.4f}" for t in task.targets),
            )
        return metrics

    def _refit(
        self,
        trainer_for: Callable[[TrainingConfig, str, Sequence[str]], FoldTrainer],
        fold: Fold,
        fit: FitResult,
        seed: int,
    ) -> Tuple[FoldTrainer, FitResult, int]:
        """Train a fresh head on train + dev up to the share of the budget the dev set chose.

        The chosen epoch's step count, as a share of the first pass's planned steps, is applied to
        the refit's own plan (more utterances per epoch: more steps), so the model stops at the same
        point of its learning-rate schedule, having seen each utterance about as often. Returns
        ``(trainer, its FitResult, training utterances)``.
        """
        chosen = fit.history[fit.best_epoch - 1]["step"] if fit.best_epoch else fit.steps
        training = self.recipe.training.model_copy(update={"select": "last", "patience": None, "refit": False})
        ids = list(fold.train) + list(fold.dev)
        trainer = trainer_for(training, REFIT_STATE_FILE, ids)
        planned = trainer.planned_steps(ids, seed)
        stop = max(1, round(chosen * planned / max(1, fit.total_steps)))
        log.info(
            "fold %s: refit on train + dev (%d utterances) for %d of %d steps (dev chose epoch %d, step %d)",
            fold.name,
            len(ids),
            stop,
            planned,
            fit.best_epoch,
            chosen,
        )
        refit = trainer.fit(ids, [], seed, stop_at_step=stop)
        return trainer, refit, len(ids)

    def _summarise(self, prep: Prepared, results: Dict[str, Dict[str, Any]], seconds: float) -> Summary:
        r = self.recipe
        task = prep.task
        values = [self.files.fold(n).read_target_values(task.targets) for n in results] if task.has_targets else None
        parts = fold_results(results, task.has_classes, list(task.targets), values)
        summary = Summary(
            name=r.name,
            upstream=r.upstream.name,
            finetune=r.finetune.mode,
            layer=r.features.layer,
            aggregator=r.aggregator.name,
            classifier=r.classifier.name,
            labels=prep.labels,
            folds=parts["folds"],
            mean_std=parts["mean_std"],
            pooled=parts["pooled"],
            complete=len(results) == len(prep.folds),
            skipped_utterances=count_reasons(prep.skipped),
            corpus_problems=len(prep.corpus_problems),
            fold_warnings=prep.warnings,
            seconds=round(seconds, 1),
            protocol=prep.protocol,
            dev=r.protocol.dev,
            refit=r.training.refit,
            normalize=r.features.normalize,
            transductive=r.features.transductive,
            task=task.kind,
            targets=list(task.targets),
            per_corpus=per_corpus_summary(results, summary_metric_keys(task.has_classes, task.targets)),
            cross_corpus={"train": r.protocol.train, "test": r.protocol.test} if r.protocol.train else {},
        )
        weights = {n: results[n]["layer_weights"]["weights"] for n in results if "layer_weights" in results[n]}
        if weights:
            plot_layer_weights(weights, self.files.layer_weights, f"{summary.upstream}: learned layer weights")
        if task.has_classes:
            plot_confusion(parts["pooled"]["confusion"], prep.labels, self.files.pooled_confusion, "pooled test folds")
        self.files.write_summary(summary)
        return summary


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is an optional extra
        return None
    return SummaryWriter(str(path))


def run_recipe(
    recipe: Recipe,
    out: Optional[str] = None,
    folds: Optional[Sequence[str]] = None,
    resume: bool = False,
    progress: bool = True,
) -> Summary:
    """Run a resolved recipe; returns the summary (also written to the run directory)."""
    return Runner(recipe, run_dir_for(recipe, out), folds, resume, progress).run()
