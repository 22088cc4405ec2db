"""Tiny models, tokenizer and SAEs with fixed seeds (no network).

``DSG_TEST_DEVICE`` (default ``cpu``) is the device they are built on: ``DSG_TEST_DEVICE=cuda python -m pytest``
runs the suite with the tiny models and SAEs on the GPU (weights drawn on the CPU with the same seeds, then moved).
"""

from __future__ import annotations

import os

import pytest
import torch
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoTokenizer, PreTrainedTokenizerFast

SPECIALS = ["<bos>", "<eos>", "<pad>"]
WORDS = [f"w{i}" for i in range(44)] + ["cat", "dog", "fox"]  # 3 + 47 = 50 tokens
FORGET_WORDS = ["cat", "dog", "fox"]
D_VOCAB = len(SPECIALS) + len(WORDS)
DEVICE_ENV = "DSG_TEST_DEVICE"


def resolve_test_device() -> str:
    """The device named by ``$DSG_TEST_DEVICE`` ("cpu" when unset or empty)."""
    return os.environ.get(DEVICE_ENV, "").strip() or "cpu"


def check_test_device(name: str) -> str:
    """``name`` if torch can build tensors there, else a ``pytest.UsageError`` that says why."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise pytest.UsageError(f"{DEVICE_ENV}={name!r} is not a torch device: {err}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise pytest.UsageError(
                f"{DEVICE_ENV}={name!r} but torch {torch.__version__} sees no CUDA device "
                "(unset it to run on the CPU)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise pytest.UsageError(f"{DEVICE_ENV}={name!r} but only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise pytest.UsageError(f"{DEVICE_ENV}={name!r} but MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise pytest.UsageError(f"{DEVICE_ENV}={name!r}: only cpu, cuda[:i] and mps are supported")
    return name


TEST_DEVICE = resolve_test_device()
"""The device of the tiny models and SAEs (checked when pytest starts: :func:`pytest_configure`)."""


def pytest_configure(config):
    check_test_device(TEST_DEVICE)


@pytest.fixture(scope="session")
def tiny_device() -> torch.device:
    """The device the tiny models and SAEs are on (``$DSG_TEST_DEVICE``, default cpu)."""
    return torch.device(TEST_DEVICE)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    folder = tmp_path_factory.mktemp("tok")
    fast.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def _gpt2_cfg() -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=64, d_head=4, n_heads=4, d_mlp=32, d_vocab=D_VOCAB, act_fn="gelu",
        normalization_type="LN", device=TEST_DEVICE, seed=0, default_prepend_bos=True,
    )


def _llama_cfg() -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=2, d_model=16, n_ctx=64, d_head=4, n_heads=4, d_mlp=32, d_vocab=D_VOCAB, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=4, gated_mlp=True,
        n_key_value_heads=2, final_rms=True, device=TEST_DEVICE, seed=0, default_prepend_bos=True,
    )


def make_model(kind: str, tokenizer, cls=HookedTransformer, dtype=torch.float32) -> HookedTransformer:
    cfg = _gpt2_cfg() if kind == "gpt2" else _llama_cfg()
    cfg.dtype = dtype
    model = cls(cfg, tokenizer=tokenizer)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_tokenizer):
    return make_model("gpt2", tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizer):
    return make_model("llama", tiny_tokenizer)


def make_sae(kind: str = "standard", d_in: int = 16, d_sae: int = 64, hook_name: str = "blocks.1.hook_resid_pre",
             seed: int = 0, bias: float = -0.3):
    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=hook_name)
    if kind == "standard":
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
    elif kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
        sae.threshold.data = torch.rand(d_sae) * 0.2
    else:
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8, metadata=meta))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.W_dec.normal_(0, 0.3)
        sae.b_enc.fill_(bias)
        sae.b_dec.normal_(0, 0.1)
    if TEST_DEVICE != "cpu":
        sae = sae.to(TEST_DEVICE)  # drawn on the CPU (same weights on every device), then moved
    return sae.eval()


@pytest.fixture(params=["standard", "jumprelu", "topk"])
def any_sae(request):
    return make_sae(request.param)


def texts(seed: int, n: int, forget: bool, length=(4, 12)) -> list[str]:
    """Random word texts; forget texts contain several forget words."""
    gen = torch.Generator().manual_seed(seed)
    neutral = WORDS[:44]
    out = []
    for _ in range(n):
        size = int(torch.randint(length[0], length[1], (1,), generator=gen))
        words = [neutral[int(i)] for i in torch.randint(0, len(neutral), (size,), generator=gen)]
        if forget:
            for pos in torch.randint(0, size, (max(2, size // 2),), generator=gen):
                words[int(pos)] = FORGET_WORDS[int(pos) % 3]
        out.append(" ".join(words))
    return out


def planted_setup(model: HookedTransformer, planted: int = 5, d_sae: int = 32):
    """Make embeddings of forget words share a direction u, and an SAE at blocks.0.hook_resid_pre (= embeddings,
    on the rotary model) whose latent `planted` reads u with a bias so it fires only on forget words."""
    tok = model.tokenizer
    forget_ids = [tok.convert_tokens_to_ids(w) for w in FORGET_WORDS]
    u = torch.zeros(model.cfg.d_model, device=model.cfg.device)
    u[0] = 1.0
    with torch.no_grad():
        model.W_E[:, 0] = 0.0
        model.W_E[forget_ids, 0] = 3.0
    sae = make_sae("standard", d_in=model.cfg.d_model, d_sae=d_sae, hook_name="blocks.0.hook_resid_pre", seed=1,
                   bias=-0.5)
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc[0, :] = 0.0          # other latents ignore u ...
        sae.W_enc[:, planted] = u      # ... the planted one reads only u
        sae.b_enc[planted] = -1.5
        sae.W_dec[planted] = u * 2.0
    return sae, forget_ids
