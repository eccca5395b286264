"""Entry-point plugin registry: lazy discovery, clear errors, presets as data.

Plugins are found through ``importlib.metadata`` entry points in five groups (``KINDS``). Listing
never imports a plugin module; a plugin is imported when it is first built. A plugin that fails to
import is reported alone (its name, distribution and error) and the others keep working.

The registry is an object, ``PluginManager`` (pluggy's idea): it reads the entry points of every
kind once per process, the first time one is needed, and keeps them. It reads them again after
``refresh()``, when ``sys.path`` changed since (a distribution put on the path at run time, as the
tests' ``fake_dist`` does), and once before saying a name is unknown (a distribution installed in
a directory already on the path). The module-level functions (``create``, ``create_upstream``,
``list_plugins``, ``load``, ``load_builder``, ``check_kwargs``, ...) are the public API: they
delegate to one default manager (``default_manager()``).

Every registry error is a ``PluginError`` carrying the plugin as attributes, not only as text:
``.kind``, ``.name`` and ``.dist`` (the distribution; None where unknown).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import logging
import re
import sys
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from ser_plugins.errors import UserError

log = logging.getLogger("ser_plugins")

#: the project's own distribution: its plugin names win a clash with a third party's
CORE_DIST = "ser-plugins"

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
    """Base of all registry errors; the message is meant for the user as is.

    ``kind``, ``name`` and ``dist`` say which plugin (each None where unknown): code that handles
    the error reads them instead of parsing the message.
    """

    def __init__(
        self, message: str = "", *, kind: Optional[str] = None, name: Optional[str] = None, dist: Optional[str] = None
    ) -> None:
        super().__init__(message)
        self.kind, self.name, self.dist = kind, name, dist

    def _fill(self, kind: Optional[str], name: Optional[str], dist: Optional[str]) -> "PluginError":
        """Set the attributes still unknown (the message stays as it is); returns self."""
        self.kind = self.kind if self.kind is not None else kind
        self.name = self.name if self.name is not None else name
        self.dist = self.dist if self.dist is not None else dist
        return self


class UnknownPluginError(PluginError, KeyError):
    """No plugin of that kind has that name (``dist`` is the distribution asked for, if any)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AmbiguousPluginError(PluginError):
    """Two distributions register the same name; qualify it as ``dist:name`` (``dists`` lists them)."""

    def __init__(self, message: str = "", *, dists: Tuple[str, ...] = (), **who: Any) -> None:
        super().__init__(message, **who)
        self.dists = tuple(dists)


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
    """A discovered plugin (one entry point), not yet imported.

    The one ``PluginSpec``: a recipe's plugin section is ``ser_plugins.recipe.PluginSection``.
    """

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


def _check_kind(kind: str, kinds: Mapping[str, str] = KINDS) -> str:
    if kind not in kinds:
        raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(kinds)}", kind=kind)
    return kind


def _read_group(entry_points: Any, kind: str, group: str) -> List[PluginSpec]:
    """The specs of one entry-point group, sorted by name then distribution, duplicates dropped."""
    seen = set()
    specs: List[PluginSpec] = []
    for ep in entry_points.select(group=group):
        dist = ep.dist.metadata["Name"] if getattr(ep, "dist", None) is not None else "unknown"
        version = (ep.dist.version or "") if getattr(ep, "dist", None) is not None else ""
        key = (ep.name, ep.value, dist)
        if key in seen:  # the same distribution found twice on sys.path
            continue
        seen.add(key)
        specs.append(PluginSpec(kind, ep.name, ep.value, dist, version))
    return sorted(specs, key=lambda s: (s.name, s.dist))


