"""Latent ablation: what each selected forget latent does, on its own, to the next-token loss on forget and on
retain text.

Each latent (and all of them together) is zero-ablated at the SAE's HookPoint (:func:`dsg_lens.ablation.
ablation_study`, the SAE error kept) and the mean next-token loss on a sample of the forget corpus and of the
retain corpus is compared with the unablated model's. A latent the guardrail should clamp raises the forget loss
more than the retain loss.

Schema (``latent_ablation.json``; the figure reads ``latents`` and ``effects``)::

    {"latents": [ids, selection order], "effects": {"forget text": [delta loss per latent],
                                                     "retain text": [...]},
     "metric": "change in next-token loss (nats)", "all": {"forget text": delta, "retain text": delta},
     "baseline_loss": {"forget text": loss, "retain text": loss}, "rows": {side: ablation table rows},
     "title": str, "params": {LatentAblationConfig fields, "n_tokens": {side: n}}}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sae_lens import SAE
from torch import nn

from dsg_lens.ablation import ablation_study
from dsg_lens.studies.common import StudyConfig, save_result


@dataclass
class LatentAblationConfig(StudyConfig):
    """Settings of :func:`latent_ablation_study`: texts per side (``n_texts``, the first ones), the ablation
    ``mode`` (``"zero"``), and the batching (``batch_size``, ``max_len`` tokens per window, None: the context)."""

    n_texts: int = 32
    mode: str = "zero"
    batch_size: int = 8
    max_len: int | None = 128

    def __post_init__(self) -> None:
        if self.n_texts < 1:
            raise ValueError(f"n_texts={self.n_texts} must be >= 1")
        if self.mode != "zero":
            raise ValueError(f"mode={self.mode!r}: the study ablates to zero (mean ablation needs statistics; use "
                             "dsg_lens.ablation.ablation_study)")


def latent_ablation_study(
    model: nn.Module,
    sae: SAE,
    latent_ids: Sequence[int],
    forget_texts: Sequence[str],
    retain_texts: Sequence[str],
    config: LatentAblationConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Zero-ablate each of ``latent_ids`` (and all together) on the first ``config.n_texts`` forget and retain
    texts (module docstring for the schema)."""
    cfg = config or LatentAblationConfig()
    ids = [int(i) for i in latent_ids]
    sides = {"forget text": list(forget_texts)[: cfg.n_texts], "retain text": list(retain_texts)[: cfg.n_texts]}
    tables = {side: ablation_study(model, sae, ids, texts, mode=cfg.mode, batch_size=cfg.batch_size,
                                   max_len=cfg.max_len, progress=progress)
              for side, texts in sides.items()}
    effects = {side: [next(r["delta_loss"] for r in rows if r["latent"] == i) for i in ids]
               for side, rows in tables.items()}
    together = {side: next((r["delta_loss"] for r in rows if r["ablation"] == "all"), effects[side][0])
                for side, rows in tables.items()}
    result = {"latents": ids, "effects": effects, "metric": "change in next-token loss (nats)", "all": together,
              "baseline_loss": {side: rows[0]["loss"] for side, rows in tables.items()}, "rows": tables,
              "title": f"zero-ablating each of the {len(ids)} selected latents alone ({cfg.n_texts} texts per side)",
              "params": {**cfg.to_dict(), "n_tokens": {side: rows[0]["n_tokens"] for side, rows in tables.items()}}}
    return save_result(result, out_dir, "latent_ablation")
