"""Corpus loss: hand-computed cross-entropy over real tokens only, batching/padding invariance, hooks."""

from __future__ import annotations

import math

import pytest
import torch

from dsg_lens.eval.corpus import corpus_loss
from dsg_lens.hooks import HookSpec, scoped_hooks

TEXTS = ["w1 w2 w3 cat w4", "dog w5", "w6 w7 w8 w9 w10 w11 w12 fox w13", "w14 w15 w16"]


def _by_hand(model, text: str) -> tuple[float, int]:
    """Summed next-token loss of one text alone, skipping predictions from or of the BOS token."""
    tokens = model.to_tokens(text)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(tokens)[0].float(), dim=-1)
    ids = tokens[0].tolist()
    losses = [-float(log_probs[i, ids[i + 1]]) for i in range(1, len(ids) - 1)]  # position 0 is BOS
    return sum(losses), len(losses)


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])
def test_loss_matches_hand_computation_and_ignores_padding(request, fixture):
    model = request.getfixturevalue(fixture)
    by_hand = [_by_hand(model, t) for t in TEXTS]
    total, count = sum(s for s, _ in by_hand), sum(n for _, n in by_hand)
    for batch_size in (1, 3):
        result = corpus_loss(model, TEXTS, batch_size=batch_size, progress=False)
        assert result.n_tokens == count == sum(len(t.split()) - 1 for t in TEXTS)
        assert result.mean_loss == pytest.approx(total / count, abs=1e-5)
        assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
        assert result.per_text == pytest.approx([s / n for s, n in by_hand], abs=1e-5)


def test_special_tokens_inside_text_are_not_counted(tiny_llama):
    plain = corpus_loss(tiny_llama, ["w1 w2 w3"], progress=False)
    with_eos = corpus_loss(tiny_llama, ["w1 w2 <eos> w3"], progress=False)
    assert plain.n_tokens == 2 and with_eos.n_tokens == 1  # w1->w2 only: predictions into/out of <eos> skipped


def test_token_tensor_input_and_windows(tiny_gpt2):
    tokens = tiny_gpt2.to_tokens(TEXTS[2])  # 10 tokens incl. BOS
    whole = corpus_loss(tiny_gpt2, tokens, progress=False)
    windows = corpus_loss(tiny_gpt2, tokens, max_len=5, progress=False)
    assert whole.n_tokens == 8
    assert windows.n_tokens == 7  # the prediction across the window boundary is lost
    assert len(whole.per_text) == 1


def test_loss_sees_hooks(tiny_gpt2):
    base = corpus_loss(tiny_gpt2, TEXTS, progress=False)
    with scoped_hooks(tiny_gpt2, HookSpec("blocks.0.hook_resid_post", lambda act, hook: act * 0)):
        hooked = corpus_loss(tiny_gpt2, TEXTS, progress=False)
    assert hooked.n_tokens == base.n_tokens and hooked.mean_loss != pytest.approx(base.mean_loss)
    assert corpus_loss(tiny_gpt2, TEXTS, progress=False).mean_loss == base.mean_loss


def test_no_countable_tokens_raises(tiny_gpt2):
    result = corpus_loss(tiny_gpt2, ["w1"], progress=False)
    with pytest.raises(ValueError, match="no real-token predictions"):
        _ = result.mean_loss
