"""Train a residual-stream SAE with SAELens on local text, and measure its quality (how the shipped SAE was made).

Training runs SAELens's ``LanguageModelSAETrainingRunner`` on pre-tokenized chunks (BOS at position 0, documents
joined with EOS, as :func:`dsg_lens.tokens.chunk_corpus` makes them), leaving out position 0 and special tokens
(their residual norms are ~100x the median), with activation normalization on and fixed seeds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import sae_lens
import torch
from datasets import Dataset
from jaxtyping import Bool, Float, Int
from sae_lens import (
    SAE,
    JumpReLUTrainingSAEConfig,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    StandardTrainingSAEConfig,
)
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsg_lens.activations import hook_activations
from dsg_lens.real_tokens import RealTokenRule
from dsg_lens.sae_view import hook_layer, sae_hook_name
from dsg_lens.tokens import chunk_corpus

__all__ = [
    "SAETrainingConfig",
    "load_corpus",
    "measure_sae_quality",
    "split_heldout",
    "train_and_measure",
    "train_sae",
]

TRAINING_CONFIG_FILE = "training_config.json"
_CHARS_PER_TOKEN = 4.0  # first guess of characters per token (English prose ~4.5; dictionary text ~3.5)
_BUFFER_BATCHES = 64  # SAELens mixes activations over _BUFFER_BATCHES * context_size tokens


@dataclass
class SAETrainingConfig:
    """Everything that determines a training run (saved as ``training_config.json`` beside the weights).

    ``sparsity_coefficient`` is the L1 coefficient (``standard``: ReLU + L1) or the L0 coefficient
    (``jumprelu``). ``dead_feature_window`` is in training steps: keep it well below the number of steps.
    Positions before ``first_position`` are not trained on: position 0 is BOS, and on SmolLM2 the token after
    BOS is an attention sink in ~5% of chunks (residual norm ~20,000 vs a median ~150), which would dominate
    the MSE.
    """

    hook_name: str = "blocks.12.hook_resid_post"
    d_sae: int = 4096
    architecture: str = "standard"  # "standard" (ReLU + L1) or "jumprelu"
    sparsity_coefficient: float = 5.0
    training_tokens: int = 2_000_000
    context_size: int = 256
    train_batch_size_tokens: int = 4096
    lr: float = 3e-4
    dead_feature_window: int = 150
    n_batches_for_norm_estimate: int = 20
    first_position: int = 2
    seed: int = 42

    def __post_init__(self) -> None:
        if self.architecture not in ("standard", "jumprelu"):
            raise ValueError(f"unknown SAE architecture {self.architecture!r}: use 'standard' or 'jumprelu'")
        if hook_layer(self.hook_name) is None:
            raise ValueError(f"hook_name {self.hook_name!r} names no layer: use e.g. 'blocks.12.hook_resid_post'")
        if not 0 <= self.first_position < self.context_size - 1:
            raise ValueError(f"first_position must be in 0..{self.context_size - 2}, got {self.first_position}")
        for name in ("d_sae", "training_tokens", "context_size", "train_batch_size_tokens", "dead_feature_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def n_steps(self) -> int:
        return max(1, self.training_tokens // self.train_batch_size_tokens)


def load_corpus(path: str | Path) -> list[str]:
    """The ``text`` field of every record of a JSONL corpus (see ``dsg_lens.data.build_sae_corpus``)."""
    with Path(path).open(encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    if not texts:
        raise ValueError(f"corpus {path} has no records: build it with `python -m dsg_lens.data.build_sae_corpus`")
    return texts


def split_heldout(texts: Sequence[str], n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, heldout): the texts shuffled with ``seed``, the first ``n_heldout`` held out."""
    if not 0 < n_heldout < len(texts):
        raise ValueError(f"n_heldout must be in 1..{len(texts) - 1}, got {n_heldout}")
    shuffled = list(texts)
    random.Random(seed).shuffle(shuffled)
    return shuffled[n_heldout:], shuffled[:n_heldout]


