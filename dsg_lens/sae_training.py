"""Train residual-stream SAEs with SAELens on local text, and measure their quality (how the shipped SAE was made).

Several candidate SAEs (architectures, sizes, layers) train at once on ONE stream of model activations:
SAELens's ``MultiSAETrainingRunner`` runs the model once per batch and feeds every candidate, each with its own
optimizer, schedule and activation scaler (the model forward is the dominant cost, so N candidates cost far less
than N runs). Chunks are pre-tokenized (BOS at position 0, documents joined with EOS, as
:func:`dsg_lens.tokens.chunk_corpus` makes them); positions before ``first_position`` and special tokens are left
out (their residual norms are ~100x the median); activations are normalized (rescaled or whitened, folded into the
saved weights); seeds are fixed. Training checkpoints ``n_checkpoints`` times and a rerun into the same folder
resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import sae_lens
import torch
from datasets import Dataset
from jaxtyping import Bool, Float, Int
from sae_lens import (
    SAE,
    BatchTopKTrainingSAEConfig,
    JumpReLUTrainingSAEConfig,
    LoggingConfig,
    StandardTrainingSAEConfig,
    TopKTrainingSAEConfig,
)
from sae_lens.training import activation_scaler, multi_sae_trainer
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsg_lens.activations import hook_activations
from dsg_lens.real_tokens import RealTokenRule
from dsg_lens.sae_view import hook_layer, sae_hook_name
from dsg_lens.tokens import chunk_corpus

__all__ = [
    "ARCHITECTURES",
    "NORMALIZATIONS",
    "SAECandidate",
    "SAETrainingConfig",
    "latest_checkpoint",
    "load_corpus",
    "measure_sae_quality",
    "split_heldout",
    "train_and_measure",
    "train_saes",
]

TRAINING_CONFIG_FILE = "training_config.json"
CANDIDATES_FILE = "candidates.json"
CHECKPOINT_DIR = "checkpoints"
_RUN_ID = "run"  # fixed checkpoint sub-folder, so a rerun finds the checkpoints of an interrupted run
_CHARS_PER_TOKEN = 4.0  # first guess of characters per token (English prose ~4.5; dictionary text ~3.5)
_BUFFER_BATCHES = 64  # SAELens mixes activations over _BUFFER_BATCHES * context_size tokens
ARCHITECTURES = ("standard", "jumprelu", "topk", "batchtopk")
"""Trainable architectures: ReLU + L1, JumpReLU + L0, TopK, BatchTopK (saved by SAELens as a JumpReLU SAE)."""
NORMALIZATIONS = ("expected_average_only_in", "covariance_whitening")
"""How SAELens normalizes the activations it trains on (both folded into the saved weights): rescale to an average
norm of sqrt(d_in), or PCA-whiten (centre, decorrelate, unit variance; arXiv 2511.13981)."""


@dataclass
class SAECandidate:
    """One SAE to train. ``sparsity_coefficient``: the L1 (``standard``) or L0 (``jumprelu``) coefficient;
    ``k``: active latents per token (``topk``) or on average over the batch (``batchtopk``); ``normalization``: one of
    :data:`NORMALIZATIONS`. Whitening suits residual streams dominated by their mean and a few massive dimensions
    (Gemma 3 270M at layer 9: a mean vector of norm 6,384 in tokens of norm ~6,486, one dimension 61% of the
    remaining variance), where the rescaled BatchTopK SAE collapsed to dense latents.
    """

    name: str = "sae"
    hook_name: str = "blocks.12.hook_resid_post"
    d_sae: int = 4096
    architecture: str = "standard"
    sparsity_coefficient: float = 5.0
    k: int = 32
    normalization: str = "expected_average_only_in"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {self.architecture!r}: use one of {ARCHITECTURES}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}: use one of {NORMALIZATIONS}")
        if self.architecture == "topk" and self.normalization == "covariance_whitening":
            raise ValueError("a whitened topk SAE cannot be saved with unit decoder rows (its top-k choice depends on "
                             "the row norms the unwhitening fold changes): use architecture='batchtopk', which is "
                             "saved as JumpReLU")
        if hook_layer(self.hook_name) is None:
            raise ValueError(f"hook_name {self.hook_name!r} names no layer: use e.g. 'blocks.12.hook_resid_post'")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"candidate name {self.name!r} must be a plain folder name (letters, digits, _ . -)")
        if self.d_sae < 1 or not 1 <= self.k <= self.d_sae:
            raise ValueError(f"need d_sae >= 1 and 1 <= k <= d_sae, got d_sae={self.d_sae}, k={self.k}")


@dataclass
class SAETrainingConfig:
    """Everything that determines a training run (saved as ``training_config.json`` beside the weights; pass it
    back with ``dsg-lens train-sae --config`` to reproduce the run).

    ``dead_feature_window`` is in training steps: keep it well below the number of steps. Positions before
    ``first_position`` are not trained on: position 0 is BOS, and on SmolLM2 the token after BOS is an attention
    sink in ~5% of chunks (residual norm ~20,000 vs a median ~150), which would dominate the MSE.
    """

    candidates: tuple[SAECandidate, ...] = (SAECandidate(),)
    training_tokens: int = 2_000_000
    context_size: int = 256
    train_batch_size_tokens: int = 4096
    lr: float = 3e-4
    dead_feature_window: int = 150
    n_batches_for_norm_estimate: int = 20
    first_position: int = 2
    n_checkpoints: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        names = [c.name for c in self.candidates]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"need at least one candidate and unique candidate names, got {names}")
        if not 0 <= self.first_position < self.context_size - 1:
            raise ValueError(f"first_position must be in 0..{self.context_size - 2}, got {self.first_position}")
        for name in ("training_tokens", "context_size", "train_batch_size_tokens", "dead_feature_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def n_steps(self) -> int:
        return max(1, self.training_tokens // self.train_batch_size_tokens)

    @classmethod
    def load(cls, path: str | Path) -> SAETrainingConfig:
        """The config saved by a run (extra keys the run recorded, e.g. versions, are ignored)."""
        record = json.loads(Path(path).read_text())
        fields = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        candidates = tuple(SAECandidate(**c) for c in fields.pop("candidates", ()))
        return cls(candidates=candidates, **fields) if candidates else cls(**fields)


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


def _sae_config(model: nn.Module, candidate: SAECandidate, cfg: SAETrainingConfig) -> Any:
    common = dict(
        d_in=model.cfg.d_model, d_sae=candidate.d_sae, normalize_activations=candidate.normalization,
        dtype="float32",
    )
    warm_up = cfg.n_steps // 20
    if candidate.architecture == "standard":
        return StandardTrainingSAEConfig(**common, l1_coefficient=candidate.sparsity_coefficient,
                                         l1_warm_up_steps=warm_up)
    if candidate.architecture == "jumprelu":
        return JumpReLUTrainingSAEConfig(**common, l0_coefficient=candidate.sparsity_coefficient,
                                         l0_warm_up_steps=warm_up)
    if candidate.architecture == "topk":
        return TopKTrainingSAEConfig(**common, k=candidate.k)
    return BatchTopKTrainingSAEConfig(**common, k=candidate.k)


@contextmanager
def _sae_lens_progress(enabled: bool) -> Iterator[None]:
    """SAELens's training and normalization-estimate bars, silenced when ``enabled`` is False (it has no switch
    of its own)."""
    if enabled:
        yield
        return
    modules = (multi_sae_trainer, activation_scaler)
    originals = [module.tqdm for module in modules]
    for module, original in zip(modules, originals):
        module.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.tqdm = original


def latest_checkpoint(out_dir: str | Path, names: Sequence[str]) -> Path | None:
    """The checkpoint of ``out_dir``'s run with the most training samples that holds every candidate, or None."""
    root = Path(out_dir) / CHECKPOINT_DIR / _RUN_ID
    found = [p for p in root.glob("*") if p.name.isdigit() and all((p / n).is_dir() for n in names)]
    return max(found, key=lambda p: int(p.name)) if found else None


