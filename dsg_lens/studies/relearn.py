"""Relearning attack: fine-tune on a few forget texts, then re-measure forget accuracy.

The attacker fine-tunes all weights (next-token loss, AdamW; :func:`~dsg_lens.studies.common.lm_fine_tune`) on
the first ``n_texts`` forget texts, ``steps`` steps at learning rate ``lr``. Every arm goes through the same
fine-tuning, from the same data order, and is measured at the same steps:

- ``base``: the model without any unlearning (how much the texts teach);
- one arm per inference-time method in ``attached`` (the DSG guardrail, static clamping): the model with the
  method attached for the whole run, fine-tuning included (a deployed guardrail stays on while the attacker
  trains through it), and measured with it attached;
- one arm per unlearned model in ``unlearned`` (RMU): its weights are fine-tuned.

Schema (``relearn.json``)::

    {"arms": [names, in order], "kinds": {name: "base" | "attached" | "unlearned"},
     "curve": [{"step", "<arm>_forget_acc", "<arm>_loss" (null at step 0), "<arm>_retain_acc" (with retain
                questions), "<arm>_firing_rate" (arms with a gate: share of forget question contexts whose gate is
                on at the last token)}],
     "params": {RelearnConfig fields (max_len and eval_steps as used), "n_texts" (used),
                "n_forget_questions", "n_retain_questions", "methods": {attached name: repr}}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from dsg_lens.baselines.rmu import training_window
from dsg_lens.data.loaders import MCQ
from dsg_lens.pipeline import question_texts
from dsg_lens.studies.common import Attachable, StudyConfig, accuracy, lm_fine_tune, save_result


@dataclass
class RelearnConfig(StudyConfig):
    """Settings of :func:`relearn_study`: the attacker's strength (``n_texts`` forget texts (None: all given),
    ``steps``, ``lr``, ``batch_size``, ``max_len`` (None: min(128, n_ctx)), ``seed``), when to measure
    (``eval_steps``, default 0, 1, 2, 4, ... and ``steps``) and the evaluation (``protocol``,
    ``eval_batch_size``)."""

    steps: int = 16
    lr: float = 1e-4
    n_texts: int | None = 32
    batch_size: int = 4
    max_len: int | None = None
    eval_steps: tuple[int, ...] | None = None
    seed: int = 0
    protocol: str = "completion"
    eval_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps={self.steps} must be >= 0")
        if self.n_texts is not None and self.n_texts < 1:
            raise ValueError(f"n_texts={self.n_texts} must be >= 1 (or None for every text given)")
        if self.eval_steps is not None:
            self.eval_steps = tuple(self.eval_steps)
        if any(not 0 <= s <= self.steps for s in self.points()):
            raise ValueError(f"eval_steps {list(self.points())} must lie in 0..steps={self.steps}")

    def points(self) -> list[int]:
        """The steps at which the curve is measured, sorted."""
        if self.eval_steps is not None:
            return sorted(set(self.eval_steps))
        return sorted({0, self.steps, *(2**k for k in range(self.steps.bit_length()) if 2**k < self.steps)})


def relearn_study(
    model: nn.Module,
    forget_texts: Sequence[str],
    forget_questions: Sequence[MCQ],
    config: RelearnConfig | None = None,
    *,
    attached: Mapping[str, Attachable] | None = None,
    unlearned: Mapping[str, nn.Module] | None = None,
    retain_questions: Sequence[MCQ] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune every arm (module docstring) on the first ``config.n_texts`` of ``forget_texts`` and record
    forget accuracy (and retain accuracy, with ``retain_questions``) at ``config.points()``."""
    cfg = config or RelearnConfig()
    texts = list(forget_texts)[: cfg.n_texts] if cfg.n_texts is not None else list(forget_texts)
    if not texts:
        raise ValueError("pass at least one forget text to fine-tune on")
    attached, unlearned = dict(attached or {}), dict(unlearned or {})
    names = ["base", *attached, *unlearned]
    if len(set(names)) != len(names):
        raise ValueError(f"arm names must be distinct (and not 'base'): {names}")
    points = cfg.points()
    max_len = training_window(cfg.max_len, int(model.cfg.n_ctx))  # None: min(128, n_ctx); recorded in params
    contexts = question_texts(list(forget_questions), cfg.protocol, model)
    rows: dict[int, dict[str, Any]] = {s: {"step": s} for s in points}
    bar = tqdm(total=len(points) * len(names), desc="relearn", disable=not progress)

    def recorder(name: str, method: Attachable | None):
        def record(step: int, tuned: nn.Module, loss: float | None) -> None:
            if step not in rows:
                return
            row = rows[step]
            row[f"{name}_loss"] = loss
            row[f"{name}_forget_acc"] = accuracy(tuned, forget_questions, cfg.protocol, cfg.eval_batch_size)
            if retain_questions:
                row[f"{name}_retain_acc"] = accuracy(tuned, retain_questions, cfg.protocol, cfg.eval_batch_size)
            if hasattr(method, "is_forget"):
                fired = method.is_forget(tuned, contexts, batch_size=cfg.eval_batch_size)  # type: ignore[union-attr]
                row[f"{name}_firing_rate"] = float(fired.float().mean())
            bar.update()
        return record

    arms = [("base", model, None), *((n, model, m) for n, m in attached.items()),
            *((n, m, None) for n, m in unlearned.items())]
    for name, start, method in arms:
        tuned = lm_fine_tune(start, texts, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, max_len=max_len,
                             seed=cfg.seed, attached=method, after_step=recorder(name, method))
        del tuned
    bar.close()
    kinds = {"base": "base", **{n: "attached" for n in attached}, **{n: "unlearned" for n in unlearned}}
    result = {"arms": names, "kinds": kinds, "curve": [rows[s] for s in points],
              "params": {**cfg.to_dict(), "max_len": max_len, "eval_steps": points, "n_texts": len(texts),
                         "n_forget_questions": len(forget_questions),
                         "n_retain_questions": len(retain_questions or []),
                         "methods": {n: repr(m) for n, m in attached.items()}}}
    return save_result(result, out_dir, "relearn")
