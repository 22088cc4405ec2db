"""SAE training and quality measurement on the tiny Llama-like model (seconds)."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from dsg_lens.sae_training import (
    TRAINING_CONFIG_FILE,
    SAETrainingConfig,
    measure_sae_quality,
    split_heldout,
    train_sae,
)
from dsg_lens.tokens import chunk_corpus
from tests.conftest import make_sae, texts

HOOK = "blocks.0.hook_resid_post"


def _identity_sae(d_in: int) -> StandardSAE:
    """ReLU(x) - ReLU(-x) = x: latents [x+, x-] with decoder [I; -I] reconstruct exactly."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in, metadata=SAEMetadata(hook_name=HOOK)))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [text for text in texts(seed=3, n=400, forget=False, length=(12, 30)) if len(text) > 50]


def test_exact_sae_has_full_quality(tiny_llama, corpus):
    quality = measure_sae_quality(tiny_llama, _identity_sae(16), corpus, context_size=32, max_tokens=1024,
                                  progress=False)
    assert quality["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    assert quality["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert quality["ce_loss_zero_ablation"] != pytest.approx(quality["ce_loss_clean"])
    assert quality["l0"] == pytest.approx(16.0, abs=0.5)  # one of x+/x- per dimension
    chunks = chunk_corpus(tiny_llama, corpus, chunk_len=32, max_chunks=32)
    specials = torch.tensor(tiny_llama.tokenizer.all_special_ids)
    assert quality["n_clean_tokens"] == int((~torch.isin(chunks[:, 2:], specials)).sum())  # first_position=2


def test_random_sae_has_poor_quality(tiny_llama, corpus):
    sae = make_sae("standard", d_in=16, d_sae=64, hook_name=HOOK)
    quality = measure_sae_quality(tiny_llama, sae, corpus, context_size=32, max_tokens=1024, progress=False,
                                  ce_loss=False)
    assert quality["explained_variance"] < 0.5
    assert "ce_loss_recovered" not in quality


def test_train_sae_writes_a_loadable_sae(tiny_llama, corpus, tmp_path):
    cfg = SAETrainingConfig(hook_name=HOOK, d_sae=32, training_tokens=2048, context_size=32,
                            train_batch_size_tokens=256, n_batches_for_norm_estimate=2, dead_feature_window=4)
    sae = train_sae(tiny_llama, corpus, cfg, tmp_path, progress=False)
    loaded = SAE.load_from_disk(str(tmp_path))
    assert loaded.cfg.metadata.hook_name == HOOK and loaded.cfg.d_sae == 32
    assert list(loaded.cfg.metadata.seqpos_slice) == [cfg.first_position, None]
    assert torch.equal(loaded.W_dec, sae.W_dec)
    record = json.loads((tmp_path / TRAINING_CONFIG_FILE).read_text())
    assert record["seed"] == cfg.seed and record["sparsity_coefficient"] == cfg.sparsity_coefficient


def test_bad_config_and_split_are_rejected(corpus):
    with pytest.raises(ValueError, match="architecture"):
        SAETrainingConfig(architecture="topk")
    with pytest.raises(ValueError, match="names no layer"):
        SAETrainingConfig(hook_name="hook_embed")
    with pytest.raises(ValueError, match="n_heldout"):
        split_heldout(corpus, 0, seed=0)
    train, held = split_heldout(corpus, 5, seed=0)
    assert len(held) == 5 and sorted(train + held) == sorted(corpus)
    assert split_heldout(corpus, 5, seed=0) == (train, held)
