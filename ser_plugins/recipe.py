"""Recipes: YAML files that say what to run. Validated before any work starts.

A recipe has fixed sections (see ``SCHEMA`` and docs/recipes.md). The plugin sections
(``corpus``, ``upstream``, ``aggregator``, ``classifier``) hold a ``name`` and that plugin's own
constructor options, which are checked against the plugin's signature.
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from ser_plugins import registry


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the key."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """Parse YAML safely (no object construction), with scientific-notation floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader


_NUM = (int, float)
_OPT_INT = (int, type(None))
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))

# section -> key -> (allowed types, default, allowed values or None)
SCHEMA: Dict[str, Dict[str, Tuple[tuple, Any, Optional[tuple]]]] = {
    "protocol": {
        "name": ((str, type(None)), None, ("session", "speaker", "folds", "split", None)),
        "dev": ((str,), "speaker", ("speaker", "random", "split")),
        "dev_fraction": (_NUM, 0.1, None),
        "num_folds": (_OPT_INT, None, None),
    },
    "features": {
        "layer": ((str, int), "last", None),
        "projection": (_OPT_INT, None, None),
        "normalize": ((str, type(None)), None, (None, "none", "speaker")),
        "keep_layers": ((list, type(None)), None, None),
    },
    "finetune": {
        "mode": ((str,), "frozen", ("frozen", "finetune", "full", "top_n")),
        "top_n": (_OPT_INT, None, None),
        "upstream_lr": (_NUM, 5e-5, None),
        "frozen_warmup_steps": ((int,), 0, None),
        "layer_decay": (_OPT_NUM, None, None),
        "gradient_checkpointing": ((bool,), False, None),
    },
    "training": {
        "epochs": ((int,), 30, None),
        "max_steps": (_OPT_INT, None, None),
        "batch_size": ((int,), 32, None),
        "max_batch_seconds": (_OPT_NUM, None, None),
        "optimizer": ((str,), "adamw", ("adam", "adamw", "sgd")),
        "lr": (_NUM, 1e-3, None),
        "weight_decay": (_NUM, 1e-4, None),
        "scheduler": ((str,), "none", ("none", "linear", "cosine")),
        "warmup_steps": ((int,), 0, None),
        "grad_accum": ((int,), 1, None),
        "grad_clip": (_OPT_NUM, 5.0, None),
        "patience": (_OPT_INT, 10, None),
        "class_weights": ((bool,), False, None),
        "balanced_sampling": ((bool,), False, None),
        "max_duration": (_OPT_NUM, None, None),
        "precision": ((str,), "fp32", ("fp32", "bf16", "fp16")),
        "device": ((str,), "auto", None),
        "nan_policy": ((str,), "skip", ("skip", "stop")),
        "max_nan_steps": ((int,), 20, None),
        "eval_batch_size": (_OPT_INT, None, None),
    },
    "data": {
        "strict": ((bool,), False, None),
        "precompute": ((bool,), True, None),
        "extract_batch_seconds": (_NUM, 64, None),
        "num_threads": (_OPT_INT, None, None),
        "cache_dir": (_OPT_STR, None, None),
        "cache_dtype": ((str,), "float16", ("float16", "float32")),
    },
    "output": {
        "dir": (_OPT_STR, None, None),
        "tensorboard": ((bool,), True, None),
        "save_checkpoints": ((bool,), True, None),
    },
}
PLUGIN_SECTIONS = {"corpus": "corpus", "upstream": "upstream", "aggregator": "aggregator", "classifier": "classifier"}
TOP_LEVEL = {"name": (str,), "seed": (int,), "description": (str,)}
REQUIRED_PLUGINS = ("corpus", "upstream", "aggregator", "classifier")


