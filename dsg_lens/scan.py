"""One pass over texts that records, per real token, the rank of the first selected latent that fires.

With latents ranked best-first, "any of the top N fired" is ``first_rank < N`` for every N at once, so one pass
serves every N of a sweep (and the guardrail's own gate scores). Texts longer than the window are processed in
windows whose flags are concatenated back per text. Inside :func:`dsg_lens.distributed.sharded` (``torchrun``) the
batches are split over the ranks and every rank gets the flags of every text (identical to one process).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float
from sae_lens import SAE
from torch import Tensor, nn

from dsg_lens import distributed
from dsg_lens.gate import PROBE, TURN_START, gate_needs
from dsg_lens.hooks import resolve_hook_name
from dsg_lens.probe import LinearProbe
from dsg_lens.real_tokens import RealTokenRule
from dsg_lens.sae_adapters import adapter_for
from dsg_lens.sae_view import check_sae_fits_model
from dsg_lens.activations import iter_activations
from dsg_lens.tokens import TextsOrTokens, n_batches, to_sequences


@dataclass
class RankScan:
    """Per text: ``first_rank`` [n_tokens] (rank of the first firing latent, ``n_ranked`` if none) and ``real``
    [n_tokens]; ``mean_resid_norm`` over real tokens; ``extras``: per name, per text [n_tokens] (module docstring)."""

    first_rank: list[Tensor]
    real: list[Tensor]
    n_ranked: int
    mean_resid_norm: float
    extras: dict[str, list[Tensor]] = field(default_factory=dict)

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

    def padded_extras(self) -> dict[str, Tensor]:
        """The recorded extras as padded [texts, pos] tensors (the widths of :meth:`padded`)."""
        width = max(r.numel() for r in self.real)
        out = {}
        for name, per_text in self.extras.items():
            fill = torch.zeros(len(per_text), width, dtype=per_text[0].dtype)
            for row, values in enumerate(per_text):
                fill[row, : values.numel()] = values
            out[name] = fill
        return out


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
    probe: LinearProbe | None = None,
    turn_starts: bool = False,
    desc: str = "calibration: gate scan",
) -> RankScan:
    """Scan ``texts`` once for the latents ``ranked_ids`` (best first); with ``probe`` / ``turn_starts`` also
    record the probe's logits / the user-turn starts per token (module docstring). ``desc`` names the progress bar."""
    hook_name = check_sae_fits_model(model, sae, hook_name)
    adapter = adapter_for(sae, ranked_ids, device=model.cfg.device)
    n_ranked = adapter.n
    sequences = to_sequences(model, texts, max_len)
    pieces: dict[int, list[tuple[int, dict[str, Tensor]]]] = {}
    batch_norms: list[tuple[float, int]] = []  # per batch: residual-norm sum and real tokens
    shard = distributed.world()
    ranks = torch.arange(n_ranked, device=model.cfg.device)
    same_point = probe is not None and (
        resolve_hook_name(model, probe.hook_name, read=True) == resolve_hook_name(model, hook_name, read=True))
    rule = RealTokenRule.for_model(model) if turn_starts else None

    def keep(batch: Any, name: str, values: Tensor) -> None:
        for row, key in enumerate(batch.seq_index):
            length = sequences[key][1].numel()
            record = pieces.setdefault(int(batch.text_index[row]), [])
            found = next((fields for k, fields in record if k == key), None)
            if found is None:
                found = {}
                record.append((key, found))
            found[name] = values[row, :length].cpu()

    with torch.no_grad():
        for batch, resid in iter_activations(model, hook_name, sequences, batch_size, progress=progress,
                                             desc=desc, shard=shard):
            fired = adapter.encode(resid) > 0
            keep(batch, "first_rank", torch.where(fired, ranks, n_ranked).amin(-1))
            keep(batch, "real", batch.real)
            batch_norms.append((float(resid[batch.real].double().norm(dim=-1).sum()), int(batch.real.sum())))
            if rule is not None:
                keep(batch, TURN_START, rule.user_turn_starts(batch.tokens))
            if same_point:
                keep(batch, PROBE, probe.logits(resid).float())
        if probe is not None and not same_point:
            for batch, acts in iter_activations(model, probe.hook_name, sequences, batch_size, progress=progress,
                                                desc="probe scan", shard=shard):
                keep(batch, PROBE, probe.logits(acts).float())
    if shard[1] > 1:  # every rank gets every text, and the norms in one process's order
        gathered: dict[int, list[tuple[int, dict[str, Tensor]]]] = {}
        for part in distributed.all_gather(pieces):
            for text, record in part.items():
                gathered.setdefault(text, []).extend(record)
        pieces = gathered
        batch_norms = distributed.in_batch_order(distributed.all_gather(batch_norms),
                                                 n_batches(len(sequences), batch_size))
    norm_sum, n_real = 0.0, 0
    for value, count in batch_norms:
        norm_sum += value
        n_real += count
    if n_real == 0:
        raise ValueError("no real tokens in the input: every token is special (BOS/EOS/PAD)")
    per_text = []
    for text in range(max(pieces) + 1):
        parts = [fields for _, fields in sorted(pieces[text], key=lambda item: item[0])]
        per_text.append({name: torch.cat([p[name] for p in parts]) for name in parts[0]})
    names = [name for name in per_text[0] if name not in ("first_rank", "real")]
    return RankScan([t["first_rank"] for t in per_text], [t["real"] for t in per_text], n_ranked, norm_sum / n_real,
                    {name: [t[name] for t in per_text] for name in names})


def gate_scores_from_scan(scan: RankScan, gate, n: int, *, calibration: bool = False) -> Float[Tensor, " texts"]:
    """The gate's score per text when the top ``n`` ranked latents are selected (``calibration=True``: the
    scores tau is calibrated on, see ``Gate.calibration_scores``)."""
    fired, real = scan.padded(n)
    return (gate.calibration_scores if calibration else gate.scores)(fired, real, **scan_extras(scan, gate)).float()


def scan_extras(scan: RankScan, gate: Any) -> dict[str, Tensor]:
    """The padded extras ``gate`` needs from ``scan``; raises if the scan did not record them."""
    needs = gate_needs(gate)
    missing = [name for name in needs if name not in scan.extras]
    if missing:
        raise ValueError(f"{type(gate).__name__} reads {missing}, which this scan did not record: scan with "
                         "scan_first_rank(..., probe=<the gate's probe>, turn_starts=True) (the guardrail does)")
    padded = scan.padded_extras()
    return {name: padded[name] for name in needs}
