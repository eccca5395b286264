"""Emotion predictions for new audio files from a finished run directory.

Every readable file is scored; a file that cannot be read, or that training would have skipped
(silent, constant, non-finite samples, too short, non-finite features), is reported with its
reason instead of a score (``ser_plugins.deploy.scoring``, shared with the ONNX engine). ``format_results``
writes the results as text, JSON or CSV.

A regression or multitask run (run.json's ``task``) predicts continuous targets too: its heads are built
with the run's ``TaskSpec``, the folds' class probabilities and target values are averaged.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ser_plugins.data.batching import bucket_batches, pad_waves
from ser_plugins.data.normalize import Normalizer
from ser_plugins.deploy.scoring import FORMATS, Outcome, Problem, format_results, score_files  # noqa: F401 - re-exported
from ser_plugins.errors import CorruptFileError, UserError
from ser_plugins.model import SERModel, build_head, build_upstream
from ser_plugins.plugins.boundary import check_upstream_output
from ser_plugins.recipe import RecipeError, resolve
from ser_plugins.results.run_dir import BEST_FILE, FOLDS_DIR, RECIPE_FILE, RUN_FILE, FoldDir, RunDir
from ser_plugins.runtime.checkpoint import load_weights
from ser_plugins.task import TaskSpec


class PredictError(UserError, RuntimeError):
    """The run directory cannot be used for prediction."""


def head_scores(task: Optional[TaskSpec], outputs: torch.Tensor) -> torch.Tensor:
    """``[B, C + K]``: the softmax of a head's ``C`` class logits, then its ``K`` target values as they are.

    ``task`` None or a classification task: the softmax of the whole output (``[B, C]``), as always.
    """
    outputs = outputs.float()
    if task is None or not task.has_targets:
        return torch.softmax(outputs, dim=-1)
    logits, values = task.split_outputs(outputs)
    assert values is not None  # has_targets
    if logits is None:
        return values
    return torch.cat([torch.softmax(logits, dim=-1), values], dim=1)


def _fold_checkpoints(run_dir: Path, fold: Optional[str]) -> List[Path]:
    ckpts = RunDir(run_dir).checkpoints(fold)
    if not ckpts:
        raise PredictError(f"no {BEST_FILE} checkpoint under {run_dir}/{FOLDS_DIR}" + (f"/{fold}" if fold else ""))
    return ckpts


def load_run_recipe(run_dir: Path):
    """The resolved recipe saved in a run directory (a damaged or foreign file is named in the error)."""
    files = RunDir(run_dir)
    path = files.recipe
    if not path.exists():
        raise PredictError(f"{run_dir} is not a run directory (no {RECIPE_FILE})")
    try:
        data = files.read_recipe()
    except Exception as exc:  # noqa: BLE001 - any YAML problem (tags, syntax): not a recipe we wrote
        raise PredictError(
            f"{path}: not a readable recipe ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    try:
        return resolve(data)
    except RecipeError as exc:
        raise PredictError(f"{path}: {exc}") from None


def read_task(run_dir: Path) -> TaskSpec:
    """The task saved in a run's run.json: its ``task`` (kind, labels, targets), or, in a run written before
    tasks existed, classification over its ``labels`` (a damaged or foreign file is named in the error).

    ``labels`` may be empty for a regression run only.
    """
    files = RunDir(run_dir)
    path = files.run_file
    if not path.exists():
        raise PredictError(f"{run_dir} is not a finished run directory (no {RUN_FILE})")
    data = files.read_run_info()
    labels = data.get("labels") if isinstance(data, dict) else None
    spec = _task_of(labels, data.get("task") if isinstance(data, dict) else None)
    if spec is None or (spec.has_classes and not spec.labels):
        raise CorruptFileError(f'{path}: has no list of class labels ("labels"); not a {RUN_FILE} that ser wrote')
    if spec.has_targets and not spec.targets:
        raise CorruptFileError(f'{path}: a {spec.kind} run without targets ("task"); not a {RUN_FILE} that ser wrote')
    return spec


def _task_of(labels: Any, task: Any) -> Optional[TaskSpec]:
    """The ``TaskSpec`` of run.json's ``labels`` and ``task``, or None when they are not what ser writes."""
    if not _strings(labels) or (task is not None and not isinstance(task, dict)):
        return None
    if task and not (_strings(task.get("labels", labels)) and _strings(task.get("targets", []))):
        return None
    try:
        return TaskSpec.from_dict(task, labels)
    except (ValueError, TypeError):  # an unknown kind
        return None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def read_labels(run_dir: Path) -> List[str]:
    """The class labels saved in a run's run.json (empty for a regression run; see ``read_task``)."""
    return list(read_task(run_dir).labels)


