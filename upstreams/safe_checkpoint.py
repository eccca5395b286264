"""Load ``torch.save`` checkpoints without running code from them.

Research checkpoints (fairseq wav2vec 2.0 / HuBERT, ...) are pickles: loading one with plain
``torch.load`` can execute anything the file asks for. :func:`load_checkpoint` uses
``torch.load(weights_only=True)``, whose unpickler only builds tensors, containers and the classes
it is told about, and adds an explicit allow-list:

* real, data-only classes: ``argparse.Namespace`` (legacy fairseq ``args``);
* inert stand-ins (:class:`InertObject`) for the classes these checkpoints reference but that we
  never import: omegaconf containers and nodes (fairseq's ``cfg``), fairseq's ``Dictionary`` and
  config dataclasses, ``typing`` forms, ``enum`` members and numpy scalars. A stand-in only
  records the arguments and state it is given; :func:`to_plain` turns them into dicts and lists.

Anything else the pickle names (``os.system``, ``builtins.exec``, ``subprocess.*``, a class of
some other package, ...) makes the load fail with :class:`UnsafeCheckpointError` before any of it
is called.
"""
from __future__ import annotations

import argparse
import ast
import collections
import pickle
import re
import zipfile
from os import PathLike
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Type, Union

import torch

# Globals that are rebuilt as the real class: plain attribute bags with no behaviour on load.
REAL_GLOBALS: Tuple[Any, ...] = (argparse.Namespace, collections.defaultdict)

# Globals under these prefixes are replaced by inert stand-ins (nothing of them is imported).
STUB_PREFIXES: Tuple[str, ...] = (
    "omegaconf.",
    "fairseq.",
    "fairseq_cli.",
    "typing.",
    "enum.",
    "numpy.",
    "pathlib.",
)

# Builtin types that omegaconf metadata refers to (as values: ``ref_type=str`` ...).
STUB_NAMES: Tuple[str, ...] = (
    "builtins.str",
    "builtins.int",
    "builtins.float",
    "builtins.bool",
    "builtins.bytes",
    "builtins.dict",
    "builtins.list",
    "builtins.tuple",
    "builtins.object",
    "builtins.NoneType",
    "builtins.type",
)

PathType = Union[str, "PathLike[str]"]

_GLOBAL_IN_ERROR = re.compile(r"GLOBAL (\S+)")


from ser_plugins.errors import CorruptFileError, UnsafeCheckpointError, unpickler_detail  # noqa: E402  (one error type, defined in the core)


class InertObject:
    """Stand-in for a class a checkpoint names but that is never imported.

    Calling or instantiating it only records the arguments (``_args``, ``_kwargs``) and
    ``__setstate__`` only records the state (``_state``). ``qualified_name`` is the name the
    checkpoint used (one subclass is made per name).
    """

    qualified_name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "InertObject":  # noqa: D102 - see class doc
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self._state: Any = None

    def __setstate__(self, state: Any) -> None:
        """Record the pickled state; nothing else happens."""
        self.__dict__.setdefault("_args", ())
        self.__dict__.setdefault("_kwargs", {})
        self._state = state

    def __repr__(self) -> str:
        return f"<inert {self.qualified_name}>"


_STUB_CACHE: Dict[str, Type[InertObject]] = {}


def inert_class(qualified_name: str) -> Type[InertObject]:
    """The (cached) :class:`InertObject` subclass standing in for ``qualified_name``."""
    if qualified_name not in _STUB_CACHE:
        short = qualified_name.rsplit(".", 1)[-1] or "Inert"
        _STUB_CACHE[qualified_name] = type(short, (InertObject,), {"qualified_name": qualified_name})
    return _STUB_CACHE[qualified_name]


def is_stub_name(qualified_name: str, prefixes: Sequence[str] = STUB_PREFIXES) -> bool:
    """True when ``qualified_name`` is replaced by an inert stand-in."""
    return qualified_name in STUB_NAMES or any(qualified_name.startswith(p) for p in prefixes)


def _real_names() -> Dict[str, Any]:
    return {f"{obj.__module__}.{obj.__qualname__}": obj for obj in REAL_GLOBALS}


def _classify(names: Iterable[str], prefixes: Sequence[str]) -> Tuple[List[Any], List[str]]:
    """Split checkpoint globals into safe_globals entries and refused names."""
    real = _real_names()
    allowed: List[Any] = []
    refused: List[str] = []
    for name in sorted(set(names)):
        if name in real:
            allowed.append(real[name])
        elif is_stub_name(name, prefixes):
            allowed.append((inert_class(name), name))
        else:
            refused.append(name)
    return allowed, refused


