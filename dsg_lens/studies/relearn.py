"""Relearning attack: fine-tune on a few forget examples, then re-measure forget accuracy.

The attacker fine-tunes the weights (all of them, next-token loss, AdamW) on ``forget_examples``; DSG is an
inference-time guardrail, so it stays attached to the fine-tuned model; RMU's unlearned weights go through the
same fine-tuning. After each step in ``eval_steps`` we record forget accuracy of: the fine-tuned base model
without guardrail (how much the examples teach), with the DSG guardrail attached, and the fine-tuned RMU model.

Schema (``relearn.json``)::

    {"curve": [{"step", "base_forget_acc", "dsg_forget_acc", "rmu_forget_acc" (if an RMU model is given),
                "dsg_firing_rate", "loss"}],
     "params": {"steps", "lr", "batch_size", "n_examples", "eval_steps", ...}}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from dsg_lens.data.loaders import MCQ
from dsg_lens.guardrail import DynamicSAEGuardrail
from dsg_lens.pipeline import question_texts
from dsg_lens.studies.common import accuracy, lm_fine_tune, save_result


def relearn_study(
    model: nn.Module,
    guard: DynamicSAEGuardrail,
    forget_examples: Sequence[str],
    forget_questions: Sequence[MCQ],
    *,
    rmu_model: nn.Module | None = None,
    steps: int = 8,
    lr: float = 1e-5,
    batch_size: int = 4,
    max_len: int = 128,
    eval_steps: Sequence[int] | None = None,
    seed: int = 0,
    protocol: str = "completion",
    eval_batch_size: int = 8,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune copies of ``model`` (and ``rmu_model``) on ``forget_examples`` for ``steps`` steps and record
    the curve at ``eval_steps`` (default: 0, 1, 2, 4, ... and ``steps``); module docstring for the schema."""
    if not forget_examples:
        raise ValueError("pass at least one forget example to fine-tune on")
    points = sorted(set(eval_steps if eval_steps is not None else
                        [0, steps] + [2**k for k in range(steps.bit_length()) if 2**k < steps]))
    if any(not 0 <= s <= steps for s in points):
        raise ValueError(f"eval_steps {points} must lie in 0..steps={steps}")
    texts = question_texts(list(forget_questions), protocol)
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
        tuned = lm_fine_tune(start, forget_examples, steps=steps, lr=lr, batch_size=batch_size, max_len=max_len,
                             seed=seed, after_step=record)
        del tuned
    bar.close()
    result = {"curve": [rows[s] for s in points],
              "params": {"steps": steps, "lr": lr, "batch_size": batch_size, "max_len": max_len, "seed": seed,
                         "n_examples": len(forget_examples), "eval_steps": points, "protocol": protocol,
                         "n_forget_questions": len(forget_questions), "guard": repr(guard)}}
    return save_result(result, out_dir, "relearn")
