"""The embedded SmolLM2 loader: TransformerLens models agree with the HF model, and the disk cache is used."""

from __future__ import annotations

import time

import pytest
import torch
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformer

from dsg_lens import models
from dsg_lens.models import EMBEDDED_MODEL, cache_root, load_hf_model, load_model

TEXT = (
    "The red fox is a small carnivorous mammal of the dog family. It lives in forests, grasslands and cities, "
    "and it hunts rodents, rabbits and birds. In the evening, foxes can be heard calling to each other."
)
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def hf_and_tokens():
    hf_model, tokenizer = load_hf_model()
    return hf_model, tokenizer(TEXT, return_tensors="pt").input_ids


@pytest.fixture(scope="module")
def hf_logits(hf_and_tokens):
    hf_model, tokens = hf_and_tokens
    with torch.no_grad():
        return hf_model(tokens).logits


@pytest.mark.parametrize("kind", ["hooked", "bridge"])
def test_logits_match_hf(kind, hf_and_tokens, hf_logits):
    model = load_model(kind=kind, device="cpu")
    tokens = hf_and_tokens[1]
    assert torch.equal(model.to_tokens(TEXT)[0], tokens[0]), "TL must tokenize like HF (no BOS prepended)"
    with torch.no_grad():
        logits = model(tokens)
    assert logits.shape == hf_logits.shape
    assert (logits - hf_logits).abs().max().item() <= TOLERANCE


def test_greedy_generation_matches_hf(hf_and_tokens):
    hf_model, tokens = hf_and_tokens
    model = load_model(device="cpu")
    expected = hf_model.generate(tokens, max_new_tokens=12, do_sample=False)
    got = model.generate(tokens, max_new_tokens=12, do_sample=False, verbose=False, stop_at_eos=False)
    n = expected.shape[1]
    assert got.shape[1] >= n > tokens.shape[1]
    assert torch.equal(got[:, :n], expected)


def test_kinds_and_config():
    hooked = load_model(device="cpu")
    assert type(hooked) is HookedTransformer
    assert isinstance(load_model(kind="sae", device="cpu"), HookedSAETransformer)
    assert hooked.cfg.n_ctx == 2048 and hooked.cfg.default_prepend_bos is False
    assert hooked.cfg.d_model == 576 and hooked.cfg.n_layers == 30
    assert not hooked.cfg.normalization_type.endswith("Pre")  # no weight processing (no folded norms)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown model kind"):
        load_model(kind="onnx")


def test_cache_root_follows_argument_then_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DSG_LENS_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("DSG_LENS_CACHE")
    assert cache_root().name == "dsg_lens"


def test_second_load_hits_the_cache(monkeypatch, tmp_path):
    first, _ = load_hf_model(cache_dir=tmp_path)
    folder = tmp_path / "models" / EMBEDDED_MODEL
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == [EMBEDDED_MODEL]  # no staging left over

    def no_conversion(target):
        raise AssertionError("the cached model must be reused, not converted again")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    start = time.perf_counter()
    second, _ = load_hf_model(cache_dir=tmp_path)
    assert time.perf_counter() - start < 10.0
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
