"""Word texts and cloze questions for the tiny word-level tokenizer of conftest (studies and baselines tests)."""

from __future__ import annotations

import torch
from conftest import FORGET_WORDS, WORDS, texts

from dsg_lens.data.loaders import MCQ

NEUTRAL = WORDS[:44]


def word_texts(seed: int, n: int, n_forget: int, length: tuple[int, int] = (6, 12)) -> list[str]:
    """Neutral word texts with exactly ``n_forget`` forget words each."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        size = int(torch.randint(*length, (1,), generator=gen))
        words = [NEUTRAL[int(i)] for i in torch.randint(0, len(NEUTRAL), (size,), generator=gen)]
        for k, pos in enumerate(torch.randperm(size, generator=gen)[:n_forget]):
            words[int(pos)] = FORGET_WORDS[k % 3]
        out.append(" ".join(words))
    return out


def filler(n_words: int, seed: int = 99) -> str:
    gen = torch.Generator().manual_seed(seed)
    return " ".join(NEUTRAL[int(i)] for i in torch.randint(0, len(NEUTRAL), (n_words,), generator=gen))


def word_mcqs(seed: int, n: int, forget: bool) -> list[MCQ]:
    """Cloze questions on word texts: forget questions mention forget words, retain ones never do."""
    source = word_texts(seed, n, n_forget=4) if forget else texts(seed, n, False)
    out = []
    for i, text in enumerate(source):
        choices = tuple(FORGET_WORDS) if forget else ("w1", "w2", "w3")
        out.append(MCQ(id=f"{'f' if forget else 'r'}{seed}-{i}", question=text, choices=choices, answer=i % 3,
                       subject="forget" if forget else "retain", context=text,
                       candidates=tuple(f" {c}" for c in choices), neutral_context="w0"))
    return out
