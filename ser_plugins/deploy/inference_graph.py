"""The inference graph of one trained fold as one torch module: waveform ``[B, S]`` -> scores ``[B, C + K]``.

``FoldGraph`` chains what ``ser predict`` does for one file -- upstream, the kept layers, the
run's saved normalisation, layer use, projection, aggregator, classifier, softmax -- so that
``ser_plugins.deploy.export`` can hand it to an ONNX exporter and ``ser predict --window`` can score a
batch of equal-length windows with it. A normalised run's graph applies the fold's saved
statistics (``folds/<fold>/normalizer.safetensors``), as ``ser predict`` does for a few files.
Every row of the input is one whole utterance: rows are never padded, so the graph needs no
lengths input and is valid for upstreams that cannot take padded batches (wav2vec 2.0 Base
without an attention mask).

A regression or multitask run's graph gives the head's ``K`` target values after its ``C`` class
probabilities (``ser_plugins.deploy.predict.head_scores``: the softmax covers the class logits
only); a standardised run's head already maps the values back to the corpus's scale
(``ser_plugins.model.TargetScale``). A classification graph is unchanged: probabilities ``[B, C]``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ser_plugins.data.normalize import Normalizer
from ser_plugins.deploy.predict import Predictor, head_scores
from ser_plugins.deploy.scoring import OneByOne
from ser_plugins.errors import UserError
from ser_plugins.model import SERModel
from ser_plugins.results.run_dir import RunDir
from ser_plugins.task import TaskSpec


class GraphError(UserError, RuntimeError):
    """A run directory whose inference graph cannot be built."""


class Standardise(nn.Module):
    """``(x - mean) / std`` for each kept layer, with a fold's saved statistics as buffers (exported as constants).

    The statistics are what ``ser predict`` applies to files of an unknown speaker
    (``Normalizer.statistics()``): the training statistics of a ``global`` run, the typical
    statistics of the fold's training speakers for a ``speaker`` run.
    """

    def __init__(self, normalizer: Normalizer) -> None:
        super().__init__()
        means, stds = normalizer.statistics()
        self.kind = normalizer.kind
        self.count = len(means)
        for k, (mean, std) in enumerate(zip(means, stds)):
            self.register_buffer(f"mean_{k}", mean.float().clone())
            self.register_buffer(f"std_{k}", std.float().clone())

    def forward(self, states: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Standardised layers, in order."""
        if len(states) != self.count:
            raise GraphError(f"normalisation holds statistics for {self.count} layers, the head reads {len(states)}")
        return [(s.float() - getattr(self, f"mean_{k}")) / getattr(self, f"std_{k}") for k, s in enumerate(states)]


def output_names(task: Optional[TaskSpec]) -> List[str]:
    """The exported graph's outputs: ``probabilities`` (classes) and/or ``values`` (targets), in that order."""
    if task is None or not task.has_targets:
        return ["probabilities"]
    return (["probabilities"] if task.has_classes else []) + ["values"]


