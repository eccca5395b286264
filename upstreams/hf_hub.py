"""Finding a Hugging Face checkpoint: a local folder or the hub (cache), offline rules, clear errors."""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ser_plugins.errors import UserError

_TRUE = {"1", "true", "yes", "on"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".index.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class WeightsNotFoundError(UserError, OSError):
    """The model's files are neither in a local folder nor reachable (offline, wrong path, unknown id)."""


def offline_mode() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


# --- locating a checkpoint ---------------------------------------------------------------------
@dataclass
class ModelSource:
    """Where an HF model lives: a local folder, or a hub id (with the cached snapshot folder)."""

    kind: str  # "local" or "hub"
    location: str  # absolute folder, or hub id
    folder: Optional[str] = None
    revision: Optional[str] = None
    commit: Optional[str] = None


def _looks_like_hub_id(model: str) -> bool:
    return bool(_HUB_ID.match(model)) and not model.startswith((".", "~"))


def _hub_cache_dir(cache_dir: Optional[str]) -> str:
    if cache_dir:
        return str(cache_dir)
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - very old huggingface_hub
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def weights_not_found(
    model: str, reason: str, revision: Optional[str] = None, cache_dir: Optional[str] = None,
    local_files_only: bool = False,
) -> WeightsNotFoundError:
    """A :class:`WeightsNotFoundError` saying what was looked for and how to provide it."""
    at = f" (revision {revision})" if revision else ""
    lines = [f"could not load the model {model!r}{at}: {reason}", "To provide it:"]
    if _looks_like_hub_id(model) and not os.path.exists(model):
        folder = model.rsplit("/", 1)[-1]
        lines += [
            f"  * pass a local copy instead: model=/path/to/{folder} (a folder with config.json, "
            "model.safetensors or pytorch_model.bin, and preprocessor_config.json); in a recipe: "
            "upstream: {name: ..., model: /path/to/" + folder + "}",
            f"  * on a machine with internet, run `huggingface-cli download {model} --local-dir {folder}` "
            f"(newer huggingface_hub: `hf download {model} --local-dir {folder}`) and copy that folder here",
        ]
        if offline_mode() or local_files_only:
            lines.append(
                "  * or let it download: unset HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE and do not pass "
                "local_files_only=True (offline mode is on now)"
            )
        else:
            lines.append(
                "  * or check this machine's access to the Hugging Face Hub (network, proxy, HF_ENDPOINT, "
                "HF_TOKEN); on machines without internet set HF_HUB_OFFLINE=1 to fail fast"
            )
        lines.append(f"Looked in the Hugging Face cache at {_hub_cache_dir(cache_dir)}.")
    else:
        lines += [
            f"  * check the path {os.path.abspath(os.path.expanduser(model))}: it must be a folder with "
            "config.json and model.safetensors or pytorch_model.bin (as written by save_pretrained or "
            "`huggingface-cli download <id> --local-dir <folder>`)",
            "  * or pass a hub id such as facebook/wav2vec2-base",
        ]
    return WeightsNotFoundError("\n".join(lines))


def _has_weights(folder: str) -> bool:
    return any(name.endswith(_WEIGHT_SUFFIXES) for name in os.listdir(folder))


def locate_model(
    model: str, revision: Optional[str] = None, cache_dir: Optional[str] = None, local_files_only: bool = False
) -> ModelSource:
    """Find ``model`` as a local folder or in the hub (cache), or raise :class:`WeightsNotFoundError`."""
    path = os.path.expanduser(str(model))
    if os.path.isdir(path):
        folder = os.path.abspath(path)
        if not os.path.isfile(os.path.join(folder, "config.json")) or not _has_weights(folder):
            found = ", ".join(sorted(os.listdir(folder))[:20]) or "nothing"
            raise weights_not_found(
                model, f"the folder has no config.json and/or weights file (found: {found})", revision, cache_dir
            )
        return ModelSource("local", folder, folder=folder, revision=revision)
    if os.path.isfile(path):
        hint = " (a fairseq .pt checkpoint? use the 'fairseq' upstream)" if path.endswith((".pt", ".ckpt")) else ""
        raise weights_not_found(model, f"this is a file, not a model folder{hint}", revision, cache_dir)
    if not _looks_like_hub_id(str(model)) or os.path.isabs(path):
        raise weights_not_found(model, "no such local folder", revision, cache_dir)
    try:
        from huggingface_hub import hf_hub_download

        config_path = hf_hub_download(
            str(model), "config.json", revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
    except Exception as exc:  # offline miss, unknown repo/revision, network failure, bad id
        raise weights_not_found(model, _one_line(exc), revision, cache_dir, local_files_only) from None
    folder = os.path.dirname(config_path)
    parts = os.path.normpath(folder).split(os.sep)
    commit = parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None
    return ModelSource("hub", str(model), folder=folder, revision=revision, commit=commit)


def read_feature_extractor_config(
    source: ModelSource, cache_dir: Optional[str] = None, local_files_only: bool = False
) -> Dict[str, Any]:
    """The saved ``preprocessor_config.json`` as a dict ({} when the checkpoint has none)."""
    path = os.path.join(source.folder or "", "preprocessor_config.json")
    if source.kind == "hub" and not os.path.isfile(path):
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(
                source.location, "preprocessor_config.json", revision=source.revision,
                cache_dir=cache_dir, local_files_only=local_files_only,
            )
        except Exception:  # the checkpoint simply has no feature-extractor config
            return {}
    if not os.path.isfile(path):
        return {}
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


def folder_fingerprint(folder: str) -> str:
    """sha256 over the weight files' names, sizes and mtimes and the JSON configs' contents."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        full = os.path.join(folder, name)
        if not os.path.isfile(full):
            continue
        if name.endswith(".json"):
            with open(full, "rb") as handle:
                digest.update(name.encode() + b"\0" + handle.read())
        elif name.endswith(_WEIGHT_SUFFIXES):
            stat = os.stat(full)
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