def train_saes(
    model: nn.Module, texts: Sequence[str], cfg: SAETrainingConfig, out_dir: str | Path, *, progress: bool = True
) -> dict[str, SAE]:
    """Train every candidate of ``cfg`` on one stream of ``model``'s activations over ``texts``.

    ``out_dir/<name>/`` gets SAELens's ``cfg.json`` + ``sae_weights.safetensors`` + ``sparsity.safetensors`` and
    our ``training_config.json`` (the whole run's config); ``out_dir/checkpoints/`` the run's checkpoints (a
    rerun into the same ``out_dir`` resumes from the latest). Returns the trained SAEs (inference form,
    normalization folded into the weights), by candidate name.
    """
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    chunks = _training_chunks(model, texts, cfg)
    device = str(model.cfg.device)
    names = [c.name for c in cfg.candidates]
    resume = latest_checkpoint(out_dir, names)
    runner_cfg = MultiSAETrainingRunnerConfig(
        saes={c.name: _sae_config(model, c, cfg) for c in cfg.candidates},
        hook_names={c.name: c.hook_name for c in cfg.candidates},
        model_name=getattr(model.cfg, "model_name", "model"),
        dataset_path="",
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
        logger=LoggingConfig(log_to_wandb=False, wandb_id=_RUN_ID),
        n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=str(out_dir / CHECKPOINT_DIR),
        output_path=str(out_dir),
        resume_from_checkpoint=None if resume is None else str(resume),
    )
    runner = MultiSAETrainingRunner(
        runner_cfg, override_dataset=Dataset.from_dict({"tokens": chunks.tolist()}), override_model=model
    )
    with _sae_lens_progress(progress):
        runner.run()
    record = {**asdict(cfg), "n_training_chunks": int(chunks.shape[0]), "sae_lens_version": sae_lens.__version__,
              "resumed_from": None if resume is None else resume.name}
    saes = {}
    for name in names:
        (out_dir / name / TRAINING_CONFIG_FILE).write_text(json.dumps({**record, "candidate": name}, indent=2))
        saes[name] = _with_unit_decoder_norms(SAE.load_from_disk(str(out_dir / name), device=device),
                                              out_dir / name)
    return saes


