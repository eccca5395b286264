"""What identifies a plugin's code: its distribution and version, its full config, a hash of its source.

``Upstream.identity()`` keys the frozen-feature cache with these, so editing an installed (or
editable) plugin, upgrading it, or changing an option that was left at its default in one run and
set in another never serves stale features.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import sys
import weakref
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Set

#: modules whose classes are never part of a plugin's own source (the core, torch, the standard library)
_SKIP_ROOTS = ("ser_plugins", "torch", "builtins", "abc", "typing")

_fingerprints: "weakref.WeakKeyDictionary[type, str]" = weakref.WeakKeyDictionary()


def jsonable(value: Any) -> Any:
    """``value`` as stable JSON-able data: callables and classes by qualified name, no memory addresses."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if inspect.isclass(value) or inspect.isroutine(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", str(value))


def resolved_config(obj: Any) -> Dict[str, Any]:
    """The plugin's constructor defaults overlaid with its recorded ``config`` (what it was built with).

    Options left at their defaults are therefore part of the identity too: a default changed by a
    new version of the plugin changes the identity.
    """
    config: Dict[str, Any] = {}
    params: Iterable[inspect.Parameter]
    try:
        params = inspect.signature(type(obj)).parameters.values()
    except (TypeError, ValueError):
        params = []
    for p in params:
        if p.default is not inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            config[p.name] = p.default
    config.update(dict(getattr(obj, "config", None) or {}))
    return jsonable(config)


def _source_files(cls: type) -> List[Path]:
    """The ``.py`` files that define ``cls`` and its bases: each module's folder when it is a package."""
    files: Set[Path] = set()
    for klass in cls.__mro__:
        module = sys.modules.get(klass.__module__)
        if module is None or klass.__module__.split(".")[0] in _SKIP_ROOTS:
            continue
        path = getattr(module, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        path_obj = Path(path).resolve()
        if getattr(module, "__package__", None):  # inside a package: every module of that folder
            files.update(p.resolve() for p in path_obj.parent.glob("*.py"))
        else:  # a top-level module
            files.add(path_obj)
    return sorted(files)


def source_fingerprint(cls: type) -> str:
    """sha256 of the plugin's source files (see ``_source_files``); computed once per loaded class.

    Memoised per class object, so a module edited after import keeps the fingerprint of the code
    that actually runs; a fresh process (or a reloaded module) sees the edit.
    """
    cached = _fingerprints.get(cls)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for path in _source_files(cls):
        digest.update(path.name.encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"<unreadable>")
    value = digest.hexdigest()[:16]
    _fingerprints[cls] = value
    return value


@lru_cache(maxsize=8)
def _packages_distributions(path: tuple) -> Mapping[str, List[str]]:  # keyed on sys.path: new installs show
    return metadata.packages_distributions()


def distribution_of(obj: Any) -> Dict[str, Optional[str]]:
    """``{"name", "version"}`` of the distribution that installs the plugin's class.

    Found from the class's top-level package; falls back to the entry point's distribution that
    the registry recorded (``plugin_dist``), else ``None``.
    """
    top = type(obj).__module__.split(".")[0]
    names = _packages_distributions(tuple(sys.path)).get(top) or []
    if not names and getattr(obj, "plugin_dist", None):
        names = [obj.plugin_dist]
    for name in names:
        try:
            return {"name": name, "version": metadata.version(name)}
        except metadata.PackageNotFoundError:
            continue
    return {"name": getattr(obj, "plugin_dist", None), "version": getattr(obj, "plugin_version", None) or None}
