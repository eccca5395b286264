"""Entry-point plugin registry: lazy discovery, clear errors, presets as data.

Plugins are found through ``importlib.metadata`` entry points in four groups. Listing never
imports a plugin module; a plugin is imported when it is first built. A plugin that fails to
import is reported alone (its name, distribution and error) and the others keep working.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
import logging
import re
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

log = logging.getLogger("ser_plugins")

#: the project's own distribution: its plugin names win a clash with a third party's
CORE_DIST = "ser-plugins"

from ser_plugins.errors import UserError

KINDS: Dict[str, str] = {
    "upstream": "ser_plugins.upstreams",
    "aggregator": "ser_plugins.aggregators",
    "classifier": "ser_plugins.classifiers",
    "corpus": "ser_plugins.corpora",
    "launcher": "ser_plugins.launchers",
}
#: the kinds a recipe names in a section of its own (a launcher is chosen on the command line)
RECIPE_KINDS: Tuple[str, ...] = ("upstream", "aggregator", "classifier", "corpus")


class PluginError(UserError):
    """Base of all registry errors; the message is meant for the user as is."""


class UnknownPluginError(PluginError, KeyError):
    """No plugin of that kind has that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class AmbiguousPluginError(PluginError):
    """Two distributions register the same name; qualify it as ``dist:name``."""


class PluginLoadError(PluginError):
    """The plugin's module failed to import or does not define the advertised object."""


@dataclass(frozen=True)
class Preset:
    """A named configuration of a builder plugin: data, not code (timm-style).

    ``builder`` names another plugin of the same kind, ``kwargs`` are passed to it, and
    ``weights`` documents where the weights come from (a hub id or a file); user kwargs override.
    """

    builder: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None
    description: str = ""


@dataclass(frozen=True)
class PluginSpec:
    """A discovered plugin, not yet imported."""

    kind: str
    name: str
    value: str
    dist: str
    version: str = ""

    @property
    def qualified_name(self) -> str:
        """``dist:name``, unique even when two distributions use the same name."""
        return f"{self.dist}:{self.name}"


def normalize_dist(name: str) -> str:
    """A distribution name in its normalised form (PEP 503): ``ser_plugins`` -> ``ser-plugins``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
    return kind


def _discover(kind: str) -> List[PluginSpec]:
    group = KINDS[_check_kind(kind)]
    seen = set()
    specs: List[PluginSpec] = []
    for ep in metadata.entry_points(group=group):
        dist = ep.dist.metadata["Name"] if getattr(ep, "dist", None) is not None else "unknown"
        version = (ep.dist.version or "") if getattr(ep, "dist", None) is not None else ""
        key = (ep.name, ep.value, dist)
        if key in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(key)
        specs.append(PluginSpec(kind, ep.name, ep.value, dist, version))
    return sorted(specs, key=lambda s: (s.name, s.dist))


def list_plugins(kind: Optional[str] = None, pattern: str = "*") -> List[PluginSpec]:
    """Discovered plugins of ``kind`` (or of every kind) whose name matches the glob ``pattern``.

    Nothing is imported: this reads installed distributions' metadata only.
    """
    kinds = [kind] if kind else list(KINDS)
    return [s for k in kinds for s in _discover(k) if fnmatch.fnmatch(s.name, pattern)]


_warned_clashes: Set[Tuple[str, str]] = set()


def clashes(kind: Optional[str] = None) -> List[List[PluginSpec]]:
    """Every name that several distributions register, as lists of their specs (same kind, same name)."""
    kinds = [kind] if kind else list(KINDS)
    out: List[List[PluginSpec]] = []
    for k in kinds:
        by_name: Dict[str, List[PluginSpec]] = {}
        for s in _discover(k):
            by_name.setdefault(s.name, []).append(s)
        out += [specs for specs in by_name.values() if len({normalize_dist(s.dist) for s in specs}) > 1]
    return out


def clash_winner(specs: List[PluginSpec]) -> Optional[PluginSpec]:
    """The spec an unqualified name resolves to in a clash: the project's own, else None (ambiguous)."""
    core = [s for s in specs if normalize_dist(s.dist) == CORE_DIST]
    return core[0] if len(core) == 1 else None


