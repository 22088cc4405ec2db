"""The SAE shipped for the embedded model: loads, fits the model, and its recorded quality is reproducible."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import SAE

from dsg_lens.models import EMBEDDED_SAE_DIR, load_embedded_sae, load_model
from dsg_lens.sae_training import QUALITY_FILE, SAMPLE_FILE, TRAINING_CONFIG_FILE, load_corpus, measure_sae_quality

MAX_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def quality() -> dict:
    return json.loads((EMBEDDED_SAE_DIR / QUALITY_FILE).read_text())


@pytest.fixture(scope="module")
def sae() -> SAE:
    return load_embedded_sae()


def test_asset_layout_and_size():
    names = {p.name for p in EMBEDDED_SAE_DIR.iterdir()}
    assert {"cfg.json", "sae_weights.safetensors", QUALITY_FILE, TRAINING_CONFIG_FILE, SAMPLE_FILE} <= names
    assert sum(p.stat().st_size for p in EMBEDDED_SAE_DIR.iterdir()) <= MAX_BYTES
    training = json.loads((EMBEDDED_SAE_DIR / TRAINING_CONFIG_FILE).read_text())
    assert training["seed"] is not None and training["training_tokens"] > 0


def test_sae_fits_the_embedded_model(sae):
    model = load_model(device="cpu")
    hook_name = sae.cfg.metadata.hook_name
    assert hook_name in model.hook_dict
    assert sae.cfg.d_in == model.cfg.d_model
    assert sae.cfg.d_sae >= 4096
    assert sae.cfg.architecture() in ("standard", "jumprelu")  # the DSG gate reads "latent > 0"


def test_load_embedded_sae_casts(sae):
    half = load_embedded_sae(dtype=torch.bfloat16)
    assert half.W_dec.dtype == torch.bfloat16
    assert torch.allclose(half.W_dec.float(), sae.W_dec, atol=1e-2)


def test_recorded_quality_is_sane(quality):
    heldout = quality["heldout"]
    # stable keys that users and the README read
    assert {"explained_variance", "ce_loss_recovered", "dead_fraction", "l0"} <= set(heldout)
    assert 0.0 < heldout["explained_variance"] <= 1.0
    assert heldout["explained_variance_all_tokens"] <= 1.0
    assert 0.0 < heldout["ce_loss_recovered"] <= 1.0
    assert 0.0 <= heldout["dead_fraction"] < 0.5
    assert 0.0 < heldout["firing_frequency_median"] < 0.05  # sparse: most latents rarely fire
    # (BatchTopK SAEs keep a few dense latents: the shipped one has 8 firing on > 50% of tokens, one on all)
    assert heldout["firing_frequency_median"] <= heldout["firing_frequency_max"] <= 1.0
    assert heldout["l0"] > 1.0


def test_explained_variance_reproduces_on_heldout_sample(sae, quality):
    recorded = quality["sample"]
    model = load_model(device="cpu", dtype=getattr(torch, recorded["model_dtype"]))
    texts = load_corpus(EMBEDDED_SAE_DIR / SAMPLE_FILE)
    measured = measure_sae_quality(model, sae, texts, ce_loss=False, progress=False)
    assert measured["n_clean_tokens"] == recorded["n_clean_tokens"] >= 300
    assert measured["explained_variance"] == pytest.approx(recorded["explained_variance"], abs=0.01)
    assert measured["l0"] == pytest.approx(recorded["l0"], rel=0.05)
    # the small sample should land near the large held-out measurement too
    assert measured["explained_variance"] == pytest.approx(quality["heldout"]["explained_variance"], abs=0.1)
