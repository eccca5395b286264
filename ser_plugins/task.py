"""What a run predicts: emotion classes, continuous targets (dimensional emotion), or both at once.

A head's output is one ``[B, num_outputs]`` tensor: the ``C`` class logits first, then the ``K``
target values, in the order ``TaskSpec.labels`` then ``TaskSpec.targets``. A classifier plugin is
built with ``num_classes = num_outputs`` and knows nothing of the split, so any classifier (a
third-party one included) serves every task unchanged. A batch's targets follow the same layout:
class indices ``[B]`` (long) for classification, values ``[B, K]`` (float) for regression, and
``[B, 1 + K]`` (float, the class index in column 0) for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

TASK_KINDS: Tuple[str, ...] = ("classification", "regression", "multitask")
DEFAULT_TARGETS: Tuple[str, ...] = ("arousal", "valence", "dominance")

TargetRow = Union[int, Tuple[float, ...]]  # what a source holds per utterance (see the module docstring)


@dataclass(frozen=True)
class TaskSpec:
    """The task of a run: ``kind`` (one of ``TASK_KINDS``), class ``labels`` and continuous ``targets``.

    ``labels`` is empty for regression and ``targets`` for classification.
    """

    kind: str = "classification"
    labels: Tuple[str, ...] = ()
    targets: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"unknown task {self.kind!r}; tasks: {', '.join(TASK_KINDS)}")
        object.__setattr__(self, "labels", tuple(self.labels) if self.has_classes else ())
        object.__setattr__(self, "targets", tuple(self.targets) if self.has_targets else ())

    @classmethod
    def from_recipe(cls, recipe: Any, labels: Sequence[str]) -> "TaskSpec":
        """The task of a resolved recipe whose corpus has ``labels``."""
        task = recipe.task
        return cls(task.type, tuple(labels), tuple(task.targets or ()))

    @property
    def has_classes(self) -> bool:
        """True when the head predicts classes (classification, multitask)."""
        return self.kind != "regression"

    @property
    def has_targets(self) -> bool:
        """True when the head predicts continuous targets (regression, multitask)."""
        return self.kind != "classification"

    @property
    def num_classes(self) -> int:
        """Number of class logits (0 for regression)."""
        return len(self.labels)

    @property
    def num_outputs(self) -> int:
        """Size of the head's output: class logits, then target values."""
        return len(self.labels) + len(self.targets)

    def split_outputs(self, outputs: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``(class logits [B, C] or None, target values [B, K] or None)`` of a head's ``[B, C + K]`` output."""
        c = self.num_classes
        logits = outputs[:, :c] if self.has_classes else None
        values = outputs[:, c : c + len(self.targets)] if self.has_targets else None
        return logits, values

    def target_row(self, label_index: int, attributes: Dict[str, float]) -> TargetRow:
        """What a batch source holds for one utterance (``attributes`` must hold every target)."""
        if not self.has_targets:
            return int(label_index)
        values = tuple(float(attributes[t]) for t in self.targets)
        return (float(label_index), *values) if self.has_classes else values

    def split_targets(self, targets: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """``(class indices [B] long or None, target values [B, K] float or None)`` of a batch's targets."""
        if not self.has_targets:
            return targets.long(), None
        t = targets.float().reshape(targets.shape[0], -1)
        if not self.has_classes:
            return None, t
        return t[:, 0].long(), t[:, 1:]

    def class_index(self, row: TargetRow) -> int:
        """The class index of one target row (``-1`` when the task has no classes)."""
        if not self.has_classes:
            return -1
        return int(row) if not isinstance(row, tuple) else int(row[0])

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form (run.json, the exported model's metadata)."""
        return {"kind": self.kind, "labels": list(self.labels), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: Optional[Dict[str, Any]], labels: Sequence[str] = ()) -> "TaskSpec":
        """From ``to_dict``'s form; None (a run written before tasks existed): classification over ``labels``."""
        if not data:
            return cls("classification", tuple(labels))
        return cls(
            data.get("kind", "classification"), tuple(data.get("labels", labels)), tuple(data.get("targets", ()))
        )
