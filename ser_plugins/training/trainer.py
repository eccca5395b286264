"""Training one fold: optimiser groups, schedule, the task's loss, dev selection, resumable checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ser_plugins.data.sources import Batch, BatchPlan, BatchSource
from ser_plugins.errors import UserError
from ser_plugins.model import SERModel, locate_non_finite
from ser_plugins.recipe import FinetuneConfig, TaskConfig, TrainingConfig
from ser_plugins.results.metrics import classification_metrics, regression_metrics
from ser_plugins.results.run_dir import BEST_FILE, STATE_FILE
from ser_plugins.runtime.checkpoint import load_state, load_weights, save_state, save_weights
from ser_plugins.runtime.seeding import set_seed
from ser_plugins.task import TargetRow, TaskSpec
from ser_plugins.training import distributed as ddp_tools
from ser_plugins.training.losses import RegressionLoss, TaskLoss

log = logging.getLogger("ser_plugins")


class TrainingDiverged(UserError, RuntimeError):
    """Loss became NaN/inf (``nan_policy: stop``, or too many skipped steps)."""


def trainable_state(model: SERModel) -> Dict[str, torch.Tensor]:
    """The part of the state that training changes: the head, plus the upstream when it trains.

    With ``lora`` / ``adapter`` fine-tuning only the injected weights of the upstream change: only
    they are kept (a checkpoint of a few MB instead of the whole model).
    """
    frozen_upstream = not any(p.requires_grad for p in model.upstream.parameters())
    state = model.state_dict()
    if frozen_upstream:
        state = {k: v for k, v in state.items() if not k.startswith("upstream.")}
    elif getattr(model.upstream, "finetune_mode", None) in ("lora", "adapter"):  # only the injected weights train
        trained = {f"upstream.{n}" for n, p in model.upstream.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if not k.startswith("upstream.") or k in trained}
    return {k: v.detach().clone() for k, v in state.items()}


def build_optimizer(model: SERModel, training: TrainingConfig, finetune: FinetuneConfig) -> torch.optim.Optimizer:
    """Two learning rates: ``training.lr`` for the head, ``finetune.upstream_lr`` for the upstream.

    With ``finetune.layer_decay`` the upstream's depth groups get ``upstream_lr * decay**k``, k
    counted down from the top group.
    """
    groups: List[Dict[str, Any]] = [
        {"params": [p for p in model.head.parameters() if p.requires_grad], "lr": training.lr, "name": "head"}
    ]
    up_groups = [[p for p in g if p.requires_grad] for g in model.upstream.layer_parameter_groups()]
    up_groups = [g for g in up_groups if g]
    decay = finetune.layer_decay
    for depth, params in enumerate(up_groups):
        scale = decay ** (len(up_groups) - 1 - depth) if decay else 1.0
        groups.append({"params": params, "lr": finetune.upstream_lr * scale, "name": f"upstream.{depth}"})
    name = training.optimizer
    wd = training.weight_decay
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(groups, weight_decay=wd)
    return torch.optim.SGD(groups, momentum=0.9, weight_decay=wd)


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup: int, total: int):
    """Linear warm-up over ``warmup`` steps, then constant, linear or cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "none":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights normalised to mean 1 (absent classes get 0)."""
    counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=num_classes).astype(np.float64)
    w = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    w = w * (counts > 0).sum() / w.sum()
    return torch.tensor(w, dtype=torch.float32)


def balanced_ids(ids: Sequence[str], targets: Dict[str, Any], seed: int) -> List[str]:
    """Resample ``ids`` (same count, with replacement) so every class is drawn equally often.

    ``targets`` holds class indices, or target rows whose first value is the class (multitask).
    """
    rng = np.random.default_rng(seed)
    by_class: Dict[int, List[str]] = {}
    for i in ids:
        row = targets[i]
        by_class.setdefault(int(row[0]) if isinstance(row, tuple) else row, []).append(i)
    classes = sorted(by_class)
    picks = rng.choice(len(classes), size=len(ids))
    return [by_class[classes[c]][rng.integers(len(by_class[classes[c]]))] for c in picks]


def autocast(device: str, precision: str):
    """Mixed precision (bf16/fp16) on a CUDA device; a no-op for fp32 and on CPU."""
    if precision == "fp32" or not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def forward_batch(model: SERModel, batch: Batch, step: Optional[int] = None) -> torch.Tensor:
    """Logits of ``model`` for a batch: precomputed features go to the head, waveforms through the whole model."""
    if batch.features:
        return model.forward_features(cast(List[torch.Tensor], batch.inputs), batch.lengths)  # features: layers
    return model(batch.inputs, batch.lengths, step=step)


@torch.no_grad()
def evaluate(
    model: SERModel,
    source: BatchSource,
    ids: Sequence[str],
    labels: Sequence[str],
    batch_size: int,
    device: str,
    precision: str = "fp32",
    task: Optional[TaskSpec] = None,
    loss: Optional[TaskLoss] = None,
) -> Dict[str, Any]:
    """Predict ``ids``; returns metrics plus per-utterance predictions (and probabilities, target values).

    ``task`` (default: classification over ``labels``) says how the outputs split; ``loss`` is the
    task's loss for the dev loss of a regression or multitask head (cross-entropy otherwise).
    """
    task = task if task is not None else TaskSpec("classification", tuple(labels))
    model.eval()
    outputs: List[torch.Tensor] = []
    targets: List[Any] = []
    order: List[str] = []
    weights: List[float] = []
    global_order: List[str] = []
    for batch in source.batches(ids, BatchPlan(batch_size)):
        batch = batch.to(device)
        with autocast(device, precision):
            logits = forward_batch(model, batch)
        if not torch.isfinite(logits).all():
            bad = [batch.ids[i] for i in range(len(batch.ids)) if not torch.isfinite(logits[i]).all()]
            where = (
                locate_non_finite(model, batch.inputs, batch.lengths, batch.features)
                if isinstance(model, SERModel)
                else None
            )
            raise TrainingDiverged(
                f"the model gives non-finite outputs for {len(bad)} utterance(s) (first: {bad[0]})"
                f"{': ' + where if where else ''}; no result is written"
            )
        outputs.append(logits.float().cpu())
        targets.extend(batch.targets.cpu().tolist())
        order.extend(batch.ids)
        weights.extend([getattr(batch, "weight", 1.0)] * len(batch.ids))
        global_order.extend(getattr(batch, "global_ids", batch.ids))
    rows = [row for o in outputs for row in o]
    if isinstance(source, ddp_tools.ShardedSource):  # torchrun: every rank's rows, each utterance once
        order, targets, _, gathered = ddp_tools.gather_predictions(
            order, targets, [0] * len(order), rows, weights, global_order, source.ctx
        )
        rows = list(gathered) if order else []
    out = torch.stack(rows) if rows else torch.zeros((0, task.num_outputs))
    return score_outputs(task, order, out, targets, loss, getattr(model.head, "target_scale", None))


def score_outputs(
    task: TaskSpec,
    ids: List[str],
    outputs: torch.Tensor,
    targets: List[Any],
    loss: Optional[TaskLoss] = None,
    target_scale: Optional[nn.Module] = None,
) -> Dict[str, Any]:
    """Metrics of a head's ``[N, C + K]`` outputs against the target rows of ``ids`` (see ``evaluate``).

    Classes: WA, UA, macro-F1, confusion, ``predictions``, ``probabilities`` and the cross-entropy;
    targets: CCC, Pearson r and MAE per target and averaged, ``values`` (predicted) and
    ``true_values``. ``loss`` is the whole set's task loss (the dev loss; in standardised units when
    the head standardises its targets).
    """
    n = len(ids)
    target_tensor = torch.tensor(targets) if n else torch.zeros((0, 1 + len(task.targets)) if task.has_targets else 0)
    classes, true_values = task.split_targets(target_tensor) if n else (None, None)
    logits, values = task.split_outputs(outputs)
    result: Dict[str, Any] = {}
    ce = 0.0
    if task.has_classes:
        assert logits is not None
        probs = torch.softmax(logits, dim=-1).numpy()
        class_list = classes.tolist() if classes is not None else []
        preds = probs.argmax(-1).tolist() if n else []
        result.update(classification_metrics(class_list, preds, task.labels))
        result["predictions"] = preds
        result["probabilities"] = probs if n else np.zeros((0, task.num_classes))
        picked = probs[np.arange(n), class_list] if n else np.ones(1)
        ce = float(-np.log(np.clip(picked, 1e-12, None)).mean())  # cross-entropy, unweighted
        targets = class_list
    else:
        result["predictions"], result["probabilities"] = [], np.zeros((n, 0))
    result["loss"] = ce
    if task.has_targets:
        assert values is not None
        true = true_values if true_values is not None else torch.zeros((0, len(task.targets)))
        result.update(regression_metrics(true.numpy(), values.numpy(), task.targets))
        result["values"], result["true_values"] = values.numpy(), true.numpy()
        if loss is not None and loss.regression is not None and n > 1:
            pred_v, true_v = values, true
            if target_scale is not None:
                standardize = cast(Any, target_scale).standardize
                pred_v, true_v = standardize(pred_v), standardize(true_v)
            reg = float(loss.regression(pred_v, true_v))
            result["loss"] = loss.classification_weight * ce + loss.regression_weight * reg if task.has_classes else reg
        if not task.has_classes:
            targets = [list(map(float, t)) for t in true.tolist()]
    result["ids"], result["targets"] = ids, targets
    return result


def planned_epochs(max_steps: Optional[int], epochs: Optional[int], steps_per_epoch: int) -> int:
    """How many epochs a fold runs: enough for ``max_steps`` optimiser steps, at most ``epochs``."""
    by_steps = math.ceil(max_steps / steps_per_epoch) if max_steps else None
    return min(n for n in (by_steps, epochs) if n is not None)


@dataclasses.dataclass
class FitResult:
    """What ``FoldTrainer.fit`` returns: the epochs' history and the choice made from it."""

    # one record per epoch: epoch, step, train_loss, lr [, dev_loss, dev_ua, dev_wa, dev_macro_f1] [, dev_ccc...]
    history: List[Dict[str, Any]]
    best_epoch: int  # the kept epoch (1-based; 0 when none ran)
    best_dev_ua: float  # dev UA of the kept epoch (-1.0 without a dev set or without classes)
    nan_steps: int  # optimiser steps skipped for a non-finite loss
    total_steps: int  # optimiser steps the schedule planned
    steps: int  # optimiser steps taken
    best_dev: Dict[str, float] = dataclasses.field(default_factory=dict)  # the kept epoch's dev record

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form (a refitting fold's ``selection.json``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "FitResult":
        """From ``to_dict``'s form (unknown keys ignored, keys added later take their defaults)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def dev_record(dev: Dict[str, Any], task: TaskSpec) -> Dict[str, float]:
    """The dev figures an epoch's history keeps: loss, and UA/WA/macro-F1 and/or CCC (mean and per target)."""
    record = {"dev_loss": dev["loss"]}
    if task.has_classes:
        record.update(dev_ua=dev["ua"], dev_wa=dev["wa"], dev_macro_f1=dev["macro_f1"])
    if task.has_targets:
        record["dev_ccc"] = dev["ccc"]
        record.update({f"dev_ccc_{t}": dev[f"ccc_{t}"] for t in task.targets})
    return record


def selection_score(select: str, dev: Dict[str, Any]) -> float:
    """The number ``training.select`` maximises over epochs (``last``: not read)."""
    if select == "dev_loss":
        return -dev["loss"]
    if select == "dev_macro_f1":
        return dev["macro_f1"]
    if select == "dev_ccc":
        return dev["ccc"]
    return dev["ua"]


class FoldTrainer:
    """Trains one fold for its step budget and keeps the weights ``training.select`` picks.

    Writes its resume state (``last_state.pt``, or ``state_file``) after the first epoch, after
    every new best and otherwise at most every ``checkpoint_interval`` seconds, and the kept weights
    to ``best.safetensors`` (on each new best under a dev selection, once at the end under ``last``).
    """

    def __init__(
        self,
        model: SERModel,
        source: BatchSource,
        training: TrainingConfig,
        finetune: FinetuneConfig,
        labels: Sequence[str],
        fold_dir: Path,
        device: str,
        save_checkpoints: bool = True,
        on_epoch: Optional[Callable[[Dict[str, float]], None]] = None,
        progress: bool = True,
        eval_batch_size: Optional[int] = None,
        checkpoint_interval: float = 0.0,
        state_file: str = STATE_FILE,
        task: Optional[TaskSpec] = None,
        task_config: Optional[TaskConfig] = None,
    ) -> None:
        self.model = model
        self.task = task if task is not None else TaskSpec("classification", tuple(labels))
        self.task_config = task_config if task_config is not None else TaskConfig()
        self.source = source
        self.training = training
        self.finetune = finetune
        self.save_checkpoints = save_checkpoints
        self.eval_batch_size = eval_batch_size or training.eval_batch_size or training.batch_size
        self.labels = list(labels)
        self.fold_dir = Path(fold_dir)
        self.device = device
        self.on_epoch = on_epoch
        self.progress = progress
        self.nan_steps = 0
        self.scaler: Optional[torch.amp.GradScaler] = None
        self.has_batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.head.modules())
        self.ctx = ddp_tools.context()  # torchrun: only rank 0 writes checkpoints
        self.ddp: Optional[nn.parallel.DistributedDataParallel] = None
        self._unsynced = False
        self.checkpoint_interval = checkpoint_interval
        self.state_path = self.fold_dir / state_file
        self._saved_at: Optional[float] = None  # monotonic time of the last resume checkpoint
        self._save_due = True
        self._params: Optional[tuple] = None  # (optimizer, its parameters), read once per fit
        self._non_finite_stage: Optional[str] = None  # the plugin that last gave NaN/inf, when named

    def _loss_fn(self, train_ids: Sequence[str]) -> TaskLoss:
        """The task's loss: (class-weighted) cross-entropy, the regression loss, or their weighted sum."""
        task, tc = self.task, self.task_config
        ce: Optional[nn.Module] = None
        if task.has_classes:
            if self.training.class_weights:
                rows: List[TargetRow] = [self.source.targets[i] for i in train_ids]
                w = class_weights([task.class_index(r) for r in rows], task.num_classes)
                ce = nn.CrossEntropyLoss(weight=w.to(self.device))
            else:
                ce = nn.CrossEntropyLoss()
        reg = RegressionLoss(tc.loss, tc.target_weights) if task.has_targets else None
        return TaskLoss(task.num_classes, ce, reg, tc.classification_weight, tc.regression_weight)

    def _loss(self, loss_fn: TaskLoss, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One batch's training loss: margins (AM-softmax) see the classes; values compared standardised."""
        task = self.task
        classes, values_true = task.split_targets(targets)
        adjust = getattr(self.model.head.classifier, "training_logits", None)
        if adjust is not None and classes is not None:
            outputs = adjust(outputs.float(), classes)
        logits, values = task.split_outputs(outputs.float())
        scale = getattr(self.model.head, "target_scale", None)
        if scale is not None and values is not None and values_true is not None:
            values, values_true = scale.standardize(values), scale.standardize(values_true)
        return loss_fn(logits, values, classes, values_true)

    def _resume(self, optimizer, scheduler, scaler) -> Tuple[Dict[str, Any], Optional[Dict[str, torch.Tensor]]]:
        """``(progress, best weights or None)`` from ``last_state.pt``: one file, written atomically."""
        state_path = self.state_path
        fresh = {
            "epoch": 0,
            "step": 0,
            "best_score": -math.inf,
            "best_ua": -1.0,
            "best_epoch": 0,
            "bad_epochs": 0,
            "stopped": False,
            "history": [],
        }
        if not state_path.exists():
            return fresh, None
        state = load_state(state_path)
        self.model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        self.nan_steps = state["progress"].get("nan_steps", 0)
        log.info("fold %s: resuming after epoch %d", self.fold_dir.name, state["progress"]["epoch"])
        best = state.get("best")
        if best is None and (self.fold_dir / BEST_FILE).exists():
            best = load_weights(self.fold_dir / BEST_FILE)
        return {**fresh, **state["progress"]}, best

    def fit(
        self, train_ids: Sequence[str], dev_ids: Sequence[str], seed: int, stop_at_step: Optional[int] = None
    ) -> FitResult:
        """Train for the step budget (or epochs), keep the weights ``training.select`` picks; returns a ``FitResult``.

        ``select: last`` keeps the final weights (the schedule has decayed); ``dev_loss`` / ``dev_ua``
        keep the epoch with the best dev cross-entropy / UA, and ``patience`` stops after that many
        epochs without improvement. Without ``dev_ids`` (``protocol.dev: none``) no dev evaluation
        runs. ``stop_at_step`` ends training after that many optimiser steps while the schedule
        keeps its planned length (a refit stops where the dev set chose).
        """
        t, model, device = self.training, self.model, self.device
        model.to(device)
        self.ddp = ddp_tools.wrap(model, device, self.ctx)
        optimizer = build_optimizer(model, t, self.finetune)
        epochs, total = self._budget(train_ids, seed)
        scheduler = build_scheduler(optimizer, t.scheduler, t.warmup_steps, total)
        scaler = torch.amp.GradScaler("cuda") if t.precision == "fp16" and str(device).startswith("cuda") else None
        self.scaler = scaler
        loss_fn = self._loss_fn(train_ids)
        progress, best_state = self._resume(optimizer, scheduler, scaler)
        if best_state is None:
            best_state = trainable_state(model)
        eval_bs = self.eval_batch_size
        bar = tqdm(
            range(progress["epoch"], epochs),
            desc=f"fold {self.fold_dir.name}",
            unit="epoch",
            leave=False,
            disable=not self.progress,
        )
        limit = min(s for s in (t.max_steps, stop_at_step) if s) if (t.max_steps or stop_at_step) else None
        for epoch in bar:
            if progress["stopped"] or (limit and progress["step"] >= limit):
                break
            set_seed(seed * 1000 + epoch)  # python, numpy (transformers' masking) and torch: resumable by epoch
            ids = balanced_ids(train_ids, self.source.targets, seed + epoch) if t.balanced_sampling else train_ids
            train_loss = self._train_epoch(ids, optimizer, scheduler, loss_fn, progress, seed + epoch, limit)
            record = {
                "epoch": epoch + 1,
                "step": progress["step"],
                "train_loss": train_loss,
                "lr": optimizer.param_groups[0]["lr"],
            }
            dev = None
            if dev_ids:
                dev = evaluate(
                    model, self.source, dev_ids, self.labels, eval_bs, device, t.precision, self.task, loss_fn
                )
                record.update(dev_record(dev, self.task))
            progress["history"].append(record)
            score = float(epoch) if dev is None or t.select == "last" else selection_score(t.select, dev)
            self._save_due = epoch == 0
            if score > progress["best_score"] + 1e-9:
                progress.update(
                    best_score=score,
                    best_ua=dev["ua"] if dev and self.task.has_classes else -1.0,
                    best_epoch=epoch + 1,
                    bad_epochs=0,
                )
                if t.select != "last":  # with 'last' the current weights are the best: saved once, at the end
                    best_state = trainable_state(model)
                    self._save_due = True  # the resume state and best.safetensors always agree
                    if self.save_checkpoints and self.ctx.main:
                        save_weights(self.fold_dir / BEST_FILE, best_state)
            else:
                progress["bad_epochs"] += 1
            progress["epoch"] = epoch + 1
            progress["nan_steps"] = self.nan_steps
            progress["stopped"] = t.patience is not None and progress["bad_epochs"] >= t.patience
            progress["stopped"] = ddp_tools.broadcast(progress["stopped"], self.ctx)  # rank 0 decides
            self._save_last(optimizer, scheduler, progress, best_state)
            if self.progress:
                shown = {k: f"{dev[k]:.3f}" for k in ("ua", "ccc") if dev and k in dev}
                bar.set_postfix(loss=f"{train_loss:.3f}", **{f"dev_{k}": v for k, v in shown.items()})
            if self.on_epoch:
                self.on_epoch(record)
            if progress["stopped"]:
                break
        if t.select == "last":
            best_state = trainable_state(model)
            if self.save_checkpoints and self.ctx.main:
                save_weights(self.fold_dir / BEST_FILE, best_state)
        model.load_state_dict(best_state, strict=False)
        return FitResult(
            history=progress["history"],
            best_epoch=progress["best_epoch"],
            best_dev_ua=progress["best_ua"],
            nan_steps=self.nan_steps,
            total_steps=int(total),
            steps=progress["step"],
            best_dev=dict(progress["history"][progress["best_epoch"] - 1]) if progress["best_epoch"] else {},
        )

    def _save_last(self, optimizer, scheduler, progress, best_state) -> None:
        """Everything needed to resume after this epoch, in ONE atomically written file (rank 0's).

        Skipped while the last one is younger than ``checkpoint_interval`` seconds, unless this
        epoch is the first or a new best (a resumed fold replays the epochs since: same result).
        """
        if not self.ctx.main:
            return
        now = time.monotonic()
        if not self._save_due and self._saved_at is not None and now - self._saved_at < self.checkpoint_interval:
            return
        self._saved_at = now
        state = {
            "model": trainable_state(self.model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "progress": progress,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }
        if not self.save_checkpoints and self.training.select != "last":
            state["best"] = best_state  # no best.safetensors on disk: keep the best weights here
        save_state(self.state_path, state)

    def _budget(self, ids: Sequence[str], seed: int) -> Tuple[int, int]:
        """``(epochs, optimiser steps)`` planned for training on ``ids``: the schedule's length."""
        t = self.training
        batches = self.source.count_batches(ids, self._plan(seed))
        steps_per_epoch = max(1, math.ceil(batches / t.grad_accum))
        epochs = planned_epochs(t.max_steps, t.epochs, steps_per_epoch)
        return epochs, int(min(t.max_steps or math.inf, epochs * steps_per_epoch))

    def planned_steps(self, ids: Sequence[str], seed: int) -> int:
        """Optimiser steps the schedule plans for training on ``ids``."""
        return self._budget(ids, seed)[1]

    def _plan(self, seed: int) -> BatchPlan:
        """The training batch plan of one epoch (the schedule is counted from the same plan)."""
        t = self.training
        return BatchPlan(t.batch_size, t.max_batch_seconds, t.max_duration, shuffle=True, seed=seed)

    def padding_fraction(self, ids: Sequence[str], seed: int) -> float:
        """Share of padded positions in one epoch of this trainer's training batches."""
        return self.source.padding_fraction(ids, self._plan(seed))

    def _train_epoch(self, ids, optimizer, scheduler, loss_fn, progress, seed, limit: Optional[int] = None) -> float:
        t, model = self.training, self.model
        model.train()
        if not any(p.requires_grad for p in model.upstream.parameters()):
            model.upstream.eval()
        total, count, singletons = 0.0, 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        accum = 0
        for batch in self.source.batches(ids, self._plan(seed)):
            if limit and progress["step"] >= limit:
                break
            smallest = (
                len(batch.ids)
                if self.ddp is None
                else max(1, len(cast(ddp_tools.ShardBatch, batch).global_ids) // self.ctx.world)
            )
            if smallest == 1 and self.has_batch_norm:  # under torchrun: decided on the global batch, same on all ranks
                singletons += 1
                continue  # BatchNorm cannot train on one utterance (a bucket's tail or an over-budget one)
            batch = batch.to(self.device)
            sync = accum + 1 == t.grad_accum  # torchrun: gradients are all-reduced on a group's last micro-batch
            with ddp_tools.accumulating(self.ddp, sync):
                with autocast(self.device, t.precision):
                    logits = (
                        forward_batch(model, batch, step=progress["step"])
                        if self.ddp is None
                        else self.ddp(batch.inputs, batch.lengths, batch.features, progress["step"])
                    )
                loss = self._loss(loss_fn, logits, batch.targets)
                value = loss.item()  # one read serves the finiteness check and the epoch's mean loss
                finite = math.isfinite(value)
                if self.ddp is not None:  # every rank skips the batch, or none does
                    finite = ddp_tools.sum_over_ranks([0.0 if finite else 1.0], self.ctx)[0] == 0
                if not finite:
                    self._non_finite(loss, batch)  # never backpropagated: accumulated gradients stay valid
                    continue
                factor = ddp_tools.loss_scale(batch, loss_fn, self.ctx) / t.grad_accum
                scaled = loss * factor if factor != 1.0 else loss
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            self._unsynced = self.ddp is not None and not sync
            accum += 1
            rows = len(batch.ids) if getattr(batch, "weight", 1.0) else 0
            total += value * rows
            count += rows
            if accum == t.grad_accum:
                self._step(optimizer, scheduler, accum)
                accum = 0
                progress["step"] += 1
        if accum:
            self._step(optimizer, scheduler, accum)
            progress["step"] += 1
        if self.ddp is not None:  # the epoch's loss over every rank's rows
            total, count = ddp_tools.sum_over_ranks([total, count], self.ctx)
        if count == 0 and singletons:
            raise TrainingDiverged(
                f"fold {self.fold_dir.name}: every training batch held one utterance, and the head's "
                "BatchNorm needs two; raise training.max_batch_seconds or training.batch_size"
            )
        if count == 0:
            stage = f" ({self._non_finite_stage})" if self._non_finite_stage else ""
            raise TrainingDiverged(f"fold {self.fold_dir.name}: no finite loss in a whole epoch{stage}")
        return total / count

    def _non_finite_source(self, batch) -> Optional[str]:
        """Which stage (plugin) first gave NaN/inf on ``batch``; None when none can be named."""
        if not isinstance(self.model, SERModel):
            return None
        with autocast(self.device, self.training.precision):
            try:
                return locate_non_finite(self.model, batch.inputs, batch.lengths, batch.features)
            except Exception as exc:  # noqa: BLE001 - a diagnosis must never hide the original problem
                log.debug("could not locate the non-finite stage: %s", exc)
                return None

    def _step(self, optimizer, scheduler, accumulated: int) -> None:
        """One optimiser step over ``accumulated`` batches (a partial group is rescaled to a mean)."""
        if self._params is None or self._params[0] is not optimizer:
            self._params = (optimizer, [p for g in optimizer.param_groups for p in g["params"]])
        params = [p for p in self._params[1] if p.grad is not None]
        if self._unsynced:  # an epoch's last, partial group was accumulated under no_sync: average it now
            for p in params:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(self.ctx.world)
            self._unsynced = False
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if accumulated != self.training.grad_accum:
            for p in params:
                p.grad.mul_(self.training.grad_accum / accumulated)
        if self.training.grad_clip:
            nn.utils.clip_grad_norm_(params, self.training.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    def _non_finite(self, loss: torch.Tensor, batch) -> None:
        self.nan_steps += 1
        msg = (
            f"fold {self.fold_dir.name}: non-finite loss ({loss.item()}) on a batch of "
            f"{len(batch.ids)} utterances (first: {batch.ids[0]})"
        )
        source = self._non_finite_source(batch)
        if source:
            msg += f": {source}"
            self._non_finite_stage = source
        if self.training.nan_policy == "stop":
            raise TrainingDiverged(msg + "; training.nan_policy is 'stop'")
        if self.nan_steps > self.training.max_nan_steps:
            raise TrainingDiverged(msg + f"; more than training.max_nan_steps={self.training.max_nan_steps} skipped")
        log.warning("%s; step skipped (%d so far)", msg, self.nan_steps)
