"""Ablation study: what each selected latent does to the model's loss (and, optionally, to an accuracy).

For every latent in a list, and for all of them together, the latent(s) are ablated (zero or mean, delta form:
see :mod:`dsg_lens.interventions`) at the SAE's HookPoint and the mean next-token loss on a corpus is measured
by :func:`dsg_lens.eval.corpus.corpus_loss`'s rule (a prediction counts when its input and target tokens are both
real: BOS/EOS/PAD and padding excluded); a ``score(model) -> float`` callable (e.g. an MCQ
accuracy) is evaluated under the same ablation. The result is a plain table, one dict per row, with the columns
of :data:`COLUMNS`:

- ``ablation``: ``"none"`` (baseline), ``"single"`` or ``"all"``; ``latent``: the latent id (``single`` rows,
  else None); ``latents``: the ablated ids; ``mode``: ``"zero"`` or ``"mean"``;
- ``loss`` (mean nats per counted prediction), ``delta_loss`` (loss - baseline loss), ``n_tokens``;
- ``accuracy`` and ``delta_accuracy`` (None without ``score``).

:func:`write_table` saves it as ``{stem}.csv`` and ``{stem}.json`` (``{"schema_version", "columns", "rows"}``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sae_lens import SAE
from torch import Tensor, nn
from tqdm.auto import tqdm

from dsg_lens.eval.corpus import sequences_loss
from dsg_lens.hooks import HookSpec, scoped_hooks
from dsg_lens.interventions import mean_ablate, zero_ablate
from dsg_lens.stats import LatentStats
from dsg_lens.tokens import TextsOrTokens, n_batches, to_sequences

ABLATION_SCHEMA = 1
COLUMNS = ("ablation", "latent", "latents", "mode", "loss", "delta_loss", "n_tokens", "accuracy", "delta_accuracy")
Score = Callable[[nn.Module], float]


def _spec(sae: SAE, ids: list[int], mode: str, means: LatentStats | Tensor | None, hook_name: str | None) -> HookSpec:
    if mode == "zero":
        return zero_ablate(sae, ids, hook_name=hook_name)
    return mean_ablate(sae, ids, means, hook_name=hook_name)


def ablation_study(
    model: nn.Module,
    sae: SAE,
    latent_ids: Sequence[int],
    texts: TextsOrTokens,
    *,
    mode: str = "zero",
    means: LatentStats | Tensor | None = None,
    score: Score | None = None,
    together: bool = True,
    hook_name: str | None = None,
    batch_size: int = 8,
    max_len: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """The table of the module docstring: a baseline row, one row per latent, and (``together``) one for all.

    ``mode``: ``"zero"`` or ``"mean"``; ``score``: ``score(model) -> float`` evaluated under each ablation.

    ``mode="mean"`` needs ``means`` (the :class:`LatentStats` of a reference corpus, or a [d_sae] tensor).
    The model runs as given, so hooks already attached (a guardrail, say) stay active in every row.
    """
    ids = [int(i) for i in latent_ids]
    if not ids:
        raise ValueError("latent_ids is empty: pass the latents to ablate")
    if mode not in ("zero", "mean"):
        raise ValueError(f"unknown mode {mode!r}: use 'zero' or 'mean'")
    if mode == "mean" and means is None:
        raise ValueError("mode='mean' needs means= (LatentStats from collect_latent_stats, or a [d_sae] tensor)")
    sequences = to_sequences(model, texts, max_len)  # tokenized once, scored once per row
    n_batches(len(sequences), batch_size)
    plan: list[tuple[str, int | None, list[int]]] = [("none", None, [])]
    plan += [("single", i, [i]) for i in ids]
    if together and len(ids) > 1:
        plan.append(("all", None, ids))
    rows: list[dict[str, Any]] = []
    for ablation, latent, chosen in tqdm(plan, desc="ablations", disable=not progress):
        specs = [_spec(sae, chosen, mode, means, hook_name)] if chosen else []
        with scoped_hooks(model, *specs):
            measured = sequences_loss(model, sequences, batch_size=batch_size, progress=False)
            loss, n_tokens = measured.mean_loss, measured.n_tokens
            accuracy = float(score(model)) if score is not None else None
        rows.append({
            "ablation": ablation, "latent": latent, "latents": chosen, "mode": mode, "loss": loss,
            "delta_loss": loss - rows[0]["loss"] if rows else 0.0, "n_tokens": n_tokens, "accuracy": accuracy,
            "delta_accuracy": None if accuracy is None else accuracy - (rows[0]["accuracy"] if rows else accuracy),
        })
    return rows


def write_table(rows: Sequence[dict[str, Any]], stem: str | Path) -> tuple[Path, Path]:
    """Write ``rows`` to ``{stem}.csv`` (latents space-separated, None as empty) and ``{stem}.json``."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = stem.parent / f"{stem.name}.csv", stem.parent / f"{stem.name}.json"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            cells = {k: ("" if row[k] is None else row[k]) for k in COLUMNS}
            cells["latents"] = " ".join(str(i) for i in row["latents"])
            writer.writerow(cells)
    json_path.write_text(json.dumps({"schema_version": ABLATION_SCHEMA, "columns": list(COLUMNS), "rows": list(rows)},
                                    indent=2))
    return csv_path, json_path
