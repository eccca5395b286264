"""Cheap run-time checks where a plugin's output crosses into the core.

A plugin that breaks its contract (see docs/plugins.md) stops the run with one
``PluginContractError`` line naming the plugin, its distribution and what was wrong (expected vs
got), instead of a traceback from deep inside the runner or, worse, silently wrong results. The
checks look at shapes, dtypes and devices (no synchronisation) and compare the frame lengths
with the plugin's own ``frame_lengths()`` rule (one small device-to-host read per batch). They are
skipped while ``ser export`` traces a model (see ``_tracing``).
"""

from __future__ import annotations

import numbers
from typing import Any, List, Optional, Sequence

import torch

from ser_plugins.plugins.registry import PluginError


class PluginContractError(PluginError):
    """A plugin's declaration or output breaks its contract; the message names it and says what is wrong."""


def describe(plugin: Any, kind: str) -> str:
    """``upstream 'name' (distribution 'dist', module.Class)`` for messages."""
    name = getattr(plugin, "plugin_name", None) or type(plugin).__name__
    dist = getattr(plugin, "plugin_dist", None)
    if dist is None:
        from ser_plugins.plugins.fingerprint import distribution_of

        dist = distribution_of(plugin)["name"] or "unknown"
    return f"{kind} {name!r} (distribution {dist!r}, {type(plugin).__module__}.{type(plugin).__qualname__})"


def fail(plugin: Any, kind: str, what: str, expected: Any, got: Any) -> PluginContractError:
    """The error for ``plugin`` breaking its contract: ``what`` was wrong, ``expected`` vs ``got``."""
    return PluginContractError(
        f"{describe(plugin, kind)} broke the {kind} contract: {what}: expected {expected}, got {got}"
    )


def _shape(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {list(x.shape)} on {x.device}"
    return f"{type(x).__name__}"


def _preview(values: Sequence[Any], limit: int = 8, focus: Optional[int] = None) -> str:
    """A short list for a message; ``focus`` (an index) is always shown, with its neighbours, however far in."""
    values = list(values)
    if len(values) <= limit:
        return "[" + ", ".join(str(v) for v in values) + "]"
    if focus is None or focus < limit - 1:
        return "[" + ", ".join(str(v) for v in values[:limit]) + f", ... ({len(values)} in all)]"
    lo, hi = max(3, focus - 2), min(len(values), focus + 3)
    parts = [str(v) for v in values[:3]] + ["..."] + [str(v) for v in values[lo:hi]]
    tail = ", ..." if hi < len(values) else ""
    return "[" + ", ".join(parts) + tail + f" ({len(values)} in all)]"


def _first(flags: Sequence[bool]) -> int:
    return next(i for i, flag in enumerate(flags) if flag)


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) > 0


# --- declarations (checked once, when the plugin is built) ------------------------------------------
def check_upstream_declaration(upstream: Any) -> None:
    """``sample_rate``, ``hop_length``, ``min_samples`` positive integers; ``hidden_sizes`` a non-empty list of them."""
    sizes = getattr(upstream, "hidden_sizes", None)
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) == 0:
        raise fail(
            upstream,
            "upstream",
            "hidden_sizes (one feature size per exposed layer)",
            "a non-empty list of positive integers",
            repr(sizes),
        )
    bad = [s for s in sizes if not _positive_int(s)]
    if bad:
        raise fail(upstream, "upstream", "hidden_sizes", "positive integers", repr(list(sizes)))
    for attr in ("sample_rate", "hop_length", "min_samples"):
        value = getattr(upstream, attr, None)
        if not _positive_int(value):
            raise fail(upstream, "upstream", attr, "a positive integer", repr(value))
    for attr in ("utterance_normalized", "batch_invariant"):
        value = getattr(upstream, attr, None)
        if not isinstance(value, bool):
            raise fail(upstream, "upstream", attr, "True or False", repr(value))


