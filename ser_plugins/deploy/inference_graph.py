"""The inference graph of one trained fold as one torch module: waveform ``[B, S]`` -> probabilities ``[B, C]``.

``FoldGraph`` chains what ``ser predict`` does for one file -- upstream, the kept layers, the
run's saved normalisation, layer use, projection, aggregator, classifier, softmax -- so that
``ser_plugins.deploy.export`` can hand it to an ONNX exporter and ``ser predict --window`` can score a
batch of equal-length windows with it. A normalised run's graph applies the fold's saved
statistics (``folds/<fold>/normalizer.safetensors``), as ``ser predict`` does for a few files.
Every row of the input is one whole utterance: rows are never padded, so the graph needs no
lengths input and is valid for upstreams that cannot take padded batches (wav2vec 2.0 Base
without an attention mask).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ser_plugins.data.normalize import Normalizer
from ser_plugins.deploy.scoring import OneByOne
from ser_plugins.errors import UserError
from ser_plugins.model import SERModel
from ser_plugins.results.run_dir import RunDir

if TYPE_CHECKING:  # imported where used: predict.py loads the run
    from ser_plugins.deploy.predict import Predictor


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


class FoldGraph(nn.Module):
    """One fold's whole inference: ``forward(waveform [B, S]) -> probabilities [B, C]``.

    ``waveform`` holds ``B`` unpadded mono utterances of ``S`` samples each at the upstream's
    sample rate (at least ``min_samples``). ``normalizer`` is the fold's saved ``Normalizer`` for
    a normalised run.
    """

    def __init__(self, model: SERModel, labels: Sequence[str], normalizer: Optional[Normalizer] = None) -> None:
        super().__init__()
        self.upstream = model.upstream
        self.head = model.head
        self.layers = list(model.upstream_layers)
        self.labels = list(labels)
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
        """Class probabilities ``[B, C]`` for ``B`` whole utterances of equal length."""
        lengths = torch.full((waveform.shape[0],), waveform.shape[1], dtype=torch.long, device=waveform.device)
        out = self.upstream(waveform, lengths)
        states = [out.hidden_states[i] for i in self.layers]
        if self.standardise is not None:
            states = self.standardise(states)
        return torch.softmax(self.head(states, out.lengths).float(), dim=-1)


def fold_names(run_dir: Path) -> List[str]:
    """Folds of a run that have a best checkpoint, sorted."""
    return RunDir(run_dir).trained_folds()


def load_fold_graphs(run_dir: Path, fold: Optional[str] = None) -> Tuple[List[FoldGraph], Predictor]:
    """``(graphs, predictor)``: one ``FoldGraph`` per fold (or only ``fold``), in eval mode.

    The predictor (``ser_plugins.deploy.predict.Predictor``) is the same loading path ``ser predict``
    uses; it is returned so callers can compare against it.
    """
    from ser_plugins.deploy.predict import Predictor

    run_dir = Path(run_dir)
    predictor = Predictor(run_dir, fold, min_speaker_files=sys.maxsize)  # always the saved statistics
    graphs = [
        FoldGraph(model, predictor.labels, normalizer).eval()
        for model, normalizer in zip(predictor.models, predictor.normalizers)
    ]
    return graphs, predictor


class TorchScorer(OneByOne):
    """Scores batches of equal-length windows with PyTorch: the mean of the folds' probabilities (a ``Scorer``).

    The PyTorch counterpart of ``ser_plugins.deploy.onnx_engine.OnnxPredictor`` for ``ser predict --window``;
    a speaker-normalised run's windows get the fold's typical speaker statistics, like the exported model.
    """

    def __init__(self, run_dir: Path, fold: Optional[str] = None) -> None:
        self.graphs, predictor = load_fold_graphs(run_dir, fold)
        self.labels: List[str] = list(predictor.labels)
        self.sample_rate = self.graphs[0].sample_rate
        self.min_samples = self.graphs[0].min_samples

    @torch.no_grad()
    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """``[B, C]`` float32 probabilities for ``windows`` ``[B, S]`` float32."""
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        probs = sum(graph(x) for graph in self.graphs) / len(self.graphs)
        return probs.numpy().astype(np.float32)