def _refuse(path: PathType, refused: Sequence[str]) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refusing to load {str(path)!r}: its pickle references {', '.join(refused)}, outside the "
        "allow-list of data-only types (tensors, containers, argparse.Namespace, and inert "
        "stand-ins for omegaconf/fairseq/typing/enum/numpy objects). Loading it could run code, so "
        "nothing was loaded. If this is a model you trust from another toolkit, convert it to "
        "safetensors in an environment where that toolkit is installed."
    )


def _is_zip(path: PathType) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _load_with(path: PathType, allowed: List[Any]) -> Any:
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError) as exc:  # a truncated or damaged file (not a refusal)
        raise CorruptFileError(f"{str(path)!r}: not a readable checkpoint ({str(exc).splitlines()[0].split('. ')[0][:200]}); "
                               "download or copy it again") from None


def load_checkpoint(path: PathType, stub_prefixes: Sequence[str] = STUB_PREFIXES) -> Any:
    """Load a ``torch.save`` file with ``weights_only=True`` and the allow-list described above.

    Zip checkpoints are scanned before loading (``get_unsafe_globals_in_checkpoint``); legacy
    (pre-1.6) files are loaded step by step, each unknown global either stubbed or refused.
    Raises :class:`UnsafeCheckpointError` when a global outside the allow-list is referenced and
    ``FileNotFoundError`` when ``path`` does not exist.
    """
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5
        raise RuntimeError(f"safe checkpoint loading needs torch>=2.5 (found {torch.__version__})")
    with open(path, "rb"):  # a clear FileNotFoundError / PermissionError first
        pass
    allowed: List[Any] = []
    if _is_zip(path):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # unusual pickle opcodes: fall back to the incremental load below
            names = None
        if names is not None:
            allowed, refused = _classify(names, stub_prefixes)
            if refused:
                raise _refuse(path, refused)
    seen: set = set()
    for _ in range(256):  # each round admits one more global (legacy files, scan fallback)
        try:
            return _load_with(path, allowed)
        except pickle.UnpicklingError as exc:  # the weights-only unpickler refused something
            match = _GLOBAL_IN_ERROR.search(str(exc))
            if match is None:
                detail = unpickler_detail(exc)[-300:]  # never torch's hint to retry with weights_only=False
                raise UnsafeCheckpointError(
                    f"refusing to load {str(path)!r}: the weights-only unpickler rejected it ({detail})"
                ) from None
            name = match.group(1)
            if "." not in name:  # torch prints builtins without their module
                name = f"builtins.{name}"
            more, refused = _classify([name], stub_prefixes)
            if refused or name in seen:
                raise _refuse(path, refused or [name]) from None
            seen.add(name)
            allowed.extend(more)
    raise UnsafeCheckpointError(f"{str(path)!r} references too many unknown globals")


def _plain_omegaconf(name: str, state: Any) -> Any:
    content = state.get("_content") if isinstance(state, dict) else None
    if name.endswith("DictConfig"):
        if isinstance(content, dict):
            return {to_plain(k): to_plain(v) for k, v in content.items()}
        return to_plain(content)  # None, or an interpolation / missing-value string
    if name.endswith("ListConfig"):
        if isinstance(content, (list, tuple)):
            return [to_plain(v) for v in content]
        return to_plain(content)
    if isinstance(state, dict) and "_val" in state:  # AnyNode, StringNode, EnumNode, ...
        return to_plain(state["_val"])
    return to_plain(state)


def to_plain(obj: Any) -> Any:
    """Turn a loaded config (omegaconf stand-ins, Namespaces, enums) into dicts, lists and scalars.

    Tensors are returned as they are; a stand-in class used as a value becomes its name.
    """
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    if isinstance(obj, type) and issubclass(obj, InertObject):
        return obj.qualified_name
    if isinstance(obj, InertObject):
        name = obj.qualified_name
        state = obj.__dict__.get("_state")
        if name.startswith("omegaconf."):
            return _plain_omegaconf(name, state)
        if state is not None:  # a dataclass / object pickled with its __dict__
            return to_plain(state)
        args = obj.__dict__.get("_args", ())
        if name.startswith("pathlib.") and all(isinstance(a, str) for a in args):
            return "/".join(args)
        if len(args) == 1:  # enum member, numpy scalar wrapper, ...
            return to_plain(args[0])
        return [to_plain(a) for a in args] if args else None
    return obj


def int_literal(spec: Any) -> Any:
    """The value of a config's integer expression (``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``), without eval.

    Only integer constants, list and tuple literals, ``+`` and ``*`` are accepted; anything else
    raises ``ValueError``. Checkpoint configs store conv-layer specs this way.
    """
    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError("unsupported")

    try:
        return value(ast.parse(str(spec), mode="eval"))
    except SyntaxError:
        raise ValueError("unparsable") from None

