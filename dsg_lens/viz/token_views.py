"""Token-level views of SAE latents (circuitsvis, offline HTML): where the selected latents fire on a text, the
per-token "any selected latent fired" mask with rho and tau, and the top-activating corpus examples per latent.

Activations at special tokens (BOS/EOS/PAD) are shown as 0: the guardrail ignores them, and a large BOS activation
would wash out the colour scale.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from sae_lens import SAE
from torch import Tensor, nn

from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.sae_adapters import adapter_for
from dsg_lens.sae_view import check_sae_fits_model
from dsg_lens.activations import hook_activations, iter_activations
from dsg_lens.tokens import TextsOrTokens, iter_batches, to_sequences
from dsg_lens.viz.html import OfflineHTML, render_component

_HEADER_STYLE = "font-family: sans-serif; font-size: 14px; margin: 6px 0;"


@dataclass
class TokenActivations:
    """Activations ``acts`` [pos, n] of latents ``latent_ids`` on one text (0 at special tokens), its ``tokens``
    as strings and ``real`` [pos] (False at special tokens)."""

    tokens: list[str]
    acts: Float[Tensor, "pos n"]
    real: Bool[Tensor, " pos"]
    latent_ids: list[int]


def latent_activations(
    model: nn.Module, sae: SAE, text: str, latent_ids: Sequence[int], *, hook_name: str | None = None
) -> TokenActivations:
    """Activations of ``latent_ids`` at every token of ``text`` (which must fit in the model's context)."""
    hook_name = check_sae_fits_model(model, sae, hook_name)
    sequences = to_sequences(model, [text])
    if len(sequences) > 1:
        raise ValueError(f"the text is longer than the model's context ({model.cfg.n_ctx} tokens): pass a shorter text")
    batch = next(iter_batches(model, sequences, 1))
    adapter = adapter_for(sae, latent_ids, device=model.cfg.device)
    with torch.no_grad():
        acts = adapter.encode(hook_activations(model, hook_name, batch.tokens))[0].float()
    real = batch.real[0]
    return TokenActivations(
        tokens=list(model.to_str_tokens(batch.tokens[0])),
        acts=(acts * real[:, None]).cpu(),
        real=real.cpu(),
        latent_ids=[int(i) for i in latent_ids],
    )


def _header(*lines: str) -> str:
    return "".join(f'<div style="{_HEADER_STYLE}">{line}</div>' for line in lines)


def latent_view(model: nn.Module, sae: SAE, text: str, latent_id: int) -> OfflineHTML:
    """Tokens of ``text`` coloured by the activation of one latent."""
    found = latent_activations(model, sae, text, [latent_id])
    values = found.acts[:, 0]
    header = _header(f"<b>latent {int(latent_id)}</b>: max activation {float(values.max()):.3g}")
    return render_component(
        "ColoredTokens", header=header, title=f"latent {int(latent_id)}",
        tokens=found.tokens, values=values, minValue=0.0, maxValue=max(float(values.max()), 1e-6),
    )


def latents_view(
    model: nn.Module, sae: SAE, text: str, latent_ids: Sequence[int], labels: Sequence[str] | None = None
) -> OfflineHTML:
    """Tokens of ``text`` coloured by each of several latents (pick one with the buttons, hover for all values)."""
    found = latent_activations(model, sae, text, latent_ids)
    names = list(labels) if labels is not None else [f"latent {i}" for i in found.latent_ids]
    if len(names) != len(found.latent_ids):
        raise ValueError(f"got {len(names)} labels for {len(found.latent_ids)} latents: pass one label per latent")
    return render_component(
        "ColoredTokensMulti", header=_header(f"<b>{len(names)} latents</b>"), title="latents",
        tokens=found.tokens, values=found.acts, labels=names,
    )


def gate_view(model: nn.Module, guard: DynamicSAEGuardrail, text: str) -> OfflineHTML:
    """The per-token mask "any selected latent fired" (1 = fired, 0 = not, -1 = special token, ignored), with the
    gate's score rho, its threshold tau and the verdict in a header."""
    found = latent_activations(model, guard.sae, text, guard.latent_ids, hook_name=guard.hook_name)
    fired = (found.acts > 0).any(-1) & found.real
    rho = float(guard.gate.scores(fired[None], found.real[None])[0])
    tau = float(guard.gate.tau)
    verdict = "forget-relevant: guardrail clamps the fired tokens" if rho > tau else "not forget-relevant: untouched"
    values = torch.where(found.real, fired.float(), -1.0)
    header = _header(
        f"<b>rho = {rho:.3f}</b> ({int(fired.sum())} of {int(found.real.sum())} real tokens fired), "
        f"<b>tau = {tau:.3f}</b> &rarr; {html.escape(verdict)}",
        f"{len(guard.latent_ids)} selected latents; red = fired, white = not fired, grey = special token (ignored)",
    )
    return render_component(
        "ColoredTokens", header=header, title="DSG gate", tokens=found.tokens, values=values,
        minValue=-1.0, maxValue=1.0, negativeColor="#9e9e9e", positiveColor="#d62728",
    )


@dataclass
class TopExample:
    """One corpus window around a latent's peak: ``value`` (the peak), ``tokens`` and ``acts`` of the window."""

    value: float
    text_index: int
    tokens: list[str]
    acts: list[float]


def top_examples(
    model: nn.Module, sae: SAE, texts: TextsOrTokens, latent_ids: Sequence[int], *, k: int = 5, window: int = 24,
    batch_size: int = 8, max_len: int | None = None,
) -> list[list[TopExample]]:
    """Per latent, the ``k`` texts where it peaks highest (peak > 0 only), each as a ``window`` of tokens around
    its peak, best first."""
    if k < 1 or window < 1:
        raise ValueError(f"k={k} and window={window} must be >= 1")
    hook_name = check_sae_fits_model(model, sae)
    adapter = adapter_for(sae, latent_ids, device=model.cfg.device)
    sequences = to_sequences(model, texts, max_len)
    best: list[list[TopExample]] = [[] for _ in range(adapter.n)]
    for batch, resid in iter_activations(model, hook_name, sequences, batch_size):
        with torch.no_grad():
            acts = (adapter.encode(resid) * batch.real[..., None]).float()
        peak, where = acts.max(dim=1)  # [batch, n]
        for rows, latent in zip(peak.topk(min(k, peak.shape[0]), dim=0).indices.T.tolist(), range(adapter.n)):
            for row in rows:
                value = float(peak[row, latent])
                if value <= 0:
                    continue
                start = max(0, int(where[row, latent]) - window // 2)
                stop = min(int(batch.real[row].nonzero().max()) + 1, start + window)
                best[latent].append(TopExample(
                    value, int(batch.text_index[row]), list(model.to_str_tokens(batch.tokens[row, start:stop])),
                    acts[row, start:stop, latent].tolist(),
                ))
            best[latent] = sorted(best[latent], key=lambda e: -e.value)[:k]
    return best


def top_examples_view(
    model: nn.Module, sae: SAE, texts: TextsOrTokens, latent_ids: Sequence[int], *, k: int = 5, window: int = 24,
    batch_size: int = 8,
) -> OfflineHTML:
    """circuitsvis TopkSamples: pick a latent, see its ``k`` top-activating corpus windows (module docstring)."""
    examples = top_examples(model, sae, texts, latent_ids, k=k, window=window, batch_size=batch_size)
    empty = TopExample(0.0, -1, ["(never fires)"], [0.0])
    per_latent = [found or [empty] for found in examples]
    return render_component(
        "TopkSamples", header=_header(f"<b>top-{k} corpus examples</b> for {len(per_latent)} latents"),
        title="top examples",
        tokens=[[[e.tokens for e in found] for found in per_latent]],
        activations=[[[e.acts for e in found] for found in per_latent]],
        zerothDimensionName="SAE", firstDimensionName="Latent",
        zerothDimensionLabels=["SAE"], firstDimensionLabels=[str(int(i)) for i in latent_ids],
    )
