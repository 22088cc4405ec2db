"""Streaming per-latent statistics of an SAE on a set of texts.

Memory is O(d_sae): per batch, the residual at the SAE's hook is computed with ``stop_at_layer`` (the model runs
only up to the hook's block), encoded for the real tokens only (BOS/EOS/PAD and padding excluded), and folded into
running sums. Given ``features``, the per-text rho (fraction of real tokens where any of them fires) is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from sae_lens import SAE
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsg_lens.hooks import resolve_hook_name
from dsg_lens.sae_view import check_sae_fits_model, hook_layer
from dsg_lens.tokens import TextsOrTokens, iter_batches, to_sequences

STATS_SCHEMA = 1


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
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, folder / "latent_stats.safetensors")
        meta = {
            "schema_version": STATS_SCHEMA,
            "n_tokens": self.n_tokens,
            "hook_name": self.hook_name,
            "resid_norm_sum": self.resid_norm_sum,
            "rho_features": self.rho_features,
        }
        (folder / "latent_stats.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> LatentStats:
        """Read what :meth:`save` wrote; rejects unknown schema versions and inconsistent shapes."""
        folder = Path(path)
        meta = json.loads((folder / "latent_stats.json").read_text())
        if meta.get("schema_version") != STATS_SCHEMA:
            raise ValueError(f"unsupported latent stats schema {meta.get('schema_version')!r} (expected {STATS_SCHEMA})")
        tensors = load_file(folder / "latent_stats.safetensors")
        shapes = {tensors[k].shape for k in ("act_sum", "act_sq_sum", "fire_count")}
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"latent stats tensors have inconsistent shapes: {shapes}")
        return cls(
            act_sum=tensors["act_sum"],
            act_sq_sum=tensors["act_sq_sum"],
            fire_count=tensors["fire_count"],
            n_tokens=int(meta["n_tokens"]),
            hook_name=meta["hook_name"],
            resid_norm_sum=float(meta["resid_norm_sum"]),
            rho=tensors.get("rho"),
            rho_features=list(meta["rho_features"]),
            tokens_per_text=tensors.get("tokens_per_text"),
        )


def hook_activations(
    model: nn.Module, hook_name: str, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos d_in"]:
    """The activation at ``hook_name`` for ``tokens``, running the model only up to that hook's block."""
    resolved = resolve_hook_name(model, hook_name, read=True)
    layer = hook_layer(hook_name)
    stop = layer + 1 if layer is not None and layer + 1 < model.cfg.n_layers else None
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[resolved], stop_at_layer=stop)
    return cache[resolved]


def collect_latent_stats(
    model: nn.Module,
    sae: SAE,
    texts: TextsOrTokens,
    *,
    features: Sequence[int] | None = None,
    batch_size: int = 8,
    max_len: int | None = None,
    progress: bool = True,
) -> LatentStats:
    """Per-latent mean activation, mean squared activation and firing frequency of ``sae`` over the real tokens
    of ``texts`` (list of strings, or tokens [n, pos]); with ``features``, also rho per text.

    Texts longer than ``max_len`` (default: the model's context) are processed in windows.
    """
    hook_name = check_sae_fits_model(model, sae)
    sequences = to_sequences(model, texts, max_len)
    n_texts = max(i for i, _ in sequences) + 1
    d_sae = int(sae.cfg.d_sae)
    device = sae.W_dec.device
    act_sum = torch.zeros(d_sae, dtype=torch.float64, device=device)
    act_sq_sum = torch.zeros_like(act_sum)
    fire_count = torch.zeros_like(act_sum)
    fired_per_text = torch.zeros(n_texts, dtype=torch.float64)
    real_per_text = torch.zeros(n_texts, dtype=torch.float64)
    feature_ids = torch.tensor(list(features or []), dtype=torch.long, device=device)
    n_tokens, norm_sum = 0, 0.0
    with torch.no_grad():
        batches = iter_batches(model, sequences, batch_size)
        total = -(-len(sequences) // batch_size)
        for batch in tqdm(batches, total=total, desc="latent stats", disable=not progress):
            resid = hook_activations(model, hook_name, batch.tokens)[batch.real]
            if not torch.isfinite(resid).all():
                raise ValueError(f"non-finite activations at {hook_name}: check the model weights and dtype")
            acts = sae.encode(resid.to(device)).double()
            act_sum += acts.sum(0)
            act_sq_sum += acts.square().sum(0)
            fire_count += (acts > 0).sum(0)
            n_tokens += acts.shape[0]
            norm_sum += float(resid.double().norm(dim=-1).sum())
            text_of_token = batch.text_index.to(batch.real.device)[:, None].expand_as(batch.real)[batch.real].cpu()
            real_per_text.index_add_(0, text_of_token, torch.ones(len(text_of_token), dtype=torch.float64))
            if feature_ids.numel():
                fired = (acts.index_select(1, feature_ids) > 0).any(1).double().cpu()
                fired_per_text.index_add_(0, text_of_token, fired)
    if n_tokens == 0:
        raise ValueError("no real tokens in the input: every token is special (BOS/EOS/PAD) or the texts are empty")
    rho = fired_per_text / real_per_text.clamp(min=1) if feature_ids.numel() else None
    return LatentStats(
        act_sum=act_sum.float().cpu(),
        act_sq_sum=act_sq_sum.float().cpu(),
        fire_count=fire_count.float().cpu(),
        n_tokens=n_tokens,
        hook_name=hook_name,
        resid_norm_sum=norm_sum,
        rho=None if rho is None else rho.float(),
        rho_features=[int(i) for i in (features or [])],
        tokens_per_text=real_per_text.long() if feature_ids.numel() else None,
    )

