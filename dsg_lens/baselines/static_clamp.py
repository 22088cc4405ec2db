"""Static SAE clamping (Farrell et al. 2024; SAEBench's unlearning eval): the DSG baseline without a gate.

Selection: the ``"farrell"`` rule of :mod:`dsg_lens.selection` (latents that rarely fire on retain text, ranked by
forget firing frequency). Intervention: :func:`dsg_lens.interventions.static_clamp`, each selected latent set to
``-multiplier`` wherever it fires, on every sequence. :class:`StaticClamp` has the guardrail's ``attached(model)``
so the same evaluation code runs on both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sae_lens import SAE
from torch import nn

from dsg_lens.hooks import HookSpec, scoped_hooks
from dsg_lens.interventions import static_clamp
from dsg_lens.sae_view import check_sae_fits_model, sae_hook_name
from dsg_lens.selection import FeatureSet, as_latent_ids, select_features
from dsg_lens.stats import LatentStats, collect_latent_stats
from dsg_lens.tokens import TextsOrTokens


class StaticClamp:
    """Clamp ``features`` of ``sae`` to ``-multiplier`` wherever they fire (module docstring)."""

    def __init__(self, sae: SAE, features: FeatureSet | Sequence[int], multiplier: float | int = 500.0,
                 label: str = "static-clamp"):
        self.sae = sae
        self.latent_ids = as_latent_ids(features)
        self.features = features if isinstance(features, FeatureSet) else None
        self.multiplier = float(multiplier)
        self.label = label
        self._spec = static_clamp(sae, self.latent_ids, self.multiplier, label=label)  # validates now

    @classmethod
    def from_stats(cls, sae: SAE, forget: LatentStats, retain: LatentStats, *, n: int = 20,
                   retain_threshold: float = 0.01, multiplier: float | int = 500.0) -> StaticClamp:
        """Select with the Farrell rule from precomputed statistics."""
        features = select_features(forget, retain, n=n, rule="farrell", retain_threshold=retain_threshold)
        return cls(sae, features, multiplier)

    @classmethod
    def fit(cls, model: nn.Module, sae: SAE, forget_texts: TextsOrTokens, retain_texts: TextsOrTokens, *,
            n: int = 20, retain_threshold: float = 0.01, multiplier: float | int = 500.0, batch_size: int = 8,
            progress: bool = True) -> StaticClamp:
        """Latent statistics on both corpora, then :meth:`from_stats`."""
        forget = collect_latent_stats(model, sae, forget_texts, batch_size=batch_size, progress=progress)
        retain = collect_latent_stats(model, sae, retain_texts, batch_size=batch_size, progress=progress)
        return cls.from_stats(sae, forget, retain, n=n, retain_threshold=retain_threshold, multiplier=multiplier)

    def hook_spec(self, model: nn.Module) -> HookSpec:
        check_sae_fits_model(model, self.sae)
        return self._spec

    @contextmanager
    def attached(self, model: nn.Module) -> Iterator[StaticClamp]:
        """Apply the clamp for the ``with`` block (removed on exit, exceptions included)."""
        with scoped_hooks(model, self.hook_spec(model)):
            yield self

    def save(self, path: str | Path) -> None:
        """Write ``static_clamp.json`` (and the FeatureSet, if any) into folder ``path``."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"latent_ids": self.latent_ids, "multiplier": self.multiplier, "hook_name": sae_hook_name(self.sae),
                "label": self.label}
        (folder / "static_clamp.json").write_text(json.dumps(meta, indent=2))
        if self.features is not None:
            self.features.save(folder)

    @classmethod
    def load(cls, path: str | Path, sae: SAE) -> StaticClamp:
        folder = Path(path)
        if not (folder / "static_clamp.json").is_file():
            raise ValueError(f"{folder} is not a saved StaticClamp (no static_clamp.json)")
        meta = json.loads((folder / "static_clamp.json").read_text())
        if meta["hook_name"] != sae_hook_name(sae):
            raise ValueError(f"saved for an SAE at {meta['hook_name']}, got one at {sae_hook_name(sae)}")
        features = FeatureSet.load(folder) if (folder / "features.json").is_file() else meta["latent_ids"]
        return cls(sae, features, meta["multiplier"], meta.get("label", "static-clamp"))

    def __repr__(self) -> str:
        return f"StaticClamp(hook={sae_hook_name(self.sae)!r}, n={len(self.latent_ids)}, multiplier={self.multiplier})"
