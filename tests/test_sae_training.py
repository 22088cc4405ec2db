"""SAE training and quality measurement on the tiny Llama-like model (seconds)."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from dsg_lens.sae_training import (
    CANDIDATES_FILE,
    QUALITY_FILE,
    TRAINING_CONFIG_FILE,
    SAECandidate,
    SAETrainingConfig,
    latest_checkpoint,
    measure_sae_quality,
    split_heldout,
    train_and_measure,
    train_saes,
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


def _run_config(**kwargs) -> SAETrainingConfig:
    candidates = (
        SAECandidate(name="relu", hook_name=HOOK, d_sae=32, architecture="standard"),
        SAECandidate(name="btopk", hook_name="blocks.1.hook_resid_post", d_sae=32, architecture="batchtopk", k=4),
    )
    return SAETrainingConfig(candidates=candidates, training_tokens=2048, context_size=32,
                             train_batch_size_tokens=256, n_batches_for_norm_estimate=2, dead_feature_window=4,
                             **kwargs)


def test_candidates_train_on_one_stream_and_load(tiny_llama, corpus, tmp_path):
    cfg = _run_config(n_checkpoints=0)
    saes = train_saes(tiny_llama, corpus, cfg, tmp_path, progress=False)
    relu, btopk = (SAE.load_from_disk(str(tmp_path / name)) for name in ("relu", "btopk"))
    assert relu.cfg.metadata.hook_name == HOOK and relu.cfg.architecture() == "standard"
    assert btopk.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert btopk.cfg.architecture() == "jumprelu"  # SAELens saves BatchTopK in its JumpReLU inference form
    assert list(relu.cfg.metadata.seqpos_slice) == [cfg.first_position, None]
    assert torch.equal(relu.W_dec, saes["relu"].W_dec)
    record = json.loads((tmp_path / "btopk" / TRAINING_CONFIG_FILE).read_text())
    assert record["candidate"] == "btopk" and record["seed"] == cfg.seed
    assert SAETrainingConfig.load(tmp_path / "btopk" / TRAINING_CONFIG_FILE) == cfg  # the saved config reproduces


def test_a_rerun_resumes_from_the_latest_checkpoint(tiny_llama, corpus, tmp_path):
    cfg = _run_config(n_checkpoints=3)
    train_saes(tiny_llama, corpus, cfg, tmp_path, progress=False)
    latest = latest_checkpoint(tmp_path, ["relu", "btopk"])
    assert latest is not None and 0 < int(latest.name) < cfg.training_tokens
    assert latest_checkpoint(tmp_path, ["relu", "missing"]) is None
    # a rerun (as after an interrupted session) starts at that checkpoint, not at step 0
    train_saes(tiny_llama, corpus, cfg, tmp_path, progress=False)
    record = json.loads((tmp_path / "relu" / TRAINING_CONFIG_FILE).read_text())
    assert record["resumed_from"] == latest.name


def test_train_and_measure_writes_quality_and_the_candidate_table(tiny_llama, corpus, tmp_path):
    rows = train_and_measure(tiny_llama, corpus, _run_config(n_checkpoints=0), tmp_path, n_heldout=20,
                             quality_tokens=512, progress=False)
    table = json.loads((tmp_path / CANDIDATES_FILE).read_text())
    assert [r["name"] for r in table] == ["relu", "btopk"] == [r["name"] for r in rows]
    for row in table:
        quality = json.loads((tmp_path / row["name"] / QUALITY_FILE).read_text())
        assert set(quality) == {"heldout", "sample"}
        for key in ("explained_variance", "ce_loss_recovered", "dead_fraction", "l0"):
            assert row[key] == quality["heldout"][key]
    assert table[1]["layer"] == 1


def test_whitening_trains_where_a_massive_offset_defeats_rescaling(tiny_llama, corpus, tmp_path):
    """Gemma 3's residual stream is almost all mean (one massive dimension); a constant offset of 1000 on one
    dimension (typical norm ~4) imitates it. Same stream, same steps: the whitened candidate explains the variance,
    the rescaled one does not; the whitening is folded into plain weights that read raw activations."""
    offset = torch.zeros(tiny_llama.cfg.d_model)
    offset[3] = 1000.0
    candidates = tuple(SAECandidate(name=name, hook_name=HOOK, d_sae=64, architecture="batchtopk", k=8,
                                    normalization=norm)
                       for name, norm in (("rescaled", "expected_average_only_in"),
                                          ("whitened", "covariance_whitening")))
    cfg = SAETrainingConfig(candidates=candidates, training_tokens=4096, context_size=32,
                            train_batch_size_tokens=128, n_batches_for_norm_estimate=4, dead_feature_window=8,
                            lr=3e-3, n_checkpoints=0)
    tiny_llama.add_hook(HOOK, lambda act, hook: act + offset.to(act), is_permanent=True)
    try:
        saes = train_saes(tiny_llama, corpus, cfg, tmp_path, progress=False)
        ev = {name: measure_sae_quality(tiny_llama, sae, corpus, context_size=32, max_tokens=1024, progress=False,
                                        ce_loss=False)["explained_variance"] for name, sae in saes.items()}
    finally:
        tiny_llama.reset_hooks(including_permanent=True)
    assert ev["whitened"] > 0.3 and ev["rescaled"] < 0.0, ev  # measured: 0.55 and about -1e5
    whitened = SAE.load_from_disk(str(tmp_path / "whitened"))
    assert whitened.cfg.normalize_activations == "none"  # folded: the saved SAE reads raw activations
    norms = whitened.W_dec.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)  # unit rows, as the other architectures save
    assert whitened.b_dec[3].item() == pytest.approx(1000.0, rel=0.01)  # the mean sits in the decoder bias
    assert SAETrainingConfig.load(tmp_path / "whitened" / TRAINING_CONFIG_FILE) == cfg


def test_whitened_relu_and_jumprelu_are_saved_with_unit_decoder_rows(tiny_llama, corpus, tmp_path):
    candidates = tuple(SAECandidate(name=arch, hook_name=HOOK, d_sae=32, architecture=arch,
                                    normalization="covariance_whitening") for arch in ("standard", "jumprelu"))
    cfg = SAETrainingConfig(candidates=candidates, training_tokens=2048, context_size=32,
                            train_batch_size_tokens=256, n_batches_for_norm_estimate=2, dead_feature_window=4,
                            n_checkpoints=0)
    trained = train_saes(tiny_llama, corpus, cfg, tmp_path, progress=False)
    for name in ("standard", "jumprelu"):
        sae = SAE.load_from_disk(str(tmp_path / name))
        norms = sae.W_dec.norm(dim=-1)
        assert sae.cfg.normalize_activations == "none" and sae.cfg.architecture() == name
        assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), name
        x = torch.randn(16, tiny_llama.cfg.d_model)
        assert torch.allclose(sae(x), trained[name](x), atol=1e-5)  # what train_saes returns is what was saved


def test_bad_config_and_split_are_rejected(corpus):
    with pytest.raises(ValueError, match="architecture"):
        SAECandidate(architecture="gated")
    with pytest.raises(ValueError, match="normalization"):
        SAECandidate(normalization="layer_norm")
    with pytest.raises(ValueError, match="use architecture='batchtopk'"):
        SAECandidate(architecture="topk", normalization="covariance_whitening")
    with pytest.raises(ValueError, match="names no layer"):
        SAECandidate(hook_name="hook_embed")
    with pytest.raises(ValueError, match="unique"):
        SAETrainingConfig(candidates=(SAECandidate(), SAECandidate()))
    with pytest.raises(ValueError, match="k <= d_sae"):
        SAECandidate(d_sae=8, k=9)
    with pytest.raises(ValueError, match="n_heldout"):
        split_heldout(corpus, 0, seed=0)