class Predictor:
    """Loads a run's recipe and fold checkpoints; averages the folds' probabilities (an ensemble).

    ``task`` is the run's ``TaskSpec`` (``read_task``); ``labels`` its classes (empty for regression)
    and ``targets`` its continuous targets (empty for classification), whose values are averaged over
    the folds like the probabilities.

    With normalisation in the recipe each fold's saved normaliser is applied: ``global`` uses the
    fold's training statistics; ``speaker`` treats the given files as one unknown speaker: with at
    least ``min_speaker_files`` usable files their own statistics are used, with fewer (one file's
    own statistics would erase what the head needs) the typical statistics of the fold's training
    speakers.
    """

    def __init__(
        self, run_dir: Path, fold: Optional[str] = None, device: str = "cpu", min_speaker_files: int = 10
    ) -> None:
        self.min_speaker_files = min_speaker_files
        #: a speaker-normalised run's last scoring: "own" statistics of the files, or the folds' "typical" ones
        self.speaker_statistics: Optional[str] = None
        self.run_dir = Path(run_dir)
        self.recipe = load_run_recipe(self.run_dir)
        self.task = read_task(self.run_dir)
        self.labels: List[str] = list(self.task.labels)
        self.targets: List[str] = list(self.task.targets)
        self.device = device
        r = self.recipe
        self.batch_size = 16  # files per upstream batch (batch-invariant upstreams), as in frozen extraction
        self.max_batch_seconds = float(r.data.extract_batch_seconds)  # padded audio per upstream batch
        self._check_task()
        task = self.task if self.task.has_targets else None  # a classification head: built as it always was
        standardize = bool(task is not None and r.task.standardize)
        self.upstream = build_upstream(r.upstream, r.finetune).to(device).eval()
        self.finetuned = r.finetune.mode != "frozen"
        self.models: List[SERModel] = []
        self.normalizers: List[Optional[Normalizer]] = []
        for ckpt in _fold_checkpoints(self.run_dir, fold):
            # a fine-tuned fold carries its own upstream weights; a frozen one shares the upstream
            upstream = copy.deepcopy(self.upstream) if self.finetuned else self.upstream
            head, kept = build_head(
                r.features, r.aggregator, r.classifier, upstream, len(self.labels), task, standardize
            )
            model = SERModel(upstream, head, kept)
            try:
                missing, unexpected = model.load_state_dict(load_weights(ckpt), strict=False)
            except RuntimeError as exc:  # tensors of the wrong shape: another model's checkpoint
                raise CorruptFileError(
                    f"{ckpt}: does not fit the recipe's model ({str(exc).splitlines()[-1].strip()})"
                ) from None
            if unexpected or any(not k.startswith("upstream.") for k in missing):
                raise PredictError(
                    f"{ckpt} does not match the recipe's model (missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
            self.models.append(model.to(device).eval())
            self.normalizers.append(self._normalizer(ckpt.parent, [upstream.hidden_sizes[k] for k in kept]))

    def _check_task(self) -> None:
        """run.json's task and the recipe's must agree (a run assembled from two runs is refused)."""
        want = self.recipe.task
        targets = tuple(want.targets or ()) if want.has_targets else ()
        if want.type != self.task.kind or targets != self.task.targets:
            raise PredictError(
                f"{self.run_dir}: {RUN_FILE} holds a {self.task.kind} run"
                + (f" of targets {', '.join(self.task.targets)}" if self.task.targets else "")
                + f", but its {RECIPE_FILE} says task {want.type}"
                + (f" of targets {', '.join(targets)}" if targets else "")
            )

    def _normalizer(self, fold_dir: Path, sizes: List[int]) -> Optional[Normalizer]:
        """The fold's saved normaliser, checked against the feature sizes of the layers it standardises."""
        if self.recipe.features.normalize is None:
            return None
        path = FoldDir(fold_dir).normalizer
        if not path.exists():
            raise PredictError(
                f"{path} is missing: the run was normalised ({self.recipe.features.normalize}) "
                "and its statistics are needed to predict"
            )
        try:
            normalizer = Normalizer.load(path)
        except CorruptFileError:
            raise
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:  # readable safetensors, foreign content
            raise CorruptFileError(
                f"{path}: not a normaliser that ser wrote ({type(exc).__name__}: {exc}); restore it from the run"
            ) from None
        if normalizer.mean_ is None or normalizer.std_ is None:
            raise CorruptFileError(f"{path}: a normaliser without statistics; restore it from the run")
        found = [int(m.shape[-1]) if m.dim() else 0 for m in normalizer.mean_]
        if found != sizes or [int(s_.shape[-1]) if s_.dim() else 0 for s_ in normalizer.std_] != sizes:
            raise CorruptFileError(
                f"{path}: not a normaliser of this run (statistics of feature sizes {found}, "
                f"the model reads {sizes}); restore it from the run"
            )
        return normalizer

    @property
    def sample_rate(self) -> int:
        """Rate of the waveforms the upstream takes."""
        return int(self.upstream.sample_rate)

    @property
    def min_samples(self) -> int:
        """Shortest waveform, in samples, that the upstream takes."""
        return int(self.upstream.min_samples)

    def predict_files(self, paths: Sequence[str]) -> List[Dict[str, Any]]:
        """One result per file, in order (``ser_plugins.deploy.scoring.score_files``): scored, or the reason it was not.

        A file's prediction never depends on the others (batch-invariant upstreams run on exact padded
        batches, any other one file at a time), except for the speaker statistics, which pool all
        usable files.
        """
        return score_files(self, paths)

    @torch.no_grad()
    def score(self, waves: Sequence[np.ndarray]) -> List[Outcome]:
        """The folds' mean probabilities (then target values) of each waveform, or ``non_finite_features``
        (the ``Scorer`` protocol)."""
        problems: Dict[int, Problem] = {}
        probs = [torch.zeros(len(self.labels) + len(self.targets)) for _ in waves]
        task = self.task if self.task.has_targets else None
        shared = self._states(self.upstream, waves, problems) if not self.finetuned else None
        for model, normalizer in zip(self.models, self.normalizers):
            outs = shared if shared is not None else self._states(model.upstream, waves, problems)
            outs = {i: o for i, o in outs.items() if i not in problems}
            states = {i: [s[0] for s in model.select_layers(h)] for i, (h, _) in outs.items()}  # [T, D] per layer
            if normalizer is not None:
                states = self._normalise(normalizer, states)
            for i, st in states.items():
                logits = model.forward_features([layer.unsqueeze(0) for layer in st], outs[i][1])
                probs[i] += head_scores(task, logits)[0].cpu()
        return [problems.get(i, (pr / len(self.models)).numpy()) for i, pr in enumerate(probs)]

    def _states(self, upstream, waves: Sequence[np.ndarray], problems: Dict[int, Problem]) -> Dict[int, tuple]:
        """Hidden states ``[1, T, D]`` and frame count of each usable waveform; non-finite features flag it in
        ``problems``.

        A ``batch_invariant`` upstream (every ``hf`` model: exact batching) runs on length-bucketed
        padded batches (``self.batch_size`` files, ``self.max_batch_seconds`` of padded audio), each
        file's valid frames cut out of its row; any other upstream runs one file at a time.
        """
        todo = [i for i in range(len(waves)) if i not in problems]
        if getattr(upstream, "batch_invariant", False):
            max_samples = int(self.max_batch_seconds * upstream.sample_rate)
            plan = bucket_batches([len(waves[i]) for i in todo], self.batch_size, max_samples)
            batches = [[todo[k] for k in batch] for batch in plan]
        else:
            batches = [[i] for i in todo]
        out = {}
        for batch in batches:
            for i, (hidden, frames) in zip(batch, self._hidden(upstream, [waves[i] for i in batch])):
                if not all(torch.isfinite(h).all() for h in hidden):
                    problems[i] = Problem("non_finite_features", "the upstream gives non-finite features (NaN/inf)")
                    continue
                out[i] = (hidden, frames)
        return dict(sorted(out.items()))

    def _normalise(
        self, normalizer: Normalizer, states: Dict[int, List[torch.Tensor]]
    ) -> Dict[int, List[torch.Tensor]]:
        speaker = None
        if normalizer.kind == "speaker":
            self.speaker_statistics = "own" if len(states) >= self.min_speaker_files else "typical"
        if normalizer.kind == "speaker" and len(states) >= self.min_speaker_files:
            normalizer = copy.copy(normalizer)
            normalizer.speakers_ = {}
            normalizer.add_speaker("files", list(states.values()))
            speaker = "files"
        return {i: normalizer.transform(layers, speaker) for i, layers in states.items()}

    def _hidden(self, upstream, batch: Sequence[np.ndarray]) -> List[Tuple[List[torch.Tensor], torch.Tensor]]:
        """Per waveform of ``batch`` (one padded batch): its hidden states ``[1, T, D]`` and frame count ``[1]``."""
        wavs, lengths = pad_waves(list(batch))
        out = upstream(wavs.to(self.device), lengths.to(self.device))
        check_upstream_output(upstream, out, lengths.to(self.device))
        if len(batch) == 1:
            return [(list(out.hidden_states), out.lengths)]
        return [
            ([h[j : j + 1, : int(out.lengths[j])] for h in out.hidden_states], out.lengths[j : j + 1])
            for j in range(len(batch))
        ]