class PluginManager:
    """The plugins of every kind, from entry points read once (pluggy's ``PluginManager`` idea).

    The entry points are read the first time a kind is asked for, all groups in one pass, and kept
    until ``refresh()``; a changed ``sys.path`` reads them again, and so does a name that is not
    found (once, before ``UnknownPluginError``). Reading holds a lock: threads that ask at the
    same time read once. Nothing is imported until a plugin is loaded.
    """

    def __init__(self, kinds: Optional[Mapping[str, str]] = None, core_dist: str = CORE_DIST) -> None:
        self.kinds: Dict[str, str] = dict(KINDS if kinds is None else kinds)
        self.core_dist = core_dist
        #: how many times the entry points were read (tests and ``ser list --debug`` look)
        self.reads = 0
        self._lock = threading.RLock()
        self._table: Optional[Dict[str, List[PluginSpec]]] = None
        self._path: Optional[Tuple[str, ...]] = None
        self._warned_clashes: Set[Tuple[str, str]] = set()

    # --- discovery ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Forget the entry points read so far: the next look-up reads them again.

        Call it after installing or removing a distribution in this process (pip in a subprocess,
        a test that writes a ``*.dist-info``); a change of ``sys.path`` needs no call.
        """
        with self._lock:
            self._table = None
            self._path = None
        importlib.invalidate_caches()  # the metadata finder caches directory listings

    def _read(self) -> Dict[str, List[PluginSpec]]:
        path = tuple(sys.path)
        table = self._table
        if table is not None and self._path == path:
            return table
        with self._lock:
            if self._table is None or self._path != path:
                entry_points = metadata.entry_points()
                self._table = {kind: _read_group(entry_points, kind, group) for kind, group in self.kinds.items()}
                self._path = path
                self.reads += 1
            return self._table

    def specs(self, kind: str) -> List[PluginSpec]:
        """Every discovered plugin of ``kind`` (a new list), sorted by name then distribution."""
        _check_kind(kind, self.kinds)
        return list(self._read()[kind])

    def list_plugins(self, kind: Optional[str] = None, pattern: str = "*") -> List[PluginSpec]:
        """Discovered plugins of ``kind`` (or of every kind) whose name matches the glob ``pattern``."""
        kinds = [kind] if kind else list(self.kinds)
        return [s for k in kinds for s in self.specs(k) if fnmatch.fnmatch(s.name, pattern)]

    def clashes(self, kind: Optional[str] = None) -> List[List[PluginSpec]]:
        """Every name that several distributions register, as lists of their specs (same kind, same name)."""
        kinds = [kind] if kind else list(self.kinds)
        out: List[List[PluginSpec]] = []
        for k in kinds:
            by_name: Dict[str, List[PluginSpec]] = {}
            for s in self.specs(k):
                by_name.setdefault(s.name, []).append(s)
            out += [specs for specs in by_name.values() if len({normalize_dist(s.dist) for s in specs}) > 1]
        return out

    def clash_winner(self, specs: List[PluginSpec]) -> Optional[PluginSpec]:
        """The spec an unqualified name resolves to in a clash: the project's own, else None (ambiguous)."""
        core = [s for s in specs if normalize_dist(s.dist) == normalize_dist(self.core_dist)]
        return core[0] if len(core) == 1 else None

    def _matches(self, kind: str, dist: Optional[str], short: str) -> Tuple[List[PluginSpec], List[PluginSpec]]:
        specs = self.specs(kind)
        return specs, [s for s in specs if s.name == short and (dist is None or normalize_dist(s.dist) == dist)]

    def resolve_entry(self, kind: str, name: str) -> PluginSpec:
        """Find the one plugin ``name`` (or ``dist:name``) of ``kind``, with errors that help.

        ``dist`` may be spelt in any normalised form (``ser_plugins:fbank``, ``ser-plugins:fbank``).
        When several distributions register ``name``, the project's own distribution keeps it (a
        one-line warning names the others and their ``dist:name`` form); between third parties the
        name is ambiguous and must be qualified. A name not found is looked for once more in freshly
        read entry points before ``UnknownPluginError``.
        """
        dist: Optional[str] = None
        short = name
        if ":" in name:
            dist, short = name.split(":", 1)
            dist = normalize_dist(dist)
        specs, matches = self._matches(kind, dist, short)
        if not matches:
            self.refresh()
            specs, matches = self._matches(kind, dist, short)
        if not matches:
            names = sorted({s.name for s in specs})
            close = difflib.get_close_matches(short, names, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            where = ""
            if dist is not None:
                dists = sorted({s.dist for s in specs if s.name == short})
                where = f" in distribution {dist!r}" + (f" (it is registered by: {', '.join(dists)})" if dists else "")
            raise UnknownPluginError(
                f"unknown {kind} {name!r}{where}.{hint} Available {kind}s: {', '.join(names) or '(none)'}",
                kind=kind,
                name=short,
                dist=dist,
            )
        if len(matches) > 1:
            winner = self.clash_winner(matches)
            if winner is None:
                both = ", ".join(f"{s.qualified_name} ({s.value})" for s in matches)
                raise AmbiguousPluginError(
                    f"{kind} {short!r} is registered by several distributions: {both}. Name one as 'dist:{short}'.",
                    kind=kind,
                    name=short,
                    dists=tuple(s.dist for s in matches),
                )
            if (kind, short) not in self._warned_clashes:
                self._warned_clashes.add((kind, short))
                others = ", ".join(f"{s.dist!r} ({s.value})" for s in matches if s is not winner)
                log.warning(
                    "%s %r is also registered by %s; using %s's. Name the other one as '%s'.",
                    kind,
                    short,
                    others,
                    winner.dist,
                    "' or '".join(s.qualified_name for s in matches if s is not winner),
                )
            return winner
        return matches[0]

    # --- loading and building ----------------------------------------------------------------------
    def load_spec(self, spec: PluginSpec) -> Any:
        """Import and return the object behind a discovered plugin; import failures become ``PluginLoadError``."""
        ep = metadata.EntryPoint(name=spec.name, value=spec.value, group=self.kinds[spec.kind])
        try:
            return ep.load()
        except Exception as exc:  # any import-time failure of a third-party module
            raise PluginLoadError(
                f"{spec.kind} plugin {spec.name!r} from distribution {spec.dist!r} ({spec.value}) "
                f"failed to load: {type(exc).__name__}: {exc}",
                kind=spec.kind,
                name=spec.name,
                dist=spec.dist,
            ) from exc

    def load(self, kind: str, name: str) -> Any:
        """Import and return the object behind plugin ``name`` (a class, a factory or a Preset)."""
        return self.load_spec(self.resolve_entry(kind, name))

    def load_builder(self, kind: str, name: str) -> Tuple[Callable[..., Any], Dict[str, Any]]:
        """``(builder, preset_kwargs)`` for ``name``: presets resolve to their builder plugin."""
        return self._builder(self.resolve_entry(kind, name), name)

    def _builder(self, spec: PluginSpec, name: str) -> Tuple[Callable[..., Any], Dict[str, Any]]:
        """``load_builder`` for a resolved ``spec`` (``name`` as the caller spelt it, for messages)."""
        kind = spec.kind
        obj = self.load_spec(spec)
        preset_kwargs: Dict[str, Any] = {}
        depth = 0
        while isinstance(obj, Preset):
            preset_kwargs = {**obj.kwargs, **preset_kwargs}
            obj = self.load(kind, obj.builder)
            depth += 1
            if depth > 8:
                raise PluginError(
                    f"{kind} preset {name!r} refers to presets in a loop", kind=kind, name=spec.name, dist=spec.dist
                )
        if not callable(obj):
            raise PluginLoadError(
                f"{kind} plugin {name!r} is neither callable nor a Preset: {obj!r}",
                kind=kind,
                name=spec.name,
                dist=spec.dist,
            )
        return obj, preset_kwargs

    def check_kwargs(self, kind: str, name: str, kwargs: Dict[str, Any], reserved: tuple = ()) -> None:
        """Raise a ``PluginError`` naming any key of ``kwargs`` that plugin ``name`` does not take."""
        spec = self.resolve_entry(kind, name)
        builder, _ = self._builder(spec, name)
        accepted = accepted_kwargs(builder)
        if accepted is None:
            return
        try:
            _refuse_unknown(kind, name, kwargs, [a for a in accepted if a not in reserved])
        except PluginError as exc:
            exc._fill(kind, spec.name, spec.dist)
            raise

    def create(self, kind: str, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Build plugin ``name`` of ``kind`` (see the module-level ``create``)."""
        spec = self.resolve_entry(kind, name)  # once: the builder comes from this spec
        builder, preset_kwargs = self._builder(spec, name)
        config = {**preset_kwargs, **kwargs}
        try:
            options = resolved_options(kind, name, builder, args, config)
        except PluginError as exc:
            exc._fill(kind, spec.name, spec.dist)
            raise
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


_default = PluginManager()
#: the (kind, name) clashes already warned about, once per process (the default manager's)
_warned_clashes: Set[Tuple[str, str]] = _default._warned_clashes


def default_manager() -> PluginManager:
    """The manager the module-level functions use."""
    return _default


def refresh() -> None:
    """Read the entry points again on the next look-up (after installing a distribution in-process)."""
    _default.refresh()


def _discover(kind: str) -> List[PluginSpec]:
    return _default.specs(kind)


def list_plugins(kind: Optional[str] = None, pattern: str = "*") -> List[PluginSpec]:
    """Discovered plugins of ``kind`` (or of every kind) whose name matches the glob ``pattern``.

    Nothing is imported: this reads installed distributions' metadata only (once per process).
    """
    return _default.list_plugins(kind, pattern)


def clashes(kind: Optional[str] = None) -> List[List[PluginSpec]]:
    """Every name that several distributions register, as lists of their specs (same kind, same name)."""
    return _default.clashes(kind)


def clash_winner(specs: List[PluginSpec]) -> Optional[PluginSpec]:
    """The spec an unqualified name resolves to in a clash: the project's own, else None (ambiguous)."""
    return _default.clash_winner(specs)


def resolve_entry(kind: str, name: str) -> PluginSpec:
    """The one discovered plugin ``name`` (or ``dist:name``) of ``kind``; see ``PluginManager.resolve_entry``.

    (A recipe mapping is validated by ``ser_plugins.recipe.resolve``, a different function.)
    """
    return _default.resolve_entry(kind, name)


#: the old name of ``resolve_entry``, kept for existing imports
resolve = resolve_entry


def load(kind: str, name: str) -> Any:
    """Import and return the object behind plugin ``name`` (a class, a factory or a Preset)."""
    return _default.load(kind, name)


def load_spec(spec: PluginSpec) -> Any:
    """Import and return the object behind a discovered plugin; import failures become ``PluginLoadError``."""
    return _default.load_spec(spec)


def load_builder(kind: str, name: str) -> Tuple[Callable[..., Any], Dict[str, Any]]:
    """``(builder, preset_kwargs)`` for ``name``: presets resolve to their builder plugin."""
    return _default.load_builder(kind, name)


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
    return [
        p.name for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY)
    ]


def _refuse_unknown(kind: str, name: str, kwargs: Dict[str, Any], accepted: List[str]) -> None:
    """Raise ``PluginError`` for the first key of ``kwargs`` not in ``accepted``, with a close match as a hint."""
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PluginError(
                f"{kind} {name!r} has no option {key!r}{hint}; options: {', '.join(accepted) or '(none)'}", kind=kind
            )


def check_kwargs(kind: str, name: str, kwargs: Dict[str, Any], reserved: tuple = ()) -> None:
    """Raise a ``PluginError`` naming any key of ``kwargs`` that plugin ``name`` does not take."""
    _default.check_kwargs(kind, name, kwargs, reserved)


def resolved_options(kind: str, name: str, builder: Callable, args: tuple, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``kwargs`` checked against ``builder``'s signature, with every default filled in.

    Unknown options (with a close match) and missing required ones raise ``PluginError``, the
    same messages a recipe gets. ``args`` (e.g. an aggregator's ``input_dim``) are not options.
    """
    sig = _signature(builder)
    if sig is None:
        return dict(kwargs)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    positional = [
        p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ][: len(args)]
    accepted = accepted_kwargs(builder)
    if accepted is not None:
        _refuse_unknown(kind, name, kwargs, [a for a in accepted if a not in positional])
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError as exc:
        missing = [
            p.name
            for p in params
            if p.default is inspect.Parameter.empty
            and p.name not in kwargs
            and p.name not in positional
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if missing:
            raise PluginError(
                f"{kind} {name!r} needs option{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)}",
                kind=kind,
            ) from None
        raise PluginError(f"{kind} {name!r}: {exc}", kind=kind) from None
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
    return _default.create(kind, name, *args, **kwargs)


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
