"""Data-parallel training inside one run, launched by ``torchrun`` (PyTorch DDP; gloo on CPU, NCCL on CUDA).

``torchrun --nproc_per_node N $(which ser) run RECIPE`` starts N copies of ``ser run``; each finds
``WORLD_SIZE``/``RANK`` in its environment and joins one process group (``context()``). Every rank
builds the same length-bucketed batch list (same seed, same plan); each global batch is then split
across the ranks by rows (``ShardedSource``: row ``i`` of a batch goes to rank ``i % N``), so one
optimiser step sees exactly the global batch a 1-process run sees. Each rank's loss is rescaled
(``loss_scale``) so that DDP's gradient average equals the gradient of the global batch's loss:
results match a 1-process run up to the order of floating-point reductions. A rank whose share of
a small batch is empty gets a copy of the batch's first row with weight 0.

Evaluation splits batches the same way and gathers ``(id, target, probabilities)`` from all ranks
(``gather_predictions``), rows of weight 0 dropped, so each utterance is scored exactly once. Only
rank 0 writes files and logs; decisions (a fold already finished, early stopping) are taken on
rank 0 and broadcast. Frozen-feature extraction is split across ranks into the shared feature
cache (``shard``), followed by a barrier, after which every rank reads the whole cache.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ser_plugins.data.sources import Batch, BatchPlan
from ser_plugins.model import SERModel
from ser_plugins.runtime.distributed import (
    DistContext,
    all_gather,
    barrier,
    broadcast,
    context,
    end_process,
    rank_device,
    shard,
    sum_over_ranks,
)

#: the process-group primitives (``ser_plugins.runtime.distributed``) are re-exported beside the training side
__all__ = [
    "DistContext",
    "all_gather",
    "barrier",
    "broadcast",
    "context",
    "end_process",
    "rank_device",
    "shard",
    "sum_over_ranks",
    "ShardBatch",
    "ShardedSource",
    "loss_scale",
    "TrainForward",
    "wrap",
    "accumulating",
    "gather_predictions",
]

log = logging.getLogger("ser_plugins")


class ShardBatch(Batch):
    """This rank's rows of a global batch, with the global batch's ids and targets and a weight per row."""

    def __init__(
        self, batch: Batch, rows: List[int], weight: float, global_ids: List[str], global_targets: torch.Tensor
    ) -> None:
        index = torch.tensor(rows, dtype=torch.long)
        inputs = [x[index] for x in batch.inputs] if isinstance(batch.inputs, list) else batch.inputs[index]
        super().__init__(
            inputs, batch.lengths[index], batch.targets[index], [batch.ids[i] for i in rows], batch.features
        )
        self.weight = weight
        self.global_ids = global_ids
        self.global_targets = global_targets

    def to(self, device: str) -> "ShardBatch":
        """The same share on ``device``."""
        moved = Batch.to(self, device)
        out = ShardBatch.__new__(ShardBatch)
        Batch.__init__(out, moved.inputs, moved.lengths, moved.targets, moved.ids, moved.features)
        out.weight, out.global_ids, out.global_targets = self.weight, self.global_ids, self.global_targets
        return out


class ShardedSource:
    """A batch source whose batches are this rank's rows of the global batches of ``source``.

    Planning (``count_batches``, ``padding_fraction``) is the global plan's: every rank counts the
    same optimiser steps. Rows keep the global batch's padding, as in a 1-process run.
    """

    def __init__(self, source: Any, ctx: DistContext) -> None:
        self.source = source
        self.ctx = ctx
        self.targets = source.targets

    def batches(self, ids: Sequence[str], plan: BatchPlan) -> Iterator[ShardBatch]:
        """This rank's share of every global batch (a weight-0 copy of row 0 when its share is empty)."""
        for batch in self.source.batches(ids, plan):
            rows = list(range(self.ctx.rank, len(batch.ids), self.ctx.world))
            weight = 1.0
            if not rows:
                rows, weight = [0], 0.0
            yield ShardBatch(batch, rows, weight, list(batch.ids), batch.targets)

    def count_batches(self, ids: Sequence[str], plan: BatchPlan) -> int:
        """Global batches of one pass (the same on every rank)."""
        return self.source.count_batches(ids, plan)

    def padding_fraction(self, ids: Sequence[str], plan: BatchPlan) -> float:
        """Padding of the global plan."""
        return self.source.padding_fraction(ids, plan)

    def __getattr__(self, name: str) -> Any:  # features, rate, ... of the wrapped source
        return getattr(self.source, name)


