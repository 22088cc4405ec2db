"""The one forward pass used by the evaluation code: a right-padded batch with an explicit attention mask."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from dsg_lens.tokens import TokenBatch


def padded_logits(model: nn.Module, batch: TokenBatch, lengths: list[int]) -> Float[Tensor, "batch pos vocab"]:
    """Logits of a right-padded ``batch`` whose rows hold ``lengths`` tokens (padding is masked out of attention,
    whatever the tokenizer's padding side; real positions score exactly as they would alone)."""
    width = batch.tokens.shape[1]
    device = batch.tokens.device
    mask = torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    return model(batch.tokens, return_type="logits", attention_mask=mask.long())
