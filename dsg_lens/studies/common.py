"""What every study shares: the default setup (model, SAE, corpora, base-correct questions), the base of the
studies' config dataclasses, accuracy, fine-tuning with a language-modelling loss, and writing ``<name>.json``."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from sae_lens import SAE
from torch import nn

from dsg_lens.artifacts import write_json
from dsg_lens.baselines.rmu import training_window
from dsg_lens.data.loaders import MCQ
from dsg_lens.eval.mcq import score_mcq
from dsg_lens.eval.rescore import Attachable
from dsg_lens.models import load_model
from dsg_lens.pipeline import PipelineConfig, base_correct_questions, load_sae, load_texts
from dsg_lens.tokens import iter_batches, to_sequences


C = TypeVar("C", bound="StudyConfig")


@dataclass
class StudyConfig:
    """Base of each study's settings dataclass (``EfficiencyConfig``, ``RelearnConfig``, ...): a JSON round trip
    and defaults taken from a :class:`PipelineConfig`. Tuple fields are written as JSON lists and read back as
    tuples. Run-time arguments (models, texts, ``out_dir``, ``progress``) are not settings and stay arguments."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Rebuild from :meth:`to_dict`'s output; rejects keys that are not fields (a typo would be ignored)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__} has no settings {unknown}; its settings are {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def from_pipeline(cls: type[C], cfg: PipelineConfig, **overrides: Any) -> C:
        """Settings named like a :class:`PipelineConfig` field (n, p_ratio, p_dyn, clamp, clamp_scale, protocol,
        batch_size) taken from ``cfg``; the rest from ``overrides`` or the defaults."""
        shared = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        return cls(**{**shared, **overrides})


@dataclass
class Setup:
    """A model, its SAE, forget/retain corpora and the base-correct forget/retain questions."""

    model: nn.Module
    sae: SAE
    forget_texts: list[str]
    retain_texts: list[str]
    forget_questions: list[MCQ]
    retain_questions: list[MCQ]
    config: PipelineConfig


def load_setup(cfg: PipelineConfig | None = None, *, device: str | None = None, progress: bool = True) -> Setup:
    """Load the sources named in ``cfg`` (default: the embedded SmolLM2 + WordNet benchmark), fp32."""
    cfg = cfg or PipelineConfig()
    model = load_model(cfg.model, kind=cfg.model_kind, device=device or cfg.device)
    sae = load_sae(cfg.sae, device=model.cfg.device, model=cfg.model)
    forget_q, retain_q = base_correct_questions(model, cfg, progress)
    return Setup(model, sae, load_texts(cfg.forget_corpus), load_texts(cfg.retain_corpus), forget_q, retain_q, cfg)


def accuracy(model: nn.Module, questions: Sequence[MCQ], protocol: str = "completion", batch_size: int = 8,
             progress: bool = False) -> float:
    """MCQ accuracy of ``model`` as it is now (hooks attached or not)."""
    return score_mcq(model, list(questions), protocol, batch_size=batch_size, progress=progress).accuracy


def lm_fine_tune(
    model: nn.Module, texts: Sequence[str], *, steps: int, lr: float, batch_size: int = 4,
    max_len: int | None = None, seed: int = 0, attached: Attachable | None = None,
    after_step: Callable[[int, nn.Module, float | None], None] | None = None,
) -> nn.Module:
    """A deep copy of ``model`` fine-tuned on ``texts`` (next-token loss on real tokens, AdamW, all weights),
    cycling through the texts in a seeded order. ``attached`` (a guardrail, a static clamp) stays attached to the
    copy for the whole run: it is part of every training forward pass and of every ``after_step`` call.
    ``after_step(step, model, loss)`` is called before the first step (step 0, loss None) and after each step.
    Texts are cut into windows of ``max_len`` tokens (None: min(128, n_ctx); more than n_ctx is an error)."""
    if steps < 0 or lr <= 0 or batch_size < 1:
        raise ValueError("fine-tuning needs steps >= 0, lr > 0 and batch_size >= 1")
    window = training_window(max_len, int(model.cfg.n_ctx))
    tuned = copy.deepcopy(model).eval()
    sequences = to_sequences(tuned, list(texts), window)
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(seed)).tolist()
    optimizer = torch.optim.AdamW([p for p in tuned.parameters() if p.requires_grad], lr=lr)
    with attached.attached(tuned) if attached is not None else nullcontext():
        if after_step is not None:
            with torch.no_grad():
                after_step(0, tuned, None)
        for step in range(1, steps + 1):
            start = ((step - 1) * batch_size) % len(order)
            chosen = [sequences[order[(start + k) % len(order)]] for k in range(min(batch_size, len(order)))]
            batch = next(iter(iter_batches(tuned, chosen, batch_size)))
            logits = tuned(batch.tokens, return_type="logits")
            targets = batch.tokens[:, 1:]
            mask = batch.real[:, 1:] & batch.real[:, :-1]
            log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets[..., None])[..., 0]
            loss = -(log_probs * mask).sum() / mask.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step(step, tuned, float(loss.detach()))
    for param in tuned.parameters():
        param.grad = None
    return tuned


def save_result(result: dict[str, Any], out_dir: str | Path | None, name: str) -> dict[str, Any]:
    """Write ``result`` to ``out_dir/<name>.json`` (when ``out_dir`` is given); returns ``result``."""
    if out_dir is not None:
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / f"{name}.json", result)
    return result
