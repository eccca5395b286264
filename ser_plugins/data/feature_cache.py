"""On-disk cache of frozen upstream features, shared across epochs, folds, heads and runs.

One safetensors file per utterance, under a folder named by a hash of everything that changes the
features (upstream identity, kept layers, storage dtype, and for utterance means the dtype the
frames were rounded to before averaging). The file name hashes the audio's identity: resolved
path, size, modification time, segment, and a hash of the file's first and last 4 KiB, so a file
replaced by another of the same size and preserved mtime (``cp -p``) is caught unless the two
differ only in the middle. Entries are written to a temporary file and renamed into place, so a
killed run never leaves a half-written entry, and two runs writing the same entry both leave a
complete one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ser_plugins.plugins.contracts import Utterance
from ser_plugins.runtime.atomic import atomic_save, atomic_write_json

log = logging.getLogger("ser_plugins")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


CONTENT_BLOCK = 4096  # bytes hashed at each end of an audio file


def content_digest(path: Path, size: int, block: int = CONTENT_BLOCK) -> str:
    """A cheap content check: SHA-256 of the first and last ``block`` bytes of the file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(block))
        if size > block:
            fh.seek(max(block, size - block))
            h.update(fh.read(block))
    return h.hexdigest()[:32]


def audio_identity(utt: Utterance) -> Dict[str, Any]:
    """What identifies an utterance's audio: resolved path, size, mtime, segment bounds and end blocks' hash."""
    path = Path(utt.path).resolve()
    st = path.stat()
    return {
        "path": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "start": utt.start,
        "end": utt.end,
        "content": content_digest(path, st.st_size),
    }


class FeatureCache:
    """Frozen features of one upstream configuration, stored per utterance."""

    def __init__(
        self,
        root: Path,
        upstream_identity: Dict[str, Any],
        layers: Sequence[int],
        dtype: torch.dtype,
        variant: str = "frames",
    ) -> None:
        if variant not in ("frames", "means"):
            raise ValueError(f"feature cache variant {variant!r} is not 'frames' or 'means'")
        self.layers = list(layers)
        self.variant = variant
        self.dtype = dtype if variant == "frames" else torch.float32
        # means are averaged from frames rounded to the storage dtype: that dtype is part of the key
        spec = {
            "upstream": upstream_identity,
            "layers": self.layers,
            "dtype": str(self.dtype),
            "variant": variant,
            "frames_dtype": str(dtype),
            "format": 3,
        }
        self.dir = Path(root) / _digest(spec)[:24]
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "spec.json").exists():
            atomic_write_json(self.dir / "spec.json", spec)
        self.hits = 0
        self.misses = 0

    def _entry(self, utt: Utterance) -> Path:
        key = _digest(audio_identity(utt))
        return self.dir / key[:2] / f"{key}.safetensors"

    def _read(self, utt: Utterance, read: Callable[[Path], Any]) -> Optional[Any]:
        """``read(entry path)`` counted as a hit, or None counted as a miss (absent, unreadable or incomplete)."""
        try:
            path = self._entry(utt)
        except OSError:
            return None
        if not path.exists():
            self.misses += 1
            return None
        try:
            value = read(path)
        except Exception as exc:  # a corrupt entry is recomputed, never trusted
            log.warning("feature cache: unreadable entry %s (%s); recomputing", path, exc)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def get(self, utt: Utterance) -> Optional[Tuple[List[torch.Tensor], int]]:
        """``(layers, frame count)`` of ``utt``, or None (also when the audio changed or the entry is unreadable)."""
        from safetensors.torch import load_file

        def read(path: Path) -> Tuple[List[torch.Tensor], int]:
            tensors = load_file(str(path))
            return [tensors[f"layer{k}"] for k in range(len(self.layers))], int(tensors["frames"].item())

        return self._read(utt, read)

    def locate(self, utt: Utterance) -> Optional[Tuple[Path, int]]:
        """``(entry path, frame count)`` of ``utt`` without loading its layers (memory-mapped header), or None.

        Counts a hit or a miss as ``get`` does; an unreadable or incomplete entry is a miss.
        """
        from safetensors import safe_open

        def read(path: Path) -> Tuple[Path, int]:
            with safe_open(str(path), framework="pt") as fh:
                names = set(fh.keys())
                if not all(f"layer{k}" in names for k in range(len(self.layers))):
                    raise ValueError("missing layers")
                return path, int(fh.get_tensor("frames").item())

        return self._read(utt, read)

    def entry_path(self, utt: Utterance) -> Path:
        """Where ``utt``'s entry is (or would be) stored."""
        return self._entry(utt)

    def put(self, utt: Utterance, feats: Sequence[torch.Tensor], frames: int) -> None:
        """Store ``utt``'s layers and its frame count atomically."""
        from safetensors.torch import save_file

        tensors = {f"layer{k}": f.to(self.dtype).contiguous() for k, f in enumerate(feats)}
        tensors["frames"] = torch.tensor([frames], dtype=torch.int64)
        path = self._entry(utt)
        atomic_save(path, lambda tmp: save_file(tensors, str(tmp)))

    def stats(self) -> Dict[str, Any]:
        """Hit/miss counts and the cache folder (written to run.json)."""
        return {"dir": str(self.dir), "hits": self.hits, "misses": self.misses}
