"""Streaming per-latent statistics of an SAE on a set of texts.

Memory is O(d_sae): per batch, the residual at the SAE's hook is computed with ``stop_at_layer`` (the model runs
only up to the hook's block), encoded for the real tokens only (BOS/EOS/PAD and padding excluded), and folded into
running sums. Given ``features``, the per-text rho (fraction of real tokens where any of them fires) is recorded.
Long passes can checkpoint their running sums (safetensors + JSON, keyed by a fingerprint of the inputs, SAE, model
and options) and resume after an interruption with results identical to an uninterrupted pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor, nn

from dsg_lens import distributed
from dsg_lens.artifacts import read_json, read_tensors, require, write_json, write_tensors
from dsg_lens.activations import iter_activations
from dsg_lens.sae_view import check_sae_fits_model, sae_fingerprint
from dsg_lens.tokens import TextsOrTokens, TokenBatch, to_sequences

STATS_SCHEMA = 1
CHECKPOINT_SCHEMA = 1


@dataclass
class LatentStats:
    """Per-latent sums over ``n_tokens`` real tokens, and (optionally) per-text rho for ``features``.

    ``mean_act``, ``mean_sq_act`` and ``fire_freq`` are [d_sae]; ``rho`` is [n_texts] (or None).
    """

    act_sum: Float[Tensor, " d_sae"]
    act_sq_sum: Float[Tensor, " d_sae"]
    fire_count: Float[Tensor, " d_sae"]
    n_tokens: int
    hook_name: str
    resid_norm_sum: float = 0.0
    rho: Float[Tensor, " n_texts"] | None = None
    rho_features: list[int] = field(default_factory=list)
    tokens_per_text: Int[Tensor, " n_texts"] | None = None

    @property
    def d_sae(self) -> int:
        return int(self.act_sum.numel())

    @property
    def mean_act(self) -> Float[Tensor, " d_sae"]:
        return self.act_sum / max(self.n_tokens, 1)

    @property
    def mean_sq_act(self) -> Float[Tensor, " d_sae"]:
        return self.act_sq_sum / max(self.n_tokens, 1)

    @property
    def fire_freq(self) -> Float[Tensor, " d_sae"]:
        return self.fire_count / max(self.n_tokens, 1)

    @property
    def mean_resid_norm(self) -> float:
        """Mean L2 norm of the residual at the hook over real tokens (scale for relative clamps)."""
        return self.resid_norm_sum / max(self.n_tokens, 1)

    def save(self, path: str | Path) -> None:
        """Write ``latent_stats.safetensors`` + ``latent_stats.json`` into folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"act_sum": self.act_sum, "act_sq_sum": self.act_sq_sum, "fire_count": self.fire_count}
        if self.rho is not None:
            tensors["rho"] = self.rho
            tensors["tokens_per_text"] = self.tokens_per_text
        write_tensors(folder / "latent_stats.safetensors", tensors)
        meta = {
            "schema_version": STATS_SCHEMA,
            "n_tokens": self.n_tokens,
            "hook_name": self.hook_name,
            "resid_norm_sum": self.resid_norm_sum,
            "rho_features": self.rho_features,
        }
        write_json(folder / "latent_stats.json", meta)

    @classmethod
    def load(cls, path: str | Path) -> LatentStats:
        """Read what :meth:`save` wrote; rejects unknown schema versions, wrong shapes, non-finite sums and
        out-of-range feature ids with a ValueError naming the problem."""
        folder = Path(path)
        meta_path, tensor_path = folder / "latent_stats.json", folder / "latent_stats.safetensors"
        meta = read_json(meta_path, STATS_SCHEMA, "latent stats")
        tensors = read_tensors(tensor_path, ("act_sum", "act_sq_sum", "fire_count"), "latent stats")
        n_tokens = require(meta, "n_tokens", int, meta_path)
        rho_features = require(meta, "rho_features", list, meta_path)
        _check_loaded(tensors, n_tokens, rho_features, tensor_path)
        return cls(
            act_sum=tensors["act_sum"],
            act_sq_sum=tensors["act_sq_sum"],
            fire_count=tensors["fire_count"],
            n_tokens=n_tokens,
            hook_name=require(meta, "hook_name", str, meta_path),
            resid_norm_sum=float(require(meta, "resid_norm_sum", (int, float), meta_path)),
            rho=tensors.get("rho"),
            rho_features=rho_features,
            tokens_per_text=tensors.get("tokens_per_text"),
        )