def check_aggregator_declaration(aggregator: Any) -> None:
    """``output_dim`` a positive integer, ``uses_only_mean`` a bool."""
    value = getattr(aggregator, "output_dim", None)
    if not _positive_int(value):
        raise fail(aggregator, "aggregator", "output_dim", "a positive integer", repr(value))
    if not isinstance(getattr(aggregator, "uses_only_mean", False), bool):
        raise fail(aggregator, "aggregator", "uses_only_mean", "True or False", repr(aggregator.uses_only_mean))


# --- outputs (checked on every call) ----------------------------------------------------------------
def _tracing() -> bool:
    """True while ``torch.export`` / ``torch.onnx`` trace the model (``ser export``): the checks read
    concrete sizes and values, which would pin the exported graph's dynamic axes. An export is
    verified against ``ser predict``, which runs the checks, before anything is written."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


def check_upstream_output(
    upstream: Any, output: Any, wav_lengths: torch.Tensor, batch_size: Optional[int] = None
) -> None:
    """Raise ``PluginContractError`` unless ``output`` is a valid ``UpstreamOutput`` for this input.

    Valid: ``hidden_states`` a list of ``num_layers`` floating tensors ``[B, T, hidden_sizes[i]]``
    (one T for all), on the input's device; ``lengths`` an integer tensor ``[B]`` on that device
    with ``1 <= lengths <= T`` and equal to ``upstream.frame_lengths(wav_lengths)``.
    """
    if _tracing():
        return
    kind = "upstream"
    batch = int(wav_lengths.shape[0]) if batch_size is None else int(batch_size)
    device = wav_lengths.device
    if not (hasattr(output, "hidden_states") and hasattr(output, "lengths")):
        raise fail(upstream, kind, "forward() return value", "UpstreamOutput(hidden_states, lengths)", _shape(output))
    states, lengths = output.hidden_states, output.lengths
    if isinstance(states, torch.Tensor) or not isinstance(states, (list, tuple)):
        raise fail(upstream, kind, "hidden_states", "a list with one [B, T, D] tensor per layer", _shape(states))
    sizes = list(getattr(upstream, "hidden_sizes", None) or [])
    if not sizes:
        check_upstream_declaration(upstream)
    if len(states) != len(sizes):
        raise fail(
            upstream,
            kind,
            "number of hidden_states (layers)",
            f"{len(sizes)} as declared by hidden_sizes={sizes}",
            len(states),
        )
    frames: Optional[int] = None
    for i, (state, size) in enumerate(zip(states, sizes)):
        where = f"hidden_states[{i}]"
        if not isinstance(state, torch.Tensor):
            raise fail(upstream, kind, where, "a tensor [B, T, D]", _shape(state))
        if state.dim() != 3:
            raise fail(upstream, kind, f"{where} shape", f"[B={batch}, T, D={size}]", list(state.shape))
        if state.shape[0] != batch:
            raise fail(
                upstream,
                kind,
                f"{where} batch size",
                f"{batch} (the number of input waveforms)",
                f"{state.shape[0]} (shape {list(state.shape)})",
            )
        if state.shape[2] != size:
            hint = "; it looks like [B, D, T]: transpose to [B, T, D]" if state.shape[1] == size else ""
            raise fail(
                upstream,
                kind,
                f"{where} feature size",
                f"{size} as declared by hidden_sizes[{i}]",
                f"{state.shape[2]} (shape {list(state.shape)}){hint}",
            )
        if frames is None:
            frames = int(state.shape[1])
        elif state.shape[1] != frames:
            raise fail(upstream, kind, f"{where} frames", f"{frames} like hidden_states[0]", state.shape[1])
        if not state.is_floating_point():
            raise fail(upstream, kind, f"{where} dtype", "a floating-point dtype", state.dtype)
        if state.device != device:
            raise fail(upstream, kind, f"{where} device", f"the input's device {device}", state.device)
    if not frames:  # 0 frames (None: no layers, which the declaration check refuses)
        raise fail(upstream, kind, "hidden_states frames (T)", "at least 1", 0)
    if not isinstance(lengths, torch.Tensor):
        raise fail(upstream, kind, "lengths", f"an integer tensor [B={batch}]", _shape(lengths))
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise fail(upstream, kind, "lengths dtype", "an integer dtype (torch.long)", lengths.dtype)
    if tuple(lengths.shape) != (batch,):
        raise fail(upstream, kind, "lengths shape", f"[{batch}]", list(lengths.shape))
    if lengths.device != device:
        raise fail(upstream, kind, "lengths device", f"the input's device {device}", lengths.device)
    try:
        expected = torch.as_tensor(upstream.frame_lengths(wav_lengths), device=device)
    except Exception as exc:  # a broken frame_lengths() is a contract breach too
        raise fail(
            upstream, kind, "frame_lengths(wav_lengths)", "frame counts [B]", f"{type(exc).__name__}: {exc}"
        ) from None
    if tuple(expected.shape) != (batch,):
        raise fail(upstream, kind, "frame_lengths(wav_lengths) shape", f"[{batch}]", list(expected.shape))
    bad = (lengths < 1) | (lengths > frames) | (lengths != expected)
    if bool(bad.any()):  # the one device-to-host read
        got, want, samples = lengths.tolist(), expected.tolist(), wav_lengths.tolist()
        out_of_range = [not 1 <= n <= frames for n in got]
        if any(out_of_range):  # the first offending value is quoted, however far into the batch
            i = _first(out_of_range)
            raise fail(
                upstream,
                kind,
                f"lengths (valid frames of each of the {frames} output frames)",
                f"values in 1..{frames}",
                f"lengths[{i}] = {got[i]} in {_preview(got, focus=i)}",
            )
        i = _first([g != w for g, w in zip(got, want)])
        raise fail(
            upstream,
            kind,
            f"lengths for wav_lengths {_preview(samples, focus=i)}",
            f"its frame_lengths() rule {_preview(want, focus=i)}",
            f"{_preview(got, focus=i)} (lengths[{i}] = {got[i]} for {samples[i]} samples, "
            f"frame_lengths() says {want[i]})",
        )


def check_aggregator_output(aggregator: Any, output: Any, features: torch.Tensor) -> None:
    """Raise ``PluginContractError`` unless ``output`` is a floating ``[B, output_dim]`` tensor on the input's
    device."""
    if _tracing():
        return
    kind = "aggregator"
    batch = int(features.shape[0])
    dim = getattr(aggregator, "output_dim", None)
    if not isinstance(output, torch.Tensor):
        raise fail(
            aggregator, kind, "forward() return value", f"a tensor [B={batch}, output_dim={dim}]", _shape(output)
        )
    if tuple(output.shape) != (batch, dim):
        raise fail(aggregator, kind, "output shape", f"[B={batch}, output_dim={dim}]", list(output.shape))
    if not output.is_floating_point():
        raise fail(aggregator, kind, "output dtype", "a floating-point dtype", output.dtype)
    if output.device != features.device:
        raise fail(aggregator, kind, "output device", f"the input's device {features.device}", output.device)


def check_classifier_output(
    classifier: Any, output: Any, inputs: torch.Tensor, num_classes: Optional[int] = None
) -> None:
    """Raise ``PluginContractError`` unless ``output`` is a floating ``[B, C]`` tensor on the input's device."""
    if _tracing():
        return
    kind = "classifier"
    batch = int(inputs.shape[0])
    want: List[Any] = [batch, num_classes if num_classes is not None else "C"]
    if not isinstance(output, torch.Tensor):
        raise fail(classifier, kind, "forward() return value", f"a tensor of logits {want}", _shape(output))
    if output.dim() != 2 or output.shape[0] != batch or (num_classes is not None and output.shape[1] != num_classes):
        raise fail(classifier, kind, "logits shape", want, list(output.shape))
    if not output.is_floating_point():
        raise fail(classifier, kind, "logits dtype", "a floating-point dtype", output.dtype)
    if output.device != inputs.device:
        raise fail(classifier, kind, "logits device", f"the input's device {inputs.device}", output.device)
