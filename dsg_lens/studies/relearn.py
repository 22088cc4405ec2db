"""Relearning attack: fine-tune on a few forget examples, then re-measure forget accuracy.

The attacker fine-tunes the weights (all of them, next-token loss, AdamW) on ``forget_examples``; DSG is an
inference-time guardrail, so it stays attached to the fine-tuned model; RMU's unlearned weights go through the
same fine-tuning. After each step in ``eval_steps`` we record forget accuracy of: the fine-tuned base model
without guardrail (how much the examples teach), with the DSG guardrail attached, and the fine-tuned RMU model.

Schema (``relearn.json``)::

    {"curve": [{"step", "base_forget_acc", "dsg_forget_acc", "rmu_forget_acc" (if an RMU model is given),
                "dsg_firing_rate", "loss"}],
     "params": {RelearnConfig fields (max_len and eval_steps as used), "n_examples", "n_forget_questions",
                "guard"}}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from dsg_lens.baselines.rmu import training_window
from dsg_lens.data.loaders import MCQ
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.pipeline import question_texts
from dsg_lens.studies.common import StudyConfig, accuracy, lm_fine_tune, save_result


@dataclass
class RelearnConfig(StudyConfig):
    """Settings of :func:`relearn_study`: the attacker's fine-tuning (``steps``, ``lr``, ``batch_size``,
    ``max_len`` (None: min(128, n_ctx)), ``seed``), when to measure (``eval_steps``, default 0, 1, 2, 4, ... and
    ``steps``) and the evaluation (``protocol``, ``eval_batch_size``)."""

    steps: int = 8
    lr: float = 1e-5
    batch_size: int = 4
    max_len: int | None = None
    eval_steps: tuple[int, ...] | None = None
    seed: int = 0
    protocol: str = "completion"
    eval_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps={self.steps} must be >= 0")
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
    guard: DynamicSAEGuardrail,
    forget_examples: Sequence[str],
    forget_questions: Sequence[MCQ],
    config: RelearnConfig | None = None,
    *,
    rmu_model: nn.Module | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune copies of ``model`` (and ``rmu_model``) on ``forget_examples`` (``config``: how) and record
    the curve at ``config.eval_steps``; module docstring for the schema."""
    if not forget_examples:
        raise ValueError("pass at least one forget example to fine-tune on")
    cfg = config or RelearnConfig()
    points = cfg.points()
    protocol, eval_batch_size = cfg.protocol, cfg.eval_batch_size
    max_len = training_window(cfg.max_len, int(model.cfg.n_ctx))  # None: min(128, n_ctx); recorded in params
    texts = question_texts(list(forget_questions), protocol, model)
    rows: dict[int, dict[str, Any]] = {s: {"step": s} for s in points}
    bar = tqdm(total=len(points) * (2 if rmu_model is not None else 1), desc="relearn", disable=not progress)

    def record_base(step: int, tuned: nn.Module, loss: float | None) -> None:
        if step not in rows:
            return
        rows[step]["loss"] = loss
        rows[step]["base_forget_acc"] = accuracy(tuned, forget_questions, protocol, eval_batch_size)
        with guard.attached(tuned):
            rows[step]["dsg_forget_acc"] = accuracy(tuned, forget_questions, protocol, eval_batch_size)
        rows[step]["dsg_firing_rate"] = float(guard.is_forget(tuned, texts, batch_size=eval_batch_size).float().mean())
        bar.update()

    def record_rmu(step: int, tuned: nn.Module, loss: float | None) -> None:
        if step in rows:
            rows[step]["rmu_forget_acc"] = accuracy(tuned, forget_questions, protocol, eval_batch_size)
            bar.update()

    for start, record in ((model, record_base), (rmu_model, record_rmu)):
        if start is None:
            continue
        record(0, start, None)
        tuned = lm_fine_tune(start, forget_examples, steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size,
                             max_len=max_len, seed=cfg.seed, after_step=record)
        del tuned
    bar.close()
    result = {"curve": [rows[s] for s in points],
              "params": {**cfg.to_dict(), "max_len": max_len, "eval_steps": points,
                         "n_examples": len(forget_examples), "n_forget_questions": len(forget_questions),
                         "guard": repr(guard)}}
    return save_result(result, out_dir, "relearn")
