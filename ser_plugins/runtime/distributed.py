"""Process-group primitives of a ``torchrun`` run: this rank's context, barriers, broadcast, gathering, sharding.

They sit below data and training (data shards frozen-feature extraction across ranks; training
splits batches across ranks in ``ser_plugins.training.distributed``). On a single process every
function is a no-op that returns its input.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import torch
import torch.distributed as dist

log = logging.getLogger("ser_plugins")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group: ``rank`` of ``world`` (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when more than one process trains this run."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on rank 0: the only rank that writes files, logs and progress bars."""
        return self.rank == 0


_CONTEXT: Optional[DistContext] = None


def _leave_process_group() -> None:
    """At exit: tear the process group down before the interpreter does (gloo's threads otherwise abort)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def end_process(code: int) -> None:
    """Under torchrun, the end of a rank's ``ser`` command: leave the group and exit now with ``code``.

    On success the ranks first meet at a barrier (no rank closes its connections under another).
    Python's exit handlers run and the streams are flushed, then the process ends with ``os._exit``:
    gloo's threads can abort a rank ("terminate called without an active exception") while the C++
    runtime tears down after a clean run, and torchrun then reports the whole run as failed.
    Does nothing outside a process group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if code == 0:
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - another rank is gone: its own exit code tells torchrun
            pass
    _leave_process_group()
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is not None:
        run_exit_handlers()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe
            pass
    os._exit(code)


def context(device: str = "cpu") -> DistContext:
    """The process group of this run: joined on first call when ``torchrun`` set ``WORLD_SIZE`` > 1."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CONTEXT = DistContext()
        return _CONTEXT
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        atexit.register(_leave_process_group)
    _CONTEXT = DistContext(dist.get_rank(), dist.get_world_size(), local_rank)
    if not _CONTEXT.main:  # one voice: the other ranks report only errors
        logging.getLogger("ser_plugins").setLevel(logging.ERROR)
    return _CONTEXT


def rank_device(device: str, ctx: DistContext) -> str:
    """``cuda`` becomes this rank's GPU (``cuda:LOCAL_RANK``) under torchrun; other devices are kept."""
    if ctx.active and device == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a 1-process run)."""
    if ctx.active:
        dist.barrier()


def broadcast(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not ctx.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(value: Any, ctx: DistContext) -> List[Any]:
    """Every rank's ``value``, in rank order."""
    if not ctx.active:
        return [value]
    out: List[Any] = [None] * ctx.world
    dist.all_gather_object(out, value)
    return out


def shard(items: Sequence[Any], ctx: DistContext) -> List[Any]:
    """This rank's share of ``items`` (every ``world``-th, from ``rank``)."""
    return list(items[ctx.rank :: ctx.world])


def sum_over_ranks(values: Sequence[float], ctx: DistContext) -> List[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    if not ctx.active:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()