def resolve(kind: str, name: str) -> PluginSpec:
    """Find the one plugin ``name`` (or ``dist:name``) of ``kind``, with errors that help.

    ``dist`` may be spelt in any normalised form (``ser_plugins:fbank``, ``ser-plugins:fbank``).
    When several distributions register ``name``, the project's own distribution keeps it (a
    one-line warning names the others and their ``dist:name`` form); between third parties the
    name is ambiguous and must be qualified.
    """
    specs = _discover(kind)
    dist: Optional[str] = None
    short = name
    if ":" in name:
        dist, short = name.split(":", 1)
        dist = normalize_dist(dist)
    matches = [s for s in specs if s.name == short and (dist is None or normalize_dist(s.dist) == dist)]
    if not matches:
        names = sorted({s.name for s in specs})
        close = difflib.get_close_matches(short, names, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        where = ""
        if dist is not None:
            dists = sorted({s.dist for s in specs if s.name == short})
            where = f" in distribution {dist!r}" + (f" (it is registered by: {', '.join(dists)})" if dists else "")
        raise UnknownPluginError(
            f"unknown {kind} {name!r}{where}.{hint} Available {kind}s: {', '.join(names) or '(none)'}"
        )
    if len(matches) > 1:
        winner = clash_winner(matches)
        if winner is None:
            both = ", ".join(f"{s.qualified_name} ({s.value})" for s in matches)
            raise AmbiguousPluginError(
                f"{kind} {short!r} is registered by several distributions: {both}. "
                f"Name one as 'dist:{short}'."
            )
        if (kind, short) not in _warned_clashes:
            _warned_clashes.add((kind, short))
            others = ", ".join(f"{s.dist!r} ({s.value})" for s in matches if s is not winner)
            log.warning("%s %r is also registered by %s; using %s's. Name the other one as '%s'.",
                        kind, short, others, winner.dist,
                        "' or '".join(s.qualified_name for s in matches if s is not winner))
        return winner
    return matches[0]


def load(kind: str, name: str) -> Any:
    """Import and return the object behind plugin ``name`` (a class, a factory or a Preset)."""
    return load_spec(resolve(kind, name))


def load_spec(spec: PluginSpec) -> Any:
    """Import and return the object behind a discovered plugin; import failures become ``PluginLoadError``."""
    ep = metadata.EntryPoint(name=spec.name, value=spec.value, group=KINDS[spec.kind])
    try:
        return ep.load()
    except Exception as exc:  # any import-time failure of a third-party module
        raise PluginLoadError(
            f"{spec.kind} plugin {spec.name!r} from distribution {spec.dist!r} ({spec.value}) "
            f"failed to load: {type(exc).__name__}: {exc}"
        ) from exc


def load_builder(kind: str, name: str) -> tuple:
    """``(builder, preset_kwargs)`` for ``name``: presets resolve to their builder plugin."""
    obj = load(kind, name)
    preset_kwargs: Dict[str, Any] = {}
    depth = 0
    while isinstance(obj, Preset):
        preset_kwargs = {**obj.kwargs, **preset_kwargs}
        obj = load(kind, obj.builder)
        depth += 1
        if depth > 8:
            raise PluginError(f"{kind} preset {name!r} refers to presets in a loop")
    if not callable(obj):
        raise PluginLoadError(f"{kind} plugin {name!r} is neither callable nor a Preset: {obj!r}")
    return obj, preset_kwargs


def _signature(builder: Callable) -> Optional[inspect.Signature]:
    try:
        return inspect.signature(builder)
    except (TypeError, ValueError):  # some builtins have no signature
        return None


def accepted_kwargs(builder: Callable) -> Optional[List[str]]:
    """Keyword names ``builder`` accepts, or None when it takes ``**kwargs``."""
    sig = _signature(builder)
    if sig is None:
        return None
    params = [p for p in sig.parameters.values() if p.name != "self"]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY)]


