"""Sharding over ``torch.distributed`` ranks launched with ``torchrun`` (gloo on CPU, NCCL on GPUs).

Inside :func:`sharded` (the command line enters it when launched by ``torchrun`` with more than one process),
the passes that cost the most split their batches over the ranks, batch ``j`` to rank ``j % world``, each batch
exactly as one process would run it, and combine the results so that every rank returns what one process
returns:

- :func:`~dsg_lens.stats.collect_latent_stats`: per-latent float64 sums ``all_reduce``-d (equal to one process
  up to float64 summation order, then cast to float32);
- :func:`~dsg_lens.scan.scan_first_rank` (the calibration scan behind ``DynamicSAEGuardrail.fit``, gate rates,
  sweeps): per-text flags gathered (identical), the residual-norm sum added in one process's order (identical);
- :func:`~dsg_lens.eval.mcq.score_mcq` and :func:`~dsg_lens.eval.mcq.continuation_log_probs`: per-sequence
  log-probs gathered (identical).

Outside :func:`sharded` nothing is split, even when a process group exists (lm-eval's data parallelism splits
requests itself, and a training job's process group is not ours to use). One process (``world == 1``) takes
exactly the code path it always did.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

_SHARDING: contextvars.ContextVar[bool] = contextvars.ContextVar("dsg_lens_sharding", default=False)


def launched_world_size() -> int:
    """The number of processes the launcher (``torchrun``, ``accelerate launch``) started: ``$WORLD_SIZE``, 1 if
    unset."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def init_from_env(timeout_s: float = 1800.0) -> tuple[int, int]:
    """Join the process group the launcher set up (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``
    from the environment) unless it is joined already: NCCL when CUDA is visible (each process on
    ``cuda:$LOCAL_RANK``), gloo on CPU. Returns ``(rank, world_size)``; ``(0, 1)`` when not launched by one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if launched_world_size() <= 1:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed: run one process, or install a torch with it")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def local_rank() -> int:
    """This process's index on its node (``$LOCAL_RANK``, 0 if unset)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def device_for(requested: str | None) -> str | None:
    """The device this rank runs on: ``cuda:$LOCAL_RANK`` where ``requested`` is None or plain ``"cuda"`` and the
    process group uses GPUs, else ``requested`` (None: TransformerLens's choice)."""
    if dist.is_available() and dist.is_initialized() and torch.cuda.is_available() and requested in (None, "cuda"):
        return f"cuda:{local_rank()}"
    return requested


def close() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def sharded() -> Iterator[tuple[int, int]]:
    """Within this block, statistics, gate scans and question scoring split their batches over the ranks of the
    joined process group (see the module docstring). Yields ``(rank, world_size)``."""
    token = _SHARDING.set(True)
    try:
        yield world()
    finally:
        _SHARDING.reset(token)


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the sharding in force: the process group's inside :func:`sharded`, else
    ``(0, 1)``."""
    if _SHARDING.get() and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes files and prints results: rank 0 of the process group, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def owns(index: int) -> bool:
    """Whether batch ``index`` runs on this rank (round robin: ``index % world == rank``)."""
    rank, size = world()
    return index % size == rank


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (moved to the backend's device and back); no-op for one process."""
    if world()[1] == 1:
        return tensor
    moved = tensor.to(_collective_device())
    dist.all_reduce(moved, op=dist.ReduceOp.SUM)
    tensor.copy_(moved)
    return tensor


def all_gather(value: T) -> list[T]:
    """Every rank's ``value`` (a picklable object, e.g. CPU tensors), in rank order; ``[value]`` for one process.
    The objects travel between the processes only: nothing is written to disk."""
    size = world()[1]
    if size == 1:
        return [value]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, value)
    return out


def merge_owned(values: Sequence[T | None]) -> list[T]:
    """Per-index results where each rank filled the indices it owns (None elsewhere): every index filled, on
    every rank. Raises if an index was filled by no rank or by several."""
    merged: list[Any] = list(values)
    if world()[1] == 1:
        return merged
    parts = all_gather(list(values))
    for index in range(len(merged)):
        filled = [part[index] for part in parts if part[index] is not None]
        if len(filled) != 1:
            raise RuntimeError(f"sharding: result {index} was computed by {len(filled)} ranks, expected one")
        merged[index] = filled[0]
    return merged


def in_batch_order(per_rank: Sequence[Sequence[T]], n_batches: int) -> list[T]:
    """Per-batch values gathered from the ranks (rank r's list holds its batches r, r + world, ... in order),
    back in batch order 0..n_batches-1: so a float sum over them adds in the order one process does."""
    size = len(per_rank)
    return [per_rank[j % size][j // size] for j in range(n_batches)]
