"""Which SAE latents drive the model's answer: gradient x activation attribution (attribution patching).

At the SAE's hook point the residual is rewritten as ``decode(a) + error.detach()`` with the latents ``a`` a
differentiable leaf (same value as before: the reconstruction error is kept), then
``attribution[pos, j] = a[pos, j] * d metric / d a[pos, j]``: the first-order estimate of
``metric(clean) - metric(latent j removed at pos)``. :func:`ablation_effects` measures the exact effect of removing
a latent at every token (latent j set to 0 through the SAE's adapter, the error term kept: ``resid - a_j W_dec[j]``
for plain SAEs), so :func:`attribution_check` can compare both.
With ``guard=`` the guardrail is attached after the leaf hook: attributions are those of the guarded model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from sae_lens import SAE
from torch import Tensor, nn

from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.hooks import HookSpec, scoped_hooks, resolve_hook_name
from dsg_lens.sae_adapters import SAEAdapter, adapter_for
from dsg_lens.sae_view import check_sae_fits_model
from dsg_lens.tokens import iter_batches, to_sequences
from dsg_lens.viz.html import OfflineHTML, render_component
from dsg_lens.viz.style import color, figure_paths, styled_figure

Metric = Callable[[Float[Tensor, "1 pos d_vocab"]], Float[Tensor, ""]]
"""Maps the logits of the single input row to a scalar."""


@dataclass
class LatentAttribution:
    """``per_token`` [pos, d_sae] attributions on ``tokens``; ``metric`` is the metric's value in that forward pass
    (guardrail attached when ``guarded``)."""

    tokens: list[str]
    per_token: Float[Tensor, "pos d_sae"]
    metric: float
    guarded: bool

    @property
    def total(self) -> Float[Tensor, " d_sae"]:
        """Attribution of each latent summed over tokens."""
        return self.per_token.sum(0)

    def top(self, k: int) -> list[int]:
        """The ``k`` latents with the largest |total attribution|, largest first."""
        return self.total.abs().topk(min(k, self.total.numel())).indices.tolist()


def answer_logit(model: nn.Module, answer: str | int) -> Metric:
    """Metric: the logit of ``answer`` (a token id, or a string that is exactly one token) at the last position."""
    if isinstance(answer, str):
        ids = model.to_tokens(answer, prepend_bos=False)[0].tolist()
        if len(ids) != 1:
            raise ValueError(f"answer {answer!r} is {len(ids)} tokens; pass a single-token string or a token id")
        answer = ids[0]
    if not 0 <= int(answer) < model.cfg.d_vocab:
        raise ValueError(f"answer token id {answer} is outside the vocabulary [0, {model.cfg.d_vocab})")
    token = int(answer)
    return lambda logits: logits[0, -1, token]


def _inputs(model: nn.Module, sae: SAE, text: str, answer: str | int | None, metric: Metric | None,
            hook_name: str | None) -> tuple[Int[Tensor, "1 pos"], Metric, str]:
    if (answer is None) == (metric is None):
        raise ValueError("pass exactly one of answer= (a token) or metric= (a function of the logits)")
    name = resolve_hook_name(model, check_sae_fits_model(model, sae, hook_name))
    sequences = to_sequences(model, [text])
    if len(sequences) > 1:
        raise ValueError(f"the text is longer than the model's context ({model.cfg.n_ctx} tokens): shorten it")
    tokens = next(iter_batches(model, sequences, 1)).tokens
    return tokens, metric or answer_logit(model, answer), name


@contextmanager
def _edited(model: nn.Module, spec: HookSpec, guard: DynamicSAEGuardrail | None) -> Iterator[None]:
    """``spec`` attached first, then the guardrail (if any), so the guardrail sees the edited residual."""
    with ExitStack() as stack:
        stack.enter_context(scoped_hooks(model, spec))
        if guard is not None:
            stack.enter_context(guard.attached(model))
        yield


def latent_attribution(
    model: nn.Module, sae: SAE, text: str, *, answer: str | int | None = None, metric: Metric | None = None,
    guard: DynamicSAEGuardrail | None = None, hook_name: str | None = None,
) -> LatentAttribution:
    """Gradient x activation of every latent of ``sae`` for ``metric`` (or the logit of ``answer``) on ``text``."""
    tokens, metric, name = _inputs(model, sae, text, answer, metric, hook_name)
    store: dict[str, Tensor] = {}

    def leaf_hook(resid: Float[Tensor, "batch pos d"], hook: Any) -> Float[Tensor, "batch pos d"]:
        x = resid.to(sae.W_dec.device, sae.W_dec.dtype)
        acts = sae.encode(x).detach().requires_grad_(True)
        recons = sae.decode(acts)  # ONE decode per encode: SAEs with run-time normalisation consume its state
        store["acts"] = acts
        return (recons + (x - recons).detach()).to(resid.device, resid.dtype)

    with torch.enable_grad(), _edited(model, HookSpec(name, leaf_hook, label="attribution-leaf"), guard):
        value = metric(model(tokens))
        (grad,) = torch.autograd.grad(value, store["acts"])
    per_token = (store["acts"] * grad)[0].detach().float().cpu()
    return LatentAttribution(list(model.to_str_tokens(tokens[0])), per_token, float(value.detach()), guard is not None)


def ablation_effects(
    model: nn.Module, sae: SAE, text: str, latent_ids: Sequence[int], *, answer: str | int | None = None,
    metric: Metric | None = None, guard: DynamicSAEGuardrail | None = None, hook_name: str | None = None,
) -> Float[Tensor, " n"]:
    """Exact ``metric(clean) - metric(latent removed at every token)`` per latent in ``latent_ids`` (one forward
    pass each; the removal sets the latent to 0 through the SAE's adapter, the error term kept)."""
    tokens, metric, name = _inputs(model, sae, text, answer, metric, hook_name)
    with torch.no_grad():
        if guard is None:
            clean = float(metric(model(tokens)))
        else:
            with guard.attached(model):
                clean = float(metric(model(tokens)))
        effects = []
        for latent in latent_ids:
            adapter = adapter_for(sae, [latent], device=model.cfg.device)

            def remove(resid: Float[Tensor, "batch pos d"], hook: Any, adapter: SAEAdapter = adapter
                       ) -> Float[Tensor, "batch pos d"]:
                acts = adapter.encode(resid)
                return adapter.edit(resid, acts, torch.zeros_like(acts), (acts != 0).any(-1))

            with _edited(model, HookSpec(name, remove, label=f"remove-latent-{latent}"), guard):
                effects.append(clean - float(metric(model(tokens))))
    return torch.tensor(effects)


def attribution_check(
    model: nn.Module, sae: SAE, text: str, *, k: int = 5, **kwargs: Any
) -> dict[str, list[float] | list[int]]:
    """Attribution (summed over tokens) next to the exact ablation effect for the ``k`` top-attributed latents.

    ``kwargs``: ``answer``/``metric``/``guard``/``hook_name`` as for :func:`latent_attribution`.
    """
    attribution = latent_attribution(model, sae, text, **kwargs)
    top = attribution.top(k)
    exact = ablation_effects(model, sae, text, top, **kwargs)
    return {"latents": top, "attribution": attribution.total[top].tolist(), "ablation": exact.tolist()}


def attribution_view(attribution: LatentAttribution, k: int = 8) -> OfflineHTML:
    """Tokens coloured by the attribution of each of the top ``k`` latents (positive = supports the metric)."""
    top = attribution.top(k)
    state = "with guardrail" if attribution.guarded else "without guardrail"
    header = (f'<div style="font-family: sans-serif; font-size: 14px;"><b>latent attributions</b> ({state}); '
              f"metric = {attribution.metric:.3f}</div>")
    return render_component(
        "ColoredTokensMulti", header=header, title="latent attributions", tokens=attribution.tokens,
        values=attribution.per_token[:, top], labels=[f"latent {i}" for i in top],
    )


def plot_attribution(
    attributions: Mapping[str, LatentAttribution], stem: str | Path, *, k: int = 10,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
) -> list[Path]:
    """Bar chart of the top-``k`` latents' summed attributions for each condition (e.g. ``{"base": .., "dsg": ..}``,
    latents ranked by the first condition), with each condition's ``metrics`` (e.g. forget/retain numbers of the
    question) listed beside it. Saves ``stem.png`` and ``stem.svg``."""
    if not attributions:
        raise ValueError("attributions is empty: pass at least one condition, e.g. {'base': latent_attribution(..)}")
    names = list(attributions)
    latents = attributions[names[0]].top(k)
    width = 0.8 / len(names)
    with styled_figure(stem, width=max(3.6, 0.45 * len(latents) + 1.5), height=2.8) as (fig, (ax,)):
        for i, name in enumerate(names):
            values = attributions[name].total[latents].numpy()
            positions = [x + (i - (len(names) - 1) / 2) * width for x in range(len(latents))]
            ax.bar(positions, values, width=width, color=color(name), label=name)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(latents)), [str(i) for i in latents], rotation=45)
        ax.set_xlabel("SAE latent")
        ax.set_ylabel("attribution (grad x act)")
        ax.legend(loc="best")
        lines = [f"{name}: metric {attributions[name].metric:.2f}" + "".join(
            f", {key} {value:.2f}" for key, value in (metrics or {}).get(name, {}).items()) for name in names]
        ax.set_title("\n".join(lines), fontsize=8, loc="left")
    return figure_paths(stem)
