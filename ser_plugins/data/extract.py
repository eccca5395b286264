"""Running a frozen upstream over utterances: ``extract_features``.

``data/features.py`` calls it once per pass, for features kept in RAM and for features streamed to
the on-disk cache alike.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ser_plugins.data.batching import bucket_batches, pad_waves, padding_fraction
from ser_plugins.plugins.boundary import check_upstream_output
from ser_plugins.plugins.contracts import Upstream

log = logging.getLogger("ser_plugins")


def extract_features(
    upstream: Upstream,
    waves: Optional[Dict[str, np.ndarray]],
    layers: Sequence[int],
    max_batch_samples: int = 16000 * 64,
    batch_size: int = 16,
    device: str = "cpu",
    dtype: torch.dtype = torch.float16,
    progress: bool = True,
    precision: str = "fp32",
    stats: Optional[Dict[str, float]] = None,
    reduce_mean: bool = False,
    frame_counts: Optional[Dict[str, int]] = None,
    lengths: Optional[Dict[str, int]] = None,
    batch_loader: Optional[Callable[..., Iterator[Tuple[torch.Tensor, torch.Tensor]]]] = None,
    sink: Optional[Callable[[str, List[torch.Tensor], int], None]] = None,
) -> Dict[str, List[torch.Tensor]]:
    """Run a frozen upstream once over every utterance; keep ``layers`` as ``[T, D]`` tensors on CPU.

    Batches are length-bucketed under ``max_batch_samples`` padded samples (an utterance longer
    than that runs alone), so memory stays bounded. With ``reduce_mean`` only each layer's
    time-average is kept (``[1, D]`` float32), for heads that see nothing else. ``frame_counts``
    receives every utterance's number of frames; ``stats`` the padding fraction, the number of
    batches, the audio seconds and the wall time. ``sink(id, layers, frames)`` (when given) receives
    each utterance's layers as they are computed, instead of the returned dict. Audio streamed from
    disk (``data/wave_stream.py``): ``lengths`` replaces ``waves``, and ``batch_loader(ids, batches)``
    yields the padded batches.
    """
    if lengths is None and waves is None:
        raise TypeError("extract_features needs waves or lengths")
    audio: Dict[str, np.ndarray] = waves if waves is not None else {}
    ids = list(audio) if lengths is None else list(lengths)
    samples = [len(audio[i]) for i in ids] if lengths is None else [lengths[i] for i in ids]
    if not upstream.batch_invariant:
        batch_size = 1  # padding would change the features: each utterance alone, as at prediction time
    batches = bucket_batches(samples, batch_size, max_batch_samples)
    out: Dict[str, List[torch.Tensor]] = {}
    upstream.eval()
    amp = (
        torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
        if precision != "fp32" and str(device).startswith("cuda")
        else None
    )
    t0 = time.perf_counter()
    bar = tqdm(total=len(ids), desc="extract features", unit="utt", disable=not progress, leave=False)
    padded = (
        batch_loader(ids, batches)
        if batch_loader is not None
        else (pad_waves([audio[ids[i]] for i in b]) for b in batches)
    )
    for b, (wavs, wav_lengths) in zip(batches, padded):
        if amp is not None:
            with amp:
                res = upstream(wavs.to(device), wav_lengths.to(device))
        else:
            res = upstream(wavs.to(device), wav_lengths.to(device))
        check_upstream_output(upstream, res, wav_lengths.to(device))
        frames = res.lengths.cpu()
        for j, i in enumerate(b):
            n = int(frames[j])
            if reduce_mean:
                # rounded to the storage dtype first: the same numbers as the mean of stored frames
                feats = [res.hidden_states[k][j, :n].to(dtype).float().mean(0, keepdim=True).cpu() for k in layers]
            else:
                feats = [res.hidden_states[k][j, :n].to("cpu", dtype).clone() for k in layers]
            if sink is not None:
                sink(ids[i], feats, n)
            else:
                out[ids[i]] = feats
            if frame_counts is not None:
                frame_counts[ids[i]] = n
        bar.update(len(b))
    bar.close()
    if stats is not None:
        stats.update(
            padding_fraction=padding_fraction(samples, batches),
            batches=len(batches),
            audio_seconds=sum(samples) / upstream.sample_rate,
            seconds=time.perf_counter() - t0,
        )
    return out