def _check_loaded(tensors: dict[str, Tensor], n_tokens: int, rho_features: list, path: Path) -> None:
    """Validate loaded statistics before they become a LatentStats (ValueError naming the problem)."""
    sums = [tensors[k] for k in ("act_sum", "act_sq_sum", "fire_count")]
    shapes = {tuple(t.shape) for t in sums}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"{path}: act_sum/act_sq_sum/fire_count must be 1-D of equal length, got shapes {shapes}")
    d_sae = sums[0].numel()
    if n_tokens < 0:
        raise ValueError(f"{path}: n_tokens={n_tokens} is negative")
    if not all(t.is_floating_point() and torch.isfinite(t).all() for t in sums):
        raise ValueError(f"{path}: the saved sums must be finite floats (found NaN/inf or integers)")
    fire_count = tensors["fire_count"]
    if (fire_count < 0).any() or (fire_count > n_tokens).any():
        raise ValueError(f"{path}: fire_count must lie in [0, n_tokens={n_tokens}]")
    bad = [i for i in rho_features if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < d_sae]
    if bad:
        raise ValueError(f"{path}: rho_features {bad[:5]} are not latent ids of an SAE with d_sae={d_sae}")
    rho, per_text = tensors.get("rho"), tensors.get("tokens_per_text")
    if (rho is None) != (per_text is None):
        raise ValueError(f"{path}: rho and tokens_per_text must be saved together")
    if rho is not None:
        if rho.ndim != 1 or rho.shape != per_text.shape or per_text.is_floating_point():
            raise ValueError(f"{path}: rho and integer tokens_per_text must be 1-D of equal length")
        if not rho.is_floating_point() or not torch.isfinite(rho).all() or (rho < 0).any() or (rho > 1).any():
            raise ValueError(f"{path}: rho must be finite fractions in [0, 1]")


def collect_latent_stats(
    model: nn.Module,
    sae: SAE,
    texts: TextsOrTokens,
    *,
    features: Sequence[int] | None = None,
    batch_size: int = 8,
    max_len: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 100,
    desc: str = "latent statistics",
) -> LatentStats:
    """Per-latent mean activation, mean squared activation and firing frequency of ``sae`` over the real tokens
    of ``texts`` (list of strings, or tokens [n, pos]); with ``features``, also rho per text.

    Texts longer than ``max_len`` (default: the model's context) are processed in windows. With
    ``checkpoint_dir``, the running sums are saved every ``checkpoint_every`` batches (and at the end), and a
    call with the same model, SAE, inputs and options resumes from there; the result equals an uninterrupted
    run exactly. A checkpoint written for other inputs is refused. ``desc`` names the progress bar.

    Inside :func:`dsg_lens.distributed.sharded` (``torchrun``), the batches are split over the ranks and the sums
    ``all_reduce``-d: every rank returns the statistics of all ``texts``; checkpoints are kept per rank.
    """
    hook_name = check_sae_fits_model(model, sae)
    d_sae = int(sae.cfg.d_sae)
    feature_list = _check_features(features, d_sae)
    sequences = to_sequences(model, texts, max_len)
    n_texts = max(i for i, _ in sequences) + 1
    device = sae.W_dec.device
    partial = _Partial.empty(d_sae, n_texts, device)
    rank, world = distributed.world()
    checkpoint = None
    if checkpoint_dir is not None:
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={checkpoint_every!r} must be a positive number of batches")
        fingerprint = _run_fingerprint(model, sae, hook_name, sequences, feature_list, batch_size)
        folder = Path(checkpoint_dir) if world == 1 else Path(checkpoint_dir) / f"rank{rank}-of-{world}"
        checkpoint = _Checkpoint(folder, fingerprint)
        partial = checkpoint.restore(partial)
    feature_ids = torch.tensor(feature_list, dtype=torch.long, device=device)
    activations = iter_activations(model, hook_name, sequences, batch_size, skip=partial.batches_done,
                                   progress=progress, desc=desc, shard=(rank, world))
    with torch.no_grad():
        for batch, activation in activations:
            resid = activation[batch.real]
            acts = sae.encode(resid.to(device)).double()
            if not torch.isfinite(acts).all():
                raise ValueError("the SAE produced NaN/inf latent activations: check the SAE weights and dtype")
            partial.fold(batch, resid, acts, feature_ids)
            if checkpoint is not None and partial.batches_done % checkpoint_every == 0:
                checkpoint.save(partial)
    if checkpoint is not None:
        checkpoint.save(partial)
    if world > 1:
        partial.all_reduce()
    return partial.to_stats(hook_name, feature_list)