def _with_unit_decoder_norms(sae: SAE, folder: Path) -> SAE:
    """``sae`` with unit-norm decoder rows (norms folded into the encoder; the same reconstructions and firing
    pattern), re-saved to ``folder`` when they were not. A whitened SAE's decoder is folded with the unwhitening
    matrix, which leaves rows of any norm; unit rows (as Gemma Scope's and SAELens's other trained SAEs have)
    keep a latent's activation a length in residual units, so an absolute clamp means the same on every SAE."""
    norms = sae.W_dec.norm(dim=-1)
    if torch.allclose(norms, torch.ones_like(norms), atol=1e-4):
        return sae
    sae.fold_W_dec_norm()
    sae.save_model(folder)
    return sae


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
) -> list[dict[str, Any]]:
    """Hold out ``n_heldout`` texts, train every candidate on the rest (:func:`train_saes`), measure each on the
    held-out ones.

    Writes ``out_dir/<name>/quality.json`` ({"heldout": ..., "sample": ...}) and ``heldout_sample.jsonl``
    (``n_sample`` held-out texts whose quality is recorded under "sample", so a test can recompute it; its CE loss
    is not measured), and ``out_dir/candidates.json``: one row per candidate (architecture, layer, tokens, held-out
    quality, the run's wall time; all candidates share one run, so the time is the run's). Returns the rows.
    """
    out_dir = Path(out_dir)
    train, heldout = split_heldout(texts, n_heldout, cfg.seed)
    started = time.perf_counter()
    saes = train_saes(model, train, cfg, out_dir, progress=progress)
    wall_s = time.perf_counter() - started
    sample = heldout[:n_sample]
    layout = {"context_size": cfg.context_size, "first_position": cfg.first_position}
    rows = []
    for candidate in cfg.candidates:
        sae, folder = saes[candidate.name], out_dir / candidate.name
        quality = {
            "heldout": measure_sae_quality(model, sae, heldout, max_tokens=quality_tokens, progress=progress,
                                           **layout),
            "sample": measure_sae_quality(model, sae, sample, ce_loss=False, progress=progress, **layout),
        }
        with (folder / SAMPLE_FILE).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": text}) + "\n" for text in sample)
        (folder / QUALITY_FILE).write_text(json.dumps(quality, indent=2))
        rows.append({**asdict(candidate), "layer": hook_layer(candidate.hook_name),
                     "training_tokens": cfg.training_tokens, "run_wall_s": wall_s,
                     "n_candidates_in_run": len(cfg.candidates), **quality["heldout"]})
    (out_dir / CANDIDATES_FILE).write_text(json.dumps(rows, indent=2))
    return rows
