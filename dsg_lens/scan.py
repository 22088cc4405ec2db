"""One pass over texts that records, per real token, the rank of the first selected latent that fires.

With latents ranked best-first, "any of the top N fired" is ``first_rank < N`` for every N at once, so one pass
serves every N of a sweep (and the guardrail's own gate scores). Texts longer than the window are processed in
windows whose flags are concatenated back per text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from sae_lens import SAE
from torch import Tensor, nn

from dsg_lens.sae_adapters import adapter_for
from dsg_lens.sae_view import check_sae_fits_model
from dsg_lens.activations import iter_activations
from dsg_lens.tokens import TextsOrTokens, to_sequences


@dataclass
class RankScan:
    """Per text: ``first_rank`` [n_tokens] (rank of the first firing latent, ``n_ranked`` if none) and ``real``
    [n_tokens]; ``mean_resid_norm`` over real tokens."""

    first_rank: list[Tensor]
    real: list[Tensor]
    n_ranked: int
    mean_resid_norm: float

    def padded(self, n: int) -> tuple[Bool[Tensor, "texts pos"], Bool[Tensor, "texts pos"]]:
        """(fired by any of the top ``n``, real) as padded [texts, pos] tensors, for a gate's ``scores``."""
        if not 1 <= n <= self.n_ranked:
            raise ValueError(f"n={n} must be between 1 and the {self.n_ranked} ranked latents scanned")
        width = max(r.numel() for r in self.real)
        fired = torch.zeros(len(self.real), width, dtype=torch.bool)
        real = torch.zeros_like(fired)
        for row, (rank, is_real) in enumerate(zip(self.first_rank, self.real)):
            fired[row, : rank.numel()] = (rank < n) & is_real
            real[row, : is_real.numel()] = is_real
        return fired, real


def scan_first_rank(
    model: nn.Module,
    sae: SAE,
    ranked_ids: Sequence[int],
    texts: TextsOrTokens,
    *,
    hook_name: str | None = None,
    batch_size: int = 8,
    max_len: int | None = None,
    progress: bool = False,
) -> RankScan:
    """Scan ``texts`` once for the latents ``ranked_ids`` (best first); see module docstring."""
    hook_name = check_sae_fits_model(model, sae, hook_name)
    adapter = adapter_for(sae, ranked_ids, device=model.cfg.device)
    n_ranked = adapter.n
    sequences = to_sequences(model, texts, max_len)
    pieces: dict[int, list[tuple[int, Tensor, Tensor]]] = {}
    norm_sum, n_real = 0.0, 0
    ranks = torch.arange(n_ranked, device=model.cfg.device)
    with torch.no_grad():
        for batch, resid in iter_activations(model, hook_name, sequences, batch_size, progress=progress,
                                             desc="gate scan"):
            fired = adapter.encode(resid) > 0
            first = torch.where(fired, ranks, n_ranked).amin(-1)
            norm_sum += float(resid[batch.real].double().norm(dim=-1).sum())
            n_real += int(batch.real.sum())
            for row, key in enumerate(batch.seq_index):
                length = sequences[key][1].numel()
                pieces.setdefault(int(batch.text_index[row]), []).append(
                    (key, first[row, :length].cpu(), batch.real[row, :length].cpu())
                )
    if n_real == 0:
        raise ValueError("no real tokens in the input: every token is special (BOS/EOS/PAD)")
    first_rank, real = [], []
    for text in range(max(pieces) + 1):
        parts = sorted(pieces[text])
        first_rank.append(torch.cat([p[1] for p in parts]))
        real.append(torch.cat([p[2] for p in parts]))
    return RankScan(first_rank, real, n_ranked, norm_sum / n_real)


def gate_scores_from_scan(scan: RankScan, gate, n: int, *, calibration: bool = False) -> Float[Tensor, " texts"]:
    """The gate's score per text when the top ``n`` ranked latents are selected (``calibration=True``: the
    scores tau is calibrated on, see ``Gate.calibration_scores``)."""
    fired, real = scan.padded(n)
    return (gate.calibration_scores if calibration else gate.scores)(fired, real).float()
