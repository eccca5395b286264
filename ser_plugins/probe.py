"""One forward pass of a plugin (or a composed model) on short synthetic input: no data, no download.

``ser validate`` probes a recipe's model, ``ser list --check`` every installed plugin that can be
built from its defaults. Every output is checked with ``ser_plugins.boundary``, so a plugin that
breaks its contract is caught before any run.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, List, Optional, Sequence

import torch

from ser_plugins import registry
from ser_plugins.boundary import (check_aggregator_declaration, check_aggregator_output, check_classifier_output,
                                  check_upstream_declaration, check_upstream_output)

#: options a kind's constructor receives from the core, not from the user
CORE_ARGS = {"upstream": (), "aggregator": ("input_dim",), "classifier": ("input_dim", "num_classes"), "corpus": ()}


def synthetic_waves(lengths: Sequence[int], sample_rate: int = 16000, seed: int = 0,
                    pad_value: Optional[float] = 0.0) -> tuple:
    """``(wavs [B, S], wav_lengths [B])``: a gliding tone in noise per utterance, right-padded.

    ``pad_value=None`` fills the padding with loud noise instead of zeros (to test that padding
    never reaches the valid frames).
    """
    gen = torch.Generator().manual_seed(seed)
    wav_lengths = torch.tensor([int(n) for n in lengths], dtype=torch.long)
    total = int(wav_lengths.max())
    wavs = torch.empty(len(lengths), total)
    if pad_value is None:
        wavs.normal_(0.0, 3.0, generator=gen)
    else:
        wavs.fill_(pad_value)
    for i, n in enumerate(wav_lengths.tolist()):
        t = torch.arange(n, dtype=torch.float64) / sample_rate
        freq = 150.0 + 60.0 * i
        tone = 0.3 * torch.sin(2 * math.pi * (freq * t + 40.0 * t * t))
        wavs[i, :n] = (tone + 0.05 * torch.randn(n, generator=gen, dtype=torch.float64)).float()
    return wavs, wav_lengths


def probe_lengths(upstream: Any, seconds: float = 1.0) -> List[int]:
    """Two utterance lengths for a probe: about ``seconds`` and a bit over half of it (both >= min_samples)."""
    shortest = int(getattr(upstream, "min_samples", 1) or 1)
    longest = max(int(seconds * upstream.sample_rate), 2 * shortest)
    return [longest, max(shortest, (longest * 3) // 5)]


@torch.no_grad()
def probe_upstream(upstream: Any, seconds: float = 1.0) -> Any:
    """Check ``upstream``'s declaration and run it once on two synthetic utterances; returns its output."""
    check_upstream_declaration(upstream)
    wavs, wav_lengths = synthetic_waves(probe_lengths(upstream, seconds), upstream.sample_rate)
    device = _device_of(upstream)
    wav_lengths = wav_lengths.to(device)
    was_training = upstream.training
    upstream.eval()
    try:
        out = upstream(wavs.to(device), wav_lengths)
    finally:
        upstream.train(was_training)
    check_upstream_output(upstream, out, wav_lengths)
    return out


@torch.no_grad()
def probe_aggregator(aggregator: Any, input_dim: int, frames: int = 12) -> torch.Tensor:
    """Check ``aggregator``'s declaration and pool two random sequences once (12 and 5 frames)."""
    check_aggregator_declaration(aggregator)
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, frames, input_dim, generator=gen).to(_device_of(aggregator))
    out = aggregator(feats, torch.tensor([frames, max(1, frames // 2 - 1)], device=feats.device))
    check_aggregator_output(aggregator, out, feats)
    return out


@torch.no_grad()
def probe_classifier(classifier: Any, input_dim: int, num_classes: int) -> torch.Tensor:
    """Run ``classifier`` once on a random batch of 3 and check the logits' shape."""
    x = torch.randn(3, input_dim, generator=torch.Generator().manual_seed(0)).to(_device_of(classifier))
    was_training = getattr(classifier, "training", False)
    classifier.eval()
    try:
        out = classifier(x)
    finally:
        classifier.train(was_training)
    check_classifier_output(classifier, out, x, num_classes)
    return out


@torch.no_grad()
def probe_model(model: Any, num_classes: int, seconds: float = 1.0) -> torch.Tensor:
    """Run a composed ``SERModel`` once on two synthetic utterances; every boundary is checked on the way."""
    upstream = model.upstream
    check_upstream_declaration(upstream)
    wavs, wav_lengths = synthetic_waves(probe_lengths(upstream, seconds), upstream.sample_rate)
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        logits = model(wavs.to(device), wav_lengths.to(device))
    finally:
        model.train(was_training)
    check_classifier_output(model.head.classifier, logits, wavs.to(device), num_classes)
    return logits


def _device_of(module: Any) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def required_options(kind: str, builder: Any) -> List[str]:
    """Constructor options without a default (beyond those the core passes, e.g. ``input_dim``)."""
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in CORE_ARGS[kind]
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def probe_plugin(spec: registry.PluginSpec) -> str:
    """Import ``spec`` and, when it builds from its defaults, run it once; returns a status note.

    Raises ``PluginError`` (or the plugin's own exception) when it is broken. Presets, corpora and
    plugins with required options are imported only (building them needs weights, data or options).
    """
    obj = registry.load_spec(spec)
    if isinstance(obj, registry.Preset):
        builder = registry.resolve(spec.kind, obj.builder)
        weights = f", weights {obj.weights}" if obj.weights else ""
        about = f": {obj.description}" if obj.description else ""
        return f"ok (preset of {builder.name}{weights}; not run: it needs its weights){about}"
    if not callable(obj):
        raise registry.PluginLoadError(f"{spec.kind} plugin {spec.name!r} is neither callable nor a Preset: {obj!r}")
    if spec.kind == "corpus":
        return "ok (imported; a corpus needs its data to run)"
    if spec.kind == "launcher":
        return "ok (imported; a launcher runs jobs: not run here)"
    missing = required_options(spec.kind, obj)
    if missing:
        return f"ok (imported; not run: needs option{'s' if len(missing) > 1 else ''} {', '.join(missing)})"
    name = spec.qualified_name
    if spec.kind == "upstream":
        probe_upstream(registry.create("upstream", name), seconds=0.5)
    elif spec.kind == "aggregator":
        probe_aggregator(registry.create("aggregator", name, 8), 8)
    elif spec.kind == "classifier":
        probe_classifier(registry.create("classifier", name, 8, 4), 8, 4)
    defaults = dict(getattr(obj, "training_defaults", None) or {})
    trains = f"; training defaults: {', '.join(f'{k}={v!r}' for k, v in defaults.items())}" if defaults else ""
    return f"ok (ran once{trains})"


def report_clashes(kind: Optional[str] = None, pattern: str = "*") -> int:
    """Print one line per name registered by several distributions; returns how many are ambiguous."""
    import fnmatch

    ambiguous = 0
    for specs in registry.clashes(kind):
        if not fnmatch.fnmatch(specs[0].name, pattern):
            continue
        dists = ", ".join(s.dist for s in specs)
        winner = registry.clash_winner(specs)
        if winner is None:
            ambiguous += 1
            note = f"ambiguous: name it as {' or '.join(s.qualified_name for s in specs)}"
        else:
            others = " or ".join(s.qualified_name for s in specs if s is not winner)
            note = f"'{winner.name}' means {winner.qualified_name}; the other is {others}"
        print(f"CLASH {specs[0].kind} {specs[0].name!r} registered by {dists}: {note}")
    return ambiguous
