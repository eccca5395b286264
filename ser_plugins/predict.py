"""Emotion predictions for new audio files from a finished run directory."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import yaml

from ser_plugins.audio import load_audio
from ser_plugins.boundary import check_upstream_output
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

    With speaker normalisation in the recipe, the given files are treated as one unknown speaker:
    with at least ``min_speaker_files`` files their features are standardised with statistics
    over those files; with fewer (one file's own statistics would erase what the head needs), the
    run's typical speaker statistics are used.
    """

    def __init__(self, run_dir: Path, fold: Optional[str] = None, device: str = "cpu",
                 min_speaker_files: int = 10) -> None:
        self.min_speaker_files = min_speaker_files
        self.run_dir = Path(run_dir)
        recipe_path = self.run_dir / "recipe.yaml"
        if not recipe_path.exists():
            raise PredictError(f"{self.run_dir} is not a run directory (no recipe.yaml)")
        self.recipe = resolve(yaml.safe_load(recipe_path.read_text()))
        self.labels = read_json(self.run_dir / "run.json")["labels"]
        self.device = device
        self.upstream = build_upstream(self.recipe).to(device).eval()
        self.finetuned = self.recipe["finetune"]["mode"] != "frozen"
        self.models = []
        for ckpt in _fold_checkpoints(self.run_dir, fold):
            # a fine-tuned fold carries its own upstream weights; a frozen one shares the upstream
            upstream = copy.deepcopy(self.upstream) if self.finetuned else self.upstream
            head, kept = build_head(self.recipe, upstream, len(self.labels))
            model = SERModel(upstream, head, kept, self.labels, self.recipe["finetune"]["mode"])
            missing, unexpected = model.load_state_dict(load_weights(ckpt), strict=False)
            if unexpected or any(not k.startswith("upstream.") for k in missing):
                raise PredictError(f"{ckpt} does not match the recipe's model (missing {missing[:3]}, unexpected {unexpected[:3]})")
            self.models.append(model.to(device).eval())

    @torch.no_grad()
    def predict_files(self, paths: Sequence[str]) -> List[Dict[str, object]]:
        """``[{"path", "emotion", "probabilities": {label: p}}]`` for each file.

        Files are run one at a time (no padding: a file's prediction never depends on the others),
        except for the speaker statistics, which pool all given files.
        """
        waves = [load_audio(p, self.upstream.sample_rate, min_samples=self.upstream.min_samples) for p in paths]
        normalize = self.recipe["features"]["normalize"] == "speaker"
        probs = torch.zeros(len(paths), len(self.labels))
        shared = [self._hidden(self.upstream, w) for w in waves] if not self.finetuned else None
        for model in self.models:
            outs = shared if shared is not None else [self._hidden(model.upstream, w) for w in waves]
            states = [model.select_layers(h) for h, _ in outs]
            if normalize:
                states = self._speaker_standardise(states)
            for i, (st, (_, n)) in enumerate(zip(states, outs)):
                probs[i] += torch.softmax(model.head(st, n).float(), -1)[0].cpu()
        probs /= len(self.models)
        return [{"path": str(p), "emotion": self.labels[int(pr.argmax())],
                 "probabilities": {lab: float(v) for lab, v in zip(self.labels, pr)}} for p, pr in zip(paths, probs)]

    def _speaker_standardise(self, states: List[List[torch.Tensor]]) -> List[List[torch.Tensor]]:
        if len(states) >= self.min_speaker_files:
            return _standardise_together(states)
        path = self.run_dir / "speaker_stats.safetensors"
        if not path.exists():
            raise PredictError(f"{path} is missing: pass at least {self.min_speaker_files} files of the speaker")
        typical = load_weights(path)
        return [[(layer.float() - typical[f"mean.{k}"]) / typical[f"std.{k}"] for k, layer in enumerate(layers)]
                for layers in states]

    def _hidden(self, upstream, wave) -> tuple:
        wavs, lengths = pad_waves([wave])
        out = upstream(wavs.to(self.device), lengths.to(self.device))
        check_upstream_output(upstream, out, lengths.to(self.device))
        return out.hidden_states, out.lengths


def _standardise_together(states: List[List[torch.Tensor]], eps: float = 1e-5) -> List[List[torch.Tensor]]:
    """Standardise every layer with statistics over all frames of all the given files (one speaker)."""
    out = [list(layers) for layers in states]
    for k in range(len(states[0])):
        frames = torch.cat([layers[k][0].float() for layers in states], dim=0)
        mean, std = frames.mean(0), frames.std(0, unbiased=False).clamp(min=eps)
        for layers in out:
            layers[k] = (layers[k].float() - mean) / std
    return out
