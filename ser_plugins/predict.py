"""Emotion predictions for new audio files from a finished run directory."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import yaml

from ser_plugins.audio import load_audio
from ser_plugins.checkpoint import load_weights
from ser_plugins.data import pad_waves
from ser_plugins.io import read_json
from ser_plugins.model import SERModel, build_head, build_upstream
from ser_plugins.recipe import resolve


class PredictError(RuntimeError):
    """The run directory cannot be used for prediction."""


def _fold_checkpoints(run_dir: Path, fold: Optional[str]) -> List[Path]:
    ckpts = sorted((run_dir / "folds").glob("*/best.safetensors"))
    if fold:
        ckpts = [c for c in ckpts if c.parent.name == fold]
    if not ckpts:
        raise PredictError(f"no best.safetensors checkpoint under {run_dir}/folds" + (f"/{fold}" if fold else ""))
    return ckpts


class Predictor:
    """Loads a run's recipe and fold checkpoints; averages the folds' probabilities (an ensemble).

    With speaker normalisation in the recipe, the features of the given files are standardised
    with statistics over those files taken together (one unknown speaker).
    """

    def __init__(self, run_dir: Path, fold: Optional[str] = None, device: str = "cpu") -> None:
        self.run_dir = Path(run_dir)
        recipe_path = self.run_dir / "recipe.yaml"
        if not recipe_path.exists():
            raise PredictError(f"{self.run_dir} is not a run directory (no recipe.yaml)")
        self.recipe = resolve(yaml.safe_load(recipe_path.read_text()))
        self.labels = read_json(self.run_dir / "run.json")["labels"]
        self.device = device
        self.upstream = build_upstream(self.recipe).to(device).eval()
        self.models = []
        for ckpt in _fold_checkpoints(self.run_dir, fold):
            head, kept = build_head(self.recipe, self.upstream, len(self.labels))
            model = SERModel(self.upstream, head, kept, self.labels, self.recipe["finetune"]["mode"])
            missing, unexpected = model.load_state_dict(load_weights(ckpt), strict=False)
            if unexpected or any(not k.startswith("upstream.") for k in missing):
                raise PredictError(f"{ckpt} does not match the recipe's model (missing {missing[:3]}, unexpected {unexpected[:3]})")
            self.models.append(model.to(device).eval())

    @torch.no_grad()
    def predict_files(self, paths: Sequence[str]) -> List[Dict[str, object]]:
        """``[{"path", "emotion", "probabilities": {label: p}}]`` for each file."""
        waves = [load_audio(p, self.upstream.sample_rate, min_samples=self.upstream.min_samples) for p in paths]
        wavs, lengths = pad_waves(waves)
        out = self.upstream(wavs.to(self.device), lengths.to(self.device))
        normalize = self.recipe["features"]["normalize"] == "speaker"
        probs = torch.zeros(len(paths), len(self.labels))
        for model in self.models:
            states = model.select_layers(out.hidden_states)
            if normalize:
                states = [_standardise(s, out.lengths) for s in states]
            probs += torch.softmax(model.head(states, out.lengths).float(), -1).cpu()
        probs /= len(self.models)
        return [{"path": str(p), "emotion": self.labels[int(pr.argmax())],
                 "probabilities": {lab: float(v) for lab, v in zip(self.labels, pr)}} for p, pr in zip(paths, probs)]


def _standardise(states: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardise ``[B, T, D]`` with statistics over all valid frames of the batch (one speaker)."""
    mask = (torch.arange(states.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
    frames = states.float()[mask.expand_as(states)].view(-1, states.shape[-1])
    mean, std = frames.mean(0), frames.std(0, unbiased=False).clamp(min=eps)
    return ((states.float() - mean) / std) * mask
