"""Contract checks a plugin author runs in their own tests, as scikit-learn's ``check_estimator``.

    from ser_plugins.testing import check_upstream
    def test_contract():
        check_upstream("my_upstream", layers=3)       # a registered name, or the class itself

Each ``check_*`` builds the plugin (through the registry for a name, directly for a class), runs
the same checks the built-in plugins pass and raises ``ContractCheckError`` (an
``AssertionError``) naming the plugin, the check and what was expected vs what came back. It
returns the names of the checks that ran (a skipped check says why). A registered plugin that
cannot be imported fails check ``'import'``, a constructor that raises fails check ``'build'``:
test failures too (not pytest errors), with the original exception as the cause.
"""
from __future__ import annotations

import copy

import json
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch

from ser_plugins.plugins import registry
from ser_plugins.plugins.boundary import (PluginContractError, check_aggregator_declaration, check_aggregator_output,
                                  check_classifier_output, check_upstream_declaration, check_upstream_output, describe)
from ser_plugins.plugins.contracts import FINETUNE_MODES
from ser_plugins.plugins.probe import difference, synthetic_waves

__all__ = ["ContractCheckError", "check_upstream", "check_aggregator", "check_classifier", "check_corpus"]

PROTOCOLS = ("session", "speaker", "folds", "split")
SPLITS = ("train", "dev", "valid", "validation", "test")


class ContractCheckError(PluginContractError, AssertionError):
    """A plugin failed one of the contract checks; the message names the plugin, the check and the difference."""


class _Checks:
    """Runs named checks against one plugin and collects the report."""

    def __init__(self, plugin: Any, kind: str) -> None:
        self.plugin = plugin
        self.kind = kind
        self.report: List[str] = []

    def run(self, name: str, check: Callable[[], Optional[str]]) -> None:
        try:
            skipped = check()
        except ContractCheckError:
            raise
        except Exception as exc:  # a boundary error or the plugin's own exception
            who = describe(self.plugin, self.kind)
            detail = str(exc) if isinstance(exc, PluginContractError) else f"raised {type(exc).__name__}: {exc}"
            detail = detail[len(who):].lstrip() if detail.startswith(who) else detail
            raise ContractCheckError(f"{who} failed check {name!r}: {detail}") from exc
        self.report.append(f"{name} (skipped: {skipped})" if skipped else name)

    def fail(self, name: str, expected: Any, got: Any) -> ContractCheckError:
        return ContractCheckError(f"{describe(self.plugin, self.kind)} failed check {name!r}: expected {expected}, got {got}")

    def parameter_gradients(self) -> Optional[str]:
        """After a backward pass: the trainable parameters got finite gradients, not all zero (then cleared).

        Returns the skip note for a plugin without trainable parameters.
        """
        params = [p for p in self.plugin.parameters() if p.requires_grad]
        grads = [p.grad for p in params if p.grad is not None]
        if params and (not grads or not any(bool(g.abs().sum() > 0) for g in grads)):
            raise self.fail("gradients", "non-zero gradients on the trainable parameters", "none")
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            raise self.fail("gradients", "finite parameter gradients", "NaN/inf")
        for p in params:
            p.grad = None
        return None if params else "no trainable parameters"


def _build(kind: str, plugin: Any, args: tuple, kwargs: dict) -> Tuple[Any, Optional[Callable[[], Any]]]:
    """``(instance, factory for another instance or None)`` from a name, a class/factory or an instance.

    A registered plugin that cannot be found, imported or built fails check ``'import'`` or ``'build'``
    (a ``ContractCheckError``: a test failure in pytest, with the plugin's own error as its cause).
    """
    if isinstance(plugin, str):
        try:
            registry.load(kind, plugin)
        except registry.PluginError as exc:
            raise ContractCheckError(f"{kind} {plugin!r} failed check 'import': {exc}") from exc
        factory = lambda: registry.create(kind, plugin, *args, **kwargs)  # noqa: E731
        return _first_instance(kind, repr(plugin), factory), factory
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
        obj.plugin_name = name
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
        raise ContractCheckError(f"{kind} {name} failed check 'build': {detail}") from exc