def _refuse_unknown(kind: str, name: str, kwargs: Dict[str, Any], accepted: List[str]) -> None:
    """Raise ``PluginError`` for the first key of ``kwargs`` not in ``accepted``, with a close match as a hint."""
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PluginError(f"{kind} {name!r} has no option {key!r}{hint}; options: {', '.join(accepted) or '(none)'}")


def check_kwargs(kind: str, name: str, kwargs: Dict[str, Any], reserved: tuple = ()) -> None:
    """Raise a ``PluginError`` naming any key of ``kwargs`` that plugin ``name`` does not take."""
    builder, _ = load_builder(kind, name)
    accepted = accepted_kwargs(builder)
    if accepted is None:
        return
    _refuse_unknown(kind, name, kwargs, [a for a in accepted if a not in reserved])


def resolved_options(kind: str, name: str, builder: Callable, args: tuple, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``kwargs`` checked against ``builder``'s signature, with every default filled in.

    Unknown options (with a close match) and missing required ones raise ``PluginError``, the
    same messages a recipe gets. ``args`` (e.g. an aggregator's ``input_dim``) are not options.
    """
    sig = _signature(builder)
    if sig is None:
        return dict(kwargs)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    positional = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                         inspect.Parameter.POSITIONAL_OR_KEYWORD)][:len(args)]
    accepted = accepted_kwargs(builder)
    if accepted is not None:
        _refuse_unknown(kind, name, kwargs, [a for a in accepted if a not in positional])
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in kwargs
                   and p.name not in positional and p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                   inspect.Parameter.VAR_KEYWORD)]
        if missing:
            raise PluginError(f"{kind} {name!r} needs option{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(repr(m) for m in missing)}") from None
        raise PluginError(f"{kind} {name!r}: {exc}") from None
    bound.apply_defaults()
    options: Dict[str, Any] = {}
    for key, value in bound.arguments.items():
        param = sig.parameters[key]
        if key in positional or param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            options.update(value)
        else:
            options[key] = value
    return options


def create(kind: str, name: str, /, *args: Any, **kwargs: Any) -> Any:
    """Build plugin ``name`` of ``kind``; preset kwargs are overridden by ``kwargs``.

    Options are checked first (unknown or missing options raise ``PluginError`` with a hint). The
    instance gets ``plugin_name``, ``plugin_dist``, ``plugin_version`` and ``config`` (every
    constructor option, defaults included, unless the plugin sets its own ``config``).
    """
    spec = resolve(kind, name)
    builder, preset_kwargs = load_builder(kind, name)
    config = {**preset_kwargs, **kwargs}
    options = resolved_options(kind, name, builder, args, config)
    obj = builder(*args, **config)
    try:
        obj.plugin_name = name
        obj.plugin_dist = spec.dist
        obj.plugin_version = spec.version
        if not getattr(obj, "config", None):
            obj.config = options
    except AttributeError:  # objects with __slots__ or read-only attributes
        pass
    return obj


def create_upstream(name: str, /, **kwargs: Any) -> Any:
    """Build an upstream plugin (or preset) by name: ``create_upstream('fbank', n_mels=64)``."""
    return create("upstream", name, **kwargs)


def create_aggregator(name: str, /, input_dim: int, **kwargs: Any) -> Any:
    """Build an aggregator for ``input_dim``-dimensional frames."""
    return create("aggregator", name, input_dim, **kwargs)


def create_classifier(name: str, /, input_dim: int, num_classes: int, **kwargs: Any) -> Any:
    """Build a classifier from ``input_dim`` features to ``num_classes`` logits."""
    return create("classifier", name, input_dim, num_classes, **kwargs)


def create_corpus(name: str, /, **kwargs: Any) -> Any:
    """Build a corpus plugin: ``create_corpus('iemocap', root='/data/IEMOCAP_full_release')``."""
    return create("corpus", name, **kwargs)
