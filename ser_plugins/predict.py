"""Emotion predictions for new audio files from a finished run directory."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from ser_plugins.boundary import check_upstream_output
from ser_plugins.data.audio import load_audio
from ser_plugins.data.batching import pad_waves
from ser_plugins.data.normalize import NORMALIZER_FILE, Normalizer
from ser_plugins.errors import UserError
from ser_plugins.io import read_json
from ser_plugins.model import SERModel, build_head, build_upstream
from ser_plugins.recipe import RecipeError, resolve, safe_load
from ser_plugins.training.checkpoint import load_weights


class PredictError(UserError, RuntimeError):
    """The run directory cannot be used for prediction."""


def _fold_checkpoints(run_dir: Path, fold: Optional[str]) -> List[Path]:
    ckpts = sorted((run_dir / "folds").glob("*/best.safetensors"))
    if fold:
        ckpts = [c for c in ckpts if c.parent.name == fold]
    if not ckpts:
        raise PredictError(f"no best.safetensors checkpoint under {run_dir}/folds" + (f"/{fold}" if fold else ""))
    return ckpts


def load_run_recipe(run_dir: Path):
    """The resolved recipe saved in a run directory (a damaged or foreign file is named in the error)."""
    path = Path(run_dir) / "recipe.yaml"
    if not path.exists():
        raise PredictError(f"{run_dir} is not a run directory (no recipe.yaml)")
    try:
        data = safe_load(path.read_text())
    except Exception as exc:  # noqa: BLE001 - any YAML problem (tags, syntax): not a recipe we wrote
        raise PredictError(f"{path}: not a readable recipe ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    try:
        return resolve(data)
    except RecipeError as exc:
        raise PredictError(f"{path}: {exc}") from None


class Predictor:
    """Loads a run's recipe and fold checkpoints; averages the folds' probabilities (an ensemble).

    With normalisation in the recipe each fold's saved normaliser is applied: ``global`` uses the
    fold's training statistics; ``speaker`` treats the given files as one unknown speaker: with at
    least ``min_speaker_files`` files their own statistics are used, with fewer (one file's own
    statistics would erase what the head needs) the typical statistics of the fold's training
    speakers.
    """

    def __init__(self, run_dir: Path, fold: Optional[str] = None, device: str = "cpu",
                 min_speaker_files: int = 10) -> None:
        self.min_speaker_files = min_speaker_files
        self.run_dir = Path(run_dir)
        self.recipe = load_run_recipe(self.run_dir)
        self.labels = read_json(self.run_dir / "run.json")["labels"]
        self.device = device
        r = self.recipe
        self.upstream = build_upstream(r.upstream, r.finetune).to(device).eval()
        self.finetuned = r.finetune.mode != "frozen"
        self.models: List[SERModel] = []
        self.normalizers: List[Optional[Normalizer]] = []
        for ckpt in _fold_checkpoints(self.run_dir, fold):
            # a fine-tuned fold carries its own upstream weights; a frozen one shares the upstream
            upstream = copy.deepcopy(self.upstream) if self.finetuned else self.upstream
            head, kept = build_head(r.features, r.aggregator, r.classifier, upstream, len(self.labels))
            model = SERModel(upstream, head, kept)
            missing, unexpected = model.load_state_dict(load_weights(ckpt), strict=False)
            if unexpected or any(not k.startswith("upstream.") for k in missing):
                raise PredictError(f"{ckpt} does not match the recipe's model (missing {missing[:3]}, unexpected {unexpected[:3]})")
            self.models.append(model.to(device).eval())
            self.normalizers.append(self._normalizer(ckpt.parent))

    def _normalizer(self, fold_dir: Path) -> Optional[Normalizer]:
        if self.recipe.features.normalize is None:
            return None
        path = fold_dir / NORMALIZER_FILE
        if not path.exists():
            raise PredictError(f"{path} is missing: the run was normalised ({self.recipe.features.normalize}) "
                               "and its statistics are needed to predict")
        return Normalizer.load(path)

    @torch.no_grad()
    def predict_files(self, paths: Sequence[str]) -> List[Dict[str, object]]:
        """``[{"path", "emotion", "probabilities": {label: p}}]`` for each file.

        Files are run one at a time (no padding: a file's prediction never depends on the others),
        except for the speaker statistics, which pool all given files.
        """
        waves = [load_audio(p, self.upstream.sample_rate, min_samples=self.upstream.min_samples) for p in paths]
        probs = torch.zeros(len(paths), len(self.labels))
        shared = [self._hidden(self.upstream, w) for w in waves] if not self.finetuned else None
        for model, normalizer in zip(self.models, self.normalizers):
            outs = shared if shared is not None else [self._hidden(model.upstream, w) for w in waves]
            states = [[s[0] for s in model.select_layers(h)] for h, _ in outs]  # per file, [T, D] per layer
            if normalizer is not None:
                states = self._normalise(normalizer, states)
            for i, (st, (_, n)) in enumerate(zip(states, outs)):
                logits = model.forward_features([layer.unsqueeze(0) for layer in st], n)
                probs[i] += torch.softmax(logits.float(), -1)[0].cpu()
        probs /= len(self.models)
        return [{"path": str(p), "emotion": self.labels[int(pr.argmax())],
                 "probabilities": {lab: float(v) for lab, v in zip(self.labels, pr)}} for p, pr in zip(paths, probs)]

    def _normalise(self, normalizer: Normalizer, states: List[List[torch.Tensor]]) -> List[List[torch.Tensor]]:
        speaker = None
        if normalizer.kind == "speaker" and len(states) >= self.min_speaker_files:
            normalizer = copy.copy(normalizer)
            normalizer.speakers_ = {}
            normalizer.add_speaker("files", states)
            speaker = "files"
        return [normalizer.transform(layers, speaker) for layers in states]

    def _hidden(self, upstream, wave) -> tuple:
        wavs, lengths = pad_waves([wave])
        out = upstream(wavs.to(self.device), lengths.to(self.device))
        check_upstream_output(upstream, out, lengths.to(self.device))
        return out.hidden_states, out.lengths