def _check_features(features: Sequence[int] | None, d_sae: int) -> list[int]:
    ids = list(features or [])
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < d_sae]
    if bad:
        raise ValueError(f"features {bad[:5]} are not latent ids of an SAE with d_sae={d_sae} (ints in [0, d_sae))")
    if len(set(ids)) != len(ids):
        raise ValueError("features contains duplicate latent ids")
    return [int(i) for i in ids]


_SUMS = ("act_sum", "act_sq_sum", "fire_count", "fired_per_text", "real_per_text")


@dataclass
class _Partial:
    """Running float64 sums of a statistics pass after ``batches_done`` batches (what a checkpoint holds)."""

    sums: dict[str, Tensor]
    n_tokens: int = 0
    norm_sum: float = 0.0
    batches_done: int = 0

    @classmethod
    def empty(cls, d_sae: int, n_texts: int, device: torch.device) -> _Partial:
        sizes = {"act_sum": d_sae, "act_sq_sum": d_sae, "fire_count": d_sae, "fired_per_text": n_texts,
                 "real_per_text": n_texts}
        on = {"fired_per_text": "cpu", "real_per_text": "cpu"}
        return cls({k: torch.zeros(n, dtype=torch.float64, device=on.get(k, device)) for k, n in sizes.items()})

    def fold(self, batch: TokenBatch, resid: Tensor, acts: Tensor, feature_ids: Tensor) -> None:
        """Add one batch: ``resid`` [tokens, d_in] and ``acts`` [tokens, d_sae] of its real tokens."""
        self.sums["act_sum"] += acts.sum(0)
        self.sums["act_sq_sum"] += acts.square().sum(0)
        self.sums["fire_count"] += (acts > 0).sum(0)
        self.n_tokens += acts.shape[0]
        self.norm_sum += float(resid.double().norm(dim=-1).sum())
        text_of_token = batch.text_index.to(batch.real.device)[:, None].expand_as(batch.real)[batch.real].cpu()
        ones = torch.ones(len(text_of_token), dtype=torch.float64)
        self.sums["real_per_text"].index_add_(0, text_of_token, ones)
        if feature_ids.numel():
            fired = (acts.index_select(1, feature_ids) > 0).any(1).double().cpu()
            self.sums["fired_per_text"].index_add_(0, text_of_token, fired)
        self.batches_done += 1

    def all_reduce(self) -> None:
        """Sum the running sums of every rank into each (:mod:`dsg_lens.distributed`)."""
        for value in self.sums.values():
            distributed.all_reduce_sum_(value)
        scalars = torch.tensor([float(self.n_tokens), self.norm_sum], dtype=torch.float64)
        distributed.all_reduce_sum_(scalars)
        self.n_tokens, self.norm_sum = int(scalars[0]), float(scalars[1])

    def to_stats(self, hook_name: str, features: list[int]) -> LatentStats:
        if self.n_tokens == 0:
            raise ValueError("no real tokens in the input: every token is special (BOS/EOS/PAD) or the texts are empty")
        real = self.sums["real_per_text"]
        rho = (self.sums["fired_per_text"] / real.clamp(min=1)).float() if features else None
        return LatentStats(
            act_sum=self.sums["act_sum"].float().cpu(),
            act_sq_sum=self.sums["act_sq_sum"].float().cpu(),
            fire_count=self.sums["fire_count"].float().cpu(),
            n_tokens=self.n_tokens,
            hook_name=hook_name,
            resid_norm_sum=self.norm_sum,
            rho=rho,
            rho_features=features,
            tokens_per_text=real.long() if features else None,
        )