def _training_chunks(model: nn.Module, texts: Sequence[str], cfg: SAETrainingConfig) -> Int[Tensor, "n ctx"]:
    """Enough chunks of ``context_size`` tokens that SAELens never repeats data: the training tokens, the
    norm-estimation batches and the mixing buffer (texts are read in order until the budget is met)."""
    needed = (
        cfg.training_tokens
        + cfg.n_batches_for_norm_estimate * cfg.train_batch_size_tokens
        + _BUFFER_BATCHES * cfg.context_size
    )
    n_chunks = -(-needed // (cfg.context_size - cfg.first_position)) + 1
    budget = n_chunks * cfg.context_size * _CHARS_PER_TOKEN
    while True:
        chosen, used = [], 0
        for text in texts:
            if used >= budget:
                break
            chosen.append(text)
            used += len(text)
        chunks = chunk_corpus(model, chosen, chunk_len=cfg.context_size, max_chunks=n_chunks)
        if chunks.shape[0] == n_chunks:
            return chunks
        if len(chosen) == len(texts):
            raise ValueError(
                f"the corpus gives {chunks.shape[0]} chunks of {cfg.context_size} tokens but the run needs "
                f"{n_chunks}: pass more text or lower training_tokens"
            )
        budget *= 2


def _sae_config(model: nn.Module, cfg: SAETrainingConfig) -> StandardTrainingSAEConfig | JumpReLUTrainingSAEConfig:
    common = dict(
        d_in=model.cfg.d_model, d_sae=cfg.d_sae, normalize_activations="expected_average_only_in", dtype="float32"
    )
    warm_up = cfg.n_steps // 20
    if cfg.architecture == "standard":
        return StandardTrainingSAEConfig(**common, l1_coefficient=cfg.sparsity_coefficient, l1_warm_up_steps=warm_up)
    return JumpReLUTrainingSAEConfig(**common, l0_coefficient=cfg.sparsity_coefficient, l0_warm_up_steps=warm_up)


def train_sae(
    model: nn.Module, texts: Sequence[str], cfg: SAETrainingConfig, out_dir: str | Path, *, progress: bool = True
) -> SAE:
    """Train an SAE on ``model``'s activations at ``cfg.hook_name`` over ``texts``; save it to ``out_dir``.

    ``out_dir`` gets SAELens's ``cfg.json`` + ``sae_weights.safetensors`` (+ its ``runner_cfg.json``) and our
    ``training_config.json``. Returns the trained SAE (inference form, normalization folded into the weights).
    """
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    chunks = _training_chunks(model, texts, cfg)
    device = str(model.cfg.device)
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=_sae_config(model, cfg),
        model_name=getattr(model.cfg, "model_name", "model"),
        hook_name=cfg.hook_name,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=cfg.context_size,
        prepend_bos=False,  # the chunks carry their own BOS
        seqpos_slice=(cfg.first_position, None),
        exclude_special_tokens=True,
        training_tokens=cfg.training_tokens,
        train_batch_size_tokens=cfg.train_batch_size_tokens,
        store_batch_size_prompts=16,
        n_batches_in_buffer=_BUFFER_BATCHES,
        lr=cfg.lr,
        lr_decay_steps=cfg.n_steps // 5,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.dead_feature_window,
        n_batches_for_norm_estimate=cfg.n_batches_for_norm_estimate,
        seed=cfg.seed,
        device=device,
        act_store_device=device,
        dtype="float32",
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        output_path=str(out_dir),
        verbose=progress,
    )
    runner = LanguageModelSAETrainingRunner(
        runner_cfg, override_dataset=Dataset.from_dict({"tokens": chunks.tolist()}), override_model=model
    )
    runner.run()
    record = {**asdict(cfg), "n_training_chunks": int(chunks.shape[0]), "sae_lens_version": sae_lens.__version__}
    (out_dir / TRAINING_CONFIG_FILE).write_text(json.dumps(record, indent=2))
    return SAE.load_from_disk(str(out_dir), device=device)


@dataclass
class _Accumulator:
    """Streaming sums for explained variance over a set of token positions."""

    n: int = 0
    sum_x: Tensor | None = None
    sum_sq: float = 0.0
    err_sq: float = 0.0

    def add(self, x: Float[Tensor, "tok d"], recon: Float[Tensor, "tok d"]) -> None:
        x64 = x.double()
        self.n += x.shape[0]
        self.sum_x = x64.sum(0) if self.sum_x is None else self.sum_x + x64.sum(0)
        self.sum_sq += float((x64**2).sum())
        self.err_sq += float(((x64 - recon.double()) ** 2).sum())

    def explained_variance(self) -> float:
        assert self.sum_x is not None
        total = self.sum_sq - float((self.sum_x**2).sum()) / self.n
        return 1.0 - self.err_sq / total


def _loss(model: nn.Module, tokens: Int[Tensor, "b pos"], hook_name: str, fn=None) -> Float[Tensor, "b pos1"]:
    hooks = [] if fn is None else [(hook_name, fn)]
    return model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks)