def _devices(devices: Optional[Sequence[str]]) -> List[torch.device]:
    if devices is not None:
        return [torch.device(d) for d in devices]
    return [torch.device("cuda")] if torch.cuda.is_available() else []


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> Optional[str]:
    """None when close, else a one-line description of the largest difference."""
    return difference(a, b, atol, rtol)


# --- upstreams --------------------------------------------------------------------------------------
def check_upstream(plugin: Any, /, *, devices: Optional[Sequence[str]] = None, atol: float = 1e-4,
                   rtol: float = 1e-3, seconds: float = 0.5, **kwargs: Any) -> List[str]:
    """Check an upstream (a registered name, a class/factory with ``kwargs``, or an instance).

    Checks: declared attributes; output type, shapes, dtypes and layer sizes as declared;
    ``lengths`` integer, within ``1..T`` and equal to ``frame_lengths()``; an utterance alone has
    exactly ``lengths`` frames; valid frames finite; padding (loud noise) never changes the valid
    frames (when ``batch_invariant``); repeatable in eval mode and equal across two instances;
    ``identity()`` JSON-able and stable; fine-tuning modes (``frozen`` trains nothing, ``full``
    gives finite, non-zero gradients); the output follows the input to every extra device in
    ``devices`` (default: CUDA when available).
    """
    upstream, factory = _build("upstream", plugin, (), kwargs)
    c = _Checks(upstream, "upstream")
    c.run("declaration", lambda: check_upstream_declaration(upstream))
    sr, hop, shortest = upstream.sample_rate, upstream.hop_length, upstream.min_samples
    longest = max(int(seconds * sr), 4 * shortest, shortest + 8 * hop)
    lengths = [longest, max(shortest, (longest * 11) // 20 + 37), shortest]
    wavs, wav_lengths = synthetic_waves(lengths, sr, pad_value=None)  # loud noise in the padding
    upstream.eval()
    state: dict = {}

    def output() -> None:
        with torch.no_grad():
            state["out"] = upstream(wavs, wav_lengths)
        check_upstream_output(upstream, state["out"], wav_lengths)
        for i, h in enumerate(state["out"].hidden_states):
            for b, n in enumerate(state["out"].lengths.tolist()):
                if not torch.isfinite(h[b, :n]).all():
                    raise c.fail("output", "finite valid frames", f"NaN/inf in hidden_states[{i}] of utterance {b}")

    c.run("output", output)
    out = state["out"]

    def alone() -> None:
        state["alone"] = []
        for b, n in enumerate(lengths):
            with torch.no_grad():
                single = upstream(wavs[b:b + 1, :n], wav_lengths[b:b + 1])
            check_upstream_output(upstream, single, wav_lengths[b:b + 1])
            frames = single.hidden_states[0].shape[1]
            if int(single.lengths[0]) != frames:
                raise c.fail("exact_frames", f"an unpadded utterance of {n} samples to fill all {frames} output "
                             "frames (lengths[0] == T)", int(single.lengths[0]))
            state["alone"].append(single)

    c.run("exact_frames", alone)

    def padding() -> Optional[str]:
        if not upstream.batch_invariant:
            return "batch_invariant is False"
        for b, single in enumerate(state["alone"]):
            n = int(single.lengths[0])
            for i, (h_batch, h_alone) in enumerate(zip(out.hidden_states, single.hidden_states)):
                diff = _close(h_batch[b, :n], h_alone[0, :n], atol, rtol)
                if diff:
                    raise c.fail("padding_invariance", f"utterance {b}'s valid frames of hidden_states[{i}] in a padded "
                                 "batch to equal its frames alone", diff)
        return None

    c.run("padding_invariance", padding)

    def repeatable() -> Optional[str]:
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
                    raise c.fail("deterministic", f"{what} to give the same hidden_states[{i}]", diff)
        return None if factory is not None else "an instance was given: no second instance to compare"

    c.run("deterministic", repeatable)

    def identity() -> None:
        ident = upstream.identity()
        if not isinstance(ident, dict):
            raise c.fail("identity", "a dict", type(ident).__name__)
        try:
            text = json.dumps(ident, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise c.fail("identity", "JSON-serialisable data (it keys the feature cache)", str(exc)) from None
        if json.dumps(upstream.identity(), sort_keys=True) != text:
            raise c.fail("identity", "the same identity on every call", "a different one")
        if factory is not None and json.dumps(factory().identity(), sort_keys=True) != text:
            raise c.fail("identity", "the same identity for two instances with the same options", "a different one")

    c.run("identity", identity)
    c.run("finetune", lambda: _check_finetune(c, upstream, wavs, wav_lengths))
    for device in _devices(devices):
        c.run(f"device:{device}", lambda d=device: _check_upstream_device(c, upstream, wavs, wav_lengths, out, d,
                                                                          atol, rtol))
    return c.report


def _check_finetune(c: _Checks, upstream: Any, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> Optional[str]:
    modes = tuple(upstream.supported_finetune_modes())
    if "frozen" not in modes or not set(modes) <= set(FINETUNE_MODES):
        raise c.fail("finetune", f"'frozen' and only modes of {FINETUNE_MODES}", modes)
    upstream.set_finetune("frozen")
    trainable = [n for n, p in upstream.named_parameters() if p.requires_grad]
    if trainable:
        raise c.fail("finetune", "no trainable parameter in mode 'frozen'", trainable[:3])
    if "full" not in modes:
        return "no 'full' fine-tuning mode (nothing to train)"
    try:
        upstream.set_finetune("full")
        params = [p for p in upstream.parameters() if p.requires_grad]
        if not params:
            raise c.fail("finetune", "trainable parameters in mode 'full'", "none")
        upstream.train()
        res = upstream(wavs, wav_lengths)
        loss = sum(h[b, :n].float().pow(2).mean() for h in res.hidden_states
                   for b, n in enumerate(res.lengths.tolist()))
        loss.backward()
        grads = [p.grad for p in params if p.grad is not None]
        if not grads or not any(bool(g.abs().sum() > 0) for g in grads):
            raise c.fail("finetune", "non-zero gradients in mode 'full'", "none reached the parameters")
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            raise c.fail("finetune", "finite gradients in mode 'full'", "NaN/inf")
    finally:
        for p in upstream.parameters():
            p.grad = None
        upstream.set_finetune("frozen")
        upstream.eval()
    return None


def _check_upstream_device(c: _Checks, upstream: Any, wavs: torch.Tensor, wav_lengths: torch.Tensor, reference: Any,
                           device: torch.device, atol: float, rtol: float) -> None:
    moved = upstream.to(device)
    try:
        with torch.no_grad():
            res = moved(wavs.to(device), wav_lengths.to(device))
        check_upstream_output(moved, res, wav_lengths.to(device))
        for i, (a, b) in enumerate(zip(res.hidden_states, reference.hidden_states)):
            for j, n in enumerate(reference.lengths.tolist()):
                diff = _close(a[j, :n], b[j, :n], 10 * atol, 10 * rtol)
                if diff:
                    raise c.fail(f"device:{device}", f"the same hidden_states[{i}] as on the CPU", diff)
    finally:
        upstream.to("cpu")


# --- aggregators ------------------------------------------------------------------------------------
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


def check_aggregator(plugin: Any, /, *, input_dim: int = 8, devices: Optional[Sequence[str]] = None,
                     atol: float = 1e-5, rtol: float = 1e-4, **kwargs: Any) -> List[str]:
    """Check an aggregator (a registered name, a class/factory with ``kwargs``, or an instance).

    Checks: ``output_dim`` declared; output ``[B, output_dim]``, floating, finite; padded frames
    (zeros or huge values) never change the result nor get gradient, valid frames do; one-frame
    utterances work; ``uses_only_mean`` is truthful; repeatable in eval mode; trainable
    parameters get finite, non-zero gradients; the output follows the input's device.
    """
    agg, _ = _build("aggregator", plugin, (input_dim,), kwargs)
    c = _Checks(agg, "aggregator")
    c.run("declaration", lambda: check_aggregator_declaration(agg))
    agg.eval()
    lengths = (7, 3, 1)

    def output() -> None:
        feats, lens = _frames(lengths, input_dim, 0.0)
        with torch.no_grad():
            res = agg(feats, lens)
        check_aggregator_output(agg, res, feats)
        if not torch.isfinite(res).all():
            raise c.fail("output", "finite values", "NaN/inf")

    c.run("output", output)

    def padding() -> None:
        for pad in (0.0, None):
            feats, lens = _frames(lengths, input_dim, pad)
            with torch.no_grad():
                batched = agg(feats, lens)
                for i, n in enumerate(lengths):
                    diff = _close(batched[i], agg(feats[i:i + 1, :n], lens[i:i + 1])[0], atol, rtol)
                    if diff:
                        what = "zero" if pad == 0.0 else "huge random"
                        raise c.fail("padding_invariance", f"utterance {i} pooled the same with {what} padding as alone", diff)

    c.run("padding_invariance", padding)

    def gradients() -> Optional[str]:
        feats, lens = _frames(lengths, input_dim, 3.0, seed=1)
        feats.requires_grad_(True)
        agg.train()
        try:
            for _ in range(4):  # accumulated over a few passes: training-time randomness (frame dropout)
                agg(feats, lens).pow(2).sum().backward()
        finally:
            agg.eval()
        grad = feats.grad
        for i, n in enumerate(lengths):
            if bool((grad[i, n:] != 0).any()):
                raise c.fail("gradients", f"no gradient on utterance {i}'s padded frames", "a non-zero gradient")
            if not bool(grad[i, :n].abs().sum() > 0):
                raise c.fail("gradients", f"a gradient on utterance {i}'s valid frames", "none")
        return c.parameter_gradients()

    c.run("gradients", gradients)

    def only_mean() -> None:
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
            raise c.fail("uses_only_mean", f"uses_only_mean={same} (two inputs with the same time-average pool "
                         f"{'the same' if same else 'differently'})", f"uses_only_mean={agg.uses_only_mean}")

    c.run("uses_only_mean", only_mean)

    def repeatable() -> None:
        feats, lens = _frames(lengths, input_dim, 0.0)
        with torch.no_grad():
            diff = _close(agg(feats, lens), agg(feats, lens), atol, rtol)
        if diff:
            raise c.fail("deterministic", "the same output for the same input in eval mode", diff)

    c.run("deterministic", repeatable)
    def on_device(module: Any, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        feats, lens = _frames(lengths, input_dim, 0.0)
        feats, lens = feats.to(device), lens.to(device)
        return module(feats, lens), feats

    for device in _devices(devices):
        c.run(f"device:{device}", lambda d=device: _check_module_device(
            agg, "aggregator", d, on_device, check_aggregator_output, 10 * atol, 10 * rtol))
    return c.report


def _check_module_device(module: Any, kind: str, device: torch.device, call: Callable, check: Callable,
                         atol: float, rtol: float) -> None:
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
        raise ContractCheckError(f"{describe(module, kind)} failed check 'device:{device}': "
                                 f"expected the same output as on the CPU, got {diff}")


# --- classifiers ------------------------------------------------------------------------------------
def check_classifier(plugin: Any, /, *, input_dim: int = 8, num_classes: int = 4,
                     devices: Optional[Sequence[str]] = None, atol: float = 1e-5, rtol: float = 1e-4,
                     **kwargs: Any) -> List[str]:
    """Check a classifier (a registered name, a class/factory with ``kwargs``, or an instance).

    Checks: logits ``[B, num_classes]``, floating, finite; in eval mode repeatable and each row
    independent of the rest of the batch; finite, non-zero gradients to the parameters and the
    input; the output follows the input's device.
    """
    clf, _ = _build("classifier", plugin, (input_dim, num_classes), kwargs)
    c = _Checks(clf, "classifier")
    clf.eval()
    x = torch.randn(5, input_dim, generator=torch.Generator().manual_seed(0))

    def output() -> None:
        with torch.no_grad():
            logits = clf(x)
        check_classifier_output(clf, logits, x, num_classes)
        if not torch.isfinite(logits).all():
            raise c.fail("output", "finite logits", "NaN/inf")

    c.run("output", output)

    def rows() -> None:
        with torch.no_grad():
            batched, again = clf(x), clf(x)
            diff = _close(batched, again, atol, rtol)
            if diff:
                raise c.fail("deterministic", "the same logits for the same input in eval mode", diff)
            for i in range(x.shape[0]):
                diff = _close(batched[i], clf(x[i:i + 1])[0], atol, rtol)
                if diff:
                    raise c.fail("batch_independence", f"row {i}'s logits in a batch to equal its logits alone", diff)

    c.run("deterministic", rows)

    def gradients() -> Optional[str]:
        inp = x.clone().requires_grad_(True)
        clf.train()
        try:
            torch.nn.functional.cross_entropy(clf(inp), torch.arange(inp.shape[0]) % num_classes).backward()
        finally:
            clf.eval()
        if inp.grad is None or not bool(inp.grad.abs().sum() > 0):
            raise c.fail("gradients", "a gradient on the input vectors", "none")
        return c.parameter_gradients()

    c.run("gradients", gradients)
    for device in _devices(devices):
        c.run(f"device:{device}", lambda d=device: _check_module_device(
            clf, "classifier", d, lambda m, dev: (m(x.to(dev)), x.to(dev)),
            lambda m, res, inp: check_classifier_output(m, res, inp, num_classes), 10 * atol, 10 * rtol))
    return c.report


# --- corpora ----------------------------------------------------------------------------------------
def check_corpus(plugin: Any, /, **kwargs: Any) -> List[str]:
    """Check a corpus (a registered name or class with its options, e.g. ``root=``, or an instance).

    Checks: ``labels`` a non-empty list of unique strings; ``default_protocol`` known; ``load()``
    returns ``Utterance`` objects with unique ids, labels from ``labels``, a speaker and a path,
    segment bounds ``0 <= start < end``, the ``fold``/``split`` values its protocol needs;
    ``problems`` a list of ``CorpusProblem``; a second instance loads the same utterances.
    """
    from ser_plugins.plugins.contracts import CorpusProblem, Utterance

    corpus, factory = _build("corpus", plugin, (), kwargs)
    c = _Checks(corpus, "corpus")
    state: dict = {}

    def declaration() -> None:
        labels = getattr(corpus, "labels", None)
        if (not isinstance(labels, (list, tuple)) or not labels or len(set(labels)) != len(labels)
                or not all(isinstance(lab, str) and lab for lab in labels)):
            raise c.fail("declaration", "labels: a non-empty list of unique, non-empty strings", repr(labels))
        if getattr(corpus, "default_protocol", None) not in PROTOCOLS:
            raise c.fail("declaration", f"default_protocol one of {PROTOCOLS}", repr(getattr(corpus, "default_protocol", None)))

    c.run("declaration", declaration)

    def load() -> None:
        utts = corpus.load()
        if not isinstance(utts, list) or not all(isinstance(u, Utterance) for u in utts):
            raise c.fail("load", "a list of ser_plugins.Utterance", type(utts).__name__ if not isinstance(utts, list)
                         else sorted({type(u).__name__ for u in utts}))
        if not utts:
            raise c.fail("load", "at least one utterance", "none")
        state["utts"] = utts

    c.run("load", load)
    utts = state["utts"]

    def fields() -> None:
        ids = [u.id for u in utts]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
            raise c.fail("utterances", "unique utterance ids", f"duplicates such as {dup}")
        for u in utts:
            if u.label not in corpus.labels:
                raise c.fail("utterances", f"labels from {list(corpus.labels)}", f"{u.label!r} (utterance {u.id})")
            if not (isinstance(u.speaker, str) and u.speaker and isinstance(u.path, str) and u.path):
                raise c.fail("utterances", "a non-empty speaker and path", f"utterance {u.id}: {u.speaker!r}, {u.path!r}")
            if u.start is not None and u.end is not None and not 0 <= u.start < u.end:
                raise c.fail("utterances", "0 <= start < end", f"utterance {u.id}: {u.start}..{u.end}")
        protocol = corpus.default_protocol
        if protocol == "folds" and any(not u.fold for u in utts):
            raise c.fail("utterances", "a fold for every utterance (default_protocol 'folds')", "missing ones")
        if protocol == "split" and any((u.split or "").lower() not in SPLITS for u in utts):
            raise c.fail("utterances", f"a split in {SPLITS} for every utterance (default_protocol 'split')", "others")
        problems = getattr(corpus, "problems", None)
        if not isinstance(problems, list) or not all(isinstance(p, CorpusProblem) for p in problems):
            raise c.fail("problems", "a list of CorpusProblem (use self.problem(...))", repr(problems)[:80])

    c.run("utterances", fields)

    def repeatable() -> Optional[str]:
        if factory is None:
            return "an instance was given: no second instance to compare"
        if factory().load() != utts:
            raise c.fail("deterministic", "a second instance to load the same utterances", "different ones")
        return None

    c.run("deterministic", repeatable)
    return c.report