class _Checkpoint:
    """``checkpoint.json`` (the commit record: fingerprint, progress, scalars) + the safetensors file it names.

    A save writes a new tensor file, then atomically replaces the JSON, then deletes older tensor files, so an
    interruption at any moment leaves the previous or the new checkpoint, never a mix.
    """

    def __init__(self, folder: Path, fingerprint: str):
        self.folder, self.fingerprint = folder, fingerprint
        self.meta_path = folder / "checkpoint.json"

    def restore(self, empty: _Partial) -> _Partial:
        """The saved partial sums (validated against ``empty``'s shapes), or ``empty`` if there is no checkpoint."""
        if not self.meta_path.exists():
            return empty
        meta = read_json(self.meta_path, CHECKPOINT_SCHEMA, "statistics checkpoint")
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"the checkpoint in {self.folder} was written for other inputs, SAE, model or options "
                "(fingerprint mismatch): pass a new checkpoint_dir, or delete this one to start over"
            )
        name = require(meta, "tensors", str, self.meta_path)
        tensors = read_tensors(self.folder / Path(name).name, _SUMS, "statistics checkpoint")
        for key, value in empty.sums.items():
            if tensors[key].shape != value.shape or tensors[key].dtype != torch.float64:
                raise ValueError(f"{self.folder}: checkpoint tensor {key} has the wrong shape or dtype")
        return _Partial(
            {k: tensors[k].to(v.device) for k, v in empty.sums.items()},
            n_tokens=require(meta, "n_tokens", int, self.meta_path),
            norm_sum=float(require(meta, "norm_sum", (int, float), self.meta_path)),
            batches_done=require(meta, "batches_done", int, self.meta_path),
        )

    def save(self, partial: _Partial) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"partial-{partial.batches_done:09d}.safetensors"
        write_tensors(self.folder / name, partial.sums)
        meta = {
            "schema_version": CHECKPOINT_SCHEMA,
            "fingerprint": self.fingerprint,
            "tensors": name,
            "batches_done": partial.batches_done,
            "n_tokens": partial.n_tokens,
            "norm_sum": partial.norm_sum,
        }
        write_json(self.meta_path, meta)
        for old in self.folder.glob("partial-*.safetensors"):
            if old.name != name:
                old.unlink()


def _run_fingerprint(
    model: nn.Module, sae: SAE, hook_name: str, sequences: list[tuple[int, Tensor]], features: list[int],
    batch_size: int,
) -> str:
    """SHA-256 identifying a statistics pass: token windows, SAE parameters, model parameters, options."""
    digest = hashlib.sha256()
    cfg = model.cfg
    options = {
        "hook_name": hook_name, "batch_size": batch_size, "features": features,
        "model": [str(getattr(cfg, k, None)) for k in ("model_name", "d_model", "n_layers", "d_vocab", "n_ctx")],
    }
    digest.update(json.dumps(options, sort_keys=True).encode())
    digest.update(sae_fingerprint(sae, range(int(sae.cfg.d_sae))).encode())
    for name, param in model.named_parameters():
        flat = param.detach().flatten()
        sample = flat[:: max(1, flat.numel() // 4096)]
        digest.update(f"{name}{tuple(param.shape)}".encode())
        digest.update(sample.to("cpu", torch.float32).numpy().tobytes())
    for text_index, seq in sequences:
        digest.update(f"|{text_index}:{seq.numel()}|".encode())
        digest.update(seq.numpy().tobytes())
    return digest.hexdigest()
