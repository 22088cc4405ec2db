"""The one way dsg-lens reads activations at an SAE's hook: batches of token sequences -> the activation at the
hook, the model run only up to the hook's block (``stop_at_layer``), with the real-token mask of each batch.

Used by statistics, the gate scan, token views and SAE quality. On a HookedSAETransformer with an SAE attached
at the hook, the activation read is the SAE's input (``hook_sae_input``: the model's own activation, with or
without the SAE's error term), never its reconstruction.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsg_lens.hooks import resolve_hook_name
from dsg_lens.sae_view import hook_layer
from dsg_lens.tokens import TokenBatch, iter_batches, n_batches


def hook_activations(
    model: nn.Module, hook_name: str, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_in"]:
    """The activation at ``hook_name`` for ``tokens``, running the model only up to that hook's block."""
    resolved = resolve_hook_name(model, hook_name, read=True)
    layer = hook_layer(hook_name)
    stop = layer + 1 if layer is not None and layer + 1 < model.cfg.n_layers else None
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[resolved], stop_at_layer=stop)
    activation = cache[resolved]
    if not torch.isfinite(activation).all():
        raise ValueError(f"non-finite activations at {hook_name}: check the model weights and dtype")
    return activation


def iter_activations(
    model: nn.Module,
    hook_name: str,
    sequences: list[tuple[int, Tensor]],
    batch_size: int,
    *,
    skip: int = 0,
    progress: bool = False,
    desc: str = "activations",
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[TokenBatch, Float[Tensor, "batch pos d_in"]]]:
    """(batch, activation at the hook) for the batches of ``sequences`` (:func:`dsg_lens.tokens.iter_batches`),
    after the first ``skip`` batches (to resume); a progress bar named ``desc``. ``shard=(rank, world)``: only
    the batches ``j`` with ``j % world == rank`` (:mod:`dsg_lens.distributed`), ``skip`` counting those."""
    rank, world = shard
    total = len(range(rank, n_batches(len(sequences), batch_size), world))
    own = (batch for j, batch in enumerate(iter_batches(model, sequences, batch_size)) if j % world == rank)
    for batch in tqdm(islice(own, skip, None), total=total, initial=skip, desc=desc, disable=not progress):
        yield batch, hook_activations(model, hook_name, batch.tokens)