class FoldGraph(nn.Module):
    """One fold's whole inference: ``forward(waveform [B, S]) -> [B, C + K]`` (``head_scores``).

    ``waveform`` holds ``B`` unpadded mono utterances of ``S`` samples each at the upstream's
    sample rate (at least ``min_samples``). ``normalizer`` is the fold's saved ``Normalizer`` for
    a normalised run. ``task`` is the run's ``TaskSpec`` (None: classification over ``labels``):
    each row holds the ``C`` class probabilities, then the ``K`` target values.
    """

    def __init__(
        self,
        model: SERModel,
        labels: Sequence[str],
        normalizer: Optional[Normalizer] = None,
        task: Optional[TaskSpec] = None,
    ) -> None:
        super().__init__()
        self.upstream = model.upstream
        self.head = model.head
        self.layers = list(model.upstream_layers)
        self.task = task if task is not None else TaskSpec("classification", tuple(labels))
        self.labels = list(self.task.labels)
        self.targets = list(self.task.targets)
        self.standardise = Standardise(normalizer) if normalizer is not None else None

    @property
    def sample_rate(self) -> int:
        """Sample rate of the input waveform."""
        return int(self.upstream.sample_rate)

    @property
    def min_samples(self) -> int:
        """Shortest input, in samples, that the upstream accepts."""
        return int(getattr(self.upstream, "min_samples", 1) or 1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Class probabilities, then target values, ``[B, C + K]`` for ``B`` whole utterances of equal length."""
        lengths = torch.full((waveform.shape[0],), waveform.shape[1], dtype=torch.long, device=waveform.device)
        out = self.upstream(waveform, lengths)
        states = [out.hidden_states[i] for i in self.layers]
        if self.standardise is not None:
            states = self.standardise(states)
        return head_scores(self.task, self.head(states, out.lengths))


class NamedOutputs(nn.Module):
    """A ``FoldGraph`` with one output per part (``output_names``): ``(probabilities [B, C], values [B, K])``.

    What ``ser export`` hands to the exporter for a multitask run, so the ONNX file has two named outputs.
    """

    def __init__(self, graph: FoldGraph) -> None:
        super().__init__()
        self.fold = graph  # not "graph": torch.export's GraphModule has a .graph of its own
        self.num_classes = graph.task.num_classes

    def forward(self, waveform: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        scores = self.fold(waveform)
        return scores[:, : self.num_classes], scores[:, self.num_classes :]


def fold_names(run_dir: Path) -> List[str]:
    """Folds of a run that have a best checkpoint, sorted."""
    return RunDir(run_dir).trained_folds()


def load_fold_graphs(run_dir: Path, fold: Optional[str] = None) -> Tuple[List[FoldGraph], Predictor]:
    """``(graphs, predictor)``: one ``FoldGraph`` per fold (or only ``fold``), in eval mode.

    The predictor (``ser_plugins.deploy.predict.Predictor``) is the same loading path ``ser predict``
    uses; it is returned so callers can compare against it.
    """
    run_dir = Path(run_dir)
    predictor = Predictor(run_dir, fold, min_speaker_files=sys.maxsize)  # always the saved statistics
    graphs = [
        FoldGraph(merged(model), predictor.labels, normalizer, predictor.task).eval()
        for model, normalizer in zip(predictor.models, predictor.normalizers)
    ]
    return graphs, predictor


def merged(model: SERModel) -> SERModel:
    """``model`` with LoRA weights folded into the upstream's layers (a copy; ``model`` keeps its adapters).

    The exported graph is the merged one, and export's verification compares it with the unmerged
    model that ``ser predict`` runs, so the merge is proven equal too. Models without LoRA are returned as
    they are.
    """
    merge = getattr(model.upstream, "merge_adapters", None)
    if merge is None or getattr(model.upstream, "finetune_mode", None) != "lora":
        return model
    copied = copy.deepcopy(model)
    copied.upstream.merge_adapters()  # type: ignore[operator]  # the encoders' method (upstreams/encoder_layers.py)
    return copied


class TorchScorer(OneByOne):
    """Scores batches of equal-length windows with PyTorch: the mean of the folds' probabilities and target
    values (a ``Scorer``).

    The PyTorch counterpart of ``ser_plugins.deploy.onnx_engine.OnnxPredictor`` for ``ser predict --window``;
    a speaker-normalised run's windows get the fold's typical speaker statistics, like the exported model.
    """

    def __init__(self, run_dir: Path, fold: Optional[str] = None) -> None:
        self.graphs, predictor = load_fold_graphs(run_dir, fold)
        self.labels: List[str] = list(predictor.labels)
        self.targets: List[str] = list(predictor.targets)
        self.sample_rate = self.graphs[0].sample_rate
        self.min_samples = self.graphs[0].min_samples

    @torch.no_grad()
    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """``[B, C + K]`` float32 probabilities (then target values) for ``windows`` ``[B, S]`` float32."""
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        probs = sum(graph(x) for graph in self.graphs) / len(self.graphs)
        return probs.numpy().astype(np.float32)
