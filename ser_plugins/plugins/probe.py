"""One forward pass of a plugin (or a composed model) on short synthetic input: no data, no download.

``ser validate`` probes a recipe's model, ``ser list --check`` every installed plugin that can be
built from its defaults. Every output is checked with ``ser_plugins.plugins.boundary``, so a plugin that
breaks its contract is caught before any run. Beyond shapes, both run the padding checks of
``ser_plugins.testing`` on tiny synthetic batches (loosely: they catch a plugin that reads its
padding, not rounding): outputs finite for a padded batch, and an utterance's valid upstream
frames (when the upstream declares ``batch_invariant``) and pooled vector the same in a padded
batch as alone. The first fault is one ``PluginContractError`` line naming the plugin.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch

from ser_plugins.plugins import registry
from ser_plugins.plugins.boundary import (
    PluginContractError,
    check_aggregator_declaration,
    check_aggregator_output,
    check_classifier_output,
    check_upstream_declaration,
    check_upstream_output,
    fail,
)

#: options a kind's constructor receives from the core, not from the user
CORE_ARGS = {"upstream": (), "aggregator": ("input_dim",), "classifier": ("input_dim", "num_classes"), "corpus": ()}
#: frame counts of the aggregator padding probe: two of the three utterances are padded
PADDING_PROBE_FRAMES = (9, 4, 2)


def tolerance(dtype: torch.dtype, atol: float = 1e-3, rtol: float = 1e-2) -> Tuple[float, float]:
    """``(atol, rtol)`` of the probes' comparisons: loose (a plugin that reads its padding changes its
    output by far more), and looser for half-precision outputs."""
    return (30 * atol, 5 * rtol) if dtype in (torch.float16, torch.bfloat16) else (atol, rtol)


def difference(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> Optional[str]:
    """None when ``a`` and ``b`` are close (``|a - b| <= atol + rtol * |b|``, NaN only where both are NaN),
    else a one-line description of the largest difference."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        return f"shape {list(a.shape)} vs {list(b.shape)}"
    diff = (a - b).abs()
    both_nan = torch.isnan(a) & torch.isnan(b)
    bad = (diff > atol + rtol * b.abs()) & ~both_nan | (torch.isnan(a) ^ torch.isnan(b))
    if not bool(bad.any()):
        return None
    finite = ~torch.isnan(diff)
    worst = float(diff[finite].max()) if bool(finite.any()) else float("nan")
    return f"max abs difference {worst:.3g} (atol {atol:g}, rtol {rtol:g})"


def _rows(flags: Union[Sequence[bool], torch.Tensor]) -> List[int]:
    return [i for i, flag in enumerate(flags) if flag]


def synthetic_waves(
    lengths: Sequence[int], sample_rate: int = 16000, seed: int = 0, pad_value: Optional[float] = 0.0
) -> Tuple[torch.Tensor, torch.Tensor]:
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


