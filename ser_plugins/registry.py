"""Entry-point plugin registry: lazy discovery, clear errors, presets as data.

Plugins are found through ``importlib.metadata`` entry points in four groups. Listing never
imports a plugin module; a plugin is imported when it is first built. A plugin that fails to
import is reported alone (its name, distribution and error) and the others keep working.
"""
from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Dict, List, Optional

from ser_plugins.errors import UserError

KINDS: Dict[str, str] = {
    "upstream": "ser_plugins.upstreams",
    "aggregator": "ser_plugins.aggregators",
    "classifier": "ser_plugins.classifiers",
    "corpus": "ser_plugins.corpora",
}


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

    @property
    def qualified_name(self) -> str:
        """``dist:name``, unique even when two distributions use the same name."""
        return f"{self.dist}:{self.name}"


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
        key = (ep.name, ep.value, dist)
        if key in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(key)
        specs.append(PluginSpec(kind, ep.name, ep.value, dist))
    return sorted(specs, key=lambda s: (s.name, s.dist))


def list_plugins(kind: Optional[str] = None, pattern: str = "*") -> List[PluginSpec]:
    """Discovered plugins of ``kind`` (or of every kind) whose name matches the glob ``pattern``.

    Nothing is imported: this reads installed distributions' metadata only.
    """
    kinds = [kind] if kind else list(KINDS)
    return [s for k in kinds for s in _discover(k) if fnmatch.fnmatch(s.name, pattern)]


def resolve(kind: str, name: str) -> PluginSpec:
    """Find the one plugin ``name`` (or ``dist:name``) of ``kind``, with errors that help."""
    specs = _discover(kind)
    dist: Optional[str] = None
    short = name
    if ":" in name:
        dist, short = name.split(":", 1)
    matches = [s for s in specs if s.name == short and (dist is None or s.dist == dist)]
    if not matches:
        names = sorted({s.name for s in specs})
        close = difflib.get_close_matches(short, names, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownPluginError(
            f"unknown {kind} {name!r}.{hint} Available {kind}s: {', '.join(names) or '(none)'}"
        )
    if len(matches) > 1:
        both = ", ".join(f"{s.qualified_name} ({s.value})" for s in matches)
        raise AmbiguousPluginError(
            f"{kind} {short!r} is registered by several distributions: {both}. "
            f"Name one as 'dist:{short}'."
        )
    return matches[0]


def load(kind: str, name: str) -> Any:
    """Import and return the object behind plugin ``name`` (a class, a factory or a Preset)."""
    spec = resolve(kind, name)
    ep = metadata.EntryPoint(name=spec.name, value=spec.value, group=KINDS[kind])
    try:
        return ep.load()
    except Exception as exc:  # any import-time failure of a third-party module
        raise PluginLoadError(
            f"{kind} plugin {spec.name!r} from distribution {spec.dist!r} ({spec.value}) "
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


def accepted_kwargs(builder: Callable) -> Optional[List[str]]:
    """Keyword names ``builder`` accepts, or None when it takes ``**kwargs``."""
    target = builder.__init__ if inspect.isclass(builder) else builder
    params = list(inspect.signature(target).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]


def check_kwargs(kind: str, name: str, kwargs: Dict[str, Any], reserved: tuple = ()) -> None:
    """Raise a ``PluginError`` naming any key of ``kwargs`` that plugin ``name`` does not take."""
    builder, _ = load_builder(kind, name)
    accepted = accepted_kwargs(builder)
    if accepted is None:
        return
    accepted = [a for a in accepted if a not in reserved]
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PluginError(
                f"{kind} {name!r} has no option {key!r}{hint}; options: {', '.join(accepted) or '(none)'}"
            )


def create(kind: str, name: str, /, *args: Any, **kwargs: Any) -> Any:
    """Build plugin ``name`` of ``kind``; preset kwargs are overridden by ``kwargs``.

    The instance gets ``plugin_name`` and ``config`` (the effective keyword arguments) attributes.
    """
    builder, preset_kwargs = load_builder(kind, name)
    config = {**preset_kwargs, **kwargs}
    obj = builder(*args, **config)
    try:
        obj.plugin_name = name
        if not getattr(obj, "config", None):
            obj.config = dict(config)
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