def _did_you_mean(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_names(types: tuple) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check_type(where: str, value: Any, types: tuple) -> None:
    if isinstance(value, bool) and bool not in types:  # bool is an int in Python; not here
        raise RecipeError(f"{where}: expected {_type_names(types)}, got a boolean ({value!r})")
    if not isinstance(value, types):
        raise RecipeError(f"{where}: expected {_type_names(types)}, got {type(value).__name__} ({value!r})")


def load_yaml(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a recipe file with ``yaml.safe_load`` (never executes tags)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections")
    return data


def apply_overrides(data: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML: ``3``, ``1e-4``, ``[1, 2]``, ``null``)."""
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise RecipeError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if isinstance(node.get(part), str) and part in PLUGIN_SECTIONS:
                node[part] = {"name": node[part]}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def _normalise_plugin_section(name: str, value: Any) -> Dict[str, Any]:
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict) or "name" not in value:
        raise RecipeError(f"{name}: expected a plugin name or a mapping with a 'name' key")
    if not isinstance(value["name"], str):
        raise RecipeError(f"{name}.name: expected str, got {type(value['name']).__name__}")
    return dict(value)


def resolve(data: Dict[str, Any], check_plugins: bool = True) -> Dict[str, Any]:
    """Validate a recipe dict and fill defaults; raise ``RecipeError`` naming the bad key.

    With ``check_plugins`` the plugin names are resolved through the registry (importing them)
    and their options are checked against the plugins' constructors.
    """
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping of sections")
    known = set(TOP_LEVEL) | set(SCHEMA) | set(PLUGIN_SECTIONS)
    for key in data:
        if key not in known:
            raise RecipeError(f"unknown recipe key {key!r}{_did_you_mean(key, known)}; keys: {', '.join(sorted(known))}")
    out: Dict[str, Any] = {"name": data.get("name", "run"), "seed": data.get("seed", 0)}
    for key, types in TOP_LEVEL.items():
        if key in data:
            _check_type(key, data[key], types)
            out[key] = data[key]
    for section in REQUIRED_PLUGINS:
        if section not in data:
            raise RecipeError(f"missing recipe section {section!r}")
        out[section] = _normalise_plugin_section(section, data[section])
    for section, fields in SCHEMA.items():
        given = data.get(section) or {}
        if not isinstance(given, dict):
            raise RecipeError(f"{section}: expected a mapping, got {type(given).__name__}")
        resolved = {}
        for key, value in given.items():
            if key not in fields:
                raise RecipeError(
                    f"unknown key {section}.{key}{_did_you_mean(key, fields)}; {section} keys: {', '.join(fields)}"
                )
        for key, (types, default, choices) in fields.items():
            value = given.get(key, default)
            _check_type(f"{section}.{key}", value, types)
            if choices is not None and value not in choices:
                raise RecipeError(f"{section}.{key}: {value!r} is not one of {', '.join(map(str, choices))}")
            resolved[key] = value
        out[section] = resolved
    _check_values(out)
    if check_plugins:
        check_plugin_options(out)
    return out


def _check_values(r: Dict[str, Any]) -> None:
    t = r["training"]
    for key in ("epochs", "batch_size", "grad_accum"):
        if t[key] < 1:
            raise RecipeError(f"training.{key} must be >= 1, got {t[key]}")
    if t["lr"] <= 0:
        raise RecipeError(f"training.lr must be > 0, got {t['lr']}")
    if r["features"]["projection"] is not None and r["features"]["projection"] < 1:
        raise RecipeError(f"features.projection must be >= 1 (or null), got {r['features']['projection']}")
    keep = r["features"]["keep_layers"]
    if keep is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in keep):
        raise RecipeError(f"features.keep_layers must be a list of layer indices, got {keep!r}")
    if r["data"]["num_threads"] is not None and r["data"]["num_threads"] < 1:
        raise RecipeError(f"data.num_threads must be >= 1 (or null), got {r['data']['num_threads']}")
    device = t["device"]
    if device not in ("auto", "cpu", "cuda", "mps") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise RecipeError(f"training.device: {device!r} is not auto, cpu, cuda, cuda:N or mps")
    layer = r["features"]["layer"]
    if isinstance(layer, str) and layer not in ("last", "weighted_sum"):
        raise RecipeError(f"features.layer: {layer!r} is not 'last', 'weighted_sum' or a layer index")
    if r["features"]["normalize"] == "none":
        r["features"]["normalize"] = None
    f = r["finetune"]
    if f["mode"] == "top_n" and not f["top_n"]:
        raise RecipeError("finetune.top_n must be set (>= 1) when finetune.mode is 'top_n'")
    if r["features"]["normalize"] == "speaker" and f["mode"] != "frozen":
        raise RecipeError(
            "features.normalize: 'speaker' needs a frozen upstream (its statistics are computed "
            "once from the upstream's features); set finetune.mode: frozen or drop it"
        )
    if r["features"]["normalize"] == "speaker" and not r["data"]["precompute"]:
        raise RecipeError("features.normalize: 'speaker' needs data.precompute: true")
    if not 0 < r["protocol"]["dev_fraction"] < 1:
        raise RecipeError("protocol.dev_fraction must be between 0 and 1")


def plugin_kwargs(section: Dict[str, Any]) -> Dict[str, Any]:
    """A plugin section's constructor options (everything but ``name``)."""
    return {k: v for k, v in section.items() if k != "name"}


def check_plugin_options(r: Dict[str, Any]) -> None:
    """Resolve every plugin name and check its options; registry errors become RecipeErrors."""
    reserved = {"aggregator": ("input_dim",), "classifier": ("input_dim", "num_classes")}
    for section, kind in PLUGIN_SECTIONS.items():
        try:
            registry.check_kwargs(kind, r[section]["name"], plugin_kwargs(r[section]), reserved.get(kind, ()))
        except registry.PluginError as exc:
            raise RecipeError(f"{section}: {exc}") from None


def load_recipe(source: Union[str, Path, Dict[str, Any]], overrides: Optional[List[str]] = None,
                check_plugins: bool = True) -> Dict[str, Any]:
    """Load (path or dict), apply overrides, validate and fill defaults."""
    data = load_yaml(source) if isinstance(source, (str, Path)) else copy.deepcopy(source)
    return resolve(apply_overrides(data, overrides or []), check_plugins=check_plugins)


def dump_recipe(recipe: Dict[str, Any]) -> str:
    """The resolved recipe as YAML (written to every run directory)."""
    return yaml.safe_dump(recipe, sort_keys=False)
