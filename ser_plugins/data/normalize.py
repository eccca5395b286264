"""Feature normalisation with a small scikit-learn-like interface: ``fit``, ``transform``, saved state.

Two kinds (``features.normalize``):

* ``global`` -- every layer standardised with the mean and standard deviation of the training
  fold's frames. Nothing is read from test audio: non-transductive.
* ``speaker`` -- every utterance standardised with its own speaker's statistics. For a test
  speaker they come from that speaker's unlabelled test audio: transductive (say so when you
  report it). Speakers never seen (``ser predict`` with few files) get the *typical* statistics:
  the mean over the training speakers of their means and standard deviations.
* ``corpus`` -- every utterance standardised with its corpus's statistics (multi-corpus runs:
  ``Utterance.corpus``), from the corpus's training utterances; a corpus with none in the fold's
  training set (the test corpus of a cross-corpus run) gets its own statistics: transductive.

Statistics are pooled from per-utterance moments (frame count, sum, sum of squares per layer, in
float64), so they are exact whether the run keeps frames or only utterance means. The same object
is used in training, evaluation and prediction; its state (``state_dict``) is saved per fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from ser_plugins.results.run_dir import NORMALIZER_FILE  # noqa: F401 - a fold's saved normaliser; importable here

Layers = List[torch.Tensor]  # one [T, D] tensor per kept layer


@dataclass
class Moments:
    """Sufficient statistics of one utterance: frame count, and per layer the sum and sum of squares."""

    count: int
    sums: List[torch.Tensor]
    squares: List[torch.Tensor]

    @classmethod
    def of(cls, layers: Layers) -> "Moments":
        """The moments of an utterance's frames (each layer ``[T, D]``)."""
        frames = [layer.double() for layer in layers]
        return cls(int(frames[0].shape[0]), [f.sum(0) for f in frames], [(f * f).sum(0) for f in frames])

    @staticmethod
    def pooled(items: Iterable["Moments"], eps: float) -> Tuple[Layers, Layers]:
        """``(means, stds)`` per layer over all frames of ``items`` (population std, floored at ``eps``)."""
        items = list(items)
        if not items:
            raise ValueError("no utterances to compute normalisation statistics from")
        count = sum(m.count for m in items)
        means, stds = [], []
        for k in range(len(items[0].sums)):
            mean = torch.as_tensor(sum(m.sums[k] for m in items)) / count
            var = (torch.as_tensor(sum(m.squares[k] for m in items)) / count - mean * mean).clamp(min=0.0)
            means.append(mean.float())
            stds.append(var.sqrt().clamp(min=eps).float())
        return means, stds


