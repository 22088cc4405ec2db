"""Mean next-token loss and perplexity of a model over a corpus (special tokens and padding excluded).

Texts are tokenized by the model (:func:`dsg_lens.tokens.to_sequences`, long texts cut into windows of the
model's context) and run in right-padded batches; a prediction counts when both the input and the target token
are real (not BOS/EOS/PAD/other special tokens). Runs the plain ``model``, so it measures a guardrail when called
inside ``with guard.attached(model):``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsg_lens.eval.batching import padded_logits
from dsg_lens.tokens import TextsOrTokens, iter_batches, to_sequences

__all__ = ["CorpusLoss", "corpus_loss", "sequences_loss", "token_losses"]


@dataclass(frozen=True)
class CorpusLoss:
    """Summed loss over ``n_tokens`` counted predictions; ``per_text`` mean loss per input text (NaN if none)."""

    total_loss: float
    n_tokens: int
    per_text: tuple[float, ...]

    @property
    def mean_loss(self) -> float:
        if self.n_tokens == 0:
            raise ValueError("no real-token predictions were counted (texts too short or only special tokens)")
        return self.total_loss / self.n_tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_loss)

    def to_dict(self) -> dict:
        return {"mean_loss": self.mean_loss, "perplexity": self.perplexity, "n_tokens": self.n_tokens,
                "n_texts": len(self.per_text)}


def token_losses(logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"],
                 real: Bool[Tensor, "batch pos"]) -> tuple[Float[Tensor, "batch pos_1"], Bool[Tensor, "batch pos_1"]]:
    """Next-token cross-entropy at each position and whether it counts (input and target both real)."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    losses = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    counted = real[:, :-1] & real[:, 1:]
    return losses, counted


def corpus_loss(model: nn.Module, texts: TextsOrTokens, *, batch_size: int = 8, max_len: int | None = None,
                progress: bool = True) -> CorpusLoss:
    """Mean next-token loss (and perplexity) of ``model`` over ``texts`` (strings or a token tensor [n, pos])."""
    return sequences_loss(model, to_sequences(model, texts, max_len), batch_size=batch_size, progress=progress)


def sequences_loss(model: nn.Module, sequences: Sequence[tuple[int, Tensor]], *, batch_size: int = 8,
                   progress: bool = True) -> CorpusLoss:
    """:func:`corpus_loss` of sequences already made by :func:`dsg_lens.tokens.to_sequences` (to tokenize once
    and measure the model several times, e.g. under different hooks)."""
    if not sequences:
        raise ValueError("no sequences to score: pass the output of to_sequences")
    n_texts = max(i for i, _ in sequences) + 1
    sequences = list(sequences)
    sums = torch.zeros(n_texts, dtype=torch.float64)
    counts = torch.zeros(n_texts, dtype=torch.long)
    with torch.inference_mode(), tqdm(total=len(sequences), desc="corpus loss", disable=not progress) as bar:
        for batch in iter_batches(model, sequences, batch_size):
            logits = padded_logits(model, batch, [sequences[k][1].numel() for k in batch.seq_index])
            losses, counted = token_losses(logits, batch.tokens, batch.real)
            per_row = (losses * counted).sum(dim=1).double().cpu()
            sums.index_add_(0, batch.text_index, per_row)
            counts.index_add_(0, batch.text_index, counted.sum(dim=1).cpu())
            bar.update(len(batch.seq_index))
    per_text = tuple(float(s / c) if c else math.nan for s, c in zip(sums.tolist(), counts.tolist()))
    return CorpusLoss(float(sums.sum()), int(counts.sum()), per_text)