def loss_scale(batch: Batch, loss_fn: nn.Module, ctx: DistContext) -> float:
    """Factor on a rank's mean loss so that DDP's gradient average is the global batch's mean-loss gradient.

    With per-row weights ``w`` (class weights, else 1): ``world * sum(w of my rows) / sum(w of all rows)``;
    0 for a weight-0 share.
    """
    if not ctx.active or not isinstance(batch, ShardBatch):
        return 1.0
    if batch.weight == 0:
        return 0.0
    w = getattr(loss_fn, "weight", None)
    if w is None:
        mine, total = float(len(batch.ids)), float(len(batch.global_ids))
    else:
        w = w.detach().cpu()
        mine, total = float(w[batch.targets.cpu()].sum()), float(w[batch.global_targets.cpu()].sum())
    return ctx.world * mine / total if total > 0 else 0.0


class TrainForward(nn.Module):
    """The training forward as one module (what DDP wraps): features to the head, waveforms through the model."""

    def __init__(self, model: SERModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: Any, lengths: torch.Tensor, features: bool, step: Optional[int] = None) -> torch.Tensor:
        """Logits of one batch."""
        if features:
            return self.model.forward_features(inputs, lengths)
        return self.model(inputs, lengths, step=step)


def wrap(model: SERModel, device: str, ctx: DistContext) -> Optional[nn.parallel.DistributedDataParallel]:
    """``DistributedDataParallel`` around the training forward (head, and the upstream when it trains); None alone.

    BatchNorm layers become SyncBatchNorm on CUDA (on CPU each rank normalises with its own rows).
    """
    if not ctx.active:
        return None
    if str(device).startswith("cuda"):
        model.head = nn.SyncBatchNorm.convert_sync_batchnorm(model.head)
    ids = [torch.device(device).index] if str(device).startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(TrainForward(model), device_ids=ids, find_unused_parameters=True)


def accumulating(ddp: Optional[nn.parallel.DistributedDataParallel], sync: bool):
    """``ddp.no_sync()`` for a micro-batch whose gradients are accumulated without an all-reduce yet."""
    if ddp is None or sync:
        return contextlib.nullcontext()
    return ddp.no_sync()


def gather_predictions(
    order: List[str],
    targets: List[int],
    preds: List[int],
    probs: List[torch.Tensor],
    weights: List[float],
    global_order: List[str],
    ctx: DistContext,
) -> Tuple[List[str], List[int], List[int], torch.Tensor]:
    """Every rank's scored rows merged by utterance id in the global batch order; weight-0 rows dropped.

    Returns ``(ids, targets, predictions, probabilities [N, C])``: each id exactly once.
    """
    rows = [(u, t, p, pr) for u, t, p, pr, w in zip(order, targets, preds, probs, weights) if w]
    by_id: Dict[str, Tuple[int, int, torch.Tensor]] = {}
    for part in all_gather(rows, ctx):
        for u, t, p, pr in part:
            if u in by_id:
                raise RuntimeError(f"utterance {u} was scored by two ranks")
            by_id[u] = (t, p, pr)
    missing = [u for u in global_order if u not in by_id]
    if missing:
        raise RuntimeError(f"{len(missing)} utterance(s) were scored by no rank (first: {missing[0]})")
    ids = [u for u in dict.fromkeys(global_order)]
    return (
        ids,
        [by_id[u][0] for u in ids],
        [by_id[u][1] for u in ids],
        torch.stack([by_id[u][2] for u in ids]) if ids else torch.zeros(0),
    )