@torch.no_grad()
def measure_sae_quality(
    model: nn.Module,
    sae: SAE,
    texts: Sequence[str],
    *,
    context_size: int = 256,
    first_position: int = 2,
    max_tokens: int = 50_000,
    batch_size: int = 8,
    ce_loss: bool = True,
    progress: bool = True,
) -> dict[str, float | int | str]:
    """Reconstruction, sparsity and downstream quality of ``sae`` on ``texts`` (chunked as in training).

    "Clean" tokens exclude positions before ``first_position`` and special tokens. Returns explained variance on clean and on all tokens,
    L0 and firing frequencies (clean tokens), dead fraction (latents never firing), and CE loss recovered:
    (L_zero - L_sae) / (L_zero - L_clean), splicing the reconstruction (or zeros) in at clean tokens only
    (three full forward passes per batch: ``ce_loss=False`` skips them).
    """
    hook_name = sae_hook_name(sae)
    chunks = chunk_corpus(model, texts, chunk_len=context_size, max_chunks=max(1, max_tokens // context_size))
    rule = RealTokenRule.for_model(model)
    device, dtype = sae.W_dec.device, sae.W_dec.dtype
    clean_ev, all_ev = _Accumulator(), _Accumulator()
    fire_count = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    l0_sum, losses = 0.0, {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_loss = 0
    for start in tqdm(range(0, chunks.shape[0], batch_size), disable=not progress, desc="SAE quality"):
        tokens = chunks[start : start + batch_size].to(model.cfg.device)
        clean: Bool[Tensor, "b pos"] = rule.mask(tokens, torch.ones_like(tokens, dtype=torch.bool))
        clean[:, :first_position] = False
        acts = hook_activations(model, hook_name, tokens).to(device=device, dtype=dtype)
        feats = sae.encode(acts)
        recon = sae.decode(feats)
        mask = clean.to(device)
        clean_ev.add(acts[mask], recon[mask])
        all_ev.add(acts.flatten(0, 1), recon.flatten(0, 1))
        fired = feats[mask] > 0
        fire_count += fired.sum(0).double().cpu()
        l0_sum += float(fired.sum())

        def splice(replacement: Tensor):
            def fn(act: Tensor, hook) -> Tensor:
                return torch.where(clean[..., None], replacement.to(act.dtype), act)

            return fn

        if not ce_loss:
            continue
        # loss at position p predicts token p+1: score predictions made from clean positions only
        weight = clean[:, :-1].float()
        for key, fn in (("clean", None), ("sae", splice(recon)), ("zero", splice(torch.zeros_like(recon)))):
            losses[key] += float((_loss(model, tokens, hook_name, fn) * weight).sum())
        n_loss += int(weight.sum())
    n_clean = clean_ev.n
    freq = fire_count / n_clean
    quality: dict[str, float | int | str] = {
        "model_dtype": str(model.cfg.dtype).removeprefix("torch."),
        "n_tokens": int(chunks.numel()),
        "n_clean_tokens": n_clean,
        "explained_variance": clean_ev.explained_variance(),
        "explained_variance_all_tokens": all_ev.explained_variance(),
        "l0": l0_sum / n_clean,
        "dead_fraction": float((fire_count == 0).double().mean()),
        "firing_frequency_median": float(freq.median()),
        "firing_frequency_max": float(freq.max()),
    }
    if ce_loss:
        loss = {k: v / n_loss for k, v in losses.items()}
        quality |= {
            "ce_loss_clean": loss["clean"],
            "ce_loss_with_sae": loss["sae"],
            "ce_loss_zero_ablation": loss["zero"],
            "ce_loss_recovered": (loss["zero"] - loss["sae"]) / (loss["zero"] - loss["clean"]),
        }
    return quality


QUALITY_FILE = "quality.json"
SAMPLE_FILE = "heldout_sample.jsonl"


def train_and_measure(
    model: nn.Module,
    texts: Sequence[str],
    cfg: SAETrainingConfig,
    out_dir: str | Path,
    *,
    n_heldout: int = 200,
    quality_tokens: int = 50_000,
    n_sample: int = 4,
    progress: bool = True,
) -> dict[str, dict[str, float | int | str]]:
    """Hold out ``n_heldout`` texts, train on the rest (:func:`train_sae`), measure on the held-out ones.

    Writes to ``out_dir``: the SAE, ``quality.json`` ({"heldout": ..., "sample": ...}) and
    ``heldout_sample.jsonl`` (``n_sample`` held-out texts whose quality is recorded under "sample", so a test can
    recompute it; its CE loss is not measured).
    """
    out_dir = Path(out_dir)
    train, heldout = split_heldout(texts, n_heldout, cfg.seed)
    sae = train_sae(model, train, cfg, out_dir, progress=progress)
    sample = heldout[:n_sample]
    layout = {"context_size": cfg.context_size, "first_position": cfg.first_position}
    quality = {
        "heldout": measure_sae_quality(model, sae, heldout, max_tokens=quality_tokens, progress=progress, **layout),
        "sample": measure_sae_quality(model, sae, sample, ce_loss=False, progress=progress, **layout),
    }
    with (out_dir / SAMPLE_FILE).open("w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": text}) + "\n" for text in sample)
    (out_dir / QUALITY_FILE).write_text(json.dumps(quality, indent=2))
    return quality
