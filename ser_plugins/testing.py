"""Contract checks a plugin author runs in their own tests, as scikit-learn's ``check_estimator``.

    from ser_plugins.testing import check_upstream
    def test_contract():
        check_upstream("my_upstream", layers=3)       # a registered name, or the class itself

Each ``check_*`` builds the plugin (through the registry for a name, directly for a class), runs
every check the built-in plugins pass and raises ``ContractCheckError`` (an ``AssertionError``)
naming the plugin, the check and what was expected vs what came back; when several checks fail,
one ``ContractCheckError`` lists them all (its ``failures`` holds one error per check). It returns
the names of the checks that ran (a skipped check says why). A registered plugin that cannot be
imported fails check ``'import'``, a constructor that raises fails check ``'build'``: test
failures too (not pytest errors), with the original exception as the cause.

Each check is also a function of its own (``check_upstream_padding_invariance(upstream)``, ...),
listed per kind in ``UPSTREAM_CHECKS``, ``AGGREGATOR_CHECKS``, ``CLASSIFIER_CHECKS`` and
``CORPUS_CHECKS`` (``checks_for(kind, devices)`` adds the per-device ones); each runs alone on
an instance. ``parametrize_checks(kind, plugin, **options)`` turns them into one pytest test
each (scikit-learn's ``parametrize_with_checks``). Importing this module does not import pytest.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import inspect
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ser_plugins.plugins import registry
from ser_plugins.plugins.boundary import (
    PluginContractError,
    check_aggregator_declaration,
    check_aggregator_output,
    check_classifier_output,
    check_upstream_declaration,
    check_upstream_output,
    describe,
)
from ser_plugins.plugins.contracts import FINETUNE_MODES, NO_LABEL
from ser_plugins.plugins.probe import difference, synthetic_waves
from ser_plugins.recipe import PROTOCOLS

__all__ = [
    "AGGREGATOR_CHECKS",
    "CLASSIFIER_CHECKS",
    "CORPUS_CHECKS",
    "UPSTREAM_CHECKS",
    "Check",
    "ContractCheckError",
    "check_aggregator",
    "check_aggregator_declares_output_dim",
    "check_aggregator_deterministic",
    "check_aggregator_device",
    "check_aggregator_gradients",
    "check_aggregator_output_shape",
    "check_aggregator_padding_invariance",
    "check_aggregator_uses_only_mean",
    "check_classifier",
    "check_classifier_batch_independence",
    "check_classifier_deterministic",
    "check_classifier_device",
    "check_classifier_gradients",
    "check_classifier_output_shape",
    "check_corpus",
    "check_corpus_declares_labels",
    "check_corpus_deterministic",
    "check_corpus_loads",
    "check_corpus_problems",
    "check_corpus_utterance_fields",
    "check_upstream",
    "check_upstream_declares_attributes",
    "check_upstream_deterministic",
    "check_upstream_device",
    "check_upstream_exact_frames",
    "check_upstream_finetune_modes",
    "check_upstream_identity",
    "check_upstream_output_shapes",
    "check_upstream_padding_invariance",
    "checks_for",
    "parametrize_checks",
    "run_checks",
]

SPLITS = ("train", "dev", "valid", "validation", "test")
#: the settings each kind's checks take (besides ``factory`` and ``device``); the rest of a
#: ``check_*`` call's keywords are the plugin's own options
SETTINGS: Dict[str, Dict[str, Any]] = {
    "upstream": {"atol": 1e-4, "rtol": 1e-3, "seconds": 0.5},
    "aggregator": {"input_dim": 8, "atol": 1e-5, "rtol": 1e-4},
    "classifier": {"input_dim": 8, "num_classes": 4, "atol": 1e-5, "rtol": 1e-4},
    "corpus": {},
}


class ContractCheckError(PluginContractError, AssertionError):
    """A plugin failed contract checks; the message names the plugin, the check and the difference.

    ``check`` is the failed check's name (None when several failed); ``failures`` holds one
    ``ContractCheckError`` per failed check (just this one when one failed). ``kind``, ``name``
    and ``dist`` name the plugin, as every ``PluginError`` does.
    """

    def __init__(
        self,
        message: str = "",
        *,
        check: Optional[str] = None,
        failures: Sequence["ContractCheckError"] = (),
        **who: Any,
    ) -> None:
        super().__init__(message, **who)
        self.check = check
        self.failures: List[ContractCheckError] = list(failures) or [self]


def _who(plugin: Any, kind: str) -> Dict[str, Any]:
    return {"kind": kind, "name": getattr(plugin, "plugin_name", None), "dist": getattr(plugin, "plugin_dist", None)}


def _fail(plugin: Any, kind: str, check: str, expected: Any, got: Any) -> ContractCheckError:
    return ContractCheckError(
        f"{describe(plugin, kind)} failed check {check!r}: expected {expected}, got {got}",
        check=check,
        **_who(plugin, kind),
    )


def _as_failure(plugin: Any, kind: str, check: str, exc: Exception) -> ContractCheckError:
    """A boundary error or the plugin's own exception during ``check``, as that check's failure."""
    who = describe(plugin, kind)
    detail = str(exc) if isinstance(exc, PluginContractError) else f"raised {type(exc).__name__}: {exc}"
    detail = detail[len(who) :].lstrip() if detail.startswith(who) else detail
    return ContractCheckError(f"{who} failed check {check!r}: {detail}", check=check, **_who(plugin, kind))


def _contract_check(kind: str, name: str) -> Callable[[Callable[..., Optional[str]]], Callable[..., Optional[str]]]:
    """Make ``func(plugin, **settings)`` a named check: any other exception becomes its ``ContractCheckError``.

    ``name`` may contain ``{device}`` (filled from the ``device`` setting).
    """

    def wrap(func: Callable[..., Optional[str]]) -> Callable[..., Optional[str]]:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def run(plugin: Any, /, **settings: Any) -> Optional[str]:
            bound = signature.bind(plugin, **settings)  # a wrong setting is the caller's TypeError, not a failure
            try:
                return func(*bound.args, **bound.kwargs)
            except ContractCheckError:
                raise
            except Exception as exc:  # a boundary error or the plugin's own exception
                bound.apply_defaults()
                check = name.format(device=torch.device(bound.arguments["device"])) if "{device}" in name else name
                raise _as_failure(plugin, kind, check, exc) from exc

        run.kind, run.check_name = kind, name  # type: ignore[attr-defined]  # tags on the function, read by _checks
        return run

    return wrap


@dataclass(frozen=True)
class Check:
    """One named contract check of a kind: ``check(plugin, **settings)`` runs it alone.

    Raises ``ContractCheckError`` or returns None (passed) or a note (skipped, and why). Settings
    the check's function does not take are ignored, so every check of a kind takes the same ones.
    """

    kind: str
    name: str
    func: Callable[..., Optional[str]]

    def __call__(self, plugin: Any, /, **settings: Any) -> Optional[str]:
        return self.func(plugin, **_accepted(self.func, settings))


def _accepted(func: Callable, settings: Dict[str, Any]) -> Dict[str, Any]:
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(settings)
    return {k: v for k, v in settings.items() if k in params}


# --- what checks of one run share: inputs and outputs computed once -----------------------------
_MEMO: contextvars.ContextVar[Optional[Dict[Any, Any]]] = contextvars.ContextVar("ser_plugins_check_memo", default=None)


def _memo(key: Tuple[Any, ...], compute: Callable[[], Any]) -> Any:
    """``compute()``, kept for the other checks of the same ``run_checks`` (a check alone computes it)."""
    memo = _MEMO.get()
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()  # not kept when it raises: each check that needs it reports the failure
    return memo[key]


def _build(kind: str, plugin: Any, args: tuple, kwargs: dict) -> Tuple[Any, Optional[Callable[[], Any]]]:
    """``(instance, factory for another instance or None)`` from a name, a class/factory or an instance.

    A registered plugin that cannot be found, imported or built fails check ``'import'`` or ``'build'``
    (a ``ContractCheckError``: a test failure in pytest, with the plugin's own error as its cause).
    """
    if isinstance(plugin, str):
        try:
            registry.load(kind, plugin)
        except registry.PluginError as exc:
            raise ContractCheckError(
                f"{kind} {plugin!r} failed check 'import': {exc}",
                check="import",
                kind=kind,
                name=exc.name or plugin,
                dist=exc.dist,
            ) from exc

        def by_name() -> Any:
            return registry.create(kind, plugin, *args, **kwargs)

        return _first_instance(kind, repr(plugin), by_name), by_name
    if isinstance(plugin, torch.nn.Module) or (kind == "corpus" and not callable(plugin)):
        if kwargs:
            raise TypeError(f"options {sorted(kwargs)} were given with an already built {kind}")
        return plugin, None
    if not callable(plugin):
        raise TypeError(f"expected a {kind} name, class or instance, got {plugin!r}")
    name = getattr(plugin, "__qualname__", repr(plugin))
    options = registry.resolved_options(kind, name, plugin, args, kwargs)

    def factory() -> Any:
        obj = plugin(*args, **kwargs)
        obj.plugin_name = type(obj).__name__ if name == "<lambda>" else name
        if not getattr(obj, "config", None):
            obj.config = options
        return obj

    return _first_instance(kind, repr(name), factory), factory


def _first_instance(kind: str, name: str, factory: Callable[[], Any]) -> Any:
    """``factory()``; a constructor that raises fails check ``'build'`` (bad options stay a ``PluginError``
    with the registry's hint, which ``ContractCheckError`` is too)."""
    try:
        return factory()
    except ContractCheckError:
        raise
    except Exception as exc:  # the plugin's own exception, or the registry's option check
        detail = str(exc) if isinstance(exc, registry.PluginError) else f"raised {type(exc).__name__}: {exc}"
        raise ContractCheckError(
            f"{kind} {name} failed check 'build': {detail}", check="build", kind=kind, name=name.strip("'")
        ) from exc


def _devices(devices: Optional[Sequence[str]]) -> List[torch.device]:
    if devices is not None:
        return [torch.device(d) for d in devices]
    return [torch.device("cuda")] if torch.cuda.is_available() else []


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> Optional[str]:
    """None when close, else a one-line description of the largest difference."""
    return difference(a, b, atol, rtol)


def _parameter_gradients(plugin: Any, kind: str) -> Optional[str]:
    """After a backward pass: the trainable parameters got finite gradients, not all zero (then cleared).

    Returns the skip note for a plugin without trainable parameters.
    """
    params = [p for p in plugin.parameters() if p.requires_grad]
    grads = [p.grad for p in params if p.grad is not None]
    if params and (not grads or not any(bool(g.abs().sum() > 0) for g in grads)):
        raise _fail(plugin, kind, "gradients", "non-zero gradients on the trainable parameters", "none")
    if not all(bool(torch.isfinite(g).all()) for g in grads):
        raise _fail(plugin, kind, "gradients", "finite parameter gradients", "NaN/inf")
    for p in params:
        p.grad = None
    return None if params else "no trainable parameters"


# --- upstreams --------------------------------------------------------------------------------------
def _upstream_inputs(upstream: Any, seconds: float) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """``(wavs, wav_lengths, lengths)``: three utterances (the longest, a middle one, the shortest
    allowed), loud noise in the padding."""

    def compute() -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
        sr, hop, shortest = upstream.sample_rate, upstream.hop_length, upstream.min_samples
        longest = max(int(seconds * sr), 4 * shortest, shortest + 8 * hop)
        lengths = [longest, max(shortest, (longest * 11) // 20 + 37), shortest]
        wavs, wav_lengths = synthetic_waves(lengths, sr, pad_value=None)
        return wavs, wav_lengths, lengths

    return _memo(("inputs", id(upstream), seconds), compute)


def _upstream_batch(upstream: Any, seconds: float) -> Any:
    """The upstream's output (checked against the contract) for the padded batch, in eval mode."""
    wavs, wav_lengths, _ = _upstream_inputs(upstream, seconds)

    def compute() -> Any:
        upstream.eval()
        with torch.no_grad():
            out = upstream(wavs, wav_lengths)
        check_upstream_output(upstream, out, wav_lengths)
        return out

    return _memo(("batch", id(upstream), seconds), compute)


def _upstream_alone(upstream: Any, seconds: float) -> List[Any]:
    """The upstream's output (checked against the contract) for each utterance alone, unpadded."""
    wavs, wav_lengths, lengths = _upstream_inputs(upstream, seconds)

    def compute() -> List[Any]:
        upstream.eval()
        singles = []
        for b, n in enumerate(lengths):
            with torch.no_grad():
                single = upstream(wavs[b : b + 1, :n], wav_lengths[b : b + 1])
            check_upstream_output(upstream, single, wav_lengths[b : b + 1])
            singles.append(single)
        return singles

    return _memo(("alone", id(upstream), seconds), compute)


@_contract_check("upstream", "declaration")
def check_upstream_declares_attributes(upstream: Any, /) -> None:
    """The declared attributes: sample rate, hop, minimum length, layer sizes, ``batch_invariant``."""
    check_upstream_declaration(upstream)


@_contract_check("upstream", "output")
def check_upstream_output_shapes(upstream: Any, /, *, seconds: float = 0.5) -> None:
    """An ``UpstreamOutput`` of ``num_layers`` floating tensors ``[B, T, hidden_sizes[i]]``; ``lengths``
    integer, in ``1..T`` and equal to ``frame_lengths()``; the valid frames finite."""
    out = _upstream_batch(upstream, seconds)
    for i, h in enumerate(out.hidden_states):
        for b, n in enumerate(out.lengths.tolist()):
            if not torch.isfinite(h[b, :n]).all():
                raise _fail(
                    upstream,
                    "upstream",
                    "output",
                    "finite valid frames",
                    f"NaN/inf in hidden_states[{i}] of utterance {b}",
                )


@_contract_check("upstream", "exact_frames")
def check_upstream_exact_frames(upstream: Any, /, *, seconds: float = 0.5) -> None:
    """An utterance alone (unpadded) fills exactly ``lengths`` frames."""
    _, _, lengths = _upstream_inputs(upstream, seconds)
    for n, single in zip(lengths, _upstream_alone(upstream, seconds)):
        frames = single.hidden_states[0].shape[1]
        if int(single.lengths[0]) != frames:
            raise _fail(
                upstream,
                "upstream",
                "exact_frames",
                f"an unpadded utterance of {n} samples to fill all {frames} output frames (lengths[0] == T)",
                int(single.lengths[0]),
            )


@_contract_check("upstream", "padding_invariance")
def check_upstream_padding_invariance(
    upstream: Any, /, *, atol: float = 1e-4, rtol: float = 1e-3, seconds: float = 0.5
) -> Optional[str]:
    """Loud noise in the padding never changes the valid frames (when ``batch_invariant``)."""
    if not upstream.batch_invariant:
        return "batch_invariant is False"
    out = _upstream_batch(upstream, seconds)
    for b, single in enumerate(_upstream_alone(upstream, seconds)):
        n = int(single.lengths[0])
        for i, (h_batch, h_alone) in enumerate(zip(out.hidden_states, single.hidden_states)):
            diff = _close(h_batch[b, :n], h_alone[0, :n], atol, rtol)
            if diff:
                raise _fail(
                    upstream,
                    "upstream",
                    "padding_invariance",
                    f"utterance {b}'s valid frames of hidden_states[{i}] in a padded batch to equal its frames alone",
                    diff,
                )
    return None


@_contract_check("upstream", "deterministic")
def check_upstream_deterministic(
    upstream: Any,
    /,
    *,
    factory: Optional[Callable[[], Any]] = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    seconds: float = 0.5,
) -> Optional[str]:
    """The same output twice in eval mode, and from a second instance (``factory()``) with the same options."""
    out = _upstream_batch(upstream, seconds)
    wavs, wav_lengths, _ = _upstream_inputs(upstream, seconds)
    with torch.no_grad():
        again = upstream(wavs, wav_lengths)
    others = [("a second call", again)]
    if factory is not None:
        other = factory().eval()
        with torch.no_grad():
            others.append(("a second instance with the same options", other(wavs, wav_lengths)))
    for what, res in others:
        for i, (a, b) in enumerate(zip(out.hidden_states, res.hidden_states)):
            diff = _close(a, b, atol, rtol)
            if diff:
                raise _fail(upstream, "upstream", "deterministic", f"{what} to give the same hidden_states[{i}]", diff)
    return None if factory is not None else "an instance was given: no second instance to compare"


@_contract_check("upstream", "identity")
def check_upstream_identity(upstream: Any, /, *, factory: Optional[Callable[[], Any]] = None) -> None:
    """``identity()`` a JSON-able dict (it keys the feature cache), the same on every call and instance."""
    ident = upstream.identity()
    if not isinstance(ident, dict):
        raise _fail(upstream, "upstream", "identity", "a dict", type(ident).__name__)
    try:
        text = json.dumps(ident, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise _fail(
            upstream, "upstream", "identity", "JSON-serialisable data (it keys the feature cache)", str(exc)
        ) from None
    if json.dumps(upstream.identity(), sort_keys=True) != text:
        raise _fail(upstream, "upstream", "identity", "the same identity on every call", "a different one")
    if factory is not None and json.dumps(factory().identity(), sort_keys=True) != text:
        raise _fail(
            upstream,
            "upstream",
            "identity",
            "the same identity for two instances with the same options",
            "a different one",
        )


@_contract_check("upstream", "finetune")
def check_upstream_finetune_modes(upstream: Any, /, *, seconds: float = 0.5) -> Optional[str]:
    """``frozen`` offered and trains nothing; ``full`` (when offered) gives finite, non-zero gradients."""

    def fail(expected: Any, got: Any) -> ContractCheckError:
        return _fail(upstream, "upstream", "finetune", expected, got)

    wavs, wav_lengths, _ = _upstream_inputs(upstream, seconds)
    modes = tuple(upstream.supported_finetune_modes())
    if "frozen" not in modes or not set(modes) <= set(FINETUNE_MODES):
        raise fail(f"'frozen' and only modes of {FINETUNE_MODES}", modes)
    upstream.set_finetune("frozen")
    trainable = [n for n, p in upstream.named_parameters() if p.requires_grad]
    if trainable:
        raise fail("no trainable parameter in mode 'frozen'", trainable[:3])
    if "full" not in modes:
        return "no 'full' fine-tuning mode (nothing to train)"
    try:
        upstream.set_finetune("full")
        params = [p for p in upstream.parameters() if p.requires_grad]
        if not params:
            raise fail("trainable parameters in mode 'full'", "none")
        upstream.train()
        res = upstream(wavs, wav_lengths)
        loss = sum(
            h[b, :n].float().pow(2).mean() for h in res.hidden_states for b, n in enumerate(res.lengths.tolist())
        )
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        if not grads or not any(bool(g.abs().sum() > 0) for g in grads):
            raise fail("non-zero gradients in mode 'full'", "none reached the parameters")
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            raise fail("finite gradients in mode 'full'", "NaN/inf")
    finally:
        for p in upstream.parameters():
            p.grad = None
        upstream.set_finetune("frozen")
        upstream.eval()
    return None


@_contract_check("upstream", "device:{device}")
def check_upstream_device(
    upstream: Any, /, *, device: Any = "cuda", atol: float = 1e-4, rtol: float = 1e-3, seconds: float = 0.5
) -> None:
    """The output follows the input to ``device`` and matches the CPU's (within 10x the tolerances)."""
    device = torch.device(device)
    reference = _upstream_batch(upstream, seconds)
    wavs, wav_lengths, _ = _upstream_inputs(upstream, seconds)
    moved = upstream.to(device)
    try:
        with torch.no_grad():
            res = moved(wavs.to(device), wav_lengths.to(device))
        check_upstream_output(moved, res, wav_lengths.to(device))
        for i, (a, b) in enumerate(zip(res.hidden_states, reference.hidden_states)):
            for j, n in enumerate(reference.lengths.tolist()):
                diff = _close(a[j, :n], b[j, :n], 10 * atol, 10 * rtol)
                if diff:
                    raise _fail(
                        upstream, "upstream", f"device:{device}", f"the same hidden_states[{i}] as on the CPU", diff
                    )
    finally:
        upstream.to("cpu")


# --- aggregators ------------------------------------------------------------------------------------
_AGG_LENGTHS = (7, 3, 1)


def _frames(lengths: Sequence[int], dim: int, pad: Optional[float], seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths_t = torch.tensor(list(lengths), dtype=torch.long)
    feats = torch.randn(len(lengths), int(lengths_t.max()) + 2, dim, generator=gen)
    for i, n in enumerate(lengths):
        if pad is None:
            feats[i, n:] = 1e4 * torch.randn(feats.shape[1] - n, dim, generator=gen)
        else:
            feats[i, n:] = pad
    return feats, lengths_t


@_contract_check("aggregator", "declaration")
def check_aggregator_declares_output_dim(agg: Any, /) -> None:
    """``output_dim`` (and ``uses_only_mean``) declared."""
    check_aggregator_declaration(agg)


@_contract_check("aggregator", "output")
def check_aggregator_output_shape(agg: Any, /, *, input_dim: int = 8) -> None:
    """Output ``[B, output_dim]``, floating, finite, for 7, 3 and 1 valid frames."""
    agg.eval()
    feats, lens = _frames(_AGG_LENGTHS, input_dim, 0.0)
    with torch.no_grad():
        res = agg(feats, lens)
    check_aggregator_output(agg, res, feats)
    if not torch.isfinite(res).all():
        raise _fail(agg, "aggregator", "output", "finite values", "NaN/inf")


@_contract_check("aggregator", "padding_invariance")
def check_aggregator_padding_invariance(
    agg: Any, /, *, input_dim: int = 8, atol: float = 1e-5, rtol: float = 1e-4
) -> None:
    """Zero or huge padded frames never change an utterance's vector (vs the utterance alone)."""
    agg.eval()
    for pad in (0.0, None):
        feats, lens = _frames(_AGG_LENGTHS, input_dim, pad)
        with torch.no_grad():
            batched = agg(feats, lens)
            for i, n in enumerate(_AGG_LENGTHS):
                diff = _close(batched[i], agg(feats[i : i + 1, :n], lens[i : i + 1])[0], atol, rtol)
                if diff:
                    what = "zero" if pad == 0.0 else "huge random"
                    raise _fail(
                        agg,
                        "aggregator",
                        "padding_invariance",
                        f"utterance {i} pooled the same with {what} padding as alone",
                        diff,
                    )


@_contract_check("aggregator", "gradients")
def check_aggregator_gradients(agg: Any, /, *, input_dim: int = 8) -> Optional[str]:
    """Valid frames get gradient, padded ones none; trainable parameters get finite, non-zero gradients."""
    feats, lens = _frames(_AGG_LENGTHS, input_dim, 3.0, seed=1)
    feats.requires_grad_(True)
    agg.train()
    try:
        for _ in range(4):  # accumulated over a few passes: training-time randomness (frame dropout)
            agg(feats, lens).pow(2).sum().backward()
    finally:
        agg.eval()
    grad = feats.grad
    if grad is None:
        raise _fail(agg, "aggregator", "gradients", "a gradient on the input frames", "none")
    for i, n in enumerate(_AGG_LENGTHS):
        if bool((grad[i, n:] != 0).any()):
            raise _fail(
                agg, "aggregator", "gradients", f"no gradient on utterance {i}'s padded frames", "a non-zero gradient"
            )
        if not bool(grad[i, :n].abs().sum() > 0):
            raise _fail(agg, "aggregator", "gradients", f"a gradient on utterance {i}'s valid frames", "none")
    return _parameter_gradients(agg, "aggregator")


@_contract_check("aggregator", "uses_only_mean")
def check_aggregator_uses_only_mean(agg: Any, /, *, input_dim: int = 8, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """``uses_only_mean`` is truthful: two inputs with the same time-average pool the same iff it is True."""
    agg.eval()
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(1, 4, input_dim, generator=gen), torch.randn(1, 4, input_dim, generator=gen)
    b = b - b.mean(1, keepdim=True) + a.mean(1, keepdim=True)  # same time-average, other frames
    probe = copy.deepcopy(agg)  # zero-initialised weights (uniform attention) start at a mean-only point
    with torch.no_grad():
        for p in probe.parameters():
            if not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        same = _close(probe(a, torch.tensor([4])), probe(b, torch.tensor([4])), atol, rtol) is None
    if same != bool(agg.uses_only_mean):
        raise _fail(
            agg,
            "aggregator",
            "uses_only_mean",
            f"uses_only_mean={same} (two inputs with the same "
            f"time-average pool {'the same' if same else 'differently'})",
            f"uses_only_mean={agg.uses_only_mean}",
        )


@_contract_check("aggregator", "deterministic")
def check_aggregator_deterministic(agg: Any, /, *, input_dim: int = 8, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """The same output for the same input in eval mode."""
    agg.eval()
    feats, lens = _frames(_AGG_LENGTHS, input_dim, 0.0)
    with torch.no_grad():
        diff = _close(agg(feats, lens), agg(feats, lens), atol, rtol)
    if diff:
        raise _fail(agg, "aggregator", "deterministic", "the same output for the same input in eval mode", diff)


def _check_module_device(
    module: Any, kind: str, device: torch.device, call: Callable, check: Callable, atol: float, rtol: float
) -> None:
    module.eval()
    with torch.no_grad():
        reference, _ = call(module, torch.device("cpu"))
        module.to(device)
        try:
            res, inputs = call(module, device)
            check(module, res, inputs)
        finally:
            module.to("cpu")
    diff = _close(res, reference, atol, rtol)
    if diff:
        raise _fail(module, kind, f"device:{device}", "the same output as on the CPU", diff)


@_contract_check("aggregator", "device:{device}")
def check_aggregator_device(
    agg: Any, /, *, device: Any = "cuda", input_dim: int = 8, atol: float = 1e-5, rtol: float = 1e-4
) -> None:
    """The output follows the input to ``device`` and matches the CPU's (within 10x the tolerances)."""

    def on_device(module: Any, dev: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        feats, lens = _frames(_AGG_LENGTHS, input_dim, 0.0)
        feats, lens = feats.to(dev), lens.to(dev)
        return module(feats, lens), feats

    _check_module_device(
        agg, "aggregator", torch.device(device), on_device, check_aggregator_output, 10 * atol, 10 * rtol
    )


# --- classifiers ------------------------------------------------------------------------------------
def _vectors(input_dim: int) -> torch.Tensor:
    return torch.randn(5, input_dim, generator=torch.Generator().manual_seed(0))


@_contract_check("classifier", "output")
def check_classifier_output_shape(clf: Any, /, *, input_dim: int = 8, num_classes: int = 4) -> None:
    """Logits ``[B, num_classes]``, floating, finite."""
    clf.eval()
    x = _vectors(input_dim)
    with torch.no_grad():
        logits = clf(x)
    check_classifier_output(clf, logits, x, num_classes)
    if not torch.isfinite(logits).all():
        raise _fail(clf, "classifier", "output", "finite logits", "NaN/inf")


@_contract_check("classifier", "deterministic")
def check_classifier_deterministic(clf: Any, /, *, input_dim: int = 8, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """The same logits for the same input in eval mode."""
    clf.eval()
    x = _vectors(input_dim)
    with torch.no_grad():
        diff = _close(clf(x), clf(x), atol, rtol)
    if diff:
        raise _fail(clf, "classifier", "deterministic", "the same logits for the same input in eval mode", diff)


@_contract_check("classifier", "batch_independence")
def check_classifier_batch_independence(
    clf: Any, /, *, input_dim: int = 8, atol: float = 1e-5, rtol: float = 1e-4
) -> None:
    """In eval mode each row's logits are independent of the rest of the batch."""
    clf.eval()
    x = _vectors(input_dim)
    with torch.no_grad():
        batched = clf(x)
        for i in range(x.shape[0]):
            diff = _close(batched[i], clf(x[i : i + 1])[0], atol, rtol)
            if diff:
                raise _fail(
                    clf,
                    "classifier",
                    "batch_independence",
                    f"row {i}'s logits in a batch to equal its logits alone",
                    diff,
                )


@_contract_check("classifier", "gradients")
def check_classifier_gradients(clf: Any, /, *, input_dim: int = 8, num_classes: int = 4) -> Optional[str]:
    """Finite, non-zero gradients to the parameters and the input."""
    inp = _vectors(input_dim).requires_grad_(True)
    clf.train()
    try:
        torch.nn.functional.cross_entropy(clf(inp), torch.arange(inp.shape[0]) % num_classes).backward()
    finally:
        clf.eval()
    if inp.grad is None or not bool(inp.grad.abs().sum() > 0):
        raise _fail(clf, "classifier", "gradients", "a gradient on the input vectors", "none")
    return _parameter_gradients(clf, "classifier")


@_contract_check("classifier", "device:{device}")
def check_classifier_device(
    clf: Any,
    /,
    *,
    device: Any = "cuda",
    input_dim: int = 8,
    num_classes: int = 4,
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """The output follows the input to ``device`` and matches the CPU's (within 10x the tolerances)."""
    x = _vectors(input_dim)
    _check_module_device(
        clf,
        "classifier",
        torch.device(device),
        lambda m, dev: (m(x.to(dev)), x.to(dev)),
        lambda m, res, inp: check_classifier_output(m, res, inp, num_classes),
        10 * atol,
        10 * rtol,
    )


# --- corpora ----------------------------------------------------------------------------------------
def _loaded(corpus: Any) -> list:
    return _memo(("load", id(corpus)), corpus.load)


@_contract_check("corpus", "declaration")
def check_corpus_declares_labels(corpus: Any, /) -> None:
    """``labels`` a list of unique, non-empty strings (non-empty unless the corpus declares ``attributes``:
    regression only); ``default_protocol`` known."""
    labels = getattr(corpus, "labels", None)
    if (
        not isinstance(labels, (list, tuple))
        or (not labels and not getattr(corpus, "attributes", ()))
        or len(set(labels)) != len(labels)
        or not all(isinstance(lab, str) and lab for lab in labels)
    ):
        raise _fail(
            corpus, "corpus", "declaration", "labels: a non-empty list of unique, non-empty strings", repr(labels)
        )
    if getattr(corpus, "default_protocol", None) not in PROTOCOLS:
        raise _fail(
            corpus,
            "corpus",
            "declaration",
            f"default_protocol one of {PROTOCOLS}",
            repr(getattr(corpus, "default_protocol", None)),
        )


def _utterances(corpus: Any) -> list:
    """``corpus.load()``, checked to be a non-empty list of ``Utterance`` (check ``'load'``)."""
    from ser_plugins.plugins.contracts import Utterance

    utts = _loaded(corpus)
    if not isinstance(utts, list) or not all(isinstance(u, Utterance) for u in utts):
        raise _fail(
            corpus,
            "corpus",
            "load",
            "a list of ser_plugins.Utterance",
            type(utts).__name__ if not isinstance(utts, list) else sorted({type(u).__name__ for u in utts}),
        )
    if not utts:
        raise _fail(corpus, "corpus", "load", "at least one utterance", "none")
    return utts


@_contract_check("corpus", "load")
def check_corpus_loads(corpus: Any, /) -> None:
    """``load()`` returns a non-empty list of ``Utterance``."""
    _utterances(corpus)


@_contract_check("corpus", "utterances")
def check_corpus_utterance_fields(corpus: Any, /) -> None:
    """Unique ids, labels from ``labels``, a speaker and a path, ``0 <= start < end``, the
    ``fold``/``split`` values the default protocol needs."""
    utts = _utterances(corpus)
    ids = [u.id for u in utts]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise _fail(corpus, "corpus", "utterances", "unique utterance ids", f"duplicates such as {dup}")
    for u in utts:
        if u.label not in corpus.labels and not (u.label == NO_LABEL and u.attributes):
            raise _fail(
                corpus,
                "corpus",
                "utterances",
                f"labels from {list(corpus.labels)}",
                f"{u.label!r} (utterance {u.id})",
            )
        declared = set(getattr(corpus, "attributes", ()) or ())
        for name, value in dict(u.attributes).items():
            if name not in declared or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise _fail(
                    corpus,
                    "corpus",
                    "utterances",
                    f"attributes named in the corpus's attributes {sorted(declared)}, each a finite number",
                    f"utterance {u.id}: {name}={value!r}",
                )
        if not (isinstance(u.speaker, str) and u.speaker and isinstance(u.path, str) and u.path):
            raise _fail(
                corpus,
                "corpus",
                "utterances",
                "a non-empty speaker and path",
                f"utterance {u.id}: {u.speaker!r}, {u.path!r}",
            )
        if u.start is not None and u.end is not None and not 0 <= u.start < u.end:
            raise _fail(corpus, "corpus", "utterances", "0 <= start < end", f"utterance {u.id}: {u.start}..{u.end}")
    protocol = corpus.default_protocol
    if protocol == "folds" and any(not u.fold for u in utts):
        raise _fail(
            corpus, "corpus", "utterances", "a fold for every utterance (default_protocol 'folds')", "missing ones"
        )
    if protocol == "split" and any((u.split or "").lower() not in SPLITS for u in utts):
        raise _fail(
            corpus,
            "corpus",
            "utterances",
            f"a split in {SPLITS} for every utterance (default_protocol 'split')",
            "others",
        )


@_contract_check("corpus", "problems")
def check_corpus_problems(corpus: Any, /) -> None:
    """After ``load()``: ``problems`` a list of ``CorpusProblem``."""
    from ser_plugins.plugins.contracts import CorpusProblem

    _loaded(corpus)
    problems = getattr(corpus, "problems", None)
    if not isinstance(problems, list) or not all(isinstance(p, CorpusProblem) for p in problems):
        raise _fail(
            corpus, "corpus", "problems", "a list of CorpusProblem (use self.problem(...))", repr(problems)[:80]
        )


@_contract_check("corpus", "deterministic")
def check_corpus_deterministic(corpus: Any, /, *, factory: Optional[Callable[[], Any]] = None) -> Optional[str]:
    """A second instance (``factory()``) loads the same utterances."""
    if factory is None:
        return "an instance was given: no second instance to compare"
    if factory().load() != _utterances(corpus):
        raise _fail(
            corpus, "corpus", "deterministic", "a second instance to load the same utterances", "different ones"
        )
    return None


# --- the lists, and running them ----------------------------------------------------------------
def _checks(*funcs: Callable[..., Optional[str]]) -> Tuple[Check, ...]:
    return tuple(Check(f.kind, f.check_name, f) for f in funcs)  # type: ignore[attr-defined]  # tags set by the decorator


#: every check of a kind, in the order ``check_<kind>`` runs them (the per-device ones: ``checks_for``)
UPSTREAM_CHECKS = _checks(
    check_upstream_declares_attributes,
    check_upstream_output_shapes,
    check_upstream_exact_frames,
    check_upstream_padding_invariance,
    check_upstream_deterministic,
    check_upstream_identity,
    check_upstream_finetune_modes,
)
AGGREGATOR_CHECKS = _checks(
    check_aggregator_declares_output_dim,
    check_aggregator_output_shape,
    check_aggregator_padding_invariance,
    check_aggregator_gradients,
    check_aggregator_uses_only_mean,
    check_aggregator_deterministic,
)
CLASSIFIER_CHECKS = _checks(
    check_classifier_output_shape,
    check_classifier_deterministic,
    check_classifier_batch_independence,
    check_classifier_gradients,
)
CORPUS_CHECKS = _checks(
    check_corpus_declares_labels,
    check_corpus_loads,
    check_corpus_utterance_fields,
    check_corpus_problems,
    check_corpus_deterministic,
)
_CHECKS = {
    "upstream": UPSTREAM_CHECKS,
    "aggregator": AGGREGATOR_CHECKS,
    "classifier": CLASSIFIER_CHECKS,
    "corpus": CORPUS_CHECKS,
}
_DEVICE_CHECKS = {
    "upstream": check_upstream_device,
    "aggregator": check_aggregator_device,
    "classifier": check_classifier_device,
}


def checks_for(kind: str, devices: Optional[Sequence[str]] = None) -> List[Check]:
    """The checks of ``kind``, then one per extra device (``devices``; default: CUDA when available)."""
    if kind not in _CHECKS:
        raise ValueError(f"no contract checks for kind {kind!r}; kinds: {', '.join(_CHECKS)}")
    out = list(_CHECKS[kind])
    if kind in _DEVICE_CHECKS:
        func = _DEVICE_CHECKS[kind]
        out += [Check(kind, f"device:{d}", functools.partial(func, device=d)) for d in _devices(devices)]
    return out


def _split(kind: str, kwargs: Dict[str, Any]) -> Tuple[tuple, Dict[str, Any], Dict[str, Any]]:
    """``(constructor args, check settings, plugin options)`` of a ``check_<kind>``-style call."""
    settings = {k: kwargs.get(k, v) for k, v in SETTINGS[kind].items()}
    options = {k: v for k, v in kwargs.items() if k not in SETTINGS[kind]}
    args = {
        "aggregator": (settings.get("input_dim"),),
        "classifier": (settings.get("input_dim"), settings.get("num_classes")),
    }.get(kind, ())
    return args, settings, options


def _combined(plugin: Any, kind: str, failures: List[ContractCheckError], ran: int) -> ContractCheckError:
    """One failure as it is; several as one error listing each (``failures``)."""
    if len(failures) == 1:
        return failures[0]
    who = describe(plugin, kind)
    lines = [str(f)[len(who) :].lstrip() if str(f).startswith(who) else str(f) for f in failures]
    names = ", ".join(repr(f.check) for f in failures)
    return ContractCheckError(
        f"{who} failed {len(failures)} of {ran} checks ({names}):\n" + "\n".join(f"  - {line}" for line in lines),
        failures=failures,
        **_who(plugin, kind),
    )


def run_checks(kind: str, plugin: Any, /, *, devices: Optional[Sequence[str]] = None, **kwargs: Any) -> List[str]:
    """Build ``plugin`` (a name, a class/factory with options, or an instance) and run every check of ``kind``.

    ``kwargs`` are the kind's settings (``SETTINGS``) and the plugin's options. Returns the names
    of the checks that ran (a skipped one with its reason); raises one ``ContractCheckError``
    listing every failed check.
    """
    args, settings, options = _split(kind, kwargs)
    instance, factory = _build(kind, plugin, args, options)
    report: List[str] = []
    failures: List[ContractCheckError] = []
    checks = checks_for(kind, devices)
    token = _MEMO.set({})
    try:
        for check in checks:
            try:
                skipped = check(instance, factory=factory, **settings)
            except ContractCheckError as exc:
                failures.append(exc)
                continue
            report.append(f"{check.name} (skipped: {skipped})" if skipped else check.name)
    finally:
        _MEMO.reset(token)
    if failures:
        error = _combined(instance, kind, failures, len(checks))
        if error is failures[0]:
            raise error
        raise error from failures[0].__cause__
    return report


def check_upstream(
    plugin: Any,
    /,
    *,
    devices: Optional[Sequence[str]] = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    seconds: float = 0.5,
    **kwargs: Any,
) -> List[str]:
    """Check an upstream (a registered name, a class/factory with ``kwargs``, or an instance).

    Checks: declared attributes; output type, shapes, dtypes and layer sizes as declared;
    ``lengths`` integer, within ``1..T`` and equal to ``frame_lengths()``; an utterance alone has
    exactly ``lengths`` frames; valid frames finite; padding (loud noise) never changes the valid
    frames (when ``batch_invariant``); repeatable in eval mode and equal across two instances;
    ``identity()`` JSON-able and stable; fine-tuning modes (``frozen`` trains nothing, ``full``
    gives finite, non-zero gradients); the output follows the input to every extra device in
    ``devices`` (default: CUDA when available). Every check runs; the failures are raised together.
    """
    return run_checks("upstream", plugin, devices=devices, atol=atol, rtol=rtol, seconds=seconds, **kwargs)


def check_aggregator(
    plugin: Any,
    /,
    *,
    input_dim: int = 8,
    devices: Optional[Sequence[str]] = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    **kwargs: Any,
) -> List[str]:
    """Check an aggregator (a registered name, a class/factory with ``kwargs``, or an instance).

    Checks: ``output_dim`` declared; output ``[B, output_dim]``, floating, finite; padded frames
    (zeros or huge values) never change the result nor get gradient, valid frames do; one-frame
    utterances work; ``uses_only_mean`` is truthful; repeatable in eval mode; trainable
    parameters get finite, non-zero gradients; the output follows the input's device.
    """
    return run_checks("aggregator", plugin, devices=devices, input_dim=input_dim, atol=atol, rtol=rtol, **kwargs)


def check_classifier(
    plugin: Any,
    /,
    *,
    input_dim: int = 8,
    num_classes: int = 4,
    devices: Optional[Sequence[str]] = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    **kwargs: Any,
) -> List[str]:
    """Check a classifier (a registered name, a class/factory with ``kwargs``, or an instance).

    Checks: logits ``[B, num_classes]``, floating, finite; in eval mode repeatable and each row
    independent of the rest of the batch; finite, non-zero gradients to the parameters and the
    input; the output follows the input's device.
    """
    return run_checks(
        "classifier",
        plugin,
        devices=devices,
        input_dim=input_dim,
        num_classes=num_classes,
        atol=atol,
        rtol=rtol,
        **kwargs,
    )


def check_corpus(plugin: Any, /, **kwargs: Any) -> List[str]:
    """Check a corpus (a registered name or class with its options, e.g. ``root=``, or an instance).

    Checks: ``labels`` a non-empty list of unique strings; ``default_protocol`` known; ``load()``
    returns ``Utterance`` objects with unique ids, labels from ``labels``, a speaker and a path,
    segment bounds ``0 <= start < end``, the ``fold``/``split`` values its protocol needs;
    ``problems`` a list of ``CorpusProblem``; a second instance loads the same utterances.
    """
    return run_checks("corpus", plugin, **kwargs)


# --- pytest: one test per check ---------------------------------------------------------------------
class BoundCheck:
    """One check of one plugin, ready to run: ``bound()`` builds the plugin afresh and runs the check.

    Building happens when the test runs (not when pytest collects), so a plugin that cannot be
    imported or built fails each test (check ``'import'`` / ``'build'``) instead of breaking
    collection. A skipped check calls ``pytest.skip`` with its reason.
    """

    def __init__(self, kind: str, plugin: Any, check: Check, kwargs: Dict[str, Any]) -> None:
        self.kind, self.plugin, self.check, self.kwargs = kind, plugin, check, dict(kwargs)

    @property
    def name(self) -> str:
        return self.check.name

    def __repr__(self) -> str:
        return f"<{self.kind} check {self.check.name!r}>"

    def __call__(self) -> Optional[str]:
        args, settings, options = _split(self.kind, self.kwargs)
        instance, factory = _build(self.kind, self.plugin, args, options)
        skipped = self.check(instance, factory=factory, **settings)
        if skipped:
            import pytest

            pytest.skip(f"{self.check.name}: {skipped}")
        return skipped


def parametrize_checks(
    kind: str, plugin: Any, /, *, devices: Optional[Sequence[str]] = None, argname: str = "check", **kwargs: Any
) -> Any:
    """A ``pytest.mark.parametrize`` giving a test one run per contract check of ``kind``::

        from ser_plugins.testing import parametrize_checks

        @parametrize_checks("upstream", MyUpstream, layers=3)   # or a registered name, or an instance
        def test_contract(check):
            check()                                              # one check; its name is the test id

    ``kwargs`` are what ``check_<kind>`` takes: its settings and the plugin's options. pytest is
    imported here, not when ``ser_plugins.testing`` is.
    """
    import pytest

    params = [
        pytest.param(BoundCheck(kind, plugin, check, kwargs), id=check.name) for check in checks_for(kind, devices)
    ]
    return pytest.mark.parametrize(argname, params)