def probe_waves(upstream: Any, seconds: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(wavs, wav_lengths)`` of a probe: two synthetic utterances, zero-padded as in a run (the stricter
    loud-noise padding is ``ser_plugins.testing.check_upstream``'s)."""
    return synthetic_waves(probe_lengths(upstream, seconds), upstream.sample_rate)


@torch.no_grad()
def probe_upstream(upstream: Any, seconds: float = 1.0) -> Any:
    """Check ``upstream``'s declaration, run it once on two synthetic utterances and check its padding
    (see ``check_upstream_padding``); returns its output."""
    check_upstream_declaration(upstream)
    wavs, wav_lengths = probe_waves(upstream, seconds)
    device = _device_of(upstream)
    wavs, wav_lengths = wavs.to(device), wav_lengths.to(device)
    was_training = upstream.training
    upstream.eval()
    try:
        out = upstream(wavs, wav_lengths)
        check_upstream_output(upstream, out, wav_lengths)
        check_upstream_padding(upstream, wavs, wav_lengths, out)
    finally:
        upstream.train(was_training)
    return out


@torch.no_grad()
def check_upstream_padding(upstream: Any, wavs: torch.Tensor, wav_lengths: torch.Tensor, out: Any) -> None:
    """Raise ``PluginContractError`` unless ``out`` (the upstream's output for the padded batch ``wavs``)
    is finite, and, when the upstream declares ``batch_invariant``, each padded utterance's valid frames
    equal its frames when run alone. Call in eval mode; one extra forward per padded utterance."""
    frames = int(out.hidden_states[0].shape[1])
    lengths = out.lengths.tolist()
    for i, state in enumerate(out.hidden_states):
        finite = torch.isfinite(state).flatten(2).all(-1).cpu()  # [B, T]
        for b, n in enumerate(lengths):
            if not bool(finite[b, :n].all()):
                raise fail(
                    upstream,
                    "upstream",
                    f"hidden_states[{i}] of utterance {b} of a padded batch ({n} of {frames} frames valid)",
                    "finite valid frames",
                    "NaN/inf",
                )
            if not bool(finite[b, n:].all()):
                raise fail(
                    upstream,
                    "upstream",
                    f"hidden_states[{i}] of utterance {b} of a padded batch ({n} of {frames} frames valid)",
                    "finite values in the padded frames too (consumers mask them; zeros are customary)",
                    "NaN/inf in the padded frames",
                )
    if upstream.batch_invariant is not True:
        return  # declared: padding may change the valid frames (frozen features are extracted one by one)
    samples = wav_lengths.tolist()
    for b, n in enumerate(samples):
        if n == max(samples):
            continue  # not padded
        alone = upstream(wavs[b : b + 1, :n], wav_lengths[b : b + 1])
        check_upstream_output(upstream, alone, wav_lengths[b : b + 1])
        valid = int(out.lengths[b])
        for i, (h_batch, h_alone) in enumerate(zip(out.hidden_states, alone.hidden_states)):
            ref = h_alone[0, :valid]
            atol, rtol = tolerance(h_batch.dtype)
            scale = float(ref.detach().abs().max()) if ref.numel() else 1.0
            diff = difference(h_batch[b, :valid], ref, atol * max(1.0, scale), rtol)
            if diff:
                raise fail(
                    upstream,
                    "upstream",
                    f"padding: hidden_states[{i}] of utterance {b} ({n} samples) "
                    f"in a zero-padded batch of {max(samples)} samples",
                    "the same valid frames as the utterance alone (it declares batch_invariant = True; "
                    "mask the padding, or declare batch_invariant = False)",
                    diff,
                )


@torch.no_grad()
def probe_aggregator(aggregator: Any, input_dim: int, frames: int = 12) -> torch.Tensor:
    """Check ``aggregator``'s declaration, pool two random sequences once (12 and 5 frames) and check its
    padding (see ``check_aggregator_padding``); returns the first output."""
    check_aggregator_declaration(aggregator)
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(2, frames, input_dim, generator=gen).to(_device_of(aggregator))
    was_training = aggregator.training
    aggregator.eval()
    try:
        out = aggregator(feats, torch.tensor([frames, max(1, frames // 2 - 1)], device=feats.device))
        check_aggregator_output(aggregator, out, feats)
        check_aggregator_padding(aggregator, input_dim)
    finally:
        aggregator.train(was_training)
    return out


def padded_frames(
    lengths: Sequence[int], dim: int, pad: Optional[float], seed: int = 0, extra: int = 2
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(features [B, max + extra, dim], lengths [B])``: random frames, padding set to ``pad`` (None: huge noise)."""
    gen = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(list(lengths), dtype=torch.long)
    feats = torch.randn(len(lengths), int(lengths_t.max()) + extra, dim, generator=gen)
    for i, n in enumerate(lengths):
        feats[i, n:] = 1e4 * torch.randn(feats.shape[1] - n, dim, generator=gen) if pad is None else pad
    return feats, lengths_t


@torch.no_grad()
def check_aggregator_padding(aggregator: Any, input_dim: int, lengths: Sequence[int] = PADDING_PROBE_FRAMES) -> None:
    """Raise ``PluginContractError`` unless the aggregator, in eval mode, pools a batch padded with zeros
    and with huge values to finite vectors, each the same as the utterance's vector alone."""
    device = _device_of(aggregator)
    alone: dict = {}
    for pad, what in ((0.0, "zero"), (None, "huge random")):
        feats, lens = padded_frames(lengths, input_dim, pad)
        feats, lens = feats.to(device), lens.to(device)
        pooled = aggregator(feats, lens)
        check_aggregator_output(aggregator, pooled, feats)
        where = (
            f"output for a batch of {len(lengths)} utterances of {list(lengths)} valid frames of "
            f"{feats.shape[1]}, {what} padding"
        )
        bad = _rows(~torch.isfinite(pooled).all(-1).cpu())
        if bad:
            padded = [i for i in bad if lengths[i] < feats.shape[1]]
            note = " (the padded utterances)" if padded == bad else ""
            raise fail(aggregator, "aggregator", where, "finite values", f"NaN/inf in rows {bad}{note}")
        for i, n in enumerate(lengths):
            if i not in alone:
                single = aggregator(feats[i : i + 1, :n], lens[i : i + 1])
                check_aggregator_output(aggregator, single, feats[i : i + 1, :n])
                if not bool(torch.isfinite(single).all()):
                    raise fail(
                        aggregator,
                        "aggregator",
                        f"output for one unpadded utterance of {n} frames",
                        "finite values",
                        "NaN/inf",
                    )
                alone[i] = single
            atol, rtol = tolerance(pooled.dtype)
            diff = difference(pooled[i], alone[i][0], atol, rtol)
            if diff:
                raise fail(
                    aggregator,
                    "aggregator",
                    f"padding: utterance {i} ({n} of {feats.shape[1]} frames valid) "
                    f"pooled in a batch with {what} padding",
                    "the same vector as the utterance alone (frames at or beyond lengths must change "
                    "nothing: mask them with lengths)",
                    diff,
                )


@torch.no_grad()
def probe_classifier(classifier: Any, input_dim: int, num_classes: int) -> torch.Tensor:
    """Run ``classifier`` once on a random batch of 3 and check the logits (shape, finite)."""
    x = torch.randn(3, input_dim, generator=torch.Generator().manual_seed(0)).to(_device_of(classifier))
    was_training = getattr(classifier, "training", False)
    classifier.eval()
    try:
        out = classifier(x)
    finally:
        classifier.train(was_training)
    check_classifier_output(classifier, out, x, num_classes)
    bad = _rows(~torch.isfinite(out).all(-1).cpu())
    if bad:
        raise fail(classifier, "classifier", "logits for finite input", "finite values", f"NaN/inf in rows {bad}")
    return out


@torch.no_grad()
def probe_model(model: Any, num_classes: int, seconds: float = 1.0) -> torch.Tensor:
    """Run a composed ``SERModel`` once on two synthetic utterances; every boundary is checked on the way.

    Then the padding checks: the upstream's (``check_upstream_padding``, on the same batch), the
    aggregator's (``check_aggregator_padding``, at its input size in this model), and the logits
    finite (else the first stage that is not, named by ``model.locate_non_finite``).
    """
    from ser_plugins.model import aggregator_input_dim, locate_non_finite

    upstream = model.upstream
    check_upstream_declaration(upstream)
    device = _device_of(model)
    wavs, wav_lengths = (t.to(device) for t in probe_waves(upstream, seconds))
    was_training = model.training
    model.eval()
    try:
        out = upstream(wavs, wav_lengths)  # SERModel.forward, stage by stage: the upstream's output is checked too
        check_upstream_output(upstream, out, wav_lengths)
        states = model.select_layers(out.hidden_states)
        logits = model.head(states, out.lengths)
        check_classifier_output(model.head.classifier, logits, wavs, num_classes)
        check_upstream_padding(upstream, wavs, wav_lengths, out)
        check_aggregator_padding(model.head.aggregator, aggregator_input_dim(model))
        if not bool(torch.isfinite(logits).all()):
            where = locate_non_finite(model, states, out.lengths, features=True)
            raise PluginContractError(where or "the model gave NaN/inf logits on synthetic audio")
    finally:
        model.train(was_training)
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
    return [
        p.name
        for p in params
        if p.default is inspect.Parameter.empty
        and p.name not in CORE_ARGS[kind]
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def probe_plugin(spec: registry.PluginSpec) -> str:
    """Import ``spec`` and, when it builds from its defaults, run it once; returns a status note.

    Raises ``PluginError`` (or the plugin's own exception) when it is broken. Presets, corpora and
    plugins with required options are imported only (building them needs weights, data or options).
    """
    obj = registry.load_spec(spec)
    if isinstance(obj, registry.Preset):
        builder = registry.resolve_entry(spec.kind, obj.builder)
        weights = f", weights {obj.weights}" if obj.weights else ""
        about = f": {obj.description}" if obj.description else ""
        return f"ok (preset of {builder.name}{weights}; not run: it needs its weights){about}"
    if not callable(obj):
        raise registry.PluginLoadError(
            f"{spec.kind} plugin {spec.name!r} is neither callable nor a Preset: {obj!r}",
            kind=spec.kind,
            name=spec.name,
            dist=spec.dist,
        )
    if spec.kind == "corpus":
        return "ok (imported; a corpus needs its data to run)"
    if spec.kind == "launcher":
        return "ok (imported; a launcher runs jobs: not run here)"
    missing = required_options(spec.kind, obj)
    if missing:
        return f"ok (imported; not run: needs option{'s' if len(missing) > 1 else ''} {', '.join(missing)})"
    name = spec.qualified_name
    if spec.kind == "upstream":
        probe_upstream(registry.create_upstream(name), seconds=0.5)
    elif spec.kind == "aggregator":
        probe_aggregator(registry.create_aggregator(name, 8), 8)
    elif spec.kind == "classifier":
        probe_classifier(registry.create_classifier(name, 8, 4), 8, 4)
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