class Normalizer:
    """Standardises frozen features per layer: ``kind`` is ``"global"``, ``"speaker"`` or ``"corpus"``.

    For ``corpus`` the "speaker" arguments below hold each utterance's corpus.

    ``fit(moments, speakers, train_ids)`` learns the statistics; ``transform(layers, speaker)``
    applies them to one utterance (``[T, D]`` frames or ``[1, D]`` means: the map is affine, so the
    mean of standardised frames is the standardised mean).
    """

    def __init__(self, kind: str, eps: float = 1e-5) -> None:
        if kind not in ("global", "speaker", "corpus"):
            raise ValueError(f"normalisation {kind!r} is not 'global', 'speaker' or 'corpus'")
        self.kind = kind
        self.eps = eps
        self.mean_: Optional[Layers] = None  # global: training statistics; speaker: typical statistics
        self.std_: Optional[Layers] = None
        self.speakers_: Dict[str, Tuple[Layers, Layers]] = {}

    @property
    def transductive(self) -> bool:
        """True when test statistics come from the test data itself."""
        return self.kind in ("speaker", "corpus")

    def fit(
        self,
        moments: Mapping[str, Moments],
        speakers: Optional[Mapping[str, str]] = None,
        train_ids: Optional[Sequence[str]] = None,
    ) -> "Normalizer":
        """Learn the statistics.

        ``global``: over the utterances ``train_ids`` (all of ``moments`` when None).
        ``speaker``: per speaker over all of ``moments`` (test speakers included: transductive), and
        the typical statistics over the speakers of ``train_ids``.
        """
        train = list(train_ids) if train_ids is not None else list(moments)
        if self.kind == "global":
            self.mean_, self.std_ = Moments.pooled((moments[u] for u in train), self.eps)
            return self
        if speakers is None:
            raise ValueError(f"{self.kind} normalisation needs the {self.kind} of every utterance")
        by_speaker: Dict[str, List[Moments]] = {}
        train_set = set(train)
        trained = {speakers[u] for u in train}
        for uid, m in moments.items():
            # corpus: a corpus seen in training keeps to its training utterances (only an unseen one uses its own)
            if self.kind == "corpus" and speakers[uid] in trained and uid not in train_set:
                continue
            by_speaker.setdefault(speakers[uid], []).append(m)
        self.speakers_ = {spk: Moments.pooled(items, self.eps) for spk, items in sorted(by_speaker.items())}
        train_speakers = sorted({speakers[u] for u in train})
        self.mean_ = [
            torch.stack([self.speakers_[s][0][k] for s in train_speakers]).mean(0)
            for k in range(len(self.speakers_[train_speakers[0]][0]))
        ]
        self.std_ = [
            torch.stack([self.speakers_[s][1][k] for s in train_speakers]).mean(0) for k in range(len(self.mean_))
        ]
        return self

    def add_speaker(self, speaker: str, utterances: Sequence[Layers]) -> None:
        """Statistics of a new speaker from their (unlabelled) utterances (``ser predict`` with enough files)."""
        self.speakers_[speaker] = Moments.pooled((Moments.of(u) for u in utterances), self.eps)

    def statistics(self, speaker: Optional[str] = None) -> Tuple[Layers, Layers]:
        """``(means, stds)`` applied to an utterance of ``speaker`` (typical ones for an unknown speaker)."""
        if self.mean_ is None or self.std_ is None:
            raise RuntimeError("Normalizer.transform called before fit")
        if self.kind in ("speaker", "corpus") and speaker in self.speakers_:
            return self.speakers_[speaker]
        return self.mean_, self.std_

    def transform(self, layers: Layers, speaker: Optional[str] = None) -> Layers:
        """The standardised layers (float32) of one utterance."""
        means, stds = self.statistics(speaker)
        return [
            (layer.float() - means[k].to(layer.device)) / stds[k].to(layer.device) for k, layer in enumerate(layers)
        ]

    def transform_batch(self, layers: Layers, speakers: Sequence[Optional[str]]) -> Layers:
        """The standardised layers (float32) of a padded batch: ``[B, T, D]`` per layer, one speaker per row."""
        stats = [self.statistics(s) for s in speakers]
        out = []
        for k, layer in enumerate(layers):
            mean = torch.stack([m[k] for m, _ in stats]).unsqueeze(1).to(layer.device)
            std = torch.stack([s[k] for _, s in stats]).unsqueeze(1).to(layer.device)
            out.append((layer.float() - mean) / std)
        return out

    # --- state -----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The statistics used for unseen speakers / all utterances, as tensors (``mean.K``, ``std.K``)."""
        if self.mean_ is None or self.std_ is None:
            raise RuntimeError("Normalizer has not been fitted")
        out = {f"mean.{k}": m for k, m in enumerate(self.mean_)}
        out.update({f"std.{k}": s for k, s in enumerate(self.std_)})
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> "Normalizer":
        """Restore what ``state_dict`` returned (per-speaker statistics of the run are not kept)."""
        n = len([k for k in state if k.startswith("mean.")])
        self.mean_ = [state[f"mean.{k}"].float() for k in range(n)]
        self.std_ = [state[f"std.{k}"].float() for k in range(n)]
        return self

    def save(self, path: Path) -> None:
        """Write the state as safetensors (atomically), with the kind in the metadata."""
        from ser_plugins.runtime.checkpoint import save_weights

        save_weights(path, self.state_dict(), metadata={"kind": self.kind, "eps": str(self.eps)})

    @classmethod
    def load(cls, path: Path) -> "Normalizer":
        """Read a normaliser written by ``save``."""
        from ser_plugins.runtime.checkpoint import load_weights, read_metadata

        meta = read_metadata(path)
        return cls(meta.get("kind", "speaker"), float(meta.get("eps", 1e-5))).load_state_dict(load_weights(path))
