"""Texts -> token sequences -> padded batches with the mask of real tokens (:mod:`dsg_lens.real_tokens`).

Tokenisation is the model's own (``model.to_tokens``). Sequences longer than ``max_len`` (default: the model's
context) are cut into consecutive windows that remember which text they came from, so per-text results can be
summed over windows. :func:`chunk_corpus` is the DSG paper's corpus preparation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from dsg_lens.real_tokens import RealTokenRule, pad_token_id

TextsOrTokens = Sequence[str] | Int[Tensor, "n pos"]


@dataclass
class TokenBatch:
    """A padded batch: ``tokens`` [batch, pos], ``real`` [batch, pos] (False at special tokens and padding) and
    ``text_index`` [batch], the input text each row came from; ``seq_index``: each row's position in the
    sequence list (windows of one text are consecutive there)."""

    tokens: Int[Tensor, "batch pos"]
    real: Bool[Tensor, "batch pos"]
    text_index: Int[Tensor, " batch"]
    seq_index: list[int]


def to_sequences(model: nn.Module, texts: TextsOrTokens, max_len: int | None = None) -> list[tuple[int, Tensor]]:
    """(text index, 1-D token ids) per window of at most ``max_len`` tokens; raises on empty or malformed input."""
    n_ctx = int(model.cfg.n_ctx)
    if max_len is None:
        max_len = n_ctx
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= n_ctx:
        raise ValueError(f"max_len={max_len!r} must be an int between 1 and the model's context n_ctx={n_ctx}")
    if isinstance(texts, Tensor):
        rows = [(i, row.long().cpu()) for i, row in enumerate(_check_token_tensor(model, texts))]
    else:
        rows = [(i, _tokenize(model, text, i)) for i, text in enumerate(_check_text_list(texts))]
    windows = [(i, row[start : start + max_len]) for i, row in rows for start in range(0, row.numel(), max_len)]
    if not windows:
        raise ValueError("no tokens to process: the input is empty (pass at least one non-empty text)")
    return windows


def _check_token_tensor(model: nn.Module, tokens: Tensor) -> Tensor:
    if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
        raise ValueError(
            f"texts is a {tokens.dtype} tensor: token ids must be an integer tensor [n, pos] "
            "(activations or embeddings cannot be passed here)"
        )
    if tokens.ndim != 2:
        fix = " add a batch dimension: tokens[None]" if tokens.ndim == 1 else " pass [n, pos]"
        raise ValueError(f"texts is a {tokens.ndim}-D token tensor {tuple(tokens.shape)}, expected 2-D [n, pos]:{fix}")
    if tokens.numel() == 0:
        raise ValueError(f"the token tensor {tuple(tokens.shape)} is empty: pass at least one token")
    d_vocab = int(model.cfg.d_vocab)
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= d_vocab:
        raise ValueError(f"token ids span [{low}, {high}] but the model's vocabulary is [0, {d_vocab}): wrong tokens?")
    return tokens


def _check_text_list(texts: object) -> Sequence[str]:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string: wrap it as [text]")
    if not isinstance(texts, Sequence):
        raise ValueError(f"texts must be a list of strings or an integer tensor [n, pos], got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts is empty: pass at least one non-empty text")
    return texts


def _tokenize(model: nn.Module, text: object, i: int) -> Tensor:
    if isinstance(text, (list, tuple)) or isinstance(text, Tensor):
        raise ValueError(
            f"texts[{i}] is a {type(text).__name__}, expected str; to pass token ids use one integer tensor [n, pos] "
            "(e.g. torch.tensor(token_lists) for equal lengths)"
        )
    if not isinstance(text, str):
        raise ValueError(f"texts[{i}] is {type(text).__name__}, expected str (or pass a token tensor)")
    if not text.strip():
        raise ValueError(f"texts[{i}] is empty or whitespace only")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("the model has no tokenizer: pass token ids as an integer tensor [n, pos] instead of texts")
    return model.to_tokens(text, truncate=False)[0].cpu()


def n_batches(n_sequences: int, batch_size: int) -> int:
    """How many batches :func:`iter_batches` yields; validates ``batch_size``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int")
    return -(-n_sequences // batch_size)


def iter_batches(
    model: nn.Module, sequences: list[tuple[int, Tensor]], batch_size: int
) -> Iterator[TokenBatch]:
    """Right-padded batches (sorted by length to limit padding) on the model's device."""
    n_batches(len(sequences), batch_size)
    device = model.cfg.device
    rule = RealTokenRule.for_model(model)
    pad_id = pad_token_id(model)
    order = sorted(range(len(sequences)), key=lambda k: -sequences[k][1].numel())
    for start in range(0, len(order), batch_size):
        keys = order[start : start + batch_size]
        chosen = [sequences[k] for k in keys]
        width = max(seq.numel() for _, seq in chosen)
        tokens = torch.full((len(chosen), width), pad_id, dtype=torch.long)
        present = torch.zeros((len(chosen), width), dtype=torch.bool)
        for row, (_, seq) in enumerate(chosen):
            tokens[row, : seq.numel()] = seq
            present[row, : seq.numel()] = True
        real = rule.mask(tokens, present)
        index = torch.tensor([i for i, _ in chosen], dtype=torch.long)
        yield TokenBatch(tokens.to(device), real.to(device), index, keys)


def chunk_corpus(
    model: nn.Module, texts: Sequence[str], chunk_len: int = 1024, min_chars: int = 50, max_chunks: int | None = None
) -> Int[Tensor, "n chunk_len"]:
    """The DSG paper's corpus chunks: texts longer than ``min_chars`` joined with EOS, cut into ``chunk_len``
    tokens, each starting with BOS when the tokenizer has one."""
    kept = [t for t in texts if len(t) > min_chars]
    if not kept:
        raise ValueError(f"no text longer than {min_chars} characters to chunk")
    tokenizer = model.tokenizer
    joined = tokenizer.eos_token.join(kept) if tokenizer.eos_token else "\n".join(kept)
    ids = torch.tensor(tokenizer(joined, add_special_tokens=False)["input_ids"], dtype=torch.long)
    bos = tokenizer.bos_token_id
    body = chunk_len - (1 if bos is not None else 0)
    n = ids.numel() // body
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n == 0:
        raise ValueError(f"corpus has {ids.numel()} tokens, fewer than one chunk of {chunk_len}")
    chunks = ids[: n * body].reshape(n, body)
    if bos is not None:
        chunks = torch.cat([torch.full((n, 1), bos, dtype=torch.long), chunks], dim=1)
    return chunks
