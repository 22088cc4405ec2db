"""A grid of RMU runs on one model and data: each run's unlearning step is measured (wall time, peak memory,
:mod:`dsg_lens.baselines.cost`) and its model evaluated by the same code as every other method
(:func:`dsg_lens.pipeline.evaluate_questions`); the Pareto front and the best point are kept.

Schema (``rmu_grid.json``; the rows double as a sweep for the Pareto figure)::

    {"base": {"forget_acc", "retain_acc", ...},
     "rows": [{RMUConfig fields (max_len resolved), "layers_updated", "steering_coef_used", "forget_acc",
               "retain_acc", "forget_ci95", "retain_ci95",
               "forget_n", "retain_n", "final_forget_loss", "final_retain_loss",
               "cost": {"seconds", "peak_mib", "memory_kind"}}],
     "pareto": [rows], "best": row | null, "params": {"method": "rmu", "min_retain", "protocol", ...}}

``best``: the lowest forget accuracy among rows with retain accuracy >= ``min_retain`` (ties: higher retain).
With ``resume=True`` the rows already in ``out_dir/rmu_grid.json`` (same questions) are kept, with any notes in
its params, and their configurations skipped; the file is rewritten after every run, so an interrupted grid keeps what it measured.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from dsg_lens.artifacts import write_json
from dsg_lens.baselines.best import best_point
from dsg_lens.baselines.cost import measure
from dsg_lens.baselines.rmu import RMUConfig, rmu_unlearn
from dsg_lens.data.loaders import MCQ, fingerprint
from dsg_lens.eval.sweep import pareto_front
from dsg_lens.pipeline import evaluate_questions
from dsg_lens.tokens import TextsOrTokens


def _config_key(cfg: dict[str, Any]) -> str:
    """A configuration's identity: numbers compared as floats (6 == 6.0), tuples as lists."""

    def norm(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [norm(v) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return value

    return json.dumps({k: norm(v) for k, v in sorted(cfg.items())})


def rmu_grid(
    model: nn.Module,
    forget_texts: TextsOrTokens,
    retain_texts: TextsOrTokens,
    forget_questions: Sequence[MCQ],
    retain_questions: Sequence[MCQ],
    configs: Sequence[RMUConfig],
    *,
    min_retain: float = 0.95,
    protocol: str = "completion",
    batch_size: int = 8,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate RMU for every config (module docstring for the schema and ``resume``)."""
    if not configs:
        raise ValueError("pass at least one RMUConfig")
    fq, rq = list(forget_questions), list(retain_questions)
    questions = {"forget": fingerprint(fq), "retain": fingerprint(rq)}
    rows: list[dict[str, Any]] = []
    base: dict[str, Any] | None = None
    kept_params: dict[str, Any] = {}
    path = Path(out_dir) / "rmu_grid.json" if out_dir is not None else None
    if resume and path is not None and path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("params", {}).get("questions") != questions:
            raise ValueError(f"{path} was measured on other questions: pass resume=False or another out_dir")
        rows, base, kept_params = previous["rows"], previous["base"], previous["params"]
    if base is None:
        base = evaluate_questions(model, fq, rq, protocol, batch_size, False)
    fields = [f.name for f in dataclass_fields(RMUConfig)]
    done = {_config_key({k: r[k] for k in fields}) for r in rows}
    params = {**kept_params, "method": "rmu", "min_retain": min_retain, "protocol": protocol, "questions": questions,
              "n_forget_questions": len(fq), "n_retain_questions": len(rq), "device": str(model.cfg.device),
              "dtype": str(model.cfg.dtype)}

    def result() -> dict[str, Any]:
        return {"base": base, "rows": rows, "pareto": pareto_front(rows), "best": best_point(rows, min_retain),
                "params": params}

    for cfg in tqdm(list(configs), desc="RMU grid", disable=not progress):
        resolved = replace(cfg, max_len=cfg.window_len(int(model.cfg.n_ctx)))
        key = _config_key(asdict(resolved))
        if key in done:
            continue
        trained = measure(lambda cfg=resolved: rmu_unlearn(model, forget_texts, retain_texts, cfg, progress=False),
                          model.cfg.device)
        run = trained.value
        metrics = evaluate_questions(run.model, fq, rq, protocol, batch_size, False)
        rows.append({**asdict(resolved), "layers_updated": list(resolved.layers_to_update()),
                     "steering_coef_used": float(run.control.norm()), **metrics,
                     "final_forget_loss": run.log[-1]["forget_loss"], "final_retain_loss": run.log[-1]["retain_loss"],
                     "cost": trained.cost()})
        done.add(key)
        del run, trained
        _save(result(), path)
    _save(result(), path)
    return result()


def _save(result: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
